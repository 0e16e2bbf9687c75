"""The demo worlds' study (issue 15): depth, width, training length and data, one demo run each.

Every configuration runs `lightning-geom demo` (no pullback, no report) into its own folder and
the script prints, per run: the final ID profile (GRIDE at the locked scale), the robust plateau
summary, the label-overlap profile, the high-ID phase's onset / height, the last validation loss
and the training time; it copies each run's layer x step heatmap to ``--out/<name>_id_heatmap.png``.

    python benchmarks/sweep_demo_worlds.py --out sweep                       # the CPU sweep
    python benchmarks/sweep_demo_worlds.py --out sweep --only digits-12x64 text-12x64
    python benchmarks/sweep_demo_worlds.py --out sweep --preset gpu          # bigger configs, on a GPU
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

CPU = {  # name: (world, layers, width, steps)
    "digits-6x64": ("digits", 6, 64, 800),
    "digits-12x64": ("digits", 12, 64, 800),
    "digits-12x128": ("digits", 12, 128, 800),
    "digits-12x64-1600": ("digits", 12, 64, 1600),
    "text-12x64": ("text", 12, 64, 800),
}
GPU = {
    "digits-16x128": ("digits", 16, 128, 4000),
    "text-12x384": ("text", 12, 384, 3000),
    "text-24x384": ("text", 24, 384, 3000),
}


def _val_loss(csv_dir: Path) -> float | None:
    last = None
    for f in sorted(csv_dir.glob("version_*/metrics.csv")):
        for row in csv.DictReader(f.open()):
            v = row.get("val_loss") or row.get("val/loss")
            if v:
                last = float(v)
    return last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sweep")
    p.add_argument("--preset", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    from lightning_geom.demo.run import preset_config, run_demo
    from lightning_geom.probing.html import robust_summary

    configs = CPU if args.preset == "cpu" else GPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (world, layers, width, steps) in configs.items():
        if args.only and name not in args.only:
            continue
        cfg = preset_config(args.preset, world, n_layer=layers, width=width, steps=steps, out=str(out / name),
                            pullback=False, report=False, progress=False)
        t0 = time.perf_counter()
        res = run_demo(cfg)
        last = res["history"][-1]
        ph = last.get("phase") or {}
        row = {
            "world": world, "layers": layers, "width": width, "steps": steps, "seconds": round(time.perf_counter() - t0),
            "val_loss": _val_loss(out / name / "csv"),
            "id": [round(r["id"], 2) if isinstance(r.get("id"), float) else None for r in last["layers"]],
            "label_overlap": [round(r["label_overlap"], 2) if isinstance(r.get("label_overlap"), float) else None for r in last["layers"]],
            "summary": robust_summary(ph) if "plateaus" in ph else None,
            "high_id_onset": ph.get("high_id_onset"), "high_id_height": ph.get("high_id_height"),
            "is_three_phase": ph.get("is_three_phase"),
        }
        results[name] = row
        shutil.copy(out / name / "geometry" / "id_heatmap.png", out / f"{name}_id_heatmap.png")
        print(f"\n== {name}: {row['seconds']} s, val loss {row['val_loss']}")
        print(f"   ID            {row['id']}")
        print(f"   label overlap {row['label_overlap']}")
        print(f"   {row['summary']}; high-ID onset {row['high_id_onset']} (height {row['high_id_height']}); three-phase {row['is_three_phase']}")
        (out / "sweep.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
