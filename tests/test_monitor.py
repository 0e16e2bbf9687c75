import json
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import DictDataset, PlainBlocks, TinyGPT, loader, plain_data, token_data
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lightning_geom.callbacks import GeometryMonitor, PullbackMonitor


class RecordingLogger(Logger):
    """A logger whose calls are asserted exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "rec"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        if any(k.startswith("geometry/") for k in metrics):
            self.calls.append((step, dict(metrics)))


def _trainer(tmp_path, monitor, *, steps=9, loggers=None, **kw):
    return L.Trainer(
        max_steps=steps,
        callbacks=[monitor, *kw.pop("callbacks", [])],
        logger=loggers if loggers is not None else RecordingLogger(),
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        **kw,
    )


@pytest.fixture
def data():
    return token_data(160)


def _monitor(data, tmp_path, **kw):
    kw.setdefault("every_n_steps", 4)
    kw.setdefault("range_max", 16)
    kw.setdefault("figure_every", 0)
    return GeometryMonitor(probe=data, num_samples=160, output_dir=str(tmp_path / "geo"), **kw)


@pytest.mark.parametrize("background", [False, True])
def test_schedule_keys_and_history(tmp_path, data, background):
    mon = _monitor(data, tmp_path, background=background)
    logger = RecordingLogger()
    trainer = _trainer(tmp_path, mon, loggers=logger)
    trainer.fit(TinyGPT(), loader(data, shuffle=True))
    steps = [r["step"] for r in mon.history]
    assert steps == [0, 1, 2, 4, 8, 9]  # start, log-spaced, every 4, end
    assert [s for s, _ in logger.calls] == steps
    keys = set(logger.calls[-1][1])
    expected = {f"geometry/{k}/layer_{i:02d}" for k in ("id", "twonn", "label_overlap") for i in range(4)}
    expected |= {f"geometry/overlap_next/layer_{i:02d}" for i in range(3)}
    expected |= {f"geometry/phase/{k}" for k in ("peak1_layer", "min_layer", "depth", "rebound", "is_three_phase")}
    if mon.history[-1]["phase"]["peak2_layer"] is not None:  # no second peak: no key (never the minimum twice)
        expected.add("geometry/phase/peak2_layer")
    expected |= {f"geometry/time/{k}_s" for k in ("capture", "geometry", "total", "blocking")}  # what each checkpoint cost
    expected |= {"geometry/id_n1", "geometry/phase/n_change_points"}
    n_cp = mon.history[-1]["phase"]["n_change_points"]
    expected |= {f"geometry/phase/{k}_{i}" for k in ("change_point", "jump") for i in range(1, n_cp + 1)}
    if mon.history[-1]["phase"]["high_id_onset"] is not None:
        expected |= {"geometry/phase/high_id_onset", "geometry/phase/high_id_height"}
    assert keys == expected
    assert [t["step"] for t in mon.timings] == steps and all(t["total_s"] > 0 for t in mon.timings)
    cost = mon.cost()  # the run's account: every checkpoint's blocking time and the final figures
    assert cost["checkpoints"] == len(steps) and cost["figures_s"] >= mon.final_figures_s > 0
    assert cost["blocking_s"] == pytest.approx(sum(t["blocking_s"] for t in mon.timings) + mon.final_figures_s)
    last = mon.history[-1]
    assert last["n_samples"] == 160 and len(last["layers"]) == 4
    assert all(0 <= layer["label_overlap"] <= 1 for layer in last["layers"])
    assert len(last["layers"][0]["gride"]["dims"]) == 4  # n1 = 1, 2, 4, 8 with range_max = 16
    files = {p.name for p in (tmp_path / "geo").iterdir()}
    assert {"geometry_history.json", "geometry_history.csv", "id_profile.png", "id_heatmap.png", "overlaps.png"} <= files
    saved = json.loads((tmp_path / "geo" / "geometry_history.json").read_text())
    assert [r["step"] for r in saved] == steps


def test_matches_the_functional_core(tmp_path, data):
    """The logged ID of a layer is GRIDE on the mean-pooled hidden state, computed by hand."""
    from lightning_geom.capture import capture_representations
    from lightning_geom.geometry import gride, label_overlap

    mon = _monitor(data, tmp_path, id_n1=2, log_spaced=False, at_fit_end=False)
    model = TinyGPT()
    trainer = _trainer(tmp_path, mon, steps=1)
    trainer.fit(model, loader(data))
    # the start-of-fit record is the untrained model; recompute from a fresh copy with the same weights
    first = mon.history[0]
    torch.manual_seed(0)
    fresh = TinyGPT()
    trainer2 = _trainer(tmp_path, _monitor(data, tmp_path, id_n1=2, log_spaced=False, at_fit_end=False), steps=1)
    reps = capture_representations(fresh, [data])
    x = reps.features[2]
    rec = trainer2  # noqa: F841 - only for symmetry
    mon2 = _monitor(data, tmp_path, id_n1=2, log_spaced=False, at_fit_end=False)
    t3 = _trainer(tmp_path, mon2, steps=1)
    t3.fit(fresh, loader(data))
    layer = mon2.history[0]["layers"][2]
    assert layer["id"] == pytest.approx(gride(x, n1=2, n2=4).dim, rel=1e-9)
    assert layer["label_overlap"] == pytest.approx(label_overlap(x, data["labels"], k=10), abs=1e-12)
    assert first["layers"][2]["id_n1"] == 2


def test_csv_logger_gets_the_scalars(tmp_path, data):
    mon = _monitor(data, tmp_path)
    csv = CSVLogger(tmp_path, name="csv")
    _trainer(tmp_path, mon, loggers=[csv], steps=4).fit(TinyGPT(), loader(data))
    text = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert "geometry/id/layer_00" in header and "geometry/label_overlap/layer_03" in header


def test_tensorboard_scalars_figures_and_layout(tmp_path, data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mon = _monitor(data, tmp_path, figure_every=2)
    tb = TensorBoardLogger(tmp_path, name="tb")
    _trainer(tmp_path, mon, loggers=[tb], steps=4).fit(TinyGPT(), loader(data))
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "geometry/id/layer_02" in tags["scalars"]
    assert [e.step for e in acc.Scalars("geometry/id/layer_02")] == [0, 1, 2, 4]
    assert {"geometry/figures/id_profile", "geometry/figures/id_heatmap", "geometry/figures/overlaps"} <= set(tags["images"])
    # one rendering of each figure goes to the dashboard and to disk: the same pixels
    import io

    import numpy as np
    from PIL import Image

    shown = np.asarray(Image.open(io.BytesIO(acc.Images("geometry/figures/id_profile")[-1].encoded_image_string)).convert("RGB"))
    saved = np.asarray(Image.open(tmp_path / "geo" / "id_profile.png").convert("RGB"))
    assert shown.shape == saved.shape == (420, 700, 3) and np.array_equal(shown, saved)


def test_wandb_offline(tmp_path, data, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    mon = _monitor(data, tmp_path)
    wb = WandbLogger(project="lg-test", save_dir=str(tmp_path), offline=True)
    _trainer(tmp_path, mon, loggers=[wb], steps=2).fit(TinyGPT(), loader(data))
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    wb.experiment.finish()
    import wandb

    wandb.teardown()  # the wandb singleton keeps this test's WANDB_DIR; later runs must not inherit it
    media = list(run_dir.rglob("*.png"))
    names = {p.name.split("_")[0] for p in media}
    assert any("id" in p.name for p in media), names
    assert list(run_dir.rglob("*.table.json"))  # the (step, layer, ...) table
    record = next(run_dir.glob("*.wandb")).read_bytes()
    assert b"geometry/charts/id" in record and b"geometry/charts/label_overlap" in record  # multi-line charts, no clicking
    assert b"geometry/charts/profile" in record  # ID against layer, one line per checkpoint
    assert b"geometry_monitor/probe_samples" in record  # the settings in the run's config


def test_resume_continues_without_gaps_or_duplicates(tmp_path, data):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=5)
    mon = _monitor(data, tmp_path)
    _trainer(tmp_path, mon, steps=5, callbacks=[ckpt], enable_checkpointing=True).fit(TinyGPT(), loader(data, shuffle=True))
    assert [r["step"] for r in mon.history] == [0, 1, 2, 4, 5]
    mon2 = _monitor(data, tmp_path)
    t2 = _trainer(tmp_path, mon2, steps=12, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck2")])
    t2.fit(TinyGPT(), loader(data, shuffle=True), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert [r["step"] for r in mon2.history] == [0, 1, 2, 4, 5, 8, 12]
    assert mon2.state_key in torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)["callbacks"]


def test_resume_after_a_mid_epoch_stop_keeps_one_history_file(tmp_path, data, recwarn):
    """A fit stopped by max_steps mid-epoch records its last step with the epoch counter advanced; the
    resumed fit measures that step again in the old epoch: the same record, not another run's file."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=3)
    _trainer(tmp_path, _monitor(data, tmp_path), steps=3, callbacks=[ckpt], enable_checkpointing=True).fit(TinyGPT(), loader(data))
    mon2 = _monitor(data, tmp_path)
    _trainer(tmp_path, mon2, steps=6).fit(TinyGPT(), loader(data), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert [r["step"] for r in mon2.history] == [0, 1, 2, 3, 4, 6]
    assert sorted(p.name for p in (tmp_path / "geo").glob("*.json")) == ["geometry_history.json"]
    assert not [w for w in recwarn if "holds records this run does not" in str(w.message)]


def test_two_monitors_have_distinct_state_keys(data):
    a = GeometryMonitor(probe=data, every_n_steps=4)
    b = GeometryMonitor(probe=data, every_n_steps=4, normalize="layer_norm")
    assert a.state_key != b.state_key


def test_two_named_monitors_of_one_kind_log_save_and_resume_apart(tmp_path, data):
    """A train and a validation probe: each monitor's `name` prefixes its keys, names its folder and its
    checkpoint state; an unnamed monitor keeps the state key older checkpoints hold."""
    other = token_data(160, seed=1)
    assert "name" not in GeometryMonitor(probe=data).state_key
    with pytest.raises(ValueError, match="Expected `name`"):
        GeometryMonitor(probe=data, name="a/b")

    def pair():
        return [
            GeometryMonitor(probe=data, num_samples=160, every_n_steps=4, range_max=16, figure_every=0, name="train_geo"),
            GeometryMonitor(probe=other, num_samples=160, every_n_steps=4, range_max=16, figure_every=0, name="val_geo"),
        ]

    first, ck = pair(), ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=4)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = _trainer(tmp_path, first[0], steps=4, callbacks=[first[1], ck], enable_checkpointing=True, loggers=logger)
    trainer.fit(TinyGPT(), loader(data))
    assert [r["step"] for r in first[0].history] == [r["step"] for r in first[1].history] == [0, 1, 2, 4]
    assert first[0].history[-1]["layers"][1]["id"] != first[1].history[-1]["layers"][1]["id"]  # two probes
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_geo/id/layer_01", "val_geo/id/layer_01"} <= set(header)
    assert not any(k.startswith("geometry/") for k in header)
    for name in ("train_geo", "val_geo"):
        assert (Path(logger.log_dir) / name / f"{name}_history.json").is_file()
    second = pair()
    _trainer(tmp_path, second[0], steps=8, callbacks=[second[1]]).fit(TinyGPT(), loader(data), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert [r["step"] for r in second[0].history] == [r["step"] for r in second[1].history] == [0, 1, 2, 4, 8]
    assert second[1].history[3] == first[1].history[3]  # each restored its own state


def test_nan_layer_warns_names_layer_and_training_goes_on(tmp_path, data):
    mon = _monitor(data, tmp_path, log_spaced=False)
    with pytest.warns(UserWarning, match=r"layer_0[23]: ValueError: .*NaN or Inf"):
        _trainer(tmp_path, mon, steps=4).fit(TinyGPT(nan_after_layer=1), loader(data))
    rec = mon.history[-1]
    assert rec["layers"][1]["error"] is None and rec["layers"][2]["error"]
    assert rec["step"] == 4  # training finished


def test_too_few_samples_warns(tmp_path, data):
    mon = GeometryMonitor(probe=data, num_samples=8, every_n_steps=4, log_spaced=False, figure_every=0, output_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="8 probe samples are too few"):
        _trainer(tmp_path, mon, steps=2).fit(TinyGPT(), loader(data))


def test_wrong_label_length_skips_label_overlap(tmp_path, data):
    bad = dict(data, labels=data["labels"][:100])
    mon = _monitor(bad, tmp_path, log_spaced=False, at_fit_end=False)
    with pytest.warns(UserWarning, match="label overlap skipped"):
        _trainer(tmp_path, mon, steps=1).fit(TinyGPT(), loader(data))
    assert mon.history[0]["layers"][0]["label_overlap"] is None


def test_single_class_probe_leaves_label_overlap_out_with_one_warning(tmp_path, data):
    one = dict(data, labels=torch.zeros_like(data["labels"]))
    mon = _monitor(one, tmp_path, every_n_steps=2, log_spaced=False, at_fit_end=False)
    with pytest.warns(UserWarning, match="same label") as caught:
        _trainer(tmp_path, mon, steps=4).fit(TinyGPT(), loader(data))
    assert len(mon.history) == 3 and all(r["layers"][0]["label_overlap"] is None for r in mon.history)
    assert sum("same label" in str(w.message) for w in caught) == 1


def test_regression_targets_leave_label_overlap_out_with_one_warning(tmp_path, data):
    scores = dict(data, labels=torch.rand(data["labels"].shape[0]))  # e.g. similarity scores, not classes
    mon = _monitor(scores, tmp_path, every_n_steps=2, log_spaced=False, at_fit_end=False)
    with pytest.warns(UserWarning, match="regression targets") as caught:
        _trainer(tmp_path, mon, steps=4).fit(TinyGPT(), loader(data))
    assert all(r["layers"][0]["label_overlap"] is None for r in mon.history)
    assert sum("regression targets" in str(w.message) for w in caught) == 1


def test_on_error_raise(tmp_path, data):
    mon = GeometryMonitor(probe=data, layers=["no.such.*"], on_error="raise", every_n_steps=4)
    with pytest.raises(ValueError, match="matches no submodule"):
        _trainer(tmp_path, mon, steps=1).fit(TinyGPT(), loader(data))


def test_on_error_warn_keeps_training(tmp_path, data):
    mon = GeometryMonitor(probe=data, layers=["no.such.*"], every_n_steps=4)
    with pytest.warns(UserWarning, match="skipped step 0: .*matches no submodule"):
        trainer = _trainer(tmp_path, mon, steps=3)
        trainer.fit(TinyGPT(), loader(data))
    assert trainer.global_step == 3 and mon.history == []


def test_probe_defaults_to_val_loader(tmp_path, data):
    class WithVal(TinyGPT):
        def val_dataloader(self):
            return loader(data, batch_size=50)

        def validation_step(self, batch, i):
            pass

    mon = GeometryMonitor(num_samples=120, every_n_steps=2, log_spaced=False, at_fit_end=False, range_max=8, figure_every=0, output_dir=str(tmp_path))
    _trainer(tmp_path, mon, steps=2, limit_val_batches=1).fit(WithVal(), loader(data))
    assert mon.history[0]["n_samples"] == 120


def test_a_shuffling_probe_loader_is_read_in_dataset_order():
    """A `shuffle=True` loader (a validation loader, or the probe given) gave another probe after each
    resume (the random state differs): the history was dropped as 'another probe'. Read in order now."""
    from lightning_geom.monitoring.probe import probe_batches, probe_fingerprint

    data = token_data(64)
    shuffled = torch.utils.data.DataLoader(DictDataset(data), batch_size=16, shuffle=True)
    torch.manual_seed(1)
    first = probe_batches(shuffled, num_samples=40, batch_size=8)
    torch.manual_seed(2)
    again = probe_batches(shuffled, num_samples=40, batch_size=8)
    assert probe_fingerprint(first) == probe_fingerprint(again)
    assert torch.equal(torch.cat([b["input_ids"] for b in first]), data["input_ids"][:40])
    subset = torch.utils.data.DataLoader(DictDataset(data), batch_size=16, sampler=torch.utils.data.SubsetRandomSampler([5, 3, 9, 7]))
    assert torch.equal(torch.cat([b["input_ids"] for b in probe_batches(subset, num_samples=40, batch_size=8)]), data["input_ids"][[5, 3, 9, 7]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, "`every_n_steps` to be None or a positive integer"),
        ({"every_n_epochs": -1}, "`every_n_epochs` to be None or a positive integer"),
        ({"on_error": "ignore"}, "one of 'warn', 'raise'"),
        ({"pooling": "max"}, "`pooling` to be one of"),
        ({"normalize": "rms"}, "`normalize` to be None or 'layer_norm'"),
        ({"id_n1": 0}, "`id_n1` to be 'auto' or a positive integer"),
        ({"num_samples": 0}, "`num_samples` to be a positive integer"),
        ({"figure_every": -2}, "`figure_every` to be a non-negative integer"),
    ],
)
def test_constructor_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometryMonitor(**kwargs)


