"""Command line: ``lightning-geom {digits,demo,...}``.

Subcommands import their heavy dependencies only when they run, so ``lightning-geom --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .commands.args import non_negative_int, positive_int


def _cmd_digits(args: argparse.Namespace) -> int:
    from .digits_geometry import digits_geometry_table

    print(digits_geometry_table(k=args.k, range_max=args.range_max))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import cost_lines, preset_config, pullback_table, run_demo, summary_table

    try:
        cfg = preset_config(
            args.preset, args.world, steps=args.steps, n_layer=args.n_layer, width=args.width,
            every_n_steps=args.every_n_steps, normalize=args.normalize, probe_samples=args.probe_samples,
            log_spaced=args.log_spaced, figure_every=args.figure_every,
            pullback=args.pullback, report=args.report, out=args.out, wandb=args.wandb, seed=args.seed,
            progress=args.progress, resume=args.resume,
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        res = run_demo(cfg)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    print()
    print(summary_table(res["history"], every=2))
    if res["pullback"]:
        print()
        print(pullback_table(res["pullback"]))
    print(f"\ntrained {cfg.steps} steps in {res['seconds']:.0f} s")
    print(cost_lines(res["cost"], res["seconds"]))
    print(f"figures and history : {res['out'] / 'geometry'}")
    print(f"TensorBoard         : tensorboard --logdir {res['out'] / 'tensorboard'}")
    print(f"CSV metrics         : {res['csv']}")
    print(f"last checkpoint     : {res['checkpoint']}")
    if res.get("report"):
        again = f"  (lightning-geom probe {res['checkpoint']} --data digits)" if cfg.world == "digits" else ""
        print(f"probe report        : {res['report']}{again}")
    return 0


def _cmd_fit(argv: Sequence[str]) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    from lightning.pytorch.cli import LightningCLI

    from .demo import DigitsDataModule, ImageGPT

    LightningCLI(
        ImageGPT,
        DigitsDataModule,
        args=["fit", *argv],
        subclass_mode_model=False,
        save_config_kwargs={"overwrite": True},
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-geom`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="lightning-geom",
        description="Geometry of transformer representations: intrinsic dimension, neighbourhood overlap.",
    )
    parser.add_argument("--version", action="version", version=f"lightning-geom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "digits",
        help="ID (TwoNN, GRIDE scale curve) and label overlap of scikit-learn's bundled digits images.",
    )
    p.add_argument("--k", type=positive_int, default=10, help="neighbours for the label overlap (default 10)")
    p.add_argument("--range-max", type=positive_int, default=64, help="largest GRIDE neighbour rank (default 64)")
    p.set_defaults(func=_cmd_digits)

    p = sub.add_parser(
        "demo",
        help="Train an image-GPT on the bundled digits with GeometryMonitor (offline, CPU, a few minutes).",
    )
    p.add_argument(
        "--preset", choices=["cpu", "gpu"], default="cpu",
        help="sizes: cpu = minutes on 2 CPU cores (default); gpu = a few minutes on one GPU in bf16 (text: 12 x 384, 3000 steps; digits: 16 x 128, 4000 steps)",
    )
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (cpu preset: 800)")
    p.add_argument("--layers", type=positive_int, default=None, dest="n_layer", help="transformer blocks (cpu preset: 12)")
    p.add_argument("--width", type=positive_int, default=None, help="residual width (cpu preset: 64)")
    p.add_argument("--every-n-steps", type=positive_int, default=None, help="monitor every n steps after the log-spaced start (cpu preset: 200)")
    p.add_argument(
        "--log-spaced", type=non_negative_int, default=None,
        help="early checkpoints at 0, m, 2m, 4m, ... below --every-n-steps (default 4; 0: none)",
    )
    p.add_argument(
        "--figure-every", type=non_negative_int, default=None,
        help="dashboard figures every n checkpoints and at the end (cpu preset: 0, only at the end; gpu: 5)",
    )
    p.add_argument("--normalize", choices=["layer_norm"], default=None, help="read the LayerNorm-ed residual stream")
    p.add_argument("--probe-samples", type=positive_int, default=None, help="samples in the monitor's probe set (cpu preset: 512)")
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases, offline")
    p.add_argument("--no-pullback", action="store_false", dest="pullback", help="skip the PullbackMonitor")
    p.add_argument("--no-report", action="store_false", dest="report", help="skip the final probe report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_false", dest="progress", help="hide the progress bar")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.ckpt (same --out and --steps)")
    p.add_argument(
        "--world", choices=["digits", "text"], default="digits",
        help="digits: image-GPT on scikit-learn's digits (default); text: byte-level GPT on the standard library's source",
    )
    p.set_defaults(func=_cmd_demo)

    from .commands.navigate import add_parser as add_navigate

    add_navigate(sub)

    from .commands.probe import add_parser as add_probe

    add_probe(sub)

    p = sub.add_parser(
        "fit",
        help="LightningCLI `fit` for the demo model/data (e.g. --config configs/demo_igpt_digits.yaml).",
        add_help=False,
    )
    p.set_defaults(func=None, passthrough=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-geom`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":
        return _cmd_fit(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
