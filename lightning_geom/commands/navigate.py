"""`lightning-geom navigate MODEL ...`: run the explorer on a checkpoint or a model folder and write the walk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from .args import init_arg, init_args, positive_float, positive_int, token_positions


def add_parser(sub: Any) -> None:
    p = sub.add_parser("navigate", help="Walk equivalence classes (SiMEC) or out of them (SiMExp) from some inputs.")
    p.add_argument("model", help="a Lightning checkpoint (.ckpt) or a Hugging Face model folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="an input sentence (repeat for more)")
    src.add_argument("--image", action="append", help="an image file (repeat for more)")
    src.add_argument("--data", type=_data_spec, help="'digits' (the demo checkpoint), or a file of samples for a model of float inputs: "
                     ".csv / .tsv / .parquet / .arrow of numbers, .npy, .npz, .pt (as `probe --data` reads them)")
    p.add_argument("--index", type=int, nargs="+", default=None, help="which samples of --data (default 0)")
    p.add_argument("--label-column", default="label", help="the label column / array of a --data file (left out of the inputs)")
    p.add_argument("--module", default=None, help="LightningModule class path of a checkpoint")
    p.add_argument("--init-arg", action="append", type=init_arg, default=None, metavar="KEY=VALUE",
                   help="override a checkpoint hyperparameter when its module is built (repeat for more), e.g. a local model folder for a hub name its __init__ loads")
    p.add_argument("--tokenizer", default=None, help="a folder with the tokenizer files, for a checkpoint that does not bring its own")
    p.add_argument("--mode", choices=["simec", "simexp"], default="simec")
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--step-size", type=positive_float, default=0.01)
    p.add_argument("--step-rule", choices=["fixed", "paper"], default="fixed")
    p.add_argument("--output", choices=["logits", "probs", "fisher"], default="logits")
    p.add_argument("--tokens", type=token_positions, default="all", help="'all', 'top_attribution' or comma-separated positions")
    p.add_argument("--no-corrector", action="store_false", dest="corrector")
    p.add_argument("--record-every", type=positive_int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="navigation_output")
    p.add_argument("--no-progress", action="store_false", dest="progress", help="hide the progress bar (logs, CI)")
    p.set_defaults(func=run)


_DATA_FILES = (".csv", ".tsv", ".parquet", ".arrow", ".npy", ".npz", ".pt", ".pth")


def _data_spec(value: str) -> str:
    """--data: 'digits' or a data file of one of :data:`_DATA_FILES`' kinds (argparse type)."""
    if value == "digits" or Path(value).suffix.lower() in _DATA_FILES:
        return value
    raise argparse.ArgumentTypeError(f"expected 'digits' or a {', '.join(_DATA_FILES)} file, got {value!r}")


def _rows_of(batches: list[Any], index: list[int], n: int, what: str) -> Any:
    """Samples ``index`` of a list of probe batches (tensors, (inputs, labels) tuples or dicts), labels left out."""
    bad = [i for i in index if not -n <= i < n]
    if bad:
        raise SystemExit(f"error: --index {bad[0]}: {what} has {n} samples (0 .. {n - 1}).")
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)[index]
    if isinstance(first, (tuple, list)):
        return torch.cat([b[0] for b in batches])[index]
    from ..modules import LABEL_KEYS

    return {k: torch.cat([b[k] for b in batches])[index] for k in first if k not in LABEL_KEYS}


def _inputs_kind(loaded: Any) -> str | None:
    """What the model reads: "digits" (the demo's ImageGPT), "image", "text", or None (a model we cannot tell)."""
    from ..capture import resolve_network

    net = resolve_network(loaded.module)
    if type(net).__name__ == "ImageGPT":
        return "digits"
    if loaded.kind == "hf-image" or loaded.image_processor is not None:
        return "image"
    if loaded.kind == "hf-text":
        return "text"
    cfg = getattr(net, "config", None)  # a LightningModule around a Hugging Face model
    if cfg is None:
        return None
    return "image" if hasattr(cfg, "image_size") and not hasattr(cfg, "vocab_size") else "text"


def _check_source(args: argparse.Namespace, loaded: Any) -> None:
    """One line when the inputs given are not the kind the model reads (or --index without --data)."""
    if args.index is not None and args.data is None:
        raise SystemExit("error: --index picks samples of --data; with --text / --image every input given is walked.")
    given = "file" if args.data not in (None, "digits") else "digits" if args.data else "text" if args.text else "image"
    wants = _inputs_kind(loaded)
    flag = {"digits": "--data digits", "text": "--text", "image": "--image", "file": f"--data {args.data}"}
    if wants is not None and given != wants and not (given == "file" and wants != "digits"):
        raise SystemExit(
            f"error: {loaded.source} reads {'the digit images' if wants == 'digits' else wants + 's'}, "
            f"not the inputs of {flag[given]}: pass {flag[wants]}."
        )
    empty = [i for i, t in enumerate(args.text or []) if not t.strip()]
    if empty:
        raise SystemExit(f"error: --text number {empty[0] + 1} is empty: give the sentence to start the walk from.")


