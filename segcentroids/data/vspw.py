"""VSPW (Miao et al., CVPR 2021): video scene parsing, 124 classes, clips of frames for training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from segcentroids.data.base import SegDataModule, SegDataset, init_loader_worker, map_with_table
from segcentroids.data.clips import ClipDataset, VideoShardSampler, collate_clips, videos_of
from segcentroids.data.labels import generated_palette, reduce_zero_table
from segcentroids.data.layouts import SplitScan, scan_folders

VSPW_TABLE = reduce_zero_table(124)

# The 124 classes of VSPW in stored-id order 1..124 (0 is "others", 255 void), as named by the dataset's
# `label_num_dic_final.json` (VSPW_480p release; the same list is in the VSPW authors' code and in detectron2-style
# registrations of VSPW used by video Mask2Former forks). Written out here, not downloaded.
VSPW_CLASSES = (
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide", "handrail_or_fence", "window",
    "rail", "goal", "pillar", "pole", "floor", "ground", "grass", "sand", "athletic_field", "road", "path",
    "crosswalk", "building", "house", "bridge", "tower", "windmill", "well_or_well_lid", "other_construction", "sky",
    "mountain", "stone", "wood", "ice", "snowfield", "grandstand", "sea", "river", "lake", "waterfall", "water",
    "billboard_or_Bulletin_Board", "sculpture", "pipeline", "flag", "parasol_or_umbrella", "cushion_or_carpet",
    "tent", "roadblock", "car", "bus", "truck", "bicycle", "motorcycle", "wheeled_machine", "ship_or_boat", "raft",
    "airplane", "tyre", "traffic_light", "lamp", "person", "cat", "dog", "horse", "cattle", "other_animal", "tree",
    "flower", "other_plant", "toy", "ball_net", "backboard", "skateboard", "bat", "ball",
    "cupboard_or_showcase_or_storage_rack", "box", "traveling_case_or_trolley_case", "basket", "bag_or_package",
    "trash_can", "cage", "plate", "tub_or_bowl_or_pot", "bottle_or_cup", "barrel", "fishbowl", "bed", "pillow",
    "table_or_desk", "chair_or_seat", "bench", "sofa", "shelf", "bathtub", "gun", "commode", "roaster",
    "other_machine", "refrigerator", "washing_machine", "Microwave_oven", "fan", "curtain", "textiles", "clothes",
    "painting_or_poster", "mirror", "flower_pot_or_vase", "clock", "book", "tool", "blackboard", "tissue",
    "screen_or_television", "computer", "printer", "Mobile_phone", "keyboard", "other_electronic_product", "fruit",
    "food", "instrument", "train",
)  # fmt: skip
assert len(VSPW_CLASSES) == 124


class VSPWDataModule(SegDataModule):
    """VSPW in its 480p release layout: ``VSPW_480p/data/<video>/origin/*.jpg``, ``data/<video>/mask/*.png`` and
    ``train.txt`` / ``val.txt`` / ``test.txt`` listing the videos of each split.

    ``root`` is the ``VSPW_480p`` folder (or the folder holding it). Labels: stored 1..124 -> 0..123; 0 ("others")
    and 255 (void) -> ignore. ``test`` reads ``val.txt`` by default (the test masks are not public; the MLSeg paper
    reports val): ``test_split="test"`` reads ``test.txt``.

    Training batches hold ``batch_size`` clips of ``clip_length`` frames (``clip_stride`` apart) with one
    augmentation per clip, flattened to ``batch_size * clip_length`` frames (``segcentroids.data.clips``: the batch
    carries ``clip``, ``video`` and ``frame``). Evaluation goes through every frame of every video in order, in clips
    of ``eval_clip_length`` frames (default ``clip_length``), ``val_batch_size`` clips per batch; under DDP each
    process holds whole videos (``VideoShardSampler``), so the video consistency VC_8 / VC_16 is exact. With the
    ``segcentroids`` command the ``VideoConsistencyLogger`` callback (``evaluation_callbacks``) is added and logs
    ``<split>/VC_8`` and ``<split>/VC_16``; with a Trainer of your own, add it to its callbacks.
    """

    CLASS_NAMES = VSPW_CLASSES
    PALETTE = generated_palette(125)[1:]
    SPLIT_LISTS = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
    SPLIT_SIZES = {"train": 198244, "val": 24502}  # frames (2,806 and 343 videos)

    def __init__(
        self,
        root: str | Path,
        clip_length: int = 2,
        clip_stride: int = 1,
        eval_clip_length: int | None = None,
        test_split: Literal["val", "test"] = "val",
        vc_windows: tuple[int, ...] = (8, 16),
        batch_size: int = 4,
        crop_size: int | tuple[int, int] = (480, 480),
        scale: tuple[int, int] | None = (853, 480),
        test_scale: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            clip_length: T, frames of a training clip (MLSeg's VSPW runs: T = 2).
            clip_stride: frame step within a training clip (1: consecutive frames).
            eval_clip_length: frames of an evaluation clip (None: ``clip_length``); a clip-level method selects
                per evaluation clip.
            test_split: the list ``test`` reads, ``val`` (default) or ``test``.
            vc_windows: the n of the VC_n the evaluation callback reports.
            batch_size: training clips per batch (``batch_size * clip_length`` frames).
        """
        super().__init__(root=root, batch_size=batch_size, crop_size=crop_size, scale=scale, test_scale=test_scale,
                         **kwargs)
        if test_split not in ("val", "test"):
            raise ValueError(f"VSPW test_split must be 'val' or 'test', got {test_split!r}")
        if clip_length < 1 or clip_stride < 1 or (eval_clip_length is not None and eval_clip_length < 1):
            raise ValueError(f"VSPW clip_length, clip_stride and eval_clip_length must be >= 1, got {clip_length}, "
                             f"{clip_stride}, {eval_clip_length}")
        self.clip_length = clip_length
        self.clip_stride = clip_stride
        self.eval_clip_length = clip_length if eval_clip_length is None else eval_clip_length
        self.test_split = test_split
        self.vc_windows = tuple(vc_windows)
        self._checked: set[str] = set()

    @property
    def dataset_dir(self) -> Path:
        """The ``VSPW_480p`` folder."""
        nested = self.root / "VSPW_480p"
        return nested if nested.is_dir() else self.root

    def list_file(self, split: str) -> Path:
        if split not in self.SPLIT_LISTS:
            raise ValueError(f"VSPW split must be one of {sorted(self.SPLIT_LISTS)}, got {split!r}")
        return self.dataset_dir / self.SPLIT_LISTS[self.test_split if split == "test" else split]

    def video_names(self, split: str) -> list[str]:
        """The videos ``split``'s list file names, in its order."""
        path = self.list_file(split)
        if not path.is_file():
            raise FileNotFoundError(f"split list {path} does not exist")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def scan_split(self, split: str) -> SplitScan:
        """Every frame of the split's videos: ``data/<video>/origin/<frame>.jpg`` paired with ``mask/<frame>.png``
        (frames in name order, videos in list order); a listed video without its folders is ``missing``."""
        base = self.dataset_dir / "data"
        scan = SplitScan(where=f"{self.list_file(split)} and {base}")
        for video in self.video_names(split):
            origin, mask = base / video / "origin", base / video / "mask"
            if not origin.is_dir() or not mask.is_dir():
                scan.missing.append(f"{video} (no {origin if not origin.is_dir() else mask})")
                continue
            found = scan_folders(origin, mask, (".jpg", ".jpeg"), (".png",))
            scan.pairs += found.pairs
            scan.unlabelled += found.unlabelled
            scan.orphans += found.orphans
            scan.duplicates += found.duplicates
        return scan

    @staticmethod
    def map_labels(raw: np.ndarray) -> np.ndarray:
        """0 ("others") and 255 -> 255, k -> k-1 for k in 1..124, anything else -> -1 (undefined)."""
        return map_with_table(raw, VSPW_TABLE)

    # --------------------------------------------------------------------------------------------- datasets
    def build_dataset(self, split: str) -> ClipDataset:
        """Clips of the split's videos: training clips with the training pipeline for "train", consecutive
        evaluation clips otherwise."""
        if self.root is None:
            raise ValueError(f"{type(self).__name__} needs root, the dataset folder")
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root {self.root} does not exist or is not a folder")
        training = split == "train"
        pairs = self.list_split(split)
        transform = self.train_transform() if training else self.test_transform()
        frames = SegDataset(pairs, self.map_labels, self.num_classes, transform, transform_mask=training,
                            ignore_index=self.ignore_index)
        videos = videos_of(pairs, lambda pair: pair[0].parent.parent.name)
        return ClipDataset(videos, frames, transform, clip_length=self.clip_length if training else
                           self.eval_clip_length, clip_stride=self.clip_stride if training else 1, training=training)

    def setup(self, stage: str | None = None) -> None:
        """The base's datasets, then the frame checks of the base (``check_files``: every frame of the splits the
        stage uses; otherwise a fit verifies the val frames)."""
        super().setup(stage)
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(stage or "fit", [])
        for split in needed:
            dataset = self.datasets.get(split)
            full_check = self.check_files or (split == "val" and stage in (None, "fit"))
            if isinstance(dataset, ClipDataset) and full_check and split not in self._checked:
                self.check_dataset(dataset.frames, split, full=self.check_files)
                self._checked.add(split)

    # ---------------------------------------------------------------------------------------------- loaders
    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _clip_loader(self, split: str, batch_size: int, training: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        dataset = self.datasets[split]
        common = {"num_workers": self.num_workers, "persistent_workers": self.persistent_workers,
                  "pin_memory": self.pin_memory, "worker_init_fn": init_loader_worker, "collate_fn": collate_clips}
        if training:
            return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                              drop_last=len(dataset) >= batch_size, **common)
        num_replicas, rank = self._replicas()
        return DataLoader(dataset, batch_size=batch_size, sampler=VideoShardSampler(dataset, num_replicas, rank),
                          **common)

    def train_dataloader(self) -> DataLoader:
        return self._clip_loader("train", self.batch_size, training=True)

    def val_dataloader(self) -> DataLoader:
        return self._clip_loader("val", self.val_batch_size, training=False)

    def test_dataloader(self) -> DataLoader:
        return self._clip_loader("test", self.val_batch_size, training=False)

    def evaluation_callbacks(self) -> list[L.Callback]:
        """Callbacks the ``segcentroids`` command adds to the Trainer: the VC_n of ``vc_windows`` on val and test."""
        from segcentroids.callbacks.video_consistency import VideoConsistencyLogger

        return [VideoConsistencyLogger(windows=self.vc_windows, ignore_index=self.ignore_index)]
