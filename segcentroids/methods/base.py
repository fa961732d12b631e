"""Baseline: the shared training, evaluation and prediction path every method builds on.

A method subclasses `Baseline`, builds its paper's modules and overrides the hooks the class docstring lists; the
base weights its named loss terms (`self.loss_weights`), sums and logs them (`train/loss/<name>`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn

from segcentroids.inference import InferenceConfig, infer
from segcentroids.losses.extra import ExtraLoss, LossContext
from segcentroids.metrics import SegmentationMetrics, format_table
from segcentroids.models import SegModel
from segcentroids.nn.heads import FCNHead
from segcentroids.plots import confusion_figure, png_bytes, rgb_array
from segcentroids.runs import scored_state, tensorboard_of, write_metrics_file, write_record


@dataclass
class OptimConfig:
    """Optimiser and poly learning-rate schedule (stepped every iteration).

    `lr_mults` / `decay_mults` map a parameter-name prefix (e.g. `segmodel.decoder`) to a multiplier of the base
    lr / weight decay. Norm weights, biases and embeddings (position embeddings, class tokens) get no weight decay
    when `no_decay_norm_bias_embed` is set. The lr follows mmsegmentation's poly rule
    `(lr - min_lr) * (1 - t / T) ** power + min_lr` after an optional linear warm-up from `warmup_ratio * lr`.
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    encoder_lr_mult: float = 1.0
    lr_mults: dict[str, float] = field(default_factory=dict)
    decay_mults: dict[str, float] = field(default_factory=dict)
    no_decay_norm_bias_embed: bool = True
    poly_power: float = 0.9
    min_lr: float = 1e-4
    warmup_steps: int = 0
    warmup_ratio: float = 1e-6


@dataclass
class ParamGroupRule:
    """Multiplies lr and weight decay of every parameter whose name starts with `prefix`."""

    prefix: str
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass
class MethodScores:
    """A method's own scores of one evaluation epoch: `scalars` are logged as `<split>/<name>`; each of `records`
    (`name: (record, text)`) is written to `metrics/<split>_<name>.json` (NaN as null) and `text` printed; each of
    `files` (`file name: text or bytes`, e.g. a CSV table or a PNG plot) is written as `metrics/<split>_<file name>`."""

    scalars: dict[str, Tensor | float] = field(default_factory=dict)
    records: dict[str, tuple[dict, str]] = field(default_factory=dict)
    files: dict[str, str | bytes] = field(default_factory=dict)


OCR_REGION_WEIGHT = 0.4  # mmseg's OCRNet: CE on the soft object regions, weight 0.4
_NO_DECAY_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.Embedding)
_EMBEDDING_NAMES = ("pos_embed", "cls_token", "position_embedding", "absolute_pos_embed", "relative_position")


def poly_lr_factor(step: int, total_steps: int, config: OptimConfig) -> float:
    """Multiplier of the base lr at `step` (poly decay to `min_lr` with optional linear warm-up)."""
    total = max(total_steps, 1)
    progress = min(step, total) / total
    min_ratio = config.min_lr / config.lr if config.lr > 0 else 0.0
    factor = (1.0 - min_ratio) * (1.0 - progress) ** config.poly_power + min_ratio
    if step < config.warmup_steps:
        k = (1.0 - step / config.warmup_steps) * (1.0 - config.warmup_ratio)
        factor *= 1.0 - k
    return factor


