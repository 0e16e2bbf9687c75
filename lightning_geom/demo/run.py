"""`lightning-geom demo`: train the digits image-GPT with GeometryMonitor, offline, and write the figures."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Knobs of the demo (all have CLI flags)."""

    steps: int = 800
    n_layer: int = 12
    width: int = 64
    heads: int = 4
    lr: float = 3e-3
    batch_size: int = 64
    every_n_steps: int = 200
    probe_samples: int = 512  # the monitor's probe: 512 digits (its forward is ~2.5 training steps on 2 CPU cores)
    log_spaced: int = 4  # early checkpoints at 0, 4, 8, 16, ... (steps 1 and 2 barely move the initialisation)
    figure_every: int = 0  # dashboard figures at the end only (on 2 CPU cores a mid-run render costs ~0.5 % of training)
    pullback: bool = True  # also run PullbackMonitor (Fisher metric of the last pixel's prediction)
    report: bool = True  # end with the probe report of the final checkpoint
    normalize: str | None = None
    out: str = "demo_output"
    wandb: bool = False
    seed: int = 0
    progress: bool = True
    resume: bool = False  # continue from <out>/checkpoints/last.ckpt (loggers and history keep their records)
    world: str = "digits"  # or "text": a byte-level GPT on the standard library's source (demo/text.py)
    seq_len: int = 128  # text world: bytes per training window and per probe sentence
    accelerator: str = "auto"
    precision: str | None = None  # e.g. "bf16-mixed" (the GPU preset)


# Sizes per (preset, world), on top of DemoConfig's defaults. cpu: minutes on 2 CPU cores. gpu: a few minutes on one
# modern GPU in bf16 (issue 15: 12 x 384 text GPTs turn their profile into a mid-depth hump in a few
# thousand steps; 16 x 128 image-GPTs give peak - plateau - rise). Explicit flags override these.
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("cpu", "digits"): {},  # DemoConfig's defaults
    # text on 2 cores: 32 windows of 128 bytes a step keeps the whole command within 10 minutes on a
    # slower 2-core machine (64 a step took 14 min of training there, 7 min on a faster one)
    ("cpu", "text"): {"batch_size": 32},
    ("gpu", "digits"): {
        "steps": 4000, "n_layer": 16, "width": 128, "heads": 4, "batch_size": 128, "every_n_steps": 250, "probe_samples": 1797,
        "figure_every": 5, "accelerator": "gpu", "precision": "bf16-mixed",
    },
    ("gpu", "text"): {
        "steps": 3000, "n_layer": 12, "width": 384, "heads": 6, "batch_size": 64, "every_n_steps": 250, "probe_samples": 1000,
        "seq_len": 256, "lr": 1e-3, "figure_every": 5, "accelerator": "gpu", "precision": "bf16-mixed",
    },
}


