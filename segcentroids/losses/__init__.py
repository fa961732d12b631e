"""Loss functions and plug-in objectives."""

from .asymmetric import AsymmetricLoss as AsymmetricLoss
from .centroid import centroid_enhancement as centroid_enhancement
from .centroid import centroid_pulling_loss as centroid_pulling_loss
from .centroid import centroid_semantic_loss as centroid_semantic_loss
from .centroid import feature_centroid_alignment_loss as feature_centroid_alignment_loss
from .extra import ExtraLoss, LossContext, offline_context
from .memory_consistency import representation_consistency_loss as representation_consistency_loss
from .pne import PNELoss as PNELoss
from .pne import PNEObjective as PNEObjective

__all__ = ["ExtraLoss", "LossContext", "offline_context"]
