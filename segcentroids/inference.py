"""Test-time inference: turn a model's logits function into logits at the label size.

Three protocols, composable:

- ``whole``: run the model on the (already test-resized) image, resize the logits to the label size.
- ``slide``: windows of ``crop_size`` every ``stride`` pixels (mmsegmentation's grid: the last window of a row or
  column is moved back inside the image); the image is first padded at the bottom/right with 0 (the normalised mean)
  to at least the window size, the overlapping window logits are averaged, and the padding is cropped off
  (``pad_to_window=False``: as mmsegmentation 0.x, a side shorter than the window is taken whole, unpadded, so the
  model sees a smaller window). Windows of every image (and of the flipped copies) are run in batches of
  ``window_batch_size``.
- multi-scale + flip: the image is resized by each ratio of ``scales`` (and flipped when ``flip`` is set), each view
  is run by ``whole`` or ``slide``, and the softmax probabilities at the label size are averaged; the log of the
  average is returned, so ``argmax`` and cross-entropy behave as on logits. Un-flipping swaps the class channels
  listed in ``flip_pairs`` (LIP's left/right parts).

With ``scales == [1.0]`` and ``flip`` off the raw logits are returned (no softmax).

``infer(..., with_image_ids=True)`` calls ``logits_fn(inputs, image_ids)``: ``image_ids`` (int64 ``[n]``, on the
images' device) holds, for each input row (whole image, slide window, scaled or flipped view), the index in
``images`` of the image it comes from (MLSeg's oracle gathers each row's ground-truth classes with it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LogitsFn = Callable[[Tensor], Tensor]
"""``logits_fn(inputs) -> logits``; with ``with_image_ids``: ``logits_fn(inputs, image_ids) -> logits``."""


@dataclass
class InferenceConfig:
    """How validation/test/predict turn images into logits.

    Attributes:
        mode: ``whole`` (one forward per image) or ``slide`` (windows of ``crop_size`` every ``stride``).
        crop_size: slide window ``(height, width)``; required for ``slide``.
        stride: slide step ``(height, width)``; required for ``slide``.
        scales: test ratios applied to the (already test-resized) image, e.g. ``[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]``.
        flip: also run each scale on the horizontally flipped image.
        flip_pairs: class channels swapped when un-flipping logits, e.g. LIP's ``[[14, 15], [16, 17], [18, 19]]``.
        window_batch_size: how many windows (or whole images of one view) go through the model at once.
        pad_to_window: ``slide`` on an image side shorter than the window pads it with 0 (True) or shrinks the
            window to that side (False, mmsegmentation 0.x).
    """

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    window_batch_size: int = 8
    pad_to_window: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference.mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide":
            for key in ("crop_size", "stride"):
                value = getattr(self, key)
                if value is None or len(value) != 2 or min(int(v) for v in value) < 1:
                    raise ValueError(f"inference.{key} must be two positive ints (height, width), got {value!r}")
            self.crop_size = (int(self.crop_size[0]), int(self.crop_size[1]))
            self.stride = (int(self.stride[0]), int(self.stride[1]))
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"inference.scales must be a non-empty list of positive ratios, got {self.scales}")
        self.scales = [float(s) for s in self.scales]
        pairs = []
        for pair in self.flip_pairs:
            if len(pair) != 2 or pair[0] == pair[1] or min(pair) < 0:
                raise ValueError(f"inference.flip_pairs entries must be two different class ids, got {pair}")
            pairs.append((int(pair[0]), int(pair[1])))
        if len({c for p in pairs for c in p}) != 2 * len(pairs):
            raise ValueError(f"inference.flip_pairs must not repeat a class id, got {self.flip_pairs}")
        self.flip_pairs = pairs
        if self.window_batch_size < 1:
            raise ValueError(f"inference.window_batch_size must be >= 1, got {self.window_batch_size}")

    @property
    def augmented(self) -> bool:
        """True when several views are averaged (more than one scale, a scale other than 1, or flip)."""
        return self.flip or self.scales != [1.0]


def slide_windows(
    height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int]]:
    """``(top, left)`` of every window on an image of at least ``crop_size`` (mmsegmentation's slide grid)."""
    crop_h, crop_w = crop_size
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    tops = [max(min(r * stride_h + crop_h, height) - crop_h, 0) for r in range(rows)]
    lefts = [max(min(c * stride_w + crop_w, width) - crop_w, 0) for c in range(cols)]
    return [(top, left) for top in tops for left in lefts]


def _batched(logits_fn: LogitsFn, images: Tensor, batch_size: int, image_ids: Tensor | None = None) -> Tensor:
    """``logits_fn`` over ``images`` in chunks of ``batch_size`` (with each chunk's ``image_ids`` when given)."""
    if image_ids is None:
        return torch.cat([logits_fn(images[start : start + batch_size])
                          for start in range(0, images.shape[0], batch_size)])
    return torch.cat([logits_fn(images[start : start + batch_size], image_ids[start : start + batch_size])
                      for start in range(0, images.shape[0], batch_size)])


def slide_logits(logits_fn: LogitsFn, images: Tensor, config: InferenceConfig,
                 image_ids: Tensor | None = None) -> Tensor:
    """Logits ``[B, K, H, W]`` at the image size, averaged over overlapping windows run in batches.

    Windows of all images go through the model ``window_batch_size`` at a time; each batch's logits are resized to
    the window and added to the image canvas at once, so memory holds one batch of window logits, not all of them.
    With ``image_ids [B]`` (the source image of each row of ``images``) ``logits_fn(windows, ids)`` receives the
    source image of each window.
    """
    batch, _, height, width = images.shape
    crop_h, crop_w = config.crop_size
    if not config.pad_to_window:  # mmseg 0.x: a side shorter than the window is one unpadded window
        crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h), value=0.0) if pad_h or pad_w else images
    full_h, full_w = height + pad_h, width + pad_w
    # (image, top, left) of every window, window-major: all images' first window, then their second...
    jobs = [(index, top, left) for top, left in slide_windows(full_h, full_w, (crop_h, crop_w), config.stride)
            for index in range(batch)]
    total: Tensor | None = None
    count = images.new_zeros(1, 1, full_h, full_w, dtype=torch.float32)
    for _, top, left in jobs[::batch]:
        count[:, :, top : top + crop_h, left : left + crop_w] += 1
    for start in range(0, len(jobs), config.window_batch_size):
        chunk = jobs[start : start + config.window_batch_size]
        crops = torch.stack([padded[i, :, t : t + crop_h, s : s + crop_w] for i, t, s in chunk])
        if image_ids is None:
            logits = logits_fn(crops)
        else:
            logits = logits_fn(crops, image_ids[torch.tensor([i for i, _, _ in chunk], device=image_ids.device)])
        if tuple(logits.shape[-2:]) != (crop_h, crop_w):
            logits = F.interpolate(logits, size=(crop_h, crop_w), mode="bilinear", align_corners=False)
        if total is None:
            total = logits.new_zeros(batch, logits.shape[1], full_h, full_w, dtype=torch.float32)
        for window, (i, t, s) in zip(logits, chunk):
            total[i, :, t : t + crop_h, s : s + crop_w] += window
    return (total / count)[:, :, :height, :width]