def preset_config(preset: str, world: str, **overrides: Any) -> DemoConfig:
    """The :class:`DemoConfig` of a preset (``"cpu"`` or ``"gpu"``) for a world, with ``overrides``
    (None values ignored) on top.

    Raises:
        ValueError: an unknown preset / world, or the GPU preset on a machine without CUDA.
    """
    if (preset, world) not in PRESETS:
        raise ValueError(f"Expected --preset cpu or gpu and --world digits or text, but got {preset!r} / {world!r}.")
    values = dict(PRESETS[(preset, world)], world=world)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("accelerator") == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--preset gpu: no CUDA device here; use --preset cpu (the default) on this machine.")
    cfg = DemoConfig(**values)
    if cfg.width % cfg.heads:
        raise ValueError(
            f"--width {cfg.width}: the residual width must be a multiple of the {cfg.heads} attention heads "
            f"(e.g. --width {max(cfg.heads, cfg.width // cfg.heads * cfg.heads)})."
        )
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise ValueError(f"--out {cfg.out} is a file; pass a folder (it is made if missing).")
    return cfg


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Train, monitor, and return {"history", "pullback", "out", "seconds", "checkpoint", "csv", "cost"
    (each monitor's :meth:`~lightning_geom.monitoring.core.MonitorCore.cost`), "report"}."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from ..callbacks import GeometryMonitor, PullbackMonitor
    from . import DigitsDataModule, ImageGPT

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, verbose=False)
    if cfg.world == "text":
        from .text import TextDataModule, TextGPT

        dm = TextDataModule(seq_len=cfg.seq_len, batch_size=cfg.batch_size, cache_dir=str(out / "cache"), seed=cfg.seed)
        model = TextGPT(n_layer=cfg.n_layer, width=cfg.width, heads=cfg.heads, seq_len=cfg.seq_len, lr=cfg.lr, max_steps=cfg.steps)
    elif cfg.world == "digits":
        dm = DigitsDataModule(batch_size=cfg.batch_size, seed=cfg.seed)
        model = ImageGPT(n_layer=cfg.n_layer, width=cfg.width, heads=cfg.heads, lr=cfg.lr, max_steps=cfg.steps)
    else:
        raise ValueError(f"Expected `world` to be 'digits' or 'text', but got {cfg.world!r}.")
    # CSV: a new version_N per run, so a resumed or repeated run never truncates an earlier metrics.csv;
    # TensorBoard: one folder, new event files append to it
    loggers: list[Any] = [
        TensorBoardLogger(out, name="tensorboard", version="demo", default_hp_metric=False),  # a named run, no hp_metric card
        CSVLogger(out, name="csv"),
    ]
    ckpt_path = None
    if cfg.resume:
        last = out / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}; run without --resume first (same --out).")
        ckpt_path = str(last)
    if cfg.wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project="lightning-geom-demo", save_dir=str(out), offline=True))
    monitor = GeometryMonitor(
        probe=dm.probe_set(),
        num_samples=cfg.probe_samples,
        batch_size=128,  # CPU inference is fastest at ~128 sequences a batch here
        every_n_steps=cfg.every_n_steps,
        log_spaced=cfg.log_spaced,
        figure_every=cfg.figure_every,
        normalize=cfg.normalize,
        output_dir=str(out / "geometry"),
    )
    callbacks: list[Any] = [monitor]
    if cfg.pullback:
        callbacks.append(
            PullbackMonitor(
                # text: 8 unpadded corpus windows (the last position is a real byte), the top-16 logits of 256
                probe=dm.pullback_probe(8) if cfg.world == "text" else dm.probe_set(),
                num_samples=8 if cfg.world == "text" else 32,
                batch_size=8 if cfg.world == "text" else 16,
                top_logits=16 if cfg.world == "text" else None,
                output="fisher",
                every_n_steps=cfg.every_n_steps,
                log_spaced=False,
                figure_every=cfg.figure_every,
                output_dir=str(out / "geometry"),
            )
        )
    # a model checkpoint at every monitor checkpoint: a killed run resumes (--resume) from the last
    # measured step, and the monitors' state inside it carries their history up to that step
    ckpt = ModelCheckpoint(
        dirpath=out / "checkpoints", filename=("textgpt" if cfg.world == "text" else "igpt") + "-{step}", save_last=True,
        every_n_train_steps=cfg.every_n_steps,
    )
    trainer = L.Trainer(
        max_steps=cfg.steps,
        callbacks=[*callbacks, ckpt],
        logger=loggers,
        log_every_n_steps=10,
        val_check_interval=min(200, cfg.steps),
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_progress_bar=cfg.progress,
        max_epochs=-1,  # the run is step-bound (max_steps); a finite-looking epoch count would mislead
        enable_model_summary=False,
        default_root_dir=str(out),
        accelerator=cfg.accelerator,
        precision=cfg.precision,
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - t0
    pb = callbacks[1].history if cfg.pullback else []
    result = {
        "history": monitor.history,
        "pullback": pb,
        "out": out,
        "seconds": seconds,
        "checkpoint": ckpt.last_model_path,
        "csv": Path(loggers[1].log_dir) / "metrics.csv",
        "cost": {type(c).__name__: c.cost() for c in callbacks},
    }
    if cfg.report and ckpt.last_model_path:
        result["report"] = probe_checkpoint(ckpt.last_model_path, out / "report", probe=dm.probe_set() if cfg.world == "text" else None)
    return result


def probe_checkpoint(path: str, out: Path, probe: dict[str, Any] | None = None) -> Path:
    """The user journey's last step: the probe report of the final checkpoint (all 1797 digits, or the text probe)."""
    from ..loading import load_model
    from ..probing import load_probe_data
    from ..probing import probe as probe_models
    from ..probing.data import ProbeData

    loaded = load_model(path)
    if probe is None:
        data = load_probe_data("digits", loaded, batch_size=128)
    else:  # the text world's labelled docstring sentences
        from ..monitoring.probe import probe_batches
        from .text import PROBE_MODULES

        n = int(probe["labels"].shape[0])
        batches = probe_batches(probe, num_samples=n, batch_size=64)
        data = ProbeData(batches, probe["labels"], n, f"docstring sentences of {len(PROBE_MODULES)} modules ({n})", list(PROBE_MODULES))
    report = probe_models([loaded], data, names=["final checkpoint"], pullback_samples=8)
    return report.write(out)[0]


def cost_lines(costs: dict[str, dict[str, float]], seconds: float) -> str:
    """One line per monitor: what it cost and its share of the training without the monitors
    (``seconds`` of fit minus every monitor's blocking time)."""
    train = seconds - sum(c.get("blocking_s", 0.0) for c in costs.values())
    lines = []
    for name, c in costs.items():
        parts = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in c.items() if k.endswith("_s") and k != "blocking_s")
        share = f"{100 * c['blocking_s'] / train:.1f} % of the training's {train:.0f} s" if train > 0 else "n/a"
        lines.append(f"{name:<19} : {c['blocking_s']:.1f} s over {int(c['checkpoints'])} checkpoints ({parts}), {share}")
    return "\n".join(lines)


