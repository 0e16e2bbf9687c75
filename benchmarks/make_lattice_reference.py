"""DADApy on a lattice, whose neighbour distances are tied (run in the DADApy venv).

    /path/to/dadapy-venv/bin/python benchmarks/make_lattice_reference.py

Prints JSON to paste into tests/fixtures/dadapy_reference.json under "lattice_cases". Where most
ratios r_2n / r_n are exactly 1, DADApy's GRIDE returns its bracket bottom (0.001) and TwoNN its
curve_fit default (1.0): failures, not IDs; at the other scales it is the oracle.
"""

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dadapy import Data  # noqa: E402
from reference_datasets import lattice_d3  # noqa: E402

x = lattice_d3()
d = Data(x, verbose=False)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # curve_fit: "Covariance of the parameters could not be estimated"
    tw = d.compute_id_2NN()
ids, errs, rs = d.return_id_scaling_gride(range_max=16)
print(json.dumps({
    "lattice_d3": {
        "dadapy_call": "d = Data(X); d.compute_id_2NN(); d.return_id_scaling_gride(range_max=16)",
        "N": int(x.shape[0]),
        "twonn": float(tw[0]),
        "gride_ids": [float(v) for v in ids],
        "gride_rs": [float(v) for v in rs],
    }
}, indent=1))
