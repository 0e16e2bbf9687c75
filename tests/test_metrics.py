import numpy as np
import pytest
import torch

from lightning_geom.geometry import gride, label_overlap, neighborhood_overlap, twonn
from lightning_geom.metrics import IntrinsicDimension, LabelOverlap, NeighborhoodOverlap


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(600, 4, generator=g) @ torch.randn(4, 16, generator=g)
    b = a + 0.1 * torch.randn(600, 16, generator=g)
    y = torch.randint(0, 3, (600,), generator=g)
    return a, b, y


def test_metrics_equal_functional_over_batches(data):
    a, b, y = data
    idm, idg, no, lo = IntrinsicDimension(), IntrinsicDimension("gride", n1=2), NeighborhoodOverlap(k=10), LabelOverlap(k=5)
    for s in range(0, 600, 128):
        idm.update(a[s : s + 128])
        idg.update(a[s : s + 128])
        no.update(a[s : s + 128], b[s : s + 128])
        lo.update(a[s : s + 128], y[s : s + 128])
    assert float(idm.compute()) == pytest.approx(twonn(a).dim)
    assert float(idg.compute()) == pytest.approx(gride(a, n1=2, n2=4).dim)
    assert float(no.compute()) == pytest.approx(neighborhood_overlap(a, b, k=10))
    assert float(lo.compute()) == pytest.approx(label_overlap(a, y, k=5))


def test_metric_states_concatenate_across_ranks():
    """What DDP's `cat` reduction does: two ranks' states merged give the single-process answer."""
    g = np.random.default_rng(0)
    x = torch.from_numpy(g.standard_normal((400, 5))).float()
    r0, r1, whole = IntrinsicDimension(), IntrinsicDimension(), IntrinsicDimension()
    r0.update(x[:200])
    r1.update(x[200:])
    whole.update(x)
    r0.merge_state(r1)
    assert float(r0.compute()) == pytest.approx(float(whole.compute()))


def _two_widths(metric):
    metric.update(torch.randn(5, 2))
    metric.update(torch.randn(5, 3))
    return metric


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: IntrinsicDimension("pca"), "one of 'twonn', 'gride'"),
        (lambda: NeighborhoodOverlap(k=0), "positive integer"),
        (lambda: LabelOverlap(k=-1), "positive integer"),
        (lambda: IntrinsicDimension().update(torch.zeros(3)), r"shape \(B, D\)"),
        (lambda: NeighborhoodOverlap().update(torch.zeros(3, 2), torch.zeros(4, 2)), "same batch size"),
        (lambda: LabelOverlap().update(torch.zeros(3, 2), torch.zeros(4)), r"shape \(3,\)"),
        (lambda: LabelOverlap().update(torch.zeros(3, 2), torch.tensor([0.3, 0.7, 1.2])), "regression targets"),
        (lambda: IntrinsicDimension().compute(), r"before any update\(\)"),
        (lambda: _two_widths(IntrinsicDimension()).compute(), r"different widths D = \[2, 3\]"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_label_overlap_metric_flags_and_one_hot_labels():
    with pytest.raises(TypeError, match="`weighted` to be True or False"):
        LabelOverlap(weighted="no")
    x, y = torch.randn(60, 4, generator=torch.Generator().manual_seed(0)), torch.arange(60) % 3
    plain, hot = LabelOverlap(k=5), LabelOverlap(k=5)
    plain.update(x, y)
    hot.update(x, torch.nn.functional.one_hot(y))
    assert float(hot.compute()) == float(plain.compute())


def test_metrics_read_points_as_the_functional_api_does():
    """float64 points stay float64 (they were cast to float32: an ID off the functional one by ~1e-7
    relative), numpy arrays are taken, and a bad batch is one line."""
    x = torch.randn(400, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) @ torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    m = IntrinsicDimension()
    m.update(x[:200])
    m.update(x[200:].numpy())
    assert float(m.compute()) == twonn(x).dim
    with pytest.raises(ValueError, match=r"shape \(B, D\)"):
        m.update(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="numeric feature columns"):
        m.update(np.full((3, 2), "a"))