def test_schedule_predicate():
    m = GeometryMonitor(every_n_steps=100)
    assert [s for s in range(0, 450) if m.is_due(s)] == [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400]
    m = GeometryMonitor(every_n_steps=10, log_spaced=False)
    assert [s for s in range(0, 35) if m.is_due(s)] == [0, 10, 20, 30]
    m = GeometryMonitor(every_n_steps=100, log_spaced=3)  # the doubling from a later first step
    assert [s for s in range(0, 250) if m.is_due(s)] == [0, 3, 6, 12, 24, 48, 96, 100, 200]
    m = GeometryMonitor(every_n_steps=None, log_spaced=4)
    assert [s for s in range(0, 70) if m.is_due(s)] == [0, 4, 8, 16, 32, 64]
    for bad in (-1, 2.5, "4"):
        with pytest.raises(ValueError, match="log_spaced"):
            GeometryMonitor(log_spaced=bad)


def test_history_files_are_written_atomically(tmp_path, monkeypatch):
    """A failure while writing (full disk, kill) leaves the previous complete file, never a truncated one."""
    import json
    import os

    from lightning_geom.report.history import save_history

    hist = [{"step": 0, "epoch": 0, "layers": [{"index": 0, "id": 3.0}], "phase": None}]
    save_history(hist, tmp_path)
    good = (tmp_path / "geometry_history.json").read_text()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_history(hist * 3, tmp_path)
    assert (tmp_path / "geometry_history.json").read_text() == good
    assert json.loads(good)[0]["step"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left behind


def test_a_crash_in_training_flushes_the_history(tmp_path, data):
    class Crash(TinyGPT):
        def training_step(self, batch, batch_idx):
            if self.global_step == 5:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    mon = _monitor(data, tmp_path, figure_every=0)
    trainer = _trainer(tmp_path, mon)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Crash(), loader(data, shuffle=True))
    import json

    saved = json.loads((tmp_path / "geo" / "geometry_history.json").read_text())
    assert [r["step"] for r in saved] == [r["step"] for r in mon.history] == [0, 1, 2, 4]


