"""PullbackMonitor: spectra of the pullback metric of every layer while a Lightning model trains."""

from __future__ import annotations

from ..monitoring.pullback import PULLBACK_STATS, PullbackCore
from ._probe import ProbeMonitor

__all__ = ["PullbackMonitor", "PULLBACK_STATS"]


class PullbackMonitor(PullbackCore, ProbeMonitor):
    __doc__ = PullbackCore.__doc__

    @property
    def state_key(self) -> str:
        return self._generate_state_key(output=self.output, position=self.position, top_logits=self.top_logits)
