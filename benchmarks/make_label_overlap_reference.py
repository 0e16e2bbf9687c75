"""Compute DADApy's label-overlap values on the fixture's overlap family (run in the DADApy venv).

    /path/to/dadapy-venv/bin/python benchmarks/make_label_overlap_reference.py

Prints JSON to paste into tests/fixtures/dadapy_reference.json under "label_overlap_cases".
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dadapy import Data  # noqa: E402
from datasets import overlap_family  # noqa: E402

fam = overlap_family()
out = {}
for name in ("A", "A_plus_0.05E", "U"):
    d = Data(fam[name])
    out[name] = {
        f"k{k}_{'weighted' if w else 'plain'}": float(d.return_label_overlap(fam["labels"], k=k, weighted=w))
        for k in (5, 10, 30)
        for w in (True, False)
    }
print(json.dumps({"dadapy_call": "Data(X).return_label_overlap(labels, k=k, weighted=w)", "values": out}, indent=1))
