"""Equivalence-class navigation (SiMEC / SiMExp, arXiv 2410.06019): explorer, adapters, decoders, writer."""

from .adapters import Adapter, adapter_for
from .decoders import Decoder, InputDecoder, MLMDecoder, PatchDecoder, TokenDecoder
from .explorer import EquivalenceClassExplorer
from .writer import TrajectoryWriter, write_trajectories

__all__ = [
    "Adapter",
    "Decoder",
    "EquivalenceClassExplorer",
    "InputDecoder",
    "MLMDecoder",
    "PatchDecoder",
    "TokenDecoder",
    "TrajectoryWriter",
    "adapter_for",
    "write_trajectories",
]
