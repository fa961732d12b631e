"""ops package."""
from .grouping import grouped_class_means as grouped_class_means
from .grouping import random_class_groups as random_class_groups
from .pyramid import fuse_level_map as fuse_level_map
from .pyramid import fuse_pyramid as fuse_pyramid
from .pyramid import level_confusion as level_confusion
from .pyramid import pyramid_targets as pyramid_targets
from .pyramid import relabel_done_by_coarser as relabel_done_by_coarser
from .resample import bilinear_taps as bilinear_taps
from .resample import nearest_labels as nearest_labels
from .selection import labels_to_ranks as labels_to_ranks
from .selection import multi_hot_labels as multi_hot_labels
from .selection import scatter_to_classes as scatter_to_classes
from .selection import select_top_labels as select_top_labels
from .selection import suppress_classes as suppress_classes
