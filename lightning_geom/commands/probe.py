"""`lightning-geom probe MODEL [MODEL ...] --data ... --out DIR`: the geometry report of checkpoints / model folders."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from .args import at_least, fraction, init_arg, init_args, non_negative_int, positive_int


def add_parser(sub: Any) -> None:
    p = sub.add_parser("probe", help="Write a geometry report (HTML + JSON + CSV + PNG) for checkpoints or HF model folders.")
    p.add_argument("models", nargs="+", help="Lightning checkpoints (.ckpt; a folder of them: its checkpoints in step order), whole pickled torch modules (torch.save(model, path)) or Hugging Face model folders (several: one run's checkpoints)")
    p.add_argument("--data", required=True, help="'digits', a .txt (one text per line), .csv/.jsonl/.parquet/.arrow or a datasets save_to_disk folder (texts or token ids, or numbers for a model without a tokenizer), arrays (.npy, .npz, .pt), an image folder (class subfolders), or a datamodule YAML")
    p.add_argument("--out", default="probe_report", help="output folder (default probe_report)")
    p.add_argument("--module", default=None, help="LightningModule class path of the checkpoints")
    p.add_argument("--init-arg", action="append", type=init_arg, default=None, metavar="KEY=VALUE",
                   help="override a checkpoint hyperparameter when its module is built (repeat for more), e.g. a local model folder for a hub name its __init__ loads")
    p.add_argument("--tokenizer", default=None, help="a folder with the tokenizer files, for checkpoints that do not bring their own")
    p.add_argument("--text-column", default="text", help="the texts' column (default text); two, comma-separated (premise,hypothesis), for text pairs")
    p.add_argument("--label-column", default="label", help="the labels' column (default: label, else labels / target / y / class / category when present)")
    p.add_argument("--drop-unlabeled", action="store_true", help="drop records with an empty / NaN label (counted) instead of failing")
    p.add_argument("--max-samples", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--pooling", choices=["mean", "last", "first"], default="mean")
    p.add_argument("--layers", nargs="*", default=None, help="glob patterns of submodules (default: hidden states)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: a GPU when there is one)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours for overlaps (default 10)")
    p.add_argument("--range-max", type=at_least(2, "GRIDE pairs ranks n and 2n"), default=64, help="largest GRIDE rank (default 64)")
    p.add_argument("--pullback-samples", type=non_negative_int, default=8, help="at most this many samples for the pullback statistics (default 8; 0: skip)")
    p.add_argument("--pullback-share", type=fraction, default=0.25, help="stop the pullback samples before they take more than this share of the probe's time (default 0.25; 1: all --pullback-samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens", choices=["per-prompt", "pooled", "both"], default=None,
                   help="also token geometry: per-prompt (each prompt's tokens = one cloud), pooled (all texts' tokens = one cloud per layer), or both")
    p.add_argument("--token-prompts", type=positive_int, default=128, help="prompts in the per-prompt analysis (default 128)")
    p.add_argument("--token-k", type=positive_int, default=8, help="neighbours per token in the per-prompt analysis (default 8)")
    p.add_argument("--shuffle-control", action="store_true", help="with --tokens per-prompt: also on the prompts shuffled in blocks of 4 tokens")
    p.add_argument("--max-tokens", type=at_least(3, "an ID needs 3 points"), default=10_000, help="with --tokens pooled: a seeded subsample of at most this many tokens (default 10,000)")
    p.add_argument("--keep-special-tokens", action="store_true", help="with --tokens pooled: keep [CLS] / [SEP] / BOS / EOS tokens (default: left out, their states are outliers)")
    p.add_argument("--no-progress", action="store_false", dest="progress", help="hide the progress bars (logs, CI)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    p.set_defaults(func=run)


def check_out_dir(out: str) -> None:
    """The report folder must be creatable and writable: checked before the computation, not after."""
    import tempfile
    from pathlib import Path

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder; choose another --out.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write there ({err.strerror or err}); choose another --out.") from None


def _step_of(path: Path) -> tuple[int, str]:
    """Sort key of a checkpoint file: the N of ``step=N`` (or ``epoch=N``) in its name, then the name."""
    m = re.search(r"step=(\d+)", path.name) or re.search(r"epoch=(\d+)", path.name)
    return (int(m.group(1)) if m else -1, path.name)


def expand_checkpoint_folders(models: list[str]) -> list[str]:
    """Each folder of Lightning checkpoints (``*.ckpt``, no ``config.json``: a ``ModelCheckpoint`` dirpath)
    as its checkpoints in step order, ``last.ckpt`` left out when others are there (it repeats one of
    them); other paths as they are."""
    out: list[str] = []
    for m in models:
        p = Path(m)
        ckpts = sorted(p.glob("*.ckpt"), key=_step_of) if p.is_dir() and not (p / "config.json").exists() else []
        if len(ckpts) > 1:
            ckpts = [c for c in ckpts if c.name != "last.ckpt"] or ckpts
        if ckpts:
            out.extend(str(c) for c in ckpts)
        else:
            out.append(m)
    return out


def _load_all(models: list[str], module: str | None, load: Any, overrides: dict[str, Any] | None = None) -> list[Any]:
    """Every model; a checkpoint found in a folder that cannot be read (a run still writing it) is
    skipped with a line on stderr, a path the user named is an error."""
    import sys

    paths = expand_checkpoint_folders(models)
    named = set(models)
    loaded = []
    for m in paths:
        try:
            loaded.append(load(m, module=module, init_args=overrides))
        except ValueError as err:
            if m in named or "not a readable checkpoint" not in str(err):
                raise
            print(f"skipped {m}: {err}", file=sys.stderr)
    if not loaded:
        raise ValueError(f"None of the {len(paths)} checkpoints in {', '.join(models)} could be read.")
    return loaded


def run(args: argparse.Namespace) -> int:
    import torch

    from ..loading import load_model, load_tokenizer, quiet_loading
    from ..probing import load_probe_data, probe
    from ..probing.html import robust_summary
    from ..probing.report import check_device

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if not args.progress:  # --no-progress: transformers' own "Loading weights" bars too
        quiet_loading()
    try:
        check_device(args.device, "--device")
        check_out_dir(args.out)
        if args.data != "digits" and not Path(args.data).exists():  # before the (slow) model loading
            raise ValueError(f"No such data file or folder: {args.data} (or use 'digits').")
        loaded = _load_all(args.models, args.module, load_model, init_args(args.init_arg))
        if args.tokenizer:
            tok = load_tokenizer(args.tokenizer)
            for item in loaded:
                item.tokenizer = tok
        data = load_probe_data(
            args.data, loaded[0], text_column=args.text_column, label_column=args.label_column,
            max_samples=args.max_samples, batch_size=args.batch_size, seed=args.seed, drop_unlabeled=args.drop_unlabeled,
        )
        report = probe(
            loaded, data, layers=args.layers, pooling=args.pooling, k=args.k, range_max=args.range_max,
            pullback_samples=args.pullback_samples, pullback_share=args.pullback_share, device=args.device,
            tokens=args.tokens, token_prompts=args.token_prompts, token_k=args.token_k, shuffle_control=args.shuffle_control,
            max_tokens=args.max_tokens, keep_special_tokens=args.keep_special_tokens, seed=args.seed,
            progress=args.progress,
        )
    except (FileNotFoundError, ValueError, MemoryError) as err:
        if args.debug:
            raise
        raise SystemExit(f"error: {err}") from None
    except Exception as err:  # noqa: BLE001 - one line for the user; --debug for the traceback
        if args.debug:
            raise
        raise SystemExit(f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (run with --debug for the traceback)") from None
    try:
        files = report.write(args.out)
    except OSError as err:
        raise SystemExit(f"error: could not write the report to {args.out}: {err}") from None
    for m in report.models:
        ph = m.get("phase") or {}
        best = m.get("best_retrieval_layer")
        print(
            f"{m['name']}: {len(m['layers'])} layers, {m['n_samples']} samples; ID peak {ph.get('peak1_layer')} -> min {ph.get('min_layer')}"
            f" -> peak {ph.get('peak2_layer') if ph.get('peak2_layer') is not None else 'none'} (three-phase {ph.get('is_three_phase')}); best retrieval layer {best}"
        )
        if "plateaus" in ph:
            print(f"  {robust_summary(ph)}")
        if not m.get("pullback") and m.get("pullback_note") and args.pullback_samples:
            print(f"  no pullback metric: {m['pullback_note']}")
    print(f"report: {files[0]}  ({len(files)} files, {time.perf_counter() - t0:.1f} s)")
    return 0
