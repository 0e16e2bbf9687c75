"""Figures, logger adapters (W&B, TensorBoard, CSV) and history files. Imports matplotlib lazily."""
