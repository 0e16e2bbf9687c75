"""Issue 13: a training process killed with SIGKILL (no exception hook runs) and resumed into the same
folder ends with the same geometry records as an uninterrupted run: in geometry_history.json, in the
CSV metrics (over the run's version folders) and in TensorBoard, each step once."""

import csv
import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    from lightning_geom.cli import main

    kill_at = int(sys.argv[1])
    _init = L.Trainer.__init__

    class _Kill(L.Callback):  # SIGKILL: no on_exception, no finally, no flush
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def _with_kill(self, *args, callbacks=None, **kwargs):
        _init(self, *args, callbacks=[*(callbacks or []), _Kill()], **kwargs)

    if kill_at > 0:
        L.Trainer.__init__ = _with_kill
    sys.exit(main(sys.argv[2:]))
    """
)

ARGS = ["demo", "--layers", "2", "--width", "16", "--every-n-steps", "10", "--probe-samples", "96", "--steps", "40",
        "--no-report", "--no-pullback", "--no-progress"]


def _run(tmp_path, out, kill_at, *extra):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    return subprocess.run([sys.executable, str(script), str(kill_at), *ARGS, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600)


def _csv_steps(out):
    steps = []
    for f in sorted((out / "csv").glob("version_*/metrics.csv")):
        steps += [int(r["step"]) for r in csv.DictReader(f.open()) if r.get("geometry/id/layer_00")]
    return steps


def _tb_steps(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard" / "demo"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars("geometry/id/layer_00")]


def test_sigkill_then_resume_keeps_every_record(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert _run(tmp_path, whole, 0).returncode == 0
    killed = _run(tmp_path, broken, 25)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (broken / "checkpoints" / "last.ckpt").is_file()
    resumed = _run(tmp_path, broken, 0, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    want = [r["step"] for r in json.loads((whole / "geometry" / "geometry_history.json").read_text())]
    got = [r["step"] for r in json.loads((broken / "geometry" / "geometry_history.json").read_text())]
    assert got == want and want[-1] == 40
    assert sorted(set(_csv_steps(broken))) == sorted(set(_csv_steps(whole))) == want
    tb = _tb_steps(broken)
    assert sorted(tb) == want  # every step once: the re-measured one is not logged twice
