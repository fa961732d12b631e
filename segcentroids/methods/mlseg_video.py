"""MLSeg on video clips: video-level multi-label classification and label selection shared by a clip's frames.

The paper (Sec. 1, Fig. 3c, Table 9) decomposes video segmentation into video-level multi-label classification and
selected-label classification, and trains and evaluates VSPW on clips of T = 2 frames: the multi-label target is the
set of classes of the clip, and one selection serves all its frames. Its VSPW model is Mask2Former, whose queries see
all frames of a clip at once; on a per-frame SegModel (frames through the encoder as one batch) this module pools xi
over the clip instead: the multi-label logits and the refined class tokens of the clip's frames are averaged, so
every frame of a clip gets the same scores, the same top-kappa classes and the same class embeddings for psi. With
one frame per clip it is `MLSeg` exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from segcentroids.methods.mlseg import MLSeg
from segcentroids.ops.selection import multi_hot_labels


def same_clip(clips: Tensor) -> Tensor:
    """`[B, B]` bool: frames i and j belong to one clip (`clips [B]`, any ids, in any order)."""
    return clips[:, None] == clips[None, :]


def clip_mean(values: Tensor, clips: Tensor) -> Tensor:
    """Each row of `values [B, ...]` replaced by the mean of the rows of its clip: one `[B, B]` product (no host
    sync, any clip sizes)."""
    share = same_clip(clips).to(values.dtype)
    pooled = share @ values.reshape(values.shape[0], -1) / share.sum(dim=1, keepdim=True)
    return pooled.reshape(values.shape)


def clip_union(targets: Tensor, clips: Tensor) -> Tensor:
    """Multi-hot `targets [B, K]` -> each row the union of its clip's rows."""
    return (clip_mean(targets.float(), clips) > 0).to(targets.dtype)


def clip_shares(clips: Tensor) -> Tensor:
    """`[B]`: 1 / the number of frames of each frame's clip, so that every clip weighs 1 in a sum over frames."""
    return 1.0 / same_clip(clips).sum(dim=1).float()


