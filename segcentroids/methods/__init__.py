"""One LightningModule per paper, each a subclass of `Baseline`."""

from .base import Baseline, OptimConfig, ParamGroupRule
from .mcibi import MCIBI as MCIBI
from .mlseg import MLSeg as MLSeg
from .mlseg_video import MLSegVideo as MLSegVideo
from .multilabel_classifier import MultiLabelClassifier as MultiLabelClassifier
from .mvsc import MVSC as MVSC
from .pne import PNE as PNE
from .segmenter import Segmenter as Segmenter
from .specialize_fuse import SpecializeFuse as SpecializeFuse

__all__ = [
    "MCIBI", "MLSeg", "MLSegVideo", "MultiLabelClassifier", "MVSC", "PNE", "Baseline", "OptimConfig",
    "ParamGroupRule", "Segmenter", "SpecializeFuse",
]
