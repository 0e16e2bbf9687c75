"""Options of the geometry functions: a value that cannot mean what the user wants is one line, not a
silently different estimate (a fraction of 1.5, a negative tolerance, the string "no" read as True)."""

import pytest
import torch

import lightning_geom.geometry as g

X = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
LABELS = torch.arange(60) % 3
PROFILE = [5.0, 10.0, 4.0, 4.0, 9.0, 3.0]

CALLS = {
    "id_profile.discard_fraction": (lambda v: g.id_profile(X, discard_fraction=v), [-0.1, 0.0, 1.0, 1.5, True, "x"]),
    "id_batched.discard_fraction": (lambda v: g.id_batched(X.reshape(2, 30, 6), range_max=8, discard_fraction=v), [-0.1, 0.0, 1.5]),
    "twonn_scaling.min_points": (lambda v: g.twonn_scaling(X, min_points=v), [-1, 1.5, True]),
    "twonn_scaling.seed": (lambda v: g.twonn_scaling(X, seed=v), [1.5, "x", None]),
    "label_overlap.weighted": (lambda v: g.label_overlap(X, LABELS, k=5, weighted=v), ["no", 0, None]),
    "label_overlap.per_point": (lambda v: g.label_overlap(X, LABELS, k=5, per_point=v), ["yes", 1]),
    "neighborhood_overlap.per_point": (lambda v: g.neighborhood_overlap(X, Y, k=5, per_point=v), ["no", 1]),
    "three_phase.plateau_tol": (lambda v: g.three_phase(PROFILE, plateau_tol=v), [-0.1, float("nan"), float("inf"), True, "x"]),
    "three_phase.min_depth": (lambda v: g.three_phase(PROFILE, min_depth=v), [-0.2, float("nan"), "x"]),
    "three_phase.min_rebound": (lambda v: g.three_phase(PROFILE, min_rebound=v), [-0.1, float("nan"), "x"]),
    "segment_profile.penalty": (lambda v: g.segment_profile(PROFILE, penalty=v), [-1.0, float("nan"), "x"]),
    "segment_profile.min_jump": (lambda v: g.segment_profile(PROFILE, min_jump=v), [-0.05, float("inf")]),
    "robust_change_points.headline": (lambda v: g.robust_change_points([PROFILE], headline=v), [-1, 1, 0.0, True]),
    "robust_change_points.tolerance": (lambda v: g.robust_change_points([PROFILE], tolerance=v), [-1, 1.5, True]),
    "gride_max_rank.n_points": (lambda v: g.gride_max_rank(v), [float("inf"), "100"]),
}


@pytest.mark.parametrize(("call", "value"), [(name, v) for name, (_, vals) in CALLS.items() for v in vals])
def test_an_option_that_cannot_mean_anything_is_one_line(call, value):
    fn, _ = CALLS[call]
    option = call.split(".")[1]
    with pytest.raises((ValueError, TypeError)) as info:
        fn(value)
    msg = str(info.value)
    assert "\n" not in msg and (f"`{option}`" in msg or "infinite" in msg), msg


def test_good_options_still_give_the_same_numbers():
    tw, curve = g.id_profile(X, discard_fraction=0.1)
    assert tw.dim == g.twonn(X).dim
    assert g.label_overlap(X, LABELS, k=5, weighted=False) == float(g.label_overlap(X, LABELS, k=5, per_point=True).mean())
    import numpy as np

    assert g.three_phase(PROFILE, min_depth=np.float64(0.2)) == g.three_phase(PROFILE)  # numpy reals are reals
    assert g.robust_change_points([PROFILE], tolerance=np.int64(1)) == g.robust_change_points([PROFILE])


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("pullback_samples", -1, "`pullback_samples` to be a number of samples >= 0"),
        ("pullback_samples", None, "`pullback_samples`"),
        ("pullback_share", True, "`pullback_share` in \\(0, 1\\]"),
        ("device", "gpu0", "`device` gpu0: not a device name"),
        ("device", 1.5, "not a device name"),
        ("token_prompts", 0, "`token_prompts` to be a positive integer"),
        ("token_k", 2.5, "`token_k` to be a positive integer"),
        ("shuffle_control", "yes", "`shuffle_control` to be True or False"),
        ("keep_special_tokens", 1, "`keep_special_tokens` to be True or False"),
        ("seed", "x", "`seed` to be an integer"),
        ("layers", 0, "`layers`"),
    ],
)
def test_probe_options_are_checked_before_any_model_is_loaded(tmp_path, option, value, match):
    """The options come first: a path that does not exist is not even opened."""
    from lightning_geom import probe

    with pytest.raises((ValueError, TypeError), match=match):
        probe(str(tmp_path / "no-such-model"), X, progress=False, **{option: value})


@pytest.mark.parametrize(("option", "value"), [("corrector", "no"), ("progress", 1), ("steps", True)])
def test_explorer_flags_and_steps(option, value):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lightning_geom import EquivalenceClassExplorer

    lm = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, n_positions=8))
    with pytest.raises((ValueError, TypeError), match=f"`{option}`"):
        EquivalenceClassExplorer(lm, **{option: value})
