"""PullbackMonitor: spectra of the pullback metric of every layer while a Lightning model trains."""

from __future__ import annotations

from ..monitoring.pullback import PULLBACK_STATS, PullbackCore
from ._probe import ProbeMonitor

__all__ = ["PullbackMonitor", "PULLBACK_STATS"]


class PullbackMonitor(PullbackCore, ProbeMonitor):
    __doc__ = PullbackCore.__doc__

    @property
    def state_key(self) -> str:
        named = {"name": self.name} if self.name is not None else {}  # unnamed: the key older checkpoints hold
        return self._generate_state_key(output=self.output, position=self.position, top_logits=self.top_logits, **named)

    @property
    def _legacy_state_key(self) -> str | type:  # Lightning looks a state up here when state_key has none
        if self.top_logits == "auto":  # checkpoints from before "auto" was the default (None then: the same on heads <= 64)
            return self._generate_state_key(output=self.output, position=self.position, top_logits=None)
        return super()._legacy_state_key
