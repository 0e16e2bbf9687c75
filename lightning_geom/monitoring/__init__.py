"""The monitors' framework-free core: schedule, probe, history, failure policy, measurement.

Imports neither Lightning nor the Hugging Face Trainer (tested); the shells live in
``lightning_geom.callbacks`` (Lightning) and ``lightning_geom.hf`` (transformers' Trainer).
"""

from .core import MonitorCore, Run, Sink
from .geometry import GeometryCore
from .pullback import PULLBACK_STATS, PullbackCore

__all__ = ["MonitorCore", "Run", "Sink", "GeometryCore", "PullbackCore", "PULLBACK_STATS"]
