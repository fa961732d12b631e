"""One LightningModule per paper, each a subclass of `Baseline`."""

from .base import Baseline, OptimConfig, ParamGroupRule
from .mlseg import MLSeg as MLSeg, Segmenter as Segmenter
from .mvsc import MVSC as MVSC
from .pne import PNE as PNE
from .specialize_fuse import SpecializeFuse as SpecializeFuse
from .mcibi import MCIBI as MCIBI

__all__ = ["Baseline", "OptimConfig", "ParamGroupRule"]