@pytest.mark.parametrize(
    ("kw", "model_kw", "match"),
    [
        ({}, {"nan_after_layer": 1}, "NaN or Inf"),  # NaN features in one layer
        ({"label_k": 200}, {}, "too few"),  # fewer probe samples (160) than neighbours
    ],
)
def test_on_error_raise_really_raises(tmp_path, data, kw, model_kw, match):
    mon = _monitor(data, tmp_path, on_error="raise", **kw)
    trainer = _trainer(tmp_path, mon, steps=2)
    with pytest.raises(ValueError, match=match):
        trainer.fit(TinyGPT(**model_kw), loader(data, shuffle=True))


def test_on_error_warn_keeps_training_and_names_the_layer(tmp_path, data):
    mon = _monitor(data, tmp_path)
    trainer = _trainer(tmp_path, mon, steps=2)
    with pytest.warns(UserWarning, match=r"layer_02(, layer_\d+)*: ValueError: .*NaN or Inf"):
        trainer.fit(TinyGPT(nan_after_layer=1), loader(data, shuffle=True))
    assert trainer.global_step == 2
    assert mon.history and mon.history[0]["layers"][2]["error"]


def test_auto_scale_is_chosen_once_and_kept(tmp_path, data):
    """Issue 11: the logged ID must not jump with a re-chosen GRIDE scale."""
    mon = _monitor(data, tmp_path)
    trainer = _trainer(tmp_path, mon)
    trainer.fit(TinyGPT(), loader(data, shuffle=True))
    used = {r["id_n1"] for r in mon.history}
    assert len(used) == 1 and used == {mon.state_dict()["id_n1"]}
    assert all(layer["id_n1"] == mon.history[0]["id_n1"] for r in mon.history for layer in r["layers"])
    fresh = _monitor(data, tmp_path)
    fresh.load_state_dict(mon.state_dict())
    assert fresh._settings().id_n1 == mon.history[0]["id_n1"]  # a resume keeps it


