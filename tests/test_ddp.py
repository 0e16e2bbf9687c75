import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "ddp_run.py"


def _run(out: Path, devices: int, *extra: str) -> list:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(SCRIPT), str(out), "--devices", str(devices), *extra], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict:
    """The one-process run both DDP layouts are compared with (run once: each run is a fresh interpreter)."""
    return _run(tmp_path_factory.mktemp("single") / "single.json", 1)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP test runs on Linux")
@pytest.mark.parametrize("split", [False, True, "val-probe"], ids=["layers-dealt", "knn-rows-split", "fit-val-loader"])
def test_ddp_two_cpu_processes_match_one_process(tmp_path, split, single_process):
    """Whole layers dealt to the ranks, or (issue 10: clouds too large for one device) every layer's
    kNN rows split over the ranks (knn_split): the same numbers as one process."""
    single_all = single_process
    extra = {False: [], True: ["--shard-above", "1"], "val-probe": ["--val-probe"]}[split]
    ddp_all = _run(tmp_path / "ddp.json", 2, *extra)  # val-probe: each rank reads the loader as given, not its shard
    single, ddp = single_all["geometry"], ddp_all["geometry"]
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [0]
    a, b = single[0], ddp[0]
    assert a["n_samples"] == b["n_samples"] == 150
    for la, lb in zip(a["layers"], b["layers"]):
        assert "10 of 150 points are exact copies" in la["warning"] and la["warning"] == lb["warning"]
        for key in ("id", "twonn", "label_overlap", "overlap_next"):
            if la[key] is None:
                assert lb[key] is None
            else:
                assert lb[key] == pytest.approx(la[key], rel=1e-5, abs=1e-6), key
    assert a["phase"] == b["phase"] or a["phase"]["peak1_layer"] == b["phase"]["peak1_layer"]

    # PullbackMonitor: 20 samples in batches of 8 (3 batches dealt over 2 ranks), same means
    pa, pb = single_all["pullback"][0], ddp_all["pullback"][0]
    assert pa["n_samples"] == pb["n_samples"] == 20
    for la, lb in zip(pa["layers"], pb["layers"]):
        for key in ("top", "trace", "effective_rank"):
            assert lb[key] == pytest.approx(la[key], rel=1e-5), key
