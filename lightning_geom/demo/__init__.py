"""The demo: an image-GPT trained on scikit-learn's bundled digits (offline), watched by GeometryMonitor."""

from .data import DigitsDataModule, digits_sequences
from .model import ImageGPT

__all__ = ["DigitsDataModule", "ImageGPT", "digits_sequences"]
