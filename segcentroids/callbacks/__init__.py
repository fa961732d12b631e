"""Reusable Lightning callbacks: schedules, memory updates, diagnostic images, prediction writing."""

from .centroid_heatmaps import CentroidHeatmapLogger as CentroidHeatmapLogger
from .images import ValidationImageLogger
from .multilabel import TopLabelHistogram as TopLabelHistogram
from .prediction_writer import SegPredictionWriter
from .memory import MemorySimilarityLogger as MemorySimilarityLogger, MemoryUpdate as MemoryUpdate
from .momentum import MomentumSchedule as MomentumSchedule
