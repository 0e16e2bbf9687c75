"""knn_sharded and knn_split (issue 10): 2 and 3 gloo processes equal the single-process knn exactly."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_geom.geometry import knn, knn_sharded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo test runs on Linux")
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_equals_knn(tmp_path, world):
    sys.path.insert(0, str(Path(__file__).parent))
    from sharded_run import _points

    out = tmp_path / "nb.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(Path(__file__).parent / "sharded_run.py"), str(world), str(_free_port()), str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    dists, idx = torch.load(out)
    ref = knn(_points(), 10)
    assert torch.equal(idx, ref.indices) and torch.equal(dists, ref.distances)
    dists, idx = torch.load(str(out) + ".split")  # knn_split: the rows split over the ranks, gathered on each
    assert torch.equal(idx, ref.indices) and torch.equal(dists, ref.distances)


def test_without_a_process_group_it_is_knn():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(knn_sharded(x, 5).indices, knn(x, 5).indices)
