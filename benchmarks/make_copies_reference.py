"""DADApy's ID of a cloud with exact copies after ``remove_identical_points`` (run in the DADApy venv).

    /path/to/dadapy-venv/bin/python benchmarks/make_copies_reference.py

Prints JSON to paste into tests/fixtures/dadapy_reference.json under "copies_cases": the oracle for
measuring a layer with copies on its distinct locations (``layer_geometry``, ``token_geometry``).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dadapy import Data  # noqa: E402
from reference_datasets import copies_d4_D30  # noqa: E402

x = copies_d4_D30()
d = Data(x)
d.remove_identical_points()
tw = d.compute_id_2NN()
ids, errs, rs = d.return_id_scaling_gride(range_max=32)
print(json.dumps({
    "copies_d4_D30": {
        "dadapy_call": "d = Data(X); d.remove_identical_points(); d.compute_id_2NN(); d.return_id_scaling_gride(range_max=32)",
        "N": int(x.shape[0]),
        "N_distinct": int(d.N),
        "twonn": float(tw[0]),
        "gride_ids": [float(v) for v in ids],
        "gride_rs": [float(v) for v in rs],
    }
}, indent=1))
