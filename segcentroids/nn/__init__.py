"""nn package."""
from .centroids import Centroids as Centroids
from .dataset_context import ClassHead as ClassHead
from .dataset_context import ContextFusion as ContextFusion
from .dataset_context import CrossAttention as CrossAttention
from .dataset_context import DatasetContextAggregation as DatasetContextAggregation
from .heads import FCNHead as FCNHead
from .memory import FeatureMemory as FeatureMemory
from .multilabel import MaskTransformer as MaskTransformer
from .multilabel import MultiLabelHead as MultiLabelHead
from .multilabel import RankTemperature as RankTemperature
from .multilabel import SelectedLabelClassifier as SelectedLabelClassifier
from .projection import ProjectionHead as ProjectionHead
from .pyramid_heads import PyramidPool as PyramidPool
from .pyramid_heads import SemanticPyramidHead as SemanticPyramidHead
from .pyramid_heads import UnityHead as UnityHead
from .sync_batchnorm import GlobalBatchNorm as GlobalBatchNorm
from .sync_batchnorm import GlobalBatchNormSync as GlobalBatchNormSync
