"""Reusable Lightning callbacks: schedules, memory updates, diagnostic images, prediction writing."""

from .centroid_heatmaps import CentroidHeatmapLogger as CentroidHeatmapLogger
from .images import ValidationImageLogger as ValidationImageLogger
from .memory import MemoryInitialization as MemoryInitialization
from .memory import MemorySimilarityLogger as MemorySimilarityLogger
from .memory import MemoryUpdate as MemoryUpdate
from .momentum import MomentumSchedule as MomentumSchedule
from .multilabel import TopLabelHistogram as TopLabelHistogram
from .on_exception import SaveOnException as SaveOnException
from .prediction_writer import SegPredictionWriter as SegPredictionWriter
from .requeue import SlurmRequeue as SlurmRequeue
from .run_recorder import RunRecorder as RunRecorder
from .speed import SpeedOptions as SpeedOptions
from .tsne import FeatureTSNE as FeatureTSNE
from .video_consistency import VideoConsistencyLogger as VideoConsistencyLogger
