"""Lightning callbacks: the training-time monitors."""

from .geometry import GeometryMonitor
from .pullback import PullbackMonitor

__all__ = ["GeometryMonitor", "PullbackMonitor"]
