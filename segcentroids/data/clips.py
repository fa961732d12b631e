"""Video clips: datasets of clips of T frames, their batches, an evaluation sampler that keeps videos whole, and a
synthetic clip generator.

A batch of C clips of T frames is flattened into the project's batch of B = C * T frames in clip order:
``{"image": [B, 3, H, W], "mask": [B, H, W], "name": [B] "<video>/<frame>", "clip": int64 [B] (clip of each frame
within the batch, 0..C-1), "video": [B] video names, "frame": int64 [B] (index of the frame in its video)}``. Every
method trains and evaluates on it frame by frame; a method that works per clip (``MLSegVideo``) reads ``clip``, the
video-consistency metric reads ``video`` (frames of a video arrive in order in evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from segcentroids.data.base import FilePair, SegDataset


@dataclass(frozen=True)
class Video:
    """One video: its name and the frames' ``(image, label)`` file pairs in temporal order."""

    name: str
    pairs: tuple[FilePair, ...]


def videos_of(pairs: Sequence[FilePair], video_of: Callable[[FilePair], str]) -> list[Video]:
    """The pairs grouped into videos (``video_of(pair)`` names a pair's video), in first-seen order; pairs of a
    video keep their order."""
    grouped: dict[str, list[FilePair]] = {}
    for pair in pairs:
        grouped.setdefault(video_of(pair), []).append(pair)
    return [Video(name, tuple(frames)) for name, frames in grouped.items()]


