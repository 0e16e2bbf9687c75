"""GeometryCallback / PullbackCallback in a real transformers.Trainer (issue 12): tiny model, CPU, a few steps."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TinyGPT, loader, token_data
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from lightning_geom.hf import GeometryCallback, PullbackCallback


class _DS(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data["input_ids"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.data.items()}


def _lm_collate(items):
    ids = torch.stack([it["input_ids"] for it in items])
    return {"input_ids": ids, "attention_mask": torch.stack([it["attention_mask"] for it in items]), "labels": ids}


def _trainer(tmp_path, callbacks, *, steps=6, report_to="none", resume_dir=None, **kw):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    args = TrainingArguments(
        output_dir=str(resume_dir or tmp_path / "out"), max_steps=steps, per_device_train_batch_size=16, logging_steps=100,
        save_steps=kw.pop("save_steps", 1000), report_to=report_to, use_cpu=True, disable_tqdm=True, seed=0,
        **kw,
    )
    data = token_data(256)
    return Trainer(model=model, args=args, train_dataset=_DS(data), data_collator=_lm_collate, callbacks=callbacks)


def _probe():
    d = token_data(160, seed=1)
    return {"input_ids": d["input_ids"], "attention_mask": d["attention_mask"], "labels": d["labels"]}


def _geometry_keys(history):
    return {k for rec in history for k in rec if k.startswith("geometry/")}


def test_same_keys_as_the_lightning_monitor_in_log_history(tmp_path):
    cb = GeometryCallback(probe=_probe(), every_n_steps=4, range_max=16, figure_every=0)
    tr = _trainer(tmp_path, [cb])
    tr.train()
    steps = [r["step"] for r in cb.history]
    assert steps == [0, 1, 2, 4, 6]  # start, log-spaced, every 4, end
    logged = [r for r in tr.state.log_history if any(k.startswith("geometry/") for k in r)]
    assert [r["step"] for r in logged] == steps
    # the Lightning monitor on the same probe and settings logs the same key set
    import lightning as L
    from test_monitor import RecordingLogger

    from lightning_geom.callbacks import GeometryMonitor

    rec = RecordingLogger()
    mon = GeometryMonitor(probe=_probe(), every_n_steps=4, range_max=16, figure_every=0, output_dir=str(tmp_path / "pl"))
    L.Trainer(max_steps=6, callbacks=[mon], logger=rec, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(TinyGPT(), loader(token_data(256), shuffle=True))
    pl_keys = {k for _, m in rec.calls for k in m if not k.startswith("geometry/time/")}
    hf_keys = {k for k in _geometry_keys(logged) if not k.startswith("geometry/time/")}
    variable = ("geometry/phase/peak2_layer", "geometry/phase/change_point", "geometry/phase/jump", "geometry/phase/high_id")  # profile-dependent
    assert {k for k in hf_keys if not k.startswith(variable)} == {k for k in pl_keys if not k.startswith(variable)}
    out = tmp_path / "out" / "geometry"
    assert [r["step"] for r in json.loads((out / "geometry_history.json").read_text())] == steps
    assert {"id_profile.png", "id_scale_map.png"} <= {p.name for p in out.iterdir()}


def test_resume_from_a_trainer_checkpoint_continues_the_history(tmp_path):
    cb = GeometryCallback(probe=_probe(), every_n_steps=3, range_max=16, figure_every=0)
    _trainer(tmp_path, [cb], steps=3, save_steps=3).train()
    assert [r["step"] for r in cb.history] == [0, 1, 2, 3]
    state = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    assert "GeometryCallback" in state["stateful_callbacks"]
    cb2 = GeometryCallback(probe=_probe(), every_n_steps=3, range_max=16, figure_every=0)  # a fresh process would do this
    cb.__dict__["history"] = []  # the old instance is gone in a new process; make sure nothing leaks from it
    tr = _trainer(tmp_path, [cb2], steps=6, save_steps=1000)
    tr.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    live = next(c for c in tr.callback_handler.callbacks if isinstance(c, GeometryCallback))
    assert [r["step"] for r in live.history] == [0, 1, 2, 3, 6]  # no gap, no duplicate
    assert [r["step"] for r in cb2.history] == [0, 1, 2, 3, 6]  # the user's handle stays live
    assert live.probe is not None and live._probe_id == cb2._probe_id


def test_a_failing_probe_warns_and_training_finishes(tmp_path):
    bad = {"input_ids": torch.full((40, 12), 999), "attention_mask": torch.ones(40, 12, dtype=torch.long)}  # ids out of range
    cb = GeometryCallback(probe=bad, every_n_steps=2, range_max=16, figure_every=0)
    tr = _trainer(tmp_path, [cb], steps=2)
    with pytest.warns(UserWarning, match="GeometryCallback skipped step"):
        tr.train()
    assert tr.state.global_step == 2 and cb.history == []


def test_tensorboard_gets_scalars_and_figures(tmp_path):
    pytest.importorskip("tensorboard")
    import os

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tmp_path / "tb")  # transformers 5: the writer's folder
    cb = GeometryCallback(probe=_probe(), every_n_steps=2, range_max=16, figure_every=1)
    pb = PullbackCallback(probe=_probe(), every_n_steps=2, log_spaced=False, num_samples=8, figure_every=0)
    try:
        _trainer(tmp_path, [cb, pb], steps=2, report_to="tensorboard").train()
    finally:
        del os.environ["TENSORBOARD_LOGGING_DIR"]
    files = list((tmp_path / "tb").rglob("events.out.tfevents*"))
    assert files
    tags = {"scalars": set(), "images": set()}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        tags["scalars"] |= set(acc.Tags()["scalars"])
        tags["images"] |= set(acc.Tags()["images"])
    # transformers' integrations prefix training logs with "train/"
    assert any(t.startswith("train/geometry/id/layer_") for t in tags["scalars"]), tags
    assert any(t.startswith("train/pullback/top/layer_") for t in tags["scalars"])
    assert any(t.startswith("geometry/figures/") for t in tags["images"])


def test_wandb_offline_gets_figures_settings_and_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cb = GeometryCallback(probe=_probe(), every_n_steps=2, range_max=16, figure_every=1)
    _trainer(tmp_path, [cb], steps=2, report_to="wandb").train()
    import wandb

    wandb.finish()
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs, list(tmp_path.rglob("*"))[:20]
    images = [str(p.relative_to(runs[0])) for p in runs[0].rglob("*.png")]
    assert any("geometry/figures/id_profile" in n for n in images), images
    record = next(runs[0].glob("*.wandb")).read_bytes()  # the offline run's record log (config, history)
    assert b"geometry_monitor/probe_samples" in record  # the settings reached the W&B config
    assert b"geometry/id/layer_00" in record  # and the metrics its history
    assert b"geometry/charts/id" in record  # one multi-line chart per metric, every layer a line


def test_background_analysis_logs_each_record_at_its_own_step(tmp_path):
    sync = GeometryCallback(probe=_probe(), every_n_steps=4, range_max=16, figure_every=0, background=False)
    _trainer(tmp_path / "a", [sync]).train()
    bg = GeometryCallback(probe=_probe(), every_n_steps=4, range_max=16, figure_every=0, background=True)
    tr = _trainer(tmp_path / "b", [bg])
    tr.train()
    assert [r["step"] for r in bg.history] == [r["step"] for r in sync.history] == [0, 1, 2, 4, 6]
    for a, b in zip(sync.history, bg.history):
        assert [la["id"] for la in a["layers"]] == [lb["id"] for lb in b["layers"]]
    logged = [r for r in tr.state.log_history if any(k.startswith("geometry/") for k in r)]
    assert [r["step"] for r in logged] == [0, 1, 2, 4, 6]  # not the step at which the worker finished
    assert tr.state.global_step == 6
