"""Segmentation models: ``SegModel`` (encoder + decoder, named features, no classifier)."""

from .seg_model import ARCHS, SegModel

__all__ = ["ARCHS", "SegModel"]