class Baseline(L.LightningModule):
    """SegModel + classifier (dropout, 1x1 conv) trained with cross-entropy; the reference for every method.

    The template: the base owns the training step, the evaluation steps, the auxiliary losses, the weighting and
    summing of loss terms, the outputs dict, the plug-in losses and the metric records. A method overrides only
    these hooks (docs/architecture.md shows who calls which):

    - `build_classifier()`: the module behind `classify` (None when the method's heads replace it);
    - `head_outputs(features, labels)`: the SegModel's features -> named outputs with `decoder` (the classifier's
      input) and `logits`; `forward` and the training step both use it;
    - `method_losses(outputs, labels)`: the method's named, unweighted loss terms (default: `ce`);
    - `prepare_inputs(images, labels)`: the training batch before the SegModel (default: unchanged);
    - `extract_features(images)`: the features dict `head_outputs` reads (default: the SegModel's);
    - `evaluation_outputs(images, labels, split)`: the predicted classes at the label size and named extras
      (returned by the step, e.g. for callbacks), default: the argmax of `infer` under the test-time protocol;
    - `update_method_metrics(split, labels, outputs)` / `method_scores(split)`: the method's own evaluation
      metrics, which the base logs and writes beside its own;
    - `feature_channels`: the channels of `outputs["decoder"]` (what plug-in losses build on).
    """

    def __init__(
        self,
        segmodel: SegModel,
        num_classes: int = 8,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        dropout: float = 0.1,
        aux_weight: float = 0.0,
        optim: OptimConfig = OptimConfig(),  # noqa: B008 - copied below, never mutated
        inference: InferenceConfig = InferenceConfig(),  # noqa: B008 - copied below, never mutated
        extra_losses: list[ExtraLoss] | None = None,
    ) -> None:
        """
        Args:
            segmodel: encoder + decoder giving the features the classifier reads.
            num_classes, ignore_index, class_names: linked from the DataModule by the CLI.
            dropout: dropout before the 1x1 classifier.
            aux_weight: weight of the auxiliary FCN head on the encoder's third stage (0 = no head; 0.4 in the
                paper configs).
            optim: optimiser, parameter groups and poly schedule.
            inference: test-time protocol for validation, test and predict.
            extra_losses: plug-in objectives added to the method's own losses (e.g. PNE on any method).
        """
        super().__init__()
        # Under LightningCLI the hyper-parameters are the parsed config (plain data, segmodel included), which lets a
        # checkpoint be re-instantiated; built by hand, the module arguments are left out of them. A method's hooks
        # read its own arguments from `self.hparams` while the base builds (they are set before the base's body).
        built_by_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if built_by_cli else ["segmodel", "extra_losses"])
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.segmodel = segmodel
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.dropout = dropout
        self.optim = dataclasses.replace(optim)
        self.inference = dataclasses.replace(inference)
        self.classifier = self.build_classifier()
        self.aux_head = FCNHead(segmodel.aux_channels, num_classes) if aux_weight > 0 else None
        self.loss_weights: dict[str, float] = {"ce": 1.0, "aux": aux_weight, "soft_regions": OCR_REGION_WEIGHT}
        self.param_group_rules: list[ParamGroupRule] = [
            ParamGroupRule("segmodel.encoder", lr_mult=self.optim.encoder_lr_mult)
        ]
        self.param_group_rules += [ParamGroupRule(p, lr_mult=m) for p, m in self.optim.lr_mults.items()]
        self.param_group_rules += [ParamGroupRule(p, decay_mult=m) for p, m in self.optim.decay_mults.items()]
        self.extra_losses = nn.ModuleList(extra_losses or [])
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index)

        self._build_extra_losses()

    def _build_extra_losses(self) -> None:
        """Builds the plug-in losses for this method's features and merges their weights into `loss_weights`."""
        context = LossContext(self.feature_channels, self.num_classes, self.ignore_index, self._log_extra,
                              self._current_step)
        for extra in self.extra_losses:
            extra.build(context)
            taken = sorted(set(extra.weights) & set(self.loss_weights))
            if taken:
                raise ValueError(f"extra_losses: {type(extra).__name__} names its loss terms {taken}, which another "
                                 f"loss term already uses; each term needs its own name (taken: "
                                 f"{sorted(self.loss_weights)})")
            self.loss_weights.update(extra.weights)

    def _log_extra(self, name: str, value: Tensor, batch_size: int) -> None:
        if self._trainer is not None:
            self.log(name, value, batch_size=batch_size)

    def _current_step(self) -> int:
        return self.global_step

    # ------------------------------------------------------------------------------------------ method hooks
    def build_classifier(self) -> nn.Module | None:
        """The classifier `classify` applies to `outputs["decoder"]`: dropout + 1x1 conv to K classes."""
        return nn.Sequential(nn.Dropout2d(self.dropout), nn.Conv2d(self.segmodel.out_channels, self.num_classes, 1))

    @property
    def feature_channels(self) -> int:
        """Channels of `outputs["decoder"]`, the classifier's input."""
        return self.segmodel.out_channels

    def classify(self, features: Tensor) -> Tensor:
        """Class logits at the feature stride."""
        return self.classifier(features)

    def head_outputs(self, features: dict[str, Tensor | list[Tensor]], labels: Tensor | None = None
                     ) -> dict[str, Tensor]:
        """Named outputs from the SegModel's features: `decoder` (the classifier's input) and `logits` (K classes
        at the feature stride), plus whatever the method's losses need. `labels` are given in training only."""
        return {"decoder": features["decoder"], "logits": self.classify(features["decoder"])}

    def method_losses(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """The method's named, unweighted loss terms (the base adds the auxiliary and plug-in terms)."""
        return {"ce": self.seg_loss(outputs["logits"], labels)}

    def prepare_inputs(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The training batch as the SegModel and the losses see it (default: unchanged)."""
        return images, labels

    def extract_features(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """The features `head_outputs` reads: the SegModel's (default); a method adds what it computes from the
        images themselves (MLSeg's frozen selector scores)."""
        return self.segmodel(images)

    def forward(self, images: Tensor) -> Tensor:
        """Inference graph: logits `[B, K, H / stride, W / stride]`."""
        return self.head_outputs(self.extract_features(images))["logits"]

    def seg_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy (float32) on logits upsampled bilinearly to the label size; ignore pixels left out."""
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum")
        # mean over valid pixels; an all-ignore batch gives 0 with a graph instead of NaN
        return loss / (labels != self.ignore_index).sum().clamp_min(1)

    # ------------------------------------------------------------------------------------------------ training
    def training_outputs(self, images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """One training forward: named outputs (`decoder`, `encoder_last`, `logits` and the method's) and every
        named, unweighted loss term (the method's, the auxiliary ones and the plug-in losses')."""
        images, labels = self.prepare_inputs(images, labels)
        features = self.extract_features(images)
        outputs = {"encoder_last": features["encoder"][-1], **self.head_outputs(features, labels)}
        losses = {**self.method_losses(outputs, labels), **self.auxiliary_losses(features, labels)}
        for extra in self.extra_losses:
            terms = extra(outputs, labels)
            if not terms.keys().isdisjoint(losses):
                raise ValueError(f"extra_losses: {type(extra).__name__} returned loss terms "
                                 f"{sorted(terms.keys() & losses.keys())} that another loss term already uses "
                                 f"(the method's or an earlier extra loss's); each term needs its own name")
            losses.update(terms)
        return outputs, losses

    def auxiliary_losses(self, features: dict[str, Tensor | list[Tensor]], labels: Tensor) -> dict[str, Tensor]:
        """The SegModel's own supervision, the same for every method: the auxiliary FCN head on the encoder's third
        stage (`aux`) and OCR's coarse object regions (`soft_regions`, as in mmseg's OCRNet)."""
        losses = {}
        if self.aux_head is not None:
            losses["aux"] = self.seg_loss(self.aux_head(features["encoder"][-2]), labels)
        if "soft_regions" in features:
            losses["soft_regions"] = self.seg_loss(features["soft_regions"], labels)
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        images, labels = batch["image"], batch["mask"]
        outputs, losses = self.training_outputs(images, labels)
        total = self.total_loss(losses)
        batch_size = images.shape[0]
        for name, value in losses.items():
            self.log(f"train/loss/{name}", value.detach(), batch_size=batch_size)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size)
        return {"loss": total, "outputs": {k: v.detach() for k, v in outputs.items() if isinstance(v, Tensor)}}

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The training objective: the named loss terms weighted by `loss_weights` (1 for a term it does not name)
        and summed; the training step, the tests and the benchmarks all use this one."""
        return sum(self.loss_weights.get(name, 1.0) * value for name, value in losses.items())

    # ------------------------------------------------------------------------------------------- optimisation
    def param_group_mults(self, name: str, param: nn.Parameter, no_decay: bool) -> tuple[float, float]:
        """(lr multiplier, weight-decay multiplier) of one parameter from the rules and the no-decay policy."""
        lr_mult, decay_mult = 1.0, 0.0 if no_decay else 1.0
        for rule in self.param_group_rules:
            if name.startswith(rule.prefix):
                lr_mult *= rule.lr_mult
                decay_mult *= rule.decay_mult
        return lr_mult, decay_mult

    def _no_decay_names(self) -> set[str]:
        names: set[str] = set()
        if not self.optim.no_decay_norm_bias_embed:
            return names
        for module_name, module in self.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{param_name}" if module_name else param_name
                if (isinstance(module, _NO_DECAY_MODULES) or param_name == "bias" or param.ndim <= 1
                        or any(key in full for key in _EMBEDDING_NAMES)):
                    names.add(full)
        return names

    @staticmethod
    def part_of(name: str) -> str:
        """The model part a parameter belongs to, for group names: encoder, decoder, head, or the method's module."""
        first, _, rest = name.partition(".")
        if first == "segmodel":
            first = rest.partition(".")[0]
        return "head" if first == "classifier" else first

    def parameter_groups(self) -> list[dict]:
        """Parameters grouped by model part, lr multiplier and weight-decay multiplier; each group is named
        `<part>[-lr<mult>][-no_decay]` (the learning-rate monitor's names)."""
        no_decay = self._no_decay_names()
        groups: dict[tuple[str, float, float], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                mults = self.param_group_mults(name, param, name in no_decay)
                groups.setdefault((self.part_of(name), *mults), []).append(param)
        return [
            {"params": params, "lr": self.optim.lr * lr_mult, "weight_decay": self.optim.weight_decay * decay_mult,
             "lr_mult": lr_mult, "decay_mult": decay_mult,
             "name": part + (f"-lr{lr_mult:g}" if lr_mult != 1 else "") + ("-no_decay" if decay_mult == 0 else "")}
            for (part, lr_mult, decay_mult), params in groups.items()
        ]

    def configure_optimizers(self) -> dict:
        groups = self.parameter_groups()
        if self.optim.name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=self.optim.lr, momentum=self.optim.momentum)
        elif self.optim.name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, betas=self.optim.betas)
        else:
            raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {self.optim.name!r}")
        total_steps = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: poly_lr_factor(step, total_steps, self.optim)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------------------------------------- evaluation
    def infer(self, images: Tensor, out_size: tuple[int, int]) -> Tensor:
        """Logits at `out_size` under the configured test-time protocol."""
        return infer(self, images, out_size, self.inference)

    def evaluation_outputs(self, images: Tensor, labels: Tensor, split: str) -> tuple[Tensor, dict[str, Tensor]]:
        """The predicted classes `[B, H, W]` at the label size and the method's named extras for one evaluation
        batch of `split` (default: the argmax of `infer`'s logits)."""
        return self.infer(images, tuple(labels.shape[-2:])).argmax(dim=1), {}

    def update_method_metrics(self, split: str, labels: Tensor, outputs: dict[str, Tensor]) -> None:
        """Hook: update the method's own metrics of `split` from one batch's step outputs (`preds` and the extras
        of `evaluation_outputs`)."""

    def method_scores(self, split: str) -> MethodScores | None:
        """Hook: the method's own scores of `split` at the end of an evaluation epoch (then reset its metrics)."""
        return None

    def _eval_step(self, batch: dict, split: str, metrics: SegmentationMetrics) -> dict:
        images, labels = batch["image"], batch["mask"]
        preds, extras = self.evaluation_outputs(images, labels, split)
        metrics.update(preds, labels)
        outputs = {"preds": preds, **extras}
        self.update_method_metrics(split, labels, outputs)
        return outputs

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "test", self.test_metrics)

    def _end_eval(self, split: str, metrics: SegmentationMetrics) -> None:
        scores = metrics.compute()
        confmat = metrics.confmat.clone() if split == "test" else None
        metrics.reset()
        for key in ("mIoU", "mAcc", "aAcc"):
            self.log(f"{split}/{key}", scores[key], prog_bar=key == "mIoU")
        extra = self.method_scores(split)
        if extra is not None:
            for name, value in extra.scalars.items():
                self.log(f"{split}/{name}", value)
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        table = format_table(scores, self.class_names)
        print(f"\n[{split}] epoch {self.current_epoch} step {self.global_step}\n{table}", flush=True)
        self._write_scores(split, scores, table)
        if confmat is not None:
            self._write_confusion(split, confmat)
        if extra is not None:
            for name, (record, text) in extra.records.items():
                print(f"\n[{split}] {text}", flush=True)
                write_record(self.trainer, f"{split}_{name}", record)
            for name, content in extra.files.items():
                write_metrics_file(self.trainer, f"{split}_{name}", content)

    def _write_scores(self, split: str, scores: dict[str, Tensor], table: str) -> None:
        """Results to `<trainer.default_root_dir>/metrics/<split>.json` (the command's record folder, with what it
        scored) and per-class scores to TensorBoard."""
        record = {
            "split": split, **scored_state(self.trainer),
            **{key: round(float(scores[key]), 4) for key in ("mIoU", "mAcc", "aAcc")},
            "IoU": {name: round(value, 4) for name, value in zip(self.class_names, scores["IoU"].tolist())},
            "Acc": {name: round(value, 4) for name, value in zip(self.class_names, scores["Acc"].tolist())},
        }
        record = write_record(self.trainer, split, record)
        writer = tensorboard_of(self.trainer)
        if writer is None:
            return
        for kind in ("IoU", "Acc"):
            for name, value in record[kind].items():
                if value is not None:
                    writer.add_scalar(f"{split}/{kind}/{name}", value, self.global_step)
        writer.add_text(f"{split}/per_class", table.replace("\n", "  \n"), self.global_step)

    def _write_confusion(self, split: str, confmat: Tensor) -> None:
        """The split's confusion matrix, normalised per ground-truth class, as `metrics/confusion_<split>.png` and a
        TensorBoard image."""
        figure = confusion_figure(confmat, self.class_names, f"{split} confusion (step {self.global_step})")
        path = write_metrics_file(self.trainer, f"confusion_{split}.png", png_bytes(figure))
        print(f"[{split}] confusion matrix: {path}", flush=True)
        writer = tensorboard_of(self.trainer)
        if writer is not None:
            writer.add_image(f"{split}/confusion", rgb_array(figure), self.global_step, dataformats="HWC")

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test", self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Label maps at each image's size on disk."""
        images = batch["image"]
        sizes = [tuple(int(v) for v in size) for size in batch["orig_size"]]
        preds = [self.predict_labels(images[i : i + 1], size)[0] for i, size in enumerate(sizes)]
        return {"preds": preds, "name": batch["name"]}

    def predict_labels(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """Hook: label maps `[B, H, W]` at `size` under the test-time protocol (the argmax of `infer`'s logits)."""
        return self.infer(images, size).argmax(dim=1)
