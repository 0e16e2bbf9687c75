"""Wall-time overhead of GeometryMonitor in the demo's training, at the default schedule.

    python benchmarks/bench_callback_overhead.py --steps 800

Trains the demo image-GPT twice with the same seed: without the monitor, then with it (the demo's
settings: 512 digits as the probe (batches of 128), every 200 steps after the log-spaced start, figures every
5 checkpoints and at the end). Prints both wall times, the overhead ratio, and the monitor's own
time per checkpoint, split by phase from ``monitor.timings`` (capture = the probe's forward,
geometry / spectra = the analysis, log = logger calls, figures = rendering + history files).
No loggers or checkpoints in either run, so only the monitor differs. ``--accelerator gpu`` for the
GPU numbers (``--layers 12 --width 256 --probe 1797 --steps 800`` is issue 9's setting).

``--background auto|on|off`` is GeometryMonitor's ``background`` (auto: the analysis runs in a worker
thread, on its own CUDA stream, when training is on a GPU; the figures are drawn in that thread unless
off); a comma list (``--background off,auto``) times each against the same run without monitors. "blocking" is what the training loop
waited per checkpoint (``timings[i]["blocking_s"]``: the capture, plus the analysis when it is not in
the background, plus logging and figures); the monitor's own share is their sum over the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def train(
    steps: int, monitor: str, n_layer: int, width: int, out: str, probe: int = 512, accelerator: str = "cpu", background: str = "auto"
) -> tuple[float, int, float, dict]:
    import lightning as L

    from lightning_geom.callbacks import GeometryMonitor, PullbackMonitor
    from lightning_geom.demo import DigitsDataModule, ImageGPT

    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule()
    cbs = []
    mon = None
    if monitor:
        if monitor == "geometry":
            bg = {"auto": "auto", "on": True, "off": False}[background]
            mon = GeometryMonitor(probe=dm.probe_set(), num_samples=probe, batch_size=128, output_dir=out, background=bg)
        else:  # the demo's PullbackMonitor
            mon = PullbackMonitor(probe=dm.probe_set(), num_samples=32, batch_size=16, output="fisher", every_n_steps=200, log_spaced=False, output_dir=out)
        cbs.append(mon)
    trainer = L.Trainer(
        max_steps=steps, callbacks=cbs, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator=accelerator, devices=1,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    t = time.perf_counter()
    trainer.fit(ImageGPT(n_layer=n_layer, width=width, max_steps=steps), datamodule=dm)
    wall = time.perf_counter() - t
    phases: dict[str, float] = {}
    for t in mon.timings if mon else []:
        for k, v in t.items():
            if k != "step":
                phases[k] = phases.get(k, 0.0) + v / len(mon.timings)
    spent = sum(t["blocking_s"] for t in mon.timings) if mon else 0.0
    return wall, (len(mon.history) if mon else 0), spent, phases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--out", default="/tmp/lightning_geom_overhead")
    p.add_argument("--probe", type=int, default=512, help="GeometryMonitor probe digits (the demo's 512)")
    p.add_argument("--monitors", default="geometry,pullback", help="which monitors to time, one run each")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu or gpu")
    p.add_argument("--background", default="auto", help="GeometryMonitor's background: auto, on or off, or a comma list of them")
    args = p.parse_args(argv)
    backgrounds = args.background.split(",")
    if not set(backgrounds) <= {"auto", "on", "off"}:
        p.error(f"--background: expected auto, on or off (or a comma list of them), got {args.background!r}")
    warnings.filterwarnings("ignore")
    base, _, _, _ = train(args.steps, "", args.layers, args.width, args.out, accelerator=args.accelerator)
    print(f"demo image-GPT: {args.layers} blocks, width {args.width}, {args.steps} steps")
    print(f"without monitors   : {base:8.1f} s")
    runs = [(kind, bg) for kind in args.monitors.split(",") for bg in (backgrounds if kind == "geometry" else ["off"])]
    for kind, bg in runs:
        wall, n_ck, spent, phases = train(args.steps, kind, args.layers, args.width, args.out, args.probe, args.accelerator, bg)
        label = f"{kind} ({bg})" if kind == "geometry" and len(backgrounds) > 1 else kind
        print(
            f"with {label:<14}: {wall:8.1f} s  ({n_ck} checkpoints, training blocked {spent:.1f} s, {spent / max(n_ck, 1):.2f} s each)"
            f"  overhead {wall / base - 1:6.1%} of wall time, monitor's own share {spent / base:5.1%}",
            flush=True,
        )
        print("    per checkpoint: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in sorted(phases.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