def unflip_logits(logits: Tensor, flip_pairs: Sequence[tuple[int, int]]) -> Tensor:
    """Undo a horizontal flip on logits ``[B, K, H, W]``: flip back and swap the left/right class channels."""
    logits = logits.flip(-1)
    if flip_pairs:
        if max(max(pair) for pair in flip_pairs) >= logits.shape[1]:
            raise ValueError(f"inference.flip_pairs {list(flip_pairs)} name a class >= the {logits.shape[1]} classes")
        order = list(range(logits.shape[1]))
        for left, right in flip_pairs:
            order[left], order[right] = right, left
        logits = logits[:, order]
    return logits


def _view_logits(logits_fn: LogitsFn, images: Tensor, config: InferenceConfig,
                 image_ids: Tensor | None = None) -> Tensor:
    """Logits under ``whole`` (at the model's output stride) or ``slide`` (at the input size of ``images``)."""
    if config.mode == "slide":
        return slide_logits(logits_fn, images, config, image_ids)
    return _batched(logits_fn, images, config.window_batch_size, image_ids)


def infer(logits_fn: LogitsFn, images: Tensor, out_size: tuple[int, int], config: InferenceConfig,
          with_image_ids: bool = False) -> Tensor:
    """Logits ``[B, K, *out_size]`` for ``images`` under the test-time protocol ``config``.

    ``with_image_ids``: call ``logits_fn(inputs, image_ids)`` with the index in ``images`` of each input's image."""
    out_size = (int(out_size[0]), int(out_size[1]))
    image_ids = torch.arange(images.shape[0], device=images.device) if with_image_ids else None
    if not config.augmented:
        logits = _view_logits(logits_fn, images, config, image_ids)
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    batch, _, height, width = images.shape
    probs = None
    for scale in config.scales:
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        view = images if size == (height, width) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=False
        )
        view_ids = image_ids
        if config.flip:  # the flipped copies ride in the same batches as the originals
            view = torch.cat([view, view.flip(-1)])
            view_ids = None if image_ids is None else torch.cat([image_ids, image_ids])
        logits = F.interpolate(_view_logits(logits_fn, view, config, view_ids), size=out_size, mode="bilinear",
                               align_corners=False).float()
        if config.flip:
            logits = torch.cat([logits[:batch], unflip_logits(logits[batch:], config.flip_pairs)])
        view_probs = logits.softmax(dim=1)
        if config.flip:
            view_probs = view_probs[:batch] + view_probs[batch:]
        probs = view_probs if probs is None else probs + view_probs
    probs = probs / (len(config.scales) * (2 if config.flip else 1))
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
