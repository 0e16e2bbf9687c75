"""GeometryMonitor: the ID profile, overlaps and phases of every layer while a Lightning model trains."""

from __future__ import annotations

from ..monitoring.geometry import GeometryCore
from ._probe import ProbeMonitor

__all__ = ["GeometryMonitor"]


class GeometryMonitor(GeometryCore, ProbeMonitor):
    __doc__ = GeometryCore.__doc__

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            layers=self.layers,
            pooling=self.pooling if isinstance(self.pooling, str) else "callable",
            normalize=self.normalize,
            every_n_steps=self.every_n_steps,
            every_n_epochs=self.every_n_epochs,
            tokens=self.tokens,
            **({"name": self.name} if self.name is not None else {}),  # unnamed: the key older checkpoints hold
        )
