import pytest

from lightning_geom.geometry import three_phase


def test_three_phase_profile():
    s = three_phase([8, 20, 26, 19, 13, 12, 12.5, 18, 22, 14])
    assert (s.peak1_layer, s.min_layer, s.peak2_layer) == (2, 5, 8)
    assert s.plateau_layers == (4, 5, 6)
    assert s.depth == pytest.approx((26 - 12) / 26)
    assert s.rebound == pytest.approx((22 - 12) / 22)
    assert s.is_three_phase


@pytest.mark.parametrize(
    "profile",
    [[5.0] * 8, [1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4], [10, 12, 11.5, 11, 11.2, 11.1]],
    ids=["flat", "rising", "falling", "shallow"],
)
def test_not_three_phase(profile):
    assert not three_phase(profile).is_three_phase


def test_no_second_peak_when_minimum_is_last():
    s = three_phase([5, 10, 8, 6, 4])
    # issue 11: the minimum is never named a peak too, and a falling tail is no plateau
    assert s.min_layer == 4 and s.peak2_layer is None and s.peak2 is None and s.rebound == 0.0 and not s.is_three_phase
    assert s.plateau_layers == ()


@pytest.mark.parametrize(
    ("profile", "match"),
    [([1.0, 2.0], "at least 3 layers"), ([1.0, float("nan"), 2.0], r"layers \[1\]"), ([1.0, 0.0, 2.0], "positive")],
)
def test_bad_profiles(profile, match):
    with pytest.raises(ValueError, match=match):
        three_phase(profile)


def test_phases_from_the_layers_that_succeeded():
    """Issue 13: one failed layer used to remove the phase summary for every layer."""
    from lightning_geom.analysis import profile_phases

    ids = [10.0, 25.0, 30.0, 18.0, 12.0, 11.0, 12.0, 20.0, 24.0, 15.0]
    recs = [{"index": i, "id": v} for i, v in enumerate(ids)]
    recs[0] = {"index": 0, "id": None, "error": "ValueError: duplicates"}
    ph = profile_phases(recs)
    assert ph["left_out"] == [0]
    assert (ph["peak1_layer"], ph["min_layer"], ph["peak2_layer"]) == (2, 5, 8)  # layer indices, not positions
    assert ph["plateau_layers"] == [4, 5, 6]
    assert profile_phases(recs[:3]) is None  # two layers with an ID: no summary
