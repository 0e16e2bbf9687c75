"""lightning_geom: the geometry of a transformer's hidden representations, during and after training.

Importing the package is cheap: the geometry core (``lightning_geom.geometry``) needs only torch,
and the Lightning glue (callbacks, report, CLI) is imported lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    # the monitors (Lightning callbacks, Hugging Face Trainer callbacks)
    "GeometryMonitor": "lightning_geom.callbacks",
    "PullbackMonitor": "lightning_geom.callbacks",
    "GeometryCallback": "lightning_geom.hf",
    "PullbackCallback": "lightning_geom.hf",
    # navigation (SiMEC / SiMExp)
    "EquivalenceClassExplorer": "lightning_geom.navigation",
    # the geometry (tensors in, numbers out)
    "knn": "lightning_geom.geometry",
    "twonn": "lightning_geom.geometry",
    "gride": "lightning_geom.geometry",
    "gride_scaling": "lightning_geom.geometry",
    "id_profile": "lightning_geom.geometry",
    "neighborhood_overlap": "lightning_geom.geometry",
    "label_overlap": "lightning_geom.geometry",
    # capture and analysis
    "capture_representations": "lightning_geom.capture",
    "profile_geometry": "lightning_geom.analysis",
    # the probe (after training)
    "probe": "lightning_geom.probing",
    "GeometryReport": "lightning_geom.probing",
    "IntrinsicDimension": "lightning_geom.metrics",
    "NeighborhoodOverlap": "lightning_geom.metrics",
    "LabelOverlap": "lightning_geom.metrics",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_geom' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