class MLSegVideo(MLSeg):
    """`MLSeg` with the selection made per clip (video-level multi-label classification).

    Reads the clip of every frame from the batch (`batch["clip"]`, `segcentroids.data.clips.collate_clips`):

    - training: xi's logits and class tokens averaged over each clip's frames; the multi-label loss is the
      asymmetric loss of each clip's scores against the union of its frames' classes (one row per clip); psi scores
      every frame over its clip's top-kappa classes; the oracle (`oracle_train`) keeps the clip's classes;
    - evaluation: each clip of the batch is inferred on its own with its frames sharing xi's pooled output, when
      `inference.mode` is `whole` (a clip that one forward cannot hold, `inference.window_batch_size` < its frames,
      or multi-scale / flip views, is an error naming the settings); with sliding windows every window selects its
      own classes, as in `MLSeg`. The multi-label metrics score each
      frame's own classes against its clip's scores;
    - `forward` / predict: per image (no clips).

    `clip_level_selection=False`, or batches without `clip`, give `MLSeg` (per-frame selection).
    """

    def __init__(self, clip_level_selection: bool = True, **kwargs) -> None:
        """
        Args:
            clip_level_selection: share xi's scores, the selection and the multi-label target within a clip.
            **kwargs: `MLSeg`'s arguments.
        """
        super().__init__(**kwargs)
        if self.selector is not None:  # its scores are per frame: no silent per-frame selection in a clip model
            raise ValueError("MLSegVideo does not take selector_ckpt (the frozen selector's scores are not shared "
                             "within a clip); use MLSeg")
        self.clip_level_selection = clip_level_selection
        self._clips: Tensor | None = None  # clip of each image of the forwards in progress
        self._eval_clips: Tensor | None = None

    @contextmanager
    def sharing_clips(self, clips: Tensor | None) -> Iterator[None]:
        """Forwards of `len(clips)` images inside the block pool xi over the images of a clip."""
        previous, self._clips = self._clips, clips if self.clip_level_selection else None
        try:
            yield
        finally:
            self._clips = previous

    def _active_clips(self, batch: int) -> Tensor | None:
        clips = self._clips
        return clips if clips is not None and clips.numel() == batch else None

    # ----------------------------------------------------------------------------------------------- the model
    def multilabel_outputs(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """xi's logits and class tokens, averaged over each clip's frames."""
        scores, class_tokens = super().multilabel_outputs(features)
        clips = self._active_clips(scores.shape[0])
        if clips is None:
            return scores, class_tokens
        clips = clips.to(scores.device)
        return clip_mean(scores, clips), None if class_tokens is None else clip_mean(class_tokens, clips)

    def select_and_classify(self, features: Tensor, oracle_targets: Tensor | None = None,
                            multilabel_features: Tensor | None = None, selector_scores: Tensor | None = None
                            ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """`MLSeg.select_and_classify`; the oracle keeps the classes of the whole clip."""
        clips = self._active_clips(features.shape[0])
        if oracle_targets is not None and clips is not None:
            oracle_targets = clip_union(oracle_targets, clips.to(oracle_targets.device))
        return super().select_and_classify(features, oracle_targets, multilabel_features, selector_scores)

    def method_losses(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """`MLSeg`'s losses; the multi-label term weighs every clip once, its scores against the union of its frames'
        classes (the frames of a clip share both, so this is the mean over clips)."""
        losses = super().method_losses(outputs, labels)
        clips = self._active_clips(labels.shape[0])
        if "multilabel_logits" in outputs and clips is not None:
            clips = clips.to(labels.device)
            targets = clip_union(multi_hot_labels(labels, self.num_classes, self.ignore_index), clips)
            losses["multilabel"] = self.multilabel_loss(outputs["multilabel_logits"], targets, clip_shares(clips))
        return losses

    # ------------------------------------------------------------------------------------------------ the steps
    def training_step(self, batch: dict, batch_idx: int) -> dict:
        with self.sharing_clips(batch.get("clip")):
            return super().training_step(batch, batch_idx)

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        self._eval_clips = batch.get("clip")
        try:
            return super().validation_step(batch, batch_idx)
        finally:
            self._eval_clips = None

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        self._eval_clips = batch.get("clip")
        try:
            return super().test_step(batch, batch_idx)
        finally:
            self._eval_clips = None

    def _check_one_forward(self, frames: int) -> None:
        """Clip-level selection in evaluation needs each clip in one plain forward; anything else would select per
        frame without saying so."""
        if self.inference.augmented or frames > self.inference.window_batch_size:
            raise ValueError(f"MLSegVideo: clip_level_selection in evaluation runs a clip's {frames} frames in one "
                             f"whole-image forward: needs inference.window_batch_size >= {frames} (got "
                             f"{self.inference.window_batch_size}) and no multi-scale or flip (scales="
                             f"{list(self.inference.scales)}, flip={self.inference.flip}); or set "
                             f"clip_level_selection=false")

    def evaluation_outputs(self, images: Tensor, labels: Tensor, split: str) -> tuple[Tensor, dict[str, Tensor]]:
        """`MLSeg.evaluation_outputs` clip by clip, each clip's frames sharing xi's pooled output (whole-image
        inference)."""
        clips = self._eval_clips
        if clips is None or not self.clip_level_selection or self.inference.mode != "whole":
            return super().evaluation_outputs(images, labels, split)
        clips = clips.to(images.device)
        results = []
        for clip in torch.unique_consecutive(clips):
            frames = (clips == clip).nonzero().flatten()
            self._check_one_forward(frames.numel())
            with self.sharing_clips(torch.zeros(frames.numel(), dtype=torch.long, device=images.device)):
                results.append(super().evaluation_outputs(images[frames], labels[frames], split))
        preds = torch.cat([preds for preds, _ in results])
        extras = {name: torch.cat([extra[name] for _, extra in results]) for name in results[0][1]}
        return preds, extras
