"""Plateau segmentation of ID profiles (issue 11): known change points recovered, none on flat noise."""

from __future__ import annotations

import random

import pytest

from lightning_geom.geometry import robust_change_points, segment_profile


def _noisy(levels: list[tuple[int, float]], sigma: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [m + rng.gauss(0.0, sigma) for n, m in levels for _ in range(n)]


@pytest.mark.parametrize("seed", range(10))
def test_known_change_points_are_recovered(seed):
    # the double plateau of a real LLM: ~6 for 12 layers, ~10 for 9, then down to ~6
    prof = _noisy([(12, 6.0), (9, 10.3), (10, 6.0)], sigma=0.25, seed=seed)
    seg = segment_profile(prof, [0.25] * len(prof))
    assert seg.change_points == (12, 21)
    assert [round(m) for _, _, m in seg.segments] == [6, 10, 6]
    assert seg.jumps()[0] == pytest.approx(10.3 / 6.0, rel=0.05)


def test_flat_noise_has_no_change_point_at_the_stated_rate():
    """The default penalty 3 log L: at most 5 % of pure-noise profiles get a (spurious) change point."""
    false = sum(bool(segment_profile(_noisy([(30, 8.0)], 0.3, seed), [0.3] * 30).change_points) for seed in range(200))
    assert false <= 10, false


def test_monotone_trend_with_tiny_errors_is_not_a_staircase_of_tiny_jumps():
    prof = [5.0 + 0.05 * i for i in range(20)]  # +1 % per layer, errors 100x smaller
    seg = segment_profile(prof, [0.005] * 20)
    assert all(abs(j - 1) >= 0.05 for j in seg.jumps())  # no plateau closer than min_jump to the next


def test_robust_change_points_need_a_majority_of_scales():
    base = [6.0] * 10 + [10.0] * 10
    shifted = [6.0] * 11 + [10.0] * 9  # another scale sees it one layer later: the same feature
    other = [6.0] * 4 + [9.0] * 16  # a minority sees a different break
    r = robust_change_points([base, shifted, base, other], [[0.2] * 20] * 4)
    assert r.change_points == (10,) and r.support == (0.75,)
    assert [(a, b) for a, b, _ in r.plateaus] == [(0, 9), (10, 19)]
    assert r.jumps[0] == pytest.approx(10 / 6)
    lone = robust_change_points([base, [6.0] * 20, [6.0] * 20], [[0.2] * 20] * 3)
    assert lone.change_points == () and len(lone.plateaus) == 1


@pytest.mark.parametrize(
    ("values", "errs", "match"),
    [([], None, "non-empty"), ([1.0, float("nan")], None, "finite"), ([1.0, 2.0], [0.1], "one error per layer"), ([1.0, 2.0], [0.1, 0.0], "positive")],
)
def test_bad_profiles(values, errs, match):
    with pytest.raises(ValueError, match=match):
        segment_profile(values, errs)


def test_robust_change_point_sits_where_most_scales_put_it():
    """A jump at layer 12 found by every scale, plus a spurious cut at 10 at two scales: the robust
    change point is 12 (not 11, the midpoint that the +-1 tolerance also covers), and the plateau
    before it keeps layer 11."""
    from lightning_geom.geometry.changepoints import robust_change_points

    base = [8.0] * 12 + [4.0] * 8
    bumped = [8.0] * 10 + [9.0, 9.0] + [4.0] * 8
    curves = [base, [x * 1.1 for x in base], bumped, [x * 0.9 for x in bumped], base]
    rc = robust_change_points(curves, [[0.1] * 20] * 5)
    assert rc.change_points == (12,) and rc.plateaus[0][:2] == (0, 11)


def test_real_llm_profile_breaks_where_the_scales_agree():
    """SmolLM2-135M's GRIDE profile at 6 scales (a real decoder LM; tests/fixtures/smollm2_gride.json):
    every scale sees the break at hidden state 12 (IDs ~8 -> ~4 at the reported scale n1 = 2), and
    the gentle slope over states 0-11 is not reported as a staircase of 1 % steps."""
    import json
    from pathlib import Path

    from lightning_geom.geometry.changepoints import robust_change_points

    ref = json.loads((Path(__file__).parent / "fixtures" / "smollm2_gride.json").read_text())
    errs = [[max(e, 1e-9) for e in row] for row in ref["errs"]]
    rc = robust_change_points(ref["dims"], errs, headline=ref["ranks"].index(2))
    i = rc.change_points.index(12)
    assert rc.support[i] == 1.0 and rc.jumps[i] < 0.6
    assert all(abs(j - 1) >= 0.05 for j in rc.jumps)  # every reported change is a real step at the reported scale
    assert not any(c < 6 for c in rc.change_points)
