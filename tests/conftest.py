import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from reference_datasets import ID_CASES, checksum, overlap_family  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads((FIXTURES / "dadapy_reference.json").read_text())


def _verify(x: np.ndarray, ref: dict) -> np.ndarray:
    got = checksum(x)
    assert got["shape"] == ref["shape"]
    np.testing.assert_allclose(got["sum"], ref["sum"], rtol=1e-9)
    np.testing.assert_allclose(got["sum_sq"], ref["sum_sq"], rtol=1e-9)
    np.testing.assert_allclose(x[0, :3], ref["first_row_head"], rtol=1e-12)
    return x


@pytest.fixture(scope="session")
def id_datasets(reference) -> dict[str, np.ndarray]:
    return {name: _verify(ID_CASES[name](), reference["id_cases"][name]["checksum"]) for name in ID_CASES}


@pytest.fixture(scope="session")
def overlap_data(reference) -> dict[str, np.ndarray]:
    fam = overlap_family()
    for case in reference["overlap_cases"].values():
        _verify(fam["A"], case["checksum_A"])
        _verify(fam[case["B"]], case["checksum_B"])
    return fam