def _batch(args: argparse.Namespace, loaded: Any) -> Any:
    _check_source(args, loaded)
    if args.data == "digits":
        from ..demo.data import digits_sequences

        x, _ = digits_sequences()
        index = [0] if args.index is None else args.index
        bad = [i for i in index if not -len(x) <= i < len(x)]
        if bad:
            raise SystemExit(f"error: --index {bad[0]}: the digits set has {len(x)} images (0 .. {len(x) - 1}).")
        return {"pixels": x[list(index)]}
    if args.data is not None:
        from ..probing import load_probe_data

        try:
            data = load_probe_data(args.data, loaded, label_column=args.label_column, max_samples=1 << 30, batch_size=4096)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        return _rows_of(data.batches, [0] if args.index is None else args.index, data.n, args.data)
    if args.text:
        if loaded.tokenizer is None:
            raise SystemExit(f"error: {loaded.source} has no tokenizer; --text needs one: pass --tokenizer FOLDER.")
        enc = loaded.tokenizer(args.text, padding=True, return_tensors="pt")
        from ..capture import resolve_network

        if not hasattr(resolve_network(loaded.module), "config"):  # a plain network of token ids: forward(idx)
            if len(args.text) > 1 and not bool(enc["attention_mask"].all()):
                raise SystemExit(f"error: {type(loaded.module).__name__} takes bare token ids (no attention mask): give texts of one length, or one --text at a time.")
            return enc["input_ids"]
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    from ..probing.data import load_rgb

    try:
        images = [load_rgb(f) for f in args.image]
    except FileNotFoundError as err:
        raise SystemExit(f"error: no such image file: {err.filename}") from None
    except OSError as err:
        raise SystemExit(f"error: not a readable image: {err}") from None
    if loaded.image_processor is not None:
        return {"pixel_values": loaded.image_processor(images, return_tensors="pt")["pixel_values"]}
    size = loaded.module.config.image_size
    import numpy as np

    arr = [np.asarray(im.resize((size, size)), dtype=np.float32) / 255.0 for im in images]
    return {"pixel_values": torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2)}


def run(args: argparse.Namespace) -> int:
    from ..capture import NoLogitsError, resolve_network
    from ..loading import load_model, load_tokenizer, quiet_loading
    from ..navigation import EquivalenceClassExplorer, adapter_for, write_trajectories
    from ..navigation.explorer import TokenPositionError
    from ..tokens import is_causal_lm

    if not args.progress:  # --no-progress: transformers' own "Loading weights" bars too
        quiet_loading()
    try:
        loaded = load_model(args.model, module=args.module, init_args=init_args(args.init_arg))
        if args.tokenizer:
            loaded.tokenizer = load_tokenizer(args.tokenizer)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    net = loaded.module
    tokens: Any = args.tokens
    try:
        adapter = adapter_for(net, loaded.tokenizer)
    except TypeError as err:  # a family the explorer cannot navigate: one line, not a traceback
        raise SystemExit(f"error: {err}") from None
    ex = EquivalenceClassExplorer(
        net,
        adapter=adapter,
        mode=args.mode,
        steps=args.steps,
        step_size=args.step_size,
        step_rule=args.step_rule,
        output=args.output,
        tokens=tokens,
        corrector=args.corrector,
        record_every=args.record_every,
        seed=args.seed,
        progress=args.progress,
    )
    batch = _batch(args, loaded)
    net.eval()
    try:
        trajs = ex.walk(batch)
    except (NoLogitsError, TokenPositionError, ValueError) as err:  # no head; positions outside the inputs; bad token ids
        raise SystemExit(f"error: {err}") from None
    image_shape = (8, 8) if type(net).__name__ == "ImageGPT" else None
    files = write_trajectories(trajs, args.out, image_shape=image_shape)
    summary = [
        {"sample": i, "start_pred": t["start_pred"], "end_pred": t["steps"][-1]["pred"], "distance": t["steps"][-1]["distance"]}
        | ({"start_name": t["start_name"], "end_name": t["steps"][-1]["pred_name"]} if "start_name" in t else {})
        for i, t in enumerate(trajs)
    ]
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    what = "next token" if is_causal_lm(resolve_network(net)) else "class"
    for s in summary:
        moved = f"{s['start_name']!r} -> {s['end_name']!r}" if "start_name" in s else f"{s['start_pred']} -> {s['end_pred']}"
        print(f"sample {s['sample']}: {what} {moved} after moving {s['distance']:.3g}")
    print(f"wrote {len(files) + 1} files to {args.out}")
    return 0
