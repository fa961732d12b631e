"""DataModules (``SegDataModule`` and one per dataset), datasets and the albumentations pipelines."""

from segcentroids.data.ade20k import ADE20KDataModule
from segcentroids.data.ade20k_full import ADE20KFullDataModule
from segcentroids.data.base import ImageFolderDataset, SegDataModule, SegDataset
from segcentroids.data.camvid import CamVidDataModule
from segcentroids.data.cihp import CIHPDataModule
from segcentroids.data.cityscapes import CityscapesDataModule
from segcentroids.data.coco_lvis import COCOLVISDataModule
from segcentroids.data.coco_stuff import COCOStuff10kDataModule, COCOStuff164kDataModule
from segcentroids.data.lip import LeftRightFlip, LIPDataModule
from segcentroids.data.pascal_context import PascalContext59DataModule, PascalContext60DataModule
from segcentroids.data.synthetic import SyntheticDataModule, SyntheticDataset
from segcentroids.data.transforms import (
    CatMaxRatioCrop,
    KeepRatioResize,
    LookupNormalize,
    PhotoMetricDistortion,
    build_test_transform,
    build_train_transform,
)
from segcentroids.data.vspw import VSPWDataModule

__all__ = [
    "ADE20KDataModule",
    "ADE20KFullDataModule",
    "COCOStuff10kDataModule",
    "COCOStuff164kDataModule",
    "CIHPDataModule",
    "CityscapesDataModule",
    "COCOLVISDataModule",
    "LIPDataModule",
    "LeftRightFlip",
    "PascalContext59DataModule",
    "PascalContext60DataModule",
    "CamVidDataModule",
    "CatMaxRatioCrop",
    "ImageFolderDataset",
    "KeepRatioResize",
    "LookupNormalize",
    "PhotoMetricDistortion",
    "SegDataModule",
    "SegDataset",
    "SyntheticDataModule",
    "SyntheticDataset",
    "VSPWDataModule",
    "build_test_transform",
    "build_train_transform",
]