def _steps_in(path):
    import json

    return [r["step"] for r in json.loads(path.read_text())]


def test_resume_with_other_settings_keeps_the_old_history(tmp_path, data):
    """Issue 13: a changed state key used to overwrite geometry_history.json with the new records only."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=5)
    mon = _monitor(data, tmp_path, figure_every=0)
    _trainer(tmp_path, mon, steps=5, callbacks=[ckpt], enable_checkpointing=True).fit(TinyGPT(), loader(data, shuffle=True))
    geo = tmp_path / "geo"
    assert _steps_in(geo / "geometry_history.json") == [0, 1, 2, 4, 5]  # written at every checkpoint
    mon2 = _monitor(data, tmp_path, figure_every=0, every_n_steps=3)  # another state key: nothing restored
    t2 = _trainer(tmp_path, mon2, steps=7, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck2")])
    with pytest.warns(UserWarning, match=r"geometry_history\.1\.json"):
        t2.fit(TinyGPT(), loader(data, shuffle=True), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert _steps_in(geo / "geometry_history.json") == [0, 1, 2, 4, 5]  # kept
    assert _steps_in(geo / "geometry_history.1.json") == [r["step"] for r in mon2.history]


def test_resume_with_another_probe_starts_a_new_series(tmp_path, data):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=5)
    mon = _monitor(data, tmp_path, figure_every=0)
    _trainer(tmp_path, mon, steps=5, callbacks=[ckpt], enable_checkpointing=True).fit(TinyGPT(), loader(data, shuffle=True))
    other = {k: v.flip(0) for k, v in data.items()}  # same size, other samples first
    mon2 = GeometryMonitor(probe=other, num_samples=160, output_dir=str(tmp_path / "geo"), every_n_steps=4, figure_every=0)
    t2 = _trainer(tmp_path, mon2, steps=8, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck2")])
    with pytest.warns(UserWarning, match="probe set differs from the checkpoint's"):
        t2.fit(TinyGPT(), loader(data, shuffle=True), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert [r["step"] for r in mon2.history] == [5, 8]  # a new series, not mixed with the old one
    assert _steps_in(tmp_path / "geo" / "geometry_history.json") == [0, 1, 2, 4, 5]


def test_a_raising_logger_first_does_not_starve_the_others(tmp_path, data):
    class Broken(RecordingLogger):
        def log_metrics(self, metrics, step=None):
            if any(k.startswith("geometry/") for k in metrics):  # Lightning's own logging stays fine
                raise OSError("disk full")

    good = RecordingLogger()
    mon = _monitor(data, tmp_path, figure_every=0)
    _trainer(tmp_path, mon, steps=2, loggers=[Broken(), good]).fit(TinyGPT(), loader(data, shuffle=True))
    assert [s for s, _ in good.calls] == [r["step"] for r in mon.history] == [0, 1, 2]


def test_settings_reach_the_loggers_hyperparameters(tmp_path, data):
    """Issue 14: W&B config / TensorBoard HPARAMS / CSV hparams.yaml hold the monitor's settings."""
    class HP(RecordingLogger):
        params: dict = {}

        def log_hyperparams(self, params, *args, **kwargs):
            type(self).params = {**type(self).params, **dict(params)}

    lg = HP()
    mon = _monitor(data, tmp_path, figure_every=0)
    _trainer(tmp_path, mon, steps=2, loggers=lg).fit(TinyGPT(), loader(data, shuffle=True))
    p = HP.params
    assert p["geometry_monitor/probe_samples"] == 160 and p["geometry_monitor/pooling"] == "mean"
    assert p["geometry_monitor/id_n1"] == mon.history[0]["id_n1"]  # the scale actually used
    assert p["geometry_monitor/range_max"] == 16 and p["geometry_monitor/probe_id"].startswith("160:")


@pytest.mark.parametrize("background", [False, True])
def test_per_prompt_token_geometry(tmp_path, data, background):
    """Issue 10: tokens='per_prompt' logs the mean / spread of each prompt's token-cloud ID per layer,
    equal to the per-cloud estimators on the captured tokens (the token clouds are captured at the
    checkpoint and analysed in the worker thread in the background)."""
    from lightning_geom.analysis import token_geometry
    from lightning_geom.capture import capture_representations
    from lightning_geom.geometry import gride

    logger = RecordingLogger()
    mon = _monitor(
        data, tmp_path, tokens="per_prompt", token_prompts=16, token_k=4, log_spaced=False, at_fit_start=False, background=background
    )
    model = TinyGPT()
    _trainer(tmp_path, mon, steps=4, loggers=logger).fit(model, loader(data, shuffle=True))
    tok = mon.history[-1]["tokens"]
    assert len(tok["layers"]) == 4 and tok["layers"][0]["n_prompts"] + tok["dropped"] == 16
    keys = set(logger.calls[-1][1])
    assert {f"geometry/{k}/layer_{i:02d}" for k in ("token_id", "token_id_std", "token_twonn") for i in range(4)} <= keys
    # the recorded number equals GRIDE on each prompt's own token cloud
    batch = {k: v[:16] for k, v in data.items()}
    reps = capture_representations(model, [batch], pooling="tokens")
    recs, _ = token_geometry(reps.features, reps.lengths, k=4)
    n1 = recs[1]["token_id_n1"]
    per = [gride(reps.features[1][p, : int(reps.lengths[p])].double(), n1=n1, n2=2 * n1).dim for p in range(16) if reps.lengths[p] > 4]
    assert recs[1]["token_id"] == pytest.approx(sum(per) / len(per), rel=1e-6)
    assert tok["layers"][1]["token_id"] == pytest.approx(recs[1]["token_id"], rel=1e-6)


