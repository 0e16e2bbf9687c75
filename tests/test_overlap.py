import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_geom.geometry import knn, label_overlap, neighborhood_overlap


@pytest.mark.parametrize("case", ["A_vs_A_plus_0.05E", "A_vs_3AR_plus_7_(similarity)"])
@pytest.mark.parametrize("k", [10, 30])
def test_data_overlap_matches_dadapy(case, k, overlap_data, reference):
    ref = reference["overlap_cases"][case]
    got = neighborhood_overlap(overlap_data["A"], overlap_data[ref["B"]], k=k)
    assert abs(got - ref[f"k{k}"]) < 1e-9


@pytest.mark.parametrize("name", ["A", "A_plus_0.05E", "U"])
@pytest.mark.parametrize("k", [5, 10, 30])
@pytest.mark.parametrize("weighted", [True, False])
def test_label_overlap_matches_dadapy(name, k, weighted, overlap_data, reference):
    ref = reference["label_overlap_cases"]["values"][name][f"k{k}_{'weighted' if weighted else 'plain'}"]
    got = label_overlap(overlap_data[name], overlap_data["labels"], k=k, weighted=weighted)
    assert abs(got - ref) < 1e-9


def test_label_overlap_accepts_any_labels_and_neighbors(overlap_data):
    x, y = overlap_data["A"], overlap_data["labels"]
    nb = knn(x, 30)
    names = np.array(["cat", "dog", "eel", "fox"])[y]
    assert label_overlap(nb, names, k=10) == label_overlap(x, torch.from_numpy(y), k=10)
    per = label_overlap(nb, y, k=10, per_point=True)
    assert per.shape == (2000,) and float(per.mean()) == pytest.approx(label_overlap(x, y, k=10, weighted=False))


def test_per_point_overlap_and_neighbors_input(overlap_data):
    a, b = knn(overlap_data["A"], 30), knn(overlap_data["A_plus_0.05E"], 30)
    per = neighborhood_overlap(a, b, k=10, per_point=True)
    assert per.shape == (2000,) and ((per >= 0) & (per <= 1)).all()
    assert float(per.mean()) == pytest.approx(neighborhood_overlap(a, b, k=10))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), k=st.integers(1, 20), scale=st.floats(0.01, 100))
def test_overlap_properties(seed, k, scale):
    g = np.random.default_rng(seed)
    a = g.standard_normal((120, 6))
    b = g.standard_normal((120, 9))
    ab = neighborhood_overlap(a, b, k=k)
    assert ab == pytest.approx(neighborhood_overlap(b, a, k=k))
    assert 0.0 <= ab <= 1.0
    q = np.linalg.qr(g.standard_normal((6, 6)))[0]
    assert neighborhood_overlap(a, scale * a @ q - 3.0, k=k) == 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: neighborhood_overlap(a, a[:-1], k=3), "N = 30 and N = 29"),
        (lambda a: neighborhood_overlap(a, a, k=0), "positive integer"),
        (lambda a: neighborhood_overlap(a, a, k=30), "more than k = 30 points"),
        (lambda a: neighborhood_overlap(knn(a, 3), a, k=5), "at least k = 5 neighbours"),
        (lambda a: label_overlap(a, [0, 1] * 10, k=3), r"shape \(30,\)"),
    ],
)
def test_bad_input(call, match):
    a = np.random.default_rng(0).standard_normal((30, 2))
    with pytest.raises(ValueError, match=match):
        call(a)


def test_label_problem_names_what_is_wrong_with_the_labels():
    from lightning_geom.geometry import label_problem

    assert label_problem(torch.tensor([0, 1, 1, 2, 0])) is None
    assert label_problem(torch.tensor([0.0, 1.0, 1.0, 2.0])) is None  # integral floats are class ids
    assert "regression targets" in label_problem(torch.tensor([0.5, 1.25, 1.25, 3.0]))
    assert "NaN" in label_problem(torch.tensor([0.0, float("nan"), 1.0]))
    assert "same label" in label_problem(torch.zeros(6))
    assert "of its own" in label_problem(torch.arange(6))


def test_label_overlap_refuses_regression_targets():
    x = torch.randn(40, 3)
    with pytest.raises(ValueError, match="non-integer numbers"):
        label_overlap(x, torch.rand(40), k=5)
    with pytest.raises(ValueError, match="NaN"):
        label_overlap(x, np.r_[np.zeros(39), np.nan], k=5)
    ints = torch.randint(0, 3, (40,))
    assert label_overlap(x, ints.double(), k=5) == label_overlap(x, ints, k=5)


def test_one_hot_labels_are_their_classes(overlap_data):
    """One-hot (N, C) labels (a classifier's targets as many datasets store them) were refused by
    label_overlap and dropped without a word by the capture (read as an LM's token targets)."""
    from lightning_geom.capture import capture_representations

    x, y = overlap_data["A"], overlap_data["labels"]
    one_hot = np.eye(int(y.max()) + 1)[y]
    assert label_overlap(x, one_hot, k=10) == label_overlap(x, y, k=10)
    assert label_overlap(x, torch.from_numpy(one_hot).float(), k=10) == label_overlap(x, y, k=10)
    with pytest.raises(ValueError, match=r"shape \(2000,\)"):  # two ones in a row: not one-hot
        label_overlap(x, one_hot + np.eye(one_hot.shape[1])[(y + 1) % one_hot.shape[1]], k=10)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 8), torch.nn.Linear(8, 8))
    reps = capture_representations(net, [(torch.from_numpy(x[:64]).float(), torch.from_numpy(one_hot[:64]))], layers=["*"])
    assert reps.labels.tolist() == y[:64].tolist()
    from lightning_geom import probe

    x_t, y_t = torch.from_numpy(x[:120]).float(), torch.from_numpy(y[:120])
    plain = probe(net, (x_t, y_t), layers=["*"], k=5, pullback_samples=0, progress=False).models[0]["layers"]
    hot = probe(net, (x_t, torch.from_numpy(one_hot[:120])), layers=["*"], k=5, pullback_samples=0, progress=False).models[0]["layers"]
    assert [r["label_overlap"] for r in hot] == [r["label_overlap"] for r in plain] and plain[0]["label_overlap"] is not None


def test_labels_as_a_column_none_or_mixed_kinds(overlap_data):
    """An (N, 1) column (sklearn's ``y.reshape(-1, 1)``) is its (N,) labels; None and labels mixing
    ints and strings are one line each (were "got shape ()" and numpy's "'<' not supported")."""
    x, y = overlap_data["A"], overlap_data["labels"]
    assert label_overlap(x, y[:, None], k=10) == label_overlap(x, y, k=10)
    with pytest.raises(ValueError, match="got None"):
        label_overlap(x, None, k=10)
    with pytest.raises(ValueError, match="mix int, str"):
        label_overlap(x[:4], np.array([1, "a", 2, "b"], dtype=object), k=2)
    # the capture and the metric read a (B, 1) column too (the capture dropped it without a word)
    from lightning_geom.capture import capture_representations
    from lightning_geom.metrics import LabelOverlap

    xt, yt = torch.from_numpy(x[:64]).float(), torch.from_numpy(y[:64])
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 8), torch.nn.Linear(8, 8))
    reps = capture_representations(net, [(xt, yt[:, None])], layers=["*"])
    assert reps.labels.tolist() == yt.tolist()
    col, flat = LabelOverlap(k=5), LabelOverlap(k=5)
    col.update(xt, yt[:, None])
    flat.update(xt, yt)
    assert float(col.compute()) == float(flat.compute())
