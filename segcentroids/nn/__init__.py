"""nn package."""
from .centroids import Centroids as Centroids
from .heads import FCNHead as FCNHead
from .pyramid_heads import PyramidPool as PyramidPool, SemanticPyramidHead as SemanticPyramidHead
from .pyramid_heads import UnityHead as UnityHead
from .multilabel import MaskTransformer as MaskTransformer, MultiLabelHead as MultiLabelHead
from .multilabel import RankTemperature as RankTemperature, SelectedLabelClassifier as SelectedLabelClassifier
from .projection import ProjectionHead as ProjectionHead
from .memory import FeatureMemory as FeatureMemory
from .dataset_context import ClassHead as ClassHead, ContextFusion as ContextFusion, CrossAttention as CrossAttention
from .dataset_context import DatasetContextAggregation as DatasetContextAggregation