@pytest.mark.parametrize("background", [False, True])
def test_pooled_token_cloud_in_the_monitor(tmp_path, data, background):
    """tokens='both': the per-prompt record and the pooled cloud (the same prompts' tokens flattened,
    a seeded max_tokens subsample) whose ID equals the estimators on those tokens, logged per layer."""
    from lightning_geom.analysis import GeometrySettings, layer_geometry
    from lightning_geom.capture import capture_representations
    from lightning_geom.report.figures import all_figures

    logger = RecordingLogger()
    mon = _monitor(
        data, tmp_path, tokens="both", token_prompts=16, token_k=4, max_tokens=64, log_spaced=False, at_fit_start=False,
        background=background,
    )
    model = TinyGPT()
    _trainer(tmp_path, mon, steps=4, loggers=logger).fit(model, loader(data, shuffle=True))
    rec = mon.history[-1]
    cloud = rec["token_cloud"]
    assert rec["tokens"]["layers"] and cloud["n_tokens"] == 64 < cloud["available"] and len(cloud["layers"]) == 4
    keys = set(logger.calls[-1][1])
    assert {f"geometry/token_cloud_{k}/layer_{i:02d}" for k in ("id", "twonn") for i in range(4)} <= keys
    assert "geometry/time/token_cloud_s" in keys
    figures = all_figures(mon.history)  # the pooled cloud's profile over training beside the probe's
    assert "token_cloud_profile" in figures and "id_profile" in figures
    # the oracle: the same 64 tokens, captured and measured directly
    reps = capture_representations(model, [{k: v[:16] for k, v in data.items()}], pooling="tokens")
    valid = torch.arange(reps.features[0].shape[1]) < reps.lengths.unsqueeze(1)
    rows, cols = valid.nonzero(as_tuple=True)
    keep = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(0))[:64].sort().values
    assert cloud["available"] == rows.numel()
    x = reps.features[2][rows[keep], cols[keep]]
    direct, _ = layer_geometry(x, None, GeometrySettings(range_max=16, id_n1=cloud["layers"][2]["id_n1"]))
    assert cloud["layers"][2]["twonn"] == pytest.approx(direct["twonn"], rel=1e-5)
    assert cloud["layers"][2]["id"] == pytest.approx(direct["id"], rel=1e-5)


def test_the_monitor_s_pooled_cloud_drops_the_given_token_ids(tmp_path, data):
    """drop_token_ids (e.g. a tokenizer's special ids) leaves those tokens out of the pooled cloud."""
    ids = data["input_ids"][:16]
    lengths = data["attention_mask"][:16].sum(dim=1) if "attention_mask" in data else torch.full((16,), ids.shape[1])
    real = torch.arange(ids.shape[1]) < lengths.unsqueeze(1)
    common = int(torch.mode(ids[real]).values)
    mon = _monitor(
        data, tmp_path, tokens="pooled", token_prompts=16, max_tokens=4096, drop_token_ids=[common],
        log_spaced=False, at_fit_start=False,
    )
    _trainer(tmp_path, mon, steps=4).fit(TinyGPT(), loader(data, shuffle=True))
    cloud = mon.history[-1]["token_cloud"]
    assert cloud["available"] == cloud["n_tokens"] == int(real.sum() - (ids[real] == common).sum())
    assert mon.settings_dict()["drop_token_ids"] == [common]


def test_tokens_option_is_validated(data):
    with pytest.raises(ValueError, match="`tokens` to be None, 'per_prompt', 'pooled' or 'both'"):
        GeometryMonitor(probe=data, tokens="all")
    with pytest.raises(ValueError, match="`max_tokens` to be an integer >= 16"):
        GeometryMonitor(probe=data, tokens="pooled", max_tokens=3)


def test_a_resume_into_a_new_csv_folder_gets_the_restored_records(tmp_path, data):
    """Issue 13: the restored history reaches a CSV logger that lacks it (a new version folder), once."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=5)
    mon = _monitor(data, tmp_path)
    _trainer(tmp_path, mon, steps=5, callbacks=[ckpt], enable_checkpointing=True, loggers=CSVLogger(tmp_path, name="csv")).fit(
        TinyGPT(), loader(data, shuffle=True)
    )
    mon2 = _monitor(data, tmp_path)
    lg = CSVLogger(tmp_path, name="csv")  # version_1: starts empty
    t2 = _trainer(tmp_path, mon2, steps=8, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck2")], loggers=lg)
    t2.fit(TinyGPT(), loader(data, shuffle=True), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    rows = list(csv.DictReader((tmp_path / "csv" / "version_1" / "metrics.csv").open()))
    steps = [int(r["step"]) for r in rows if r.get("geometry/id/layer_00")]
    assert steps == [0, 1, 2, 4, 5, 8]  # the restored steps once, then the new one


def test_features_that_would_not_fit_are_refused_before_holding_them(tmp_path, data, monkeypatch):
    """Issue 13: the probe's features (every layer at once) are planned against free memory after
    the first batch: too large is one warning naming the sizes and the fix; training goes on."""
    import lightning_geom.monitoring.probe as probe_mod

    monkeypatch.setattr(probe_mod, "_free_bytes", lambda device: 10_000)  # 10 kB free
    mon = _monitor(data, tmp_path)
    with pytest.warns(UserWarning, match=r"need .* GiB on cpu.*fewer `num_samples`"):
        _trainer(tmp_path, mon, steps=2).fit(TinyGPT(), loader(data))
    assert mon.history == []


def _same_geometry(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for la, lb in zip(ra["layers"], rb["layers"]):
            for key in ("id", "twonn", "label_overlap", "overlap_next"):
                assert la.get(key) == lb.get(key), (ra["step"], key)


def test_background_analysis_runs_in_a_worker_and_equals_the_synchronous_one(tmp_path, data, monkeypatch):
    import threading

    from lightning_geom.monitoring.geometry import GeometryCore

    threads = []
    real = GeometryCore._analyse
    monkeypatch.setattr(GeometryCore, "_analyse", lambda self, *a: threads.append(threading.current_thread().name) or real(self, *a))
    runs = {}
    for background in (False, True):
        torch.manual_seed(0)
        mon = _monitor(data, tmp_path / str(background), background=background)
        logger = RecordingLogger()
        _trainer(tmp_path, mon, loggers=logger).fit(TinyGPT(), loader(data))
        runs[background] = (mon, logger)
    assert all("analysis" in name for name in threads[len(threads) // 2 :])  # the background run's analyses
    assert not any("analysis" in name for name in threads[: len(threads) // 2])
    sync, bg = runs[False][0], runs[True][0]
    _same_geometry(sync.history, bg.history)
    assert [s for s, _ in runs[True][1].calls] == [r["step"] for r in bg.history]  # each record logged once, at its own step
    assert all(t["blocking_s"] <= t["total_s"] + t.get("log_s", 0) + t.get("figures_s", 0) + 1.0 for t in bg.timings)
    assert bg._worker is None and bg._pending is None  # the worker is stopped at the end of fit


def test_background_figures_are_drawn_in_the_worker_and_shown_at_their_step(tmp_path, data, monkeypatch):
    """In the background the figures are drawn beside the training too (the worker thread), then sent
    to the dashboards with their checkpoint's step and written as PNG; their time is in `timings`."""
    import threading

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_geom.report import figures as F

    threads = []
    real = F.render
    monkeypatch.setattr(F, "render", lambda fig: threads.append(threading.current_thread().name) or real(fig))
    mon = _monitor(data, tmp_path, background=True, figure_every=2)
    tb = TensorBoardLogger(tmp_path, name="tb")
    _trainer(tmp_path, mon, loggers=[tb]).fit(TinyGPT(), loader(data))
    steps = [r["step"] for r in mon.history]
    drawn = steps[1::2]  # every second checkpoint, the last one among them
    assert drawn[-1] == steps[-1] and len(threads) == 4 * len(drawn)  # 4 figures each, none drawn twice
    assert all("analysis" in name for name in threads)
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("geometry/figures/id_profile")] == drawn
    assert all(t["figures_s"] > 0 for t in mon.timings if t["step"] in drawn)
    assert (tmp_path / "geo" / "overlaps.png").exists() and mon._drawing is None


