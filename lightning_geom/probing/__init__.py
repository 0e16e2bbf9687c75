"""The post-training probe: every layer's geometry of a checkpoint or model folder, as a report."""

from .data import ProbeData, load_probe_data
from .report import GeometryReport, probe, probe_model

__all__ = ["GeometryReport", "ProbeData", "load_probe_data", "probe", "probe_model"]