class ClipDataset(Dataset):
    """Clips of frames of videos; each item is one clip ``{"image": [T, 3, H, W], "mask": [T, H, W], "name": [T],
    "video": str, "frame": int64 [T]}`` (``collate_clips`` flattens a list of them).

    Training (``training=True``): one clip per frame of the split; clip ``i`` starts at the ``i``-th frame (videos
    in order) and takes ``clip_length`` frames ``clip_stride`` apart, moved back to end on the video's last frame
    when it would run past it (a video shorter than the clip repeats its last frame). All frames of a clip go through
    ``transform`` together (``images=``/``masks=``; the first frame's label as ``mask`` drives the cat-max-ratio
    crop), so they get the same resize, crop, flip and photometric distortion.

    Evaluation (``training=False``): each video cut into consecutive clips of ``clip_length`` frames (the last one
    shorter), in video order; ``transform`` sees the images only and the labels keep their stored size.

    Frames are read and checked by ``frames`` (a ``SegDataset`` over every pair of the split, in video order).
    """

    def __init__(self, videos: Sequence[Video], frames: SegDataset, transform: Callable, clip_length: int = 1,
                 clip_stride: int = 1, training: bool = False) -> None:
        if clip_length < 1 or clip_stride < 1:
            raise ValueError(f"clip_length and clip_stride must be >= 1, got {clip_length} and {clip_stride}")
        self.videos = list(videos)
        self.frames = frames
        self.transform = transform
        self.clip_length = clip_length
        self.clip_stride = clip_stride
        self.training = training
        self.first_frame = np.cumsum([0] + [len(video.pairs) for video in self.videos])  # index in `frames`
        if len(self.frames) != self.first_frame[-1]:
            raise ValueError(f"{len(self.frames)} frames for videos holding {self.first_frame[-1]}")
        # every clip: (video index, frame indices within the video)
        self.clips: list[tuple[int, tuple[int, ...]]] = []
        for index, video in enumerate(self.videos):
            count = len(video.pairs)
            if training:
                span = (clip_length - 1) * clip_stride
                for start in range(count):
                    first = max(0, min(start, count - 1 - span))
                    self.clips.append((index, tuple(min(first + k * clip_stride, count - 1)
                                                    for k in range(clip_length))))
            else:
                for start in range(0, count, clip_length):
                    self.clips.append((index, tuple(range(start, min(start + clip_length, count)))))

    def __len__(self) -> int:
        return len(self.clips)

    def video_of_clip(self, index: int) -> int:
        """Index of the video clip ``index`` belongs to."""
        return self.clips[index][0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_index, frame_indices = self.clips[index]
        video = self.videos[video_index]
        loaded = [self.frames.load(int(self.first_frame[video_index]) + i) for i in frame_indices]
        images = np.stack([image for image, _ in loaded])
        labels = np.stack([label for _, label in loaded])
        if self.training:
            out = self.transform(images=images, masks=labels, mask=labels[0])
            image, mask = out["images"], torch.as_tensor(out["masks"]).long()
        else:
            image, mask = self.transform(images=images)["images"], torch.from_numpy(labels).long()
        return {
            "image": torch.as_tensor(image),
            "mask": mask,
            "name": [f"{video.name}/{video.pairs[i][0].stem}" for i in frame_indices],
            "video": video.name,
            "frame": torch.tensor(frame_indices, dtype=torch.long),
        }


def collate_clips(clips: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A list of clip items -> one batch of their frames in clip order, with ``clip``, ``video`` and ``frame`` per
    frame (the module docstring gives the keys)."""
    lengths = [clip["image"].shape[0] for clip in clips]
    return {
        "image": torch.cat([clip["image"] for clip in clips]),
        "mask": torch.cat([clip["mask"] for clip in clips]),
        "name": [name for clip in clips for name in clip["name"]],
        "clip": torch.repeat_interleave(torch.arange(len(clips)), torch.tensor(lengths)),
        "video": [clip["video"] for clip, length in zip(clips, lengths) for _ in range(length)],
        "frame": torch.cat([clip["frame"] for clip in clips]),
    }


class VideoShardSampler(DistributedSampler):
    """Evaluation sampler: each process gets whole videos, in order, never shuffled.

    Videos are dealt in order into ``num_replicas`` contiguous runs of about equal frame counts; process ``rank``
    iterates the clips of its run. Per-video metrics (``VideoConsistency``) are then exact under DDP. It is a
    ``DistributedSampler``, so Lightning keeps it instead of cutting the split into interleaved items (which would
    break every video). Processes may get different numbers of clips; no item is repeated or dropped.
    """

    def __init__(self, dataset: ClipDataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        sizes = [len(video.pairs) for video in dataset.videos]
        total = max(sum(sizes), 1)
        starts = np.cumsum([0] + sizes[:-1])
        owner = [min(num_replicas - 1, math.floor(start * num_replicas / total)) for start in starts]
        self.indices = [i for i in range(len(dataset)) if owner[dataset.video_of_clip(i)] == rank]
        self.num_samples = len(self.indices)
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


# --------------------------------------------------------------------------------------------- synthetic clips
def synthetic_clip(num_frames: int = 4, size: tuple[int, int] = (32, 32), num_classes: int = 6, num_shapes: int = 3,
                   seed: int = 0, speed: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """A clip of moving shapes: uint8 RGB frames ``[T, H, W, 3]`` and labels ``[T, H, W]`` (class ids
    ``0..num_classes - 1``).

    Class 0 is a static background; each of ``num_shapes`` discs and boxes has a class in ``1..num_classes - 1`` and
    a constant velocity (``speed`` pixels per frame at most, along each axis), drawn later over earlier; colours are
    per class, plus pixel noise. Deterministic in ``seed``.
    """
    if num_classes < 2:
        raise ValueError(f"synthetic_clip needs num_classes >= 2 (background and shapes), got {num_classes}")
    rng = np.random.default_rng(seed)
    height, width = size
    colours = np.random.default_rng(1234).integers(30, 226, (num_classes, 3))
    rows, cols = np.mgrid[0:height, 0:width]
    shapes = []
    for _ in range(num_shapes):
        shapes.append({
            "cls": int(rng.integers(1, num_classes)),
            "disc": bool(rng.random() < 0.5),
            "centre": rng.uniform([0.2 * height, 0.2 * width], [0.8 * height, 0.8 * width]),
            "velocity": rng.uniform(-speed, speed, 2),
            "radius": float(rng.uniform(0.12, 0.25) * min(height, width)),
        })
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    labels = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        for shape in shapes:
            y, x = shape["centre"] + t * shape["velocity"]
            if shape["disc"]:
                inside = (rows - y) ** 2 + (cols - x) ** 2 <= shape["radius"] ** 2
            else:
                inside = (np.abs(rows - y) <= shape["radius"]) & (np.abs(cols - x) <= shape["radius"])
            labels[t][inside] = shape["cls"]
        noise = rng.normal(0.0, 6.0, (height, width, 3))
        frames[t] = np.clip(colours[labels[t]] + noise, 0, 255).astype(np.uint8)
    return frames, labels