def test_background_records_reach_checkpoints_and_survive_a_crash(tmp_path, data):
    class Crash(TinyGPT):
        def training_step(self, batch, batch_idx):
            if self.global_step == 6:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=4)
    mon = _monitor(data, tmp_path, background=True)
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, mon, callbacks=[ckpt], enable_checkpointing=True).fit(Crash(), loader(data))
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)["callbacks"][mon.state_key]
    assert [r["step"] for r in saved["history"]] == [0, 1, 2, 4]  # step 4's analysis was in flight when step 4 was saved
    on_disk = json.loads((tmp_path / "geo" / "geometry_history.json").read_text())
    assert [r["step"] for r in on_disk] == [r["step"] for r in mon.history] == [0, 1, 2, 4]


def test_background_failures_follow_on_error(tmp_path, data, monkeypatch):
    from lightning_geom.monitoring import geometry as geo

    def broken(*args, **kwargs):
        raise RuntimeError("geometry exploded")

    monkeypatch.setattr(geo, "profile_geometry", broken)
    mon = _monitor(data, tmp_path, background=True)
    with pytest.warns(UserWarning, match="skipped step 0: RuntimeError: geometry exploded") as caught:
        _trainer(tmp_path, mon).fit(TinyGPT(), loader(data))
    assert mon.history == []
    # every checkpoint failed the same way: counted in `failures`, warned once
    assert [f["step"] for f in mon.failures] == [0, 1, 2, 4, 8, 9] and {f["error"] for f in mon.failures} == {"RuntimeError: geometry exploded"}
    assert sum("geometry exploded" in str(w.message) for w in caught) == 1
    mon = _monitor(data, tmp_path, background=True, on_error="raise")
    with pytest.raises(RuntimeError, match="geometry exploded"):
        _trainer(tmp_path, mon).fit(TinyGPT(), loader(data))


def test_pullback_refuses_the_background():
    with pytest.raises(ValueError, match="cannot run beside training"):
        PullbackMonitor(background=True)


def test_background_auto_means_single_process_gpu_training(data):
    from pathlib import Path

    from lightning_geom.monitoring.core import Run

    def run_on(device):
        return Run(step=0, epoch=0, module=torch.nn.Identity(), device=torch.device(device), rank_zero=True, out_dir=Path("."), sink=None)

    auto, on, off = (GeometryMonitor(probe=data, background=b) for b in ("auto", True, False))
    assert auto._in_background(run_on("cuda")) and not auto._in_background(run_on("cpu"))
    assert on._in_background(run_on("cpu")) and not off._in_background(run_on("cuda"))
    # the figures follow the same rule, PullbackMonitor's too (its Jacobians stay synchronous)
    pull = PullbackMonitor(probe=data)
    assert pull._draws_in_background(run_on("cuda")) and not pull._in_background(run_on("cuda"))
    assert not pull._draws_in_background(run_on("cpu")) and not auto._draws_in_background(run_on("cpu"))
    assert not PullbackMonitor(probe=data, background=False)._draws_in_background(run_on("cuda"))
    with pytest.raises(ValueError, match="background"):
        GeometryMonitor(probe=data, background="yes")


def test_a_failure_that_holds_at_every_checkpoint_is_said_once(tmp_path, data):
    """A probe too small for k fails every layer at every checkpoint: one warning for the run, and
    every record still names the failure of each layer; labels of the wrong length likewise."""
    probe = {"input_ids": data["input_ids"][:5], "attention_mask": data["attention_mask"][:5], "labels": data["labels"][:3]}
    mon = GeometryMonitor(probe=probe, output_dir=str(tmp_path / "geo"))
    with pytest.warns(UserWarning) as caught:
        _trainer(tmp_path, mon, steps=4).fit(TinyGPT(), loader(data))
    said = [str(w.message) for w in caught if "GeometryMonitor" in str(w.message)]
    assert len(mon.history) >= 3
    assert sum("too few for k" in m for m in said) == 1 and sum("3 labels for 5 probe samples" in m for m in said) == 1, said
    assert all("too few for k" in layer["error"] for r in mon.history for layer in r["layers"])


def test_probe_kinds_taken_or_refused_up_front(tmp_path, data):
    """numpy arrays (and dicts of them) are taken as tensors; a path, a list of texts, texts in a dict and
    an output_dir that is a file are refused with what to pass instead."""
    import numpy as np

    from lightning_geom.monitoring.probe import probe_batches, probe_fingerprint

    as_np = {k: v.numpy() for k, v in data.items()}
    assert probe_fingerprint(probe_batches(as_np, num_samples=64, batch_size=32)) == probe_fingerprint(
        probe_batches(data, num_samples=64, batch_size=32)
    )
    first = probe_batches(np.zeros((10, 4)), num_samples=8, batch_size=4)[0]
    assert first.shape == (4, 4) and first.dtype == torch.float32  # float64 arrays in torch's default dtype
    kept = probe_batches({"x": torch.ones(4, 2), "flag": 3, "name": "probe"}, num_samples=4, batch_size=2)[0]
    assert kept["flag"] == 3 and kept["name"] == "probe"  # other keyword arguments as they are
    for bad in (["a text", "another"], "probe.jsonl", (["a text", "another"], [0, 1])):  # the pair: accepted, then failed at every checkpoint
        with pytest.raises(TypeError, match="tokenize texts first"):
            GeometryMonitor(probe=bad)
    with pytest.raises(TypeError, match="'text' is a list that is not numbers"):
        probe_batches({"text": ["a", "b"]}, num_samples=2, batch_size=2)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        GeometryMonitor(probe=data, output_dir=str(tmp_path / "file"))


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"probe": 5}, TypeError, "the number 5"),
        ({"probe": {}}, ValueError, "no keys"),
        ({"probe": {"input_ids": torch.zeros(10, 4, dtype=torch.long), "attention_mask": torch.ones(9, 4)}}, ValueError, "'attention_mask': 9"),
        ({"probe": torch.zeros(0, 4)}, ValueError, r"shape \(0, 4\)"),
        ({"layers": 3}, TypeError, "list of glob patterns"),
        ({"output_dir": 5}, TypeError, "folder path"),
        ({"at_fit_end": "no"}, TypeError, "`at_fit_end` to be True or False"),
        ({"model_attr": 1}, TypeError, "`model_attr` to be None or the name"),
        ({"label_key": 0}, TypeError, "`label_key` to be None or the batch key"),
    ],
)
def test_monitor_arguments_refused_up_front(data, kwargs, err, match):
    with pytest.raises(err, match=match):
        GeometryMonitor(**{"probe": data, **kwargs})


