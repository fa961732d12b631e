"""MLSeg's independent single-task scheme (Sec. 3, Tables 2-3): a multi-label image classifier trained on its own,
whose frozen scores then select MLSeg's classes (`MLSeg(selector_ckpt=...)`).

`MultiLabelClassifier` is a `Baseline` subclass so that `segcentroids fit` builds, links (`num_classes`,
`ignore_index`, `class_names` from the DataModule), optimises (`OptimConfig`, parameter groups, poly schedule),
checkpoints and records it as every method; its hooks classify images instead of pixels: the image-level target is
the multi-hot of the classes in the (augmented) label map, the loss the asymmetric loss, the evaluation the
multi-label mAP over the classes present in the split (no segmentation metric).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from segcentroids.config_errors import load_class
from segcentroids.losses.asymmetric import AsymmetricLoss
from segcentroids.methods.base import Baseline, ParamGroupRule
from segcentroids.metrics import MultilabelMAP
from segcentroids.nn.multilabel import MultiLabelHead
from segcentroids.ops.selection import multi_hot_labels
from segcentroids.runs import read_checkpoint, scored_state, write_record


class MultiLabelClassifier(Baseline):
    """Encoder (any SegModel; arch `identity` reads the deepest encoder stage, as Query2Label does) + the multi-label
    head xi of `segcentroids.nn.multilabel` + the asymmetric loss (`multilabel`, weight 1).

    `forward(images) -> logits [B, K]`. Validation / test log `<split>/multilabel_mAP` (%, over the classes present
    in the split) and write it to `metrics/<split>.json`; checkpoints should monitor `val/multilabel_mAP` (the
    configs set `checkpoint.monitor`). No `predict` (it outputs no label maps).
    """

    def __init__(
        self,
        multilabel_head: Literal["tran_enc", "tran_dec", "gap_linear"] = "tran_enc",
        embed_dim: int | None = None,
        pool_size: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        head_dropout: float = 0.0,
        gamma_neg: float = 2.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        head_decay_mult: float = 1.0,
        **kwargs,
    ) -> None:
        """
        Args:
            multilabel_head: xi, `tran_enc` | `tran_dec` | `gap_linear` (MLSeg Table 6; Query2Label is `tran_dec`).
            embed_dim: token width of xi (None: the SegModel's `out_channels`).
            pool_size, num_heads, mlp_ratio, head_dropout: xi's pooled grid, attention heads, MLP ratio, dropout.
            gamma_neg, gamma_pos, clip: the asymmetric loss (MLSeg's settings: 2, 0, 0.05).
            head_decay_mult: weight-decay multiplier on xi's parameters.
            **kwargs: `Baseline`'s (segmodel, num_classes, ignore_index, class_names, optim, ...); `aux_weight` and
                `extra_losses` are pixel objectives and are refused.
        """
        super().__init__(**kwargs)
        if self.aux_head is not None or len(self.extra_losses):
            raise ValueError("MultiLabelClassifier classifies images: aux_weight must be 0 and extra_losses empty")
        channels = self.segmodel.out_channels
        self.multilabel_head = MultiLabelHead(channels, self.num_classes, embed_dim or channels, multilabel_head,
                                              pool_size, num_heads, mlp_ratio, head_dropout, class_tokens=False)
        self.multilabel_loss = AsymmetricLoss(gamma_neg, gamma_pos, clip)
        self.loss_weights["multilabel"] = 1.0
        self.param_group_rules.append(ParamGroupRule("multilabel_head", decay_mult=head_decay_mult))
        self.multilabel_map = nn.ModuleDict({split: MultilabelMAP(self.num_classes) for split in ("val", "test")})

    # ----------------------------------------------------------------------------------------------- the model
    def build_classifier(self) -> None:
        """None: the multi-label head xi replaces the pixel classifier."""
        return None

    def head_outputs(self, features: dict, labels: Tensor | None = None) -> dict[str, Tensor]:
        """`decoder` (xi's input) and the image-level `multilabel_logits [B, K]`."""
        return {"decoder": features["decoder"], "multilabel_logits": self.multilabel_head(features["decoder"])[0]}

    def forward(self, images: Tensor) -> Tensor:
        """Multi-label logits `[B, K]`."""
        return self.head_outputs(self.extract_features(images))["multilabel_logits"]

    def method_losses(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """The asymmetric loss against the multi-hot of the classes in the label map."""
        targets = multi_hot_labels(labels, self.num_classes, self.ignore_index)
        return {"multilabel": self.multilabel_loss(outputs["multilabel_logits"], targets)}

    # --------------------------------------------------------------------------------------------- evaluation
    def evaluate_batch(self, batch: dict, split: str) -> dict:
        """One whole-image forward per image; the scores update the split's mAP."""
        images, labels = batch["image"], batch["mask"]
        logits = self(images).float()
        self.multilabel_map[split].update(logits, multi_hot_labels(labels, self.num_classes, self.ignore_index))
        return {"multilabel_logits": logits}

    def end_evaluation(self, split: str) -> None:
        """Logs `<split>/multilabel_mAP` and writes it to `metrics/<split>.json`."""
        meter = self.multilabel_map[split]
        if meter.update_count == 0:  # nothing evaluated
            return
        score = meter.compute()
        meter.reset()
        self.log(f"{split}/multilabel_mAP", score, prog_bar=True)
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        print(f"\n[{split}] epoch {self.current_epoch} step {self.global_step}: multi-label mAP {float(score):.2f}",
              flush=True)
        write_record(self.trainer, split, {"split": split, **scored_state(self.trainer),
                                           "multilabel_mAP": round(float(score), 4)})

    # Lightning's evaluation hooks: image classification replaces the base's segmentation evaluation
    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self.evaluate_batch(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self.evaluate_batch(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.end_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.end_evaluation("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        raise ValueError("MultiLabelClassifier outputs image-level scores, not label maps: use it as MLSeg's "
                         "selector (model.init_args.selector_ckpt) or `segcentroids test` for its mAP")


# -------------------------------------------------------------------------------------------- the selector
class FrozenSelector(nn.Module):
    """A trained `MultiLabelClassifier`, frozen: always in eval mode (whatever `train()` the owner is put in), no
    gradient, `requires_grad=False` (so no optimiser group takes it). `forward(images) -> logits [B, K]` (float32)."""

    def __init__(self, classifier: MultiLabelClassifier, path: str) -> None:
        super().__init__()
        self.path = path
        self.classifier = classifier.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenSelector:
        self.training = mode  # the classifier stays in eval mode (no dropout, no batch-norm statistics update)
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(images).float()


def load_selector(path: str | Path, num_classes: int) -> FrozenSelector:
    """The `MultiLabelClassifier` of a `segcentroids fit` checkpoint, frozen; errors name the file: not a
    checkpoint, not written by a `MultiLabelClassifier` fit, or trained for another number of classes."""
    checkpoint = read_checkpoint(path)  # one line for a missing or damaged file
    hparams = copy.deepcopy(dict(checkpoint.get("hyper_parameters") or {}))
    written = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    cls = load_class(written) if written else None
    if cls is None or not issubclass(cls, MultiLabelClassifier):
        raise ValueError(f"selector_ckpt {path}: written by {written or 'no segcentroids fit'}, not a "
                         f"MultiLabelClassifier fit (train one with configs/experiments/mlseg/multilabel_*.yaml)")
    if hparams.get("num_classes") != num_classes:
        raise ValueError(f"selector_ckpt {path}: the classifier was trained for {hparams.get('num_classes')} "
                         f"classes, this model has {num_classes}")
    segmodel = hparams.get("segmodel")
    if isinstance(segmodel, dict) and isinstance(segmodel.get("init_args"), dict):
        segmodel["init_args"]["encoder_weights"] = None  # the checkpoint holds the weights: no download
    from lightning.pytorch.cli import instantiate_module

    classifier = instantiate_module(cls, hparams)
    classifier.load_state_dict(checkpoint["state_dict"])
    return FrozenSelector(classifier, str(path))