def pullback_table(history: list[dict[str, Any]]) -> str:
    """Top eigenvalue and effective rank of the pullback metric per layer at the last checkpoint."""
    if not history:
        return ""
    last = history[-1]
    top = " ".join(f"{layer['top']:9.2e}" for layer in last["layers"])
    eff = " ".join(f"{layer['effective_rank']:9.2f}" for layer in last["layers"])
    return (
        f"pullback metric (Fisher, last pixel) at step {last['step']}, per layer:\n"
        f"  top eigenvalue : {top}\n  effective rank : {eff}"
    )


def summary_table(history: list[dict[str, Any]], *, every: int = 1) -> str:
    """The ID and label-overlap profiles at each checkpoint as text."""
    if not history:
        return "(no checkpoints recorded)"
    n = len(history[-1]["layers"])
    head = f"{'step':>6} | " + " ".join(f"{i:>5d}" for i in range(n))
    lines = ["ID (GRIDE) per layer (0 = embeddings):", head, "-" * len(head)]
    for rec in history[::every] + ([history[-1]] if (len(history) - 1) % every else []):
        vals = " ".join(f"{layer['id']:5.1f}" if isinstance(layer.get("id"), float) else "    -" for layer in rec["layers"])
        lines.append(f"{rec['step']:>6} | {vals}")
    last = history[-1]
    lo = " ".join(f"{layer['label_overlap']:5.2f}" if isinstance(layer.get("label_overlap"), float) else "    -" for layer in last["layers"])
    lines += ["", f"label overlap at step {last['step']}:", f"{'':>6} | {lo}"]
    ph = last.get("phase")
    if ph:
        lines.append(
            f"\nphases at step {last['step']}: peak 1 at layer {ph['peak1_layer']} ({ph['peak1']:.1f}), "
            f"minimum at layer {ph['min_layer']} ({ph['minimum']:.1f}), "
            + (f"peak 2 at layer {ph['peak2_layer']} ({ph['peak2']:.1f}); " if ph.get("peak2_layer") is not None else "no rise after it; ")
            + f"depth {ph['depth']:.2f}, rebound {ph['rebound']:.2f}, three-phase: {ph['is_three_phase']}"
        )
    return "\n".join(lines)