def test_misspelt_options_name_the_closest_one(data):
    from lightning_geom.hf import GeometryCallback

    with pytest.raises(TypeError, match=r"GeometryMonitor got an unexpected keyword argument 'out_dir' \(did you mean `output_dir`\?\)"):
        GeometryMonitor(probe=data, out_dir="x")
    with pytest.raises(TypeError, match=r"'every_n_step' \(did you mean `every_n_steps`\?\)"):
        PullbackMonitor(probe=data, every_n_step=3)
    with pytest.raises(TypeError, match=r"GeometryCallback .*'overlapk' \(did you mean `overlap_k`\?\)"):
        GeometryCallback(probe=data, overlapk=3)
    with pytest.raises(TypeError, match=r"'zzz'; its options: at_fit_end, "):
        GeometryMonitor(probe=data, zzz=1)


def test_pullback_position_must_be_an_index(data):
    with pytest.raises(ValueError, match="integer index"):
        PullbackMonitor(probe=data, position="middle")


@pytest.mark.parametrize("how", ["tuple", "fit_val_loader"])
def test_plain_pytorch_blocks_with_an_inputs_labels_tuple_or_the_fits_val_loader(tmp_path, how):
    """What a user of a plain PyTorch model writes: the monitor finds the repeated blocks itself, an
    (inputs, labels) tuple is one probe (not two batches), and without `probe=` the validation loader
    given to fit() is the probe from the first checkpoint on (before the validation loop loaded it)."""
    import warnings

    x, y = plain_data()
    ds = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(ds, batch_size=32)
    val = torch.utils.data.DataLoader(ds, batch_size=64)
    mon = GeometryMonitor(
        probe=(x, y) if how == "tuple" else None, every_n_steps=4, range_max=8, figure_every=0,
        label_k=5, output_dir=str(tmp_path / "geo"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a skipped checkpoint warns: none may
        warnings.filterwarnings("ignore", message=".*(workers|enable_nested_tensor|log_every_n_steps).*")
        trainer = L.Trainer(
            max_steps=8, callbacks=[mon], logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=1,
        )
        trainer.fit(PlainBlocks(), train, val)
    assert not mon.failures and [r["step"] for r in mon.history][0] == 0
    layers = mon.history[-1]["layers"]
    assert len(layers) == 3 and all(r["n_points"] == 192 for r in layers)
    assert all(0.0 <= r["label_overlap"] <= 1.0 for r in layers)  # the tuple's / loader's labels were read


def test_a_network_without_hidden_states_or_blocks_names_the_fix():
    from lightning_geom.capture import capture_representations

    net = torch.nn.Sequential()
    net.add_module("inp", torch.nn.Linear(4, 4))
    net.add_module("out", torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"no repeated blocks .* pass `layers=\[...\]`.*Some that exist: the top-level modules inp, out"):
        capture_representations(net, [torch.zeros(8, 4)])


def test_pullback_of_a_plain_pytorch_network_through_its_blocks(tmp_path):
    """PullbackMonitor on a network whose forward returns logits only: the blocks' outputs are the hidden
    states, and each block's spectrum equals the one of differentiating the rest of the network by hand."""
    from lightning_geom.capture import logits_and_hidden
    from lightning_geom.geometry.pullback import layer_spectra, pullback_spectrum

    torch.manual_seed(0)
    net = PlainBlocks().double().eval()
    x, y = plain_data(4)
    spectra = layer_spectra(lambda: logits_and_hidden(net, (x.double(), y)), output="probs")
    assert len(spectra) == 3
    with torch.no_grad():
        h = net.blocks[0](net.emb(x.double()))
    ref = pullback_spectrum(lambda z: net.head(net.blocks[2](net.blocks[1](z)).mean(1)), h, output="probs")
    torch.testing.assert_close(spectra[0].eigenvalues, ref.eigenvalues, rtol=1e-7, atol=1e-12)

    mon = PullbackMonitor(probe=(x, y), num_samples=4, every_n_steps=4, figure_every=0, output_dir=str(tmp_path / "pb"))
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*plain_data()), batch_size=32)
    L.Trainer(max_steps=4, callbacks=[mon], logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False).fit(PlainBlocks(), train)
    last = mon.history[-1]
    assert not mon.failures and last["step"] == 4 and len(last["layers"]) == 3


