"""Lightning callbacks: the training-time monitors."""

from .geometry import GeometryMonitor

__all__ = ["GeometryMonitor"]