class RowDataset:
    """What a Hugging Face ``datasets.Dataset`` of tokenized texts looks like to us: map-style, one dict
    row at a time, token ids of different lengths, a text column beside them."""

    def __init__(self, n=96):
        g = torch.Generator().manual_seed(0)
        self.rows = [
            {"text": f"sample {i}", "input_ids": torch.randint(0, 64, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist(), "label": i % 3}
            for i in range(n)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_a_dataset_of_tokenized_rows_is_padded_into_batches(tmp_path):
    from lightning_geom.monitoring.probe import probe_batches

    ds = RowDataset()
    batches = probe_batches(ds, num_samples=80, batch_size=32)
    assert [b["input_ids"].shape[0] for b in batches] == [32, 32, 16]
    first = batches[0]
    lengths = [len(r["input_ids"]) for r in ds.rows[:32]]
    assert first["attention_mask"].sum(1).tolist() == lengths and "text" not in first
    assert first["label"].tolist() == [i % 3 for i in range(32)]
    mon = GeometryMonitor(probe=ds, num_samples=96, every_n_steps=4, range_max=16, figure_every=0, output_dir=str(tmp_path / "geo"))
    _trainer(tmp_path, mon, steps=4).fit(TinyGPT(), loader(token_data(64)))
    assert not mon.failures and mon.history[-1]["n_samples"] == 96
    assert mon.history[-1]["layers"][1]["label_overlap"] is not None


def test_a_list_of_samples_is_collated_not_read_as_batches():
    """``[dataset[i] for i in range(n)]`` (dict rows with a 0-d label or 1-d token ids, or (x, y) pairs)
    is a list of samples: collated into batches (read as batches, a row's 0-d label was an IndexError and
    a pair's (D,) features were taken as D samples). A list of real batches stays one."""
    from lightning_geom.monitoring.probe import batch_len, probe_batches

    ds = RowDataset(40)
    rows = [ds[i] for i in range(40)]
    batches = probe_batches(rows, num_samples=40, batch_size=16)
    reference = probe_batches(ds, num_samples=40, batch_size=16)
    assert [batch_len(b) for b in batches] == [16, 16, 8]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["label"], b["label"]) for a, b in zip(batches, reference))
    no_label = probe_batches([{"input_ids": r["input_ids"]} for r in rows], num_samples=40, batch_size=16)
    assert no_label[0]["attention_mask"].sum(1).tolist() == [len(r["input_ids"]) for r in rows[:16]]
    x, y = plain_data()
    for pairs in ([(x[i], y[i]) for i in range(40)], [(x[i].numpy(), int(y[i])) for i in range(40)]):
        got = probe_batches(pairs, num_samples=40, batch_size=16)
        assert [batch_len(b) for b in got] == [16, 16, 8]
        assert torch.equal(torch.cat([b[0] for b in got]), x[:40]) and torch.equal(torch.cat([b[1] for b in got]), y[:40])
    as_batches = probe_batches([(x[:16], y[:16]), (x[16:40], y[16:40])], num_samples=40, batch_size=16)
    assert [batch_len(b) for b in as_batches] == [16, 24]


def test_rows_of_untokenized_texts_are_refused_when_the_monitor_is_made():
    """An untokenized dataset (rows of {"text", "label"}, (text, label) pairs, a torch Dataset of such
    rows) as the probe: refused with the fix at construction (was a batch of labels only, failing at
    every checkpoint)."""

    class Texts(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"sentence": "a text", "label": i % 2}

    for probe in ([{"text": "hello there", "label": 1}] * 8, [("hello", 1)] * 8, Texts()):
        with pytest.raises(TypeError, match="tokenize them first"):
            GeometryMonitor(probe=probe)
    GeometryMonitor(probe=[{"input_ids": [1, 2, 3], "label": 0}] * 8)  # tokenized rows are fine


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_a_model_kept_in_bf16_or_float64_reads_a_float32_probe(tmp_path, precision):
    """Lightning's "bf16-true" / "64-true" keep the model's weights in that dtype and convert the training
    batches; the probe (float32) reached the model as it was: "mat1 and mat2 must have the same dtype" at
    every checkpoint, for both monitors. Its floating inputs now take the model's dtype (labels keep theirs)."""
    from helpers import FlatBlocks

    from lightning_geom.callbacks import PullbackMonitor

    x = torch.randn(96, 6, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    geo = GeometryMonitor(probe=(x, y), every_n_steps=2, range_max=8, figure_every=0, output_dir=str(tmp_path / "g"))
    pb = PullbackMonitor(probe=(x[:4], y[:4]), every_n_steps=2, output_dir=str(tmp_path / "p"))
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    _trainer(tmp_path, geo, steps=2, callbacks=[pb], precision=precision).fit(FlatBlocks(), train)
    assert not geo.failures and not pb.failures
    assert geo.history[-1]["layers"][0]["label_overlap"] is not None and pb.history


def test_counts_as_users_pass_them(data):
    """numpy integers (from a config or an array's shape) are counts; bools and floats are not."""
    import numpy as np

    mon = GeometryMonitor(probe=data, every_n_steps=np.int64(50), num_samples=np.int32(100), range_max=np.int64(16), token_k=np.int64(4))
    assert (mon.every_n_steps, mon.num_samples, mon.settings.range_max, mon.token_k) == (50, 100, 16, 4)
    assert all(type(v) is int for v in (mon.every_n_steps, mon.num_samples, mon.settings.range_max, mon.token_k))
    for bad in ({"every_n_steps": True}, {"num_samples": 10.0}, {"figure_every": -1}, {"max_tokens": 8}):
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}`"):
            GeometryMonitor(probe=data, **bad)


def test_class_names_as_probe_labels_are_coded():
    """{"input_ids": ..., "labels": ["pos", "neg", ...]}: class names become codes (sorted names), texts
    under an input key are still refused with the fix."""
    import numpy as np

    from lightning_geom.monitoring.probe import probe_batches

    d = token_data(10)
    for labels in (["pos", "neg"] * 5, np.array(["pos", "neg"] * 5)):
        batches = probe_batches({"input_ids": d["input_ids"], "labels": labels}, num_samples=10, batch_size=4)
        assert torch.cat([b["labels"] for b in batches]).tolist() == [1, 0] * 5
    with pytest.raises(TypeError, match="tokenize texts first"):
        probe_batches({"input_ids": ["a b"] * 10}, num_samples=10, batch_size=4)


def test_repeated_tokens_of_a_probe_are_said_once_per_run(tmp_path, recwarn):
    """A layer where a prompt's tokens repeat exactly (a RoPE model's embedding layer) warned at every
    checkpoint (the analysis' catch_warnings resets Python's once-only registry); now once a run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    class TinyLlama(TinyGPT):
        def __init__(self):
            L.LightningModule.__init__(self)
            self.model = LlamaForCausalLM(LlamaConfig(vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32))
            self.nan_after_layer = None

    data = token_data(64, t=12, vocab=12)  # 12 tokens from 6 ids per prompt: exact copies at the embedding layer
    mon = _monitor(data, tmp_path, tokens="per_prompt", token_prompts=8, token_k=3, every_n_steps=1, log_spaced=False)
    _trainer(tmp_path, mon, steps=3).fit(TinyLlama(), loader(data, shuffle=True))
    assert len(mon.history) >= 3
    said = [w for w in recwarn if "exact copies of another token" in str(w.message)]
    assert len(said) == 1 and "said once per run" in str(said[0].message)


def test_named_monitors_sharing_a_folder_keep_their_own_figures(tmp_path, data):
    """Two named monitors given one output_dir: the history files carried the name, the figures did
    not (the second monitor's id_profile.png overwrote the first's)."""
    out = str(tmp_path / "shared")
    mons = [GeometryMonitor(probe=token_data(96, seed=s), num_samples=96, every_n_steps=2, range_max=16, figure_every=1,
                            output_dir=out, name=n, log_spaced=False) for s, n in ((0, "train"), (1, "val"))]
    _trainer(tmp_path, mons[0], steps=2, callbacks=[mons[1]]).fit(TinyGPT(), loader(data))
    files = {p.name for p in Path(out).iterdir()}
    assert {"train_id_profile.png", "val_id_profile.png", "train_history.json", "val_history.json"} <= files
    assert "id_profile.png" not in files
