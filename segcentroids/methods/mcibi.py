"""MCIBI: Mining Contextual Information Beyond Image for Semantic Segmentation (Jin et al., ICCV 2021).

A class memory M (K x C) of dataset-level representations, updated by momentum after each training step, is gathered
per pixel by the predicted class probabilities and refined by attention (DCA); the result is fused with the pixel
representations R (and the framework's own within-image context, if any) before the final classifier H2, which also
learns to classify the memory rows (RCL).
"""

from __future__ import annotations

from typing import Literal

import lightning as L
from segmentation_models_pytorch.base.modules import Conv2dReLU
from torch import Tensor

from segcentroids.callbacks.memory import MemoryInitialization, MemorySimilarityLogger, MemoryUpdate
from segcentroids.callbacks.momentum import MomentumSchedule
from segcentroids.losses.memory_consistency import representation_consistency_loss
from segcentroids.methods.base import Baseline
from segcentroids.models.decoders import ResizeConcat
from segcentroids.models.encoders import ViTEncoder
from segcentroids.nn.dataset_context import ClassHead, ContextFusion, DatasetContextAggregation
from segcentroids.nn.memory import INITS, FeatureMemory

MEMORY_INITS = (*INITS, "clustering")
NO_CONTEXT_ARCHS = ("fcn", "identity")
"""SegModel archs without a within-image context module: MCIBI uses their encoder only (paper: FCN)."""
MEMORY_INPUTS = ("encoder_last", "hrnet_concat")
"""What the bottleneck that gives R reads: the deepest encoder stage (C5 of a dilated ResNet, stride 8) or the HRNetV2
representation (every stride 4-32 stage resized to stride 4 and concatenated: R, the memory and the DCA at stride 4,
as on HRNetV2-W48 in Tables 7-8)."""


class MCIBI(Baseline):
    """Baseline + feature memory, dataset-level context aggregation, fuse F and representation consistent learning.

    Args:
        alpha: weight of L_W, the loss of H1's class probabilities (Eq. 16, 19).
        beta: weight of L_M, the RCL loss (Eq. 17, 19).
        memory_channels: C, channels of R, of the memory and of the fused representation (paper: 512).
        memory_input: the features R's 3x3 bottleneck reads (Eq. 1): `"encoder_last"`, the deepest encoder stage
            (dilated ResNets: C5 at stride 8), or `"hrnet_concat"`, the HRNetV2 representation (the stride 4-32
            stages upsampled to stride 4 and concatenated; HRNetV2-W48 in Tables 7-8: R at stride 4, 720 channels in).
        transform_channels: channels of the attention's query/key/value (paper: C / 2 = 256).
        fuse: F of Eq. 4, `"concat"` (paper), `"add"` or `"weighted_add"` (Table 1).
        context_within_image: use the SegModel's decoder output as C_wi (Eq. 3). None: yes unless the arch has no
            context module (`fcn`, `identity`); without it the decoder is removed and only the encoder is run.
        weighting: memory update weights, `"cosine"` (Eq. 9-10) or `"mean"` (Table 2 "Cosine" off).
        update_resolution: `"label"` (features upsampled to the label size, paper) or `"feature"` (labels
            downsampled to the features, faster).
        memory_init: `"first_batch_mean"` (authors' code), `"random_pixel"` (paper) or `"clustering"` (Table 2: rows
            set before training from the class means of `memory_init_batches` training batches, see
            `MemoryInitialization`; classes not seen there are set at first sight as `"first_batch_mean"`).
        memory_init_batches: training batches read by the `"clustering"` initialisation (None: one epoch).
        momentum_schedule: `"poly"` (Eq. 7) or `"constant"` (Table 2 "Poly" off).
        m0: initial momentum m0 (Eq. 7; the authors' Cityscapes configs use 1.0).
        momentum_power: p of Eq. 7.
        rcl: representation consistent learning on/off (Table 2).
        rcl_start_step: first optimizer step with the RCL loss; None = one epoch of steps (authors' code), or 0 when
            the epoch length is unknown.
        similarity_log_every_n_steps: period of the memory cosine-similarity image (diagnostics).
        **kwargs: Baseline arguments (`segmodel`, `num_classes`, `dropout`, `aux_weight`, `optim`, ...).

    State: `memory.memory`, `memory.initialized` and `memory.momentum` are float32 buffers (checkpointed). The
    callbacks from `configure_callbacks()` are given the memory: they set its momentum before each batch and update
    it after the batch from the step's `outputs["memory_features"]` (R, detached).
    """

    def __init__(
        self,
        alpha: float = 0.4,
        beta: float = 1.0,
        memory_channels: int = 512,
        memory_input: Literal["encoder_last", "hrnet_concat"] = "encoder_last",
        transform_channels: int = 256,
        fuse: Literal["concat", "add", "weighted_add"] = "concat",
        context_within_image: bool | None = None,
        weighting: Literal["cosine", "mean"] = "cosine",
        update_resolution: Literal["label", "feature"] = "label",
        memory_init: Literal["first_batch_mean", "random_pixel", "clustering"] = "first_batch_mean",
        memory_init_batches: int | None = None,
        momentum_schedule: Literal["poly", "constant"] = "poly",
        m0: float = 0.9,
        momentum_power: float = 0.9,
        rcl: bool = True,
        rcl_start_step: int | None = None,
        similarity_log_every_n_steps: int = 500,
        **kwargs,
    ) -> None:
        segmodel = kwargs["segmodel"]
        if context_within_image is None:
            context_within_image = getattr(segmodel, "arch", None) not in NO_CONTEXT_ARCHS
        if not context_within_image:  # not part of FCN + MCIBI: R comes from the encoder alone
            kwargs["segmodel"] = segmodel.encoder_only()
        super().__init__(**kwargs)
        for name, value in (("alpha", alpha), ("beta", beta)):
            if value < 0:
                raise ValueError(f"MCIBI: {name} must be >= 0, got {value}")
        for name, value in (("memory_channels", memory_channels), ("transform_channels", transform_channels)):
            if value < 1:
                raise ValueError(f"MCIBI: {name} must be >= 1, got {value}")
        if memory_init not in MEMORY_INITS:
            raise ValueError(f"MCIBI: memory_init must be one of {list(MEMORY_INITS)}, got {memory_init!r}")
        if memory_input not in MEMORY_INPUTS:
            raise ValueError(f"MCIBI: memory_input must be one of {list(MEMORY_INPUTS)}, got {memory_input!r}")
        if rcl_start_step is not None and rcl_start_step < 0:
            raise ValueError(f"MCIBI: rcl_start_step must be >= 0 or None, got {rcl_start_step}")
        self.context_within_image = context_within_image
        # R (Eq. 1): 3x3 conv-BN-ReLU bottleneck on the encoder's last stage or on the HRNetV2 concatenation
        if memory_input == "hrnet_concat" and isinstance(self.segmodel.encoder, ViTEncoder):
            raise ValueError("MCIBI: memory_input='hrnet_concat' needs a multi-scale encoder (stride 4-32 stages); "
                             "a plain ViT has one stride: use memory_input='encoder_last'")
        self.memory_input = memory_input
        self.stage_concat = ResizeConcat(self.segmodel.encoder_channels) if memory_input == "hrnet_concat" else None
        bottleneck_in = (self.segmodel.encoder_channels[-1] if self.stage_concat is None
                         else self.stage_concat.out_channels)
        self.bottleneck = Conv2dReLU(bottleneck_in, memory_channels, 3, padding=1)
        self.memory = FeatureMemory(self.num_classes, memory_channels, weighting=weighting,
                                    update_resolution=update_resolution,
                                    init="first_batch_mean" if memory_init == "clustering" else memory_init,
                                    ignore_index=self.ignore_index, momentum=m0)
        self.dca = DatasetContextAggregation(memory_channels, self.num_classes, transform_channels, self.dropout)
        self.fusion = ContextFusion(memory_channels, fuse,
                                    self.segmodel.out_channels if context_within_image else None, transform_channels)
        self.loss_weights.update({"class_probability": alpha, "memory": beta})
        self.rcl = rcl
        self.rcl_start_step = rcl_start_step
        self.momentum_schedule = MomentumSchedule(self.memory, "momentum", m0, momentum_power, momentum_schedule,
                                                  name="memory_momentum")
        self.similarity_log_every_n_steps = similarity_log_every_n_steps
        self.memory_initialization = None
        if memory_init == "clustering":
            self.memory_initialization = MemoryInitialization(self.memory, self.memory_features, memory_init_batches)

    # ----------------------------------------------------------------------------------------------- the model
    def build_classifier(self) -> ClassHead:
        """H2 (Eq. 5) on the fused representation of `memory_channels`."""
        channels = self.hparams.memory_channels
        return ClassHead(channels, self.num_classes, channels, self.dropout)

    @property
    def feature_channels(self) -> int:
        return self.hparams.memory_channels

    def memory_features(self, images: Tensor) -> Tensor:
        """R (Eq. 1), the representations the memory is built from."""
        return self.representations(self.segmodel(images)["encoder"])

    def representations(self, pyramid: list[Tensor]) -> Tensor:
        """R (Eq. 1): the bottleneck on the deepest stage (`memory_input="encoder_last"`) or on the stride-4
        concatenation of the stride 4-32 stages (`"hrnet_concat"`)."""
        source = pyramid[-1] if self.stage_concat is None else self.stage_concat(pyramid)
        return self.bottleneck(source)

    def head_outputs(self, features: dict, labels: Tensor | None = None) -> dict[str, Tensor]:
        """R (Eq. 1), H1's logits (Eq. 11), R_aug = F(R, C_bi, C_wi) (Eq. 2-4) as `decoder` and H2's `logits`
        (Eq. 5). Inference uses `logits` only: no memory update, no RCL."""
        representations = self.representations(features["encoder"])
        class_logits, beyond = self.dca(representations, self.memory.memory)
        within = features["decoder"] if self.context_within_image else None
        augmented = self.fusion(representations, beyond, within)
        return {"memory_features": representations, "class_logits": class_logits, "decoder": augmented,
                "logits": self.classify(augmented)}

    # ------------------------------------------------------------------------------------------------ training
    def method_losses(self, outputs: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        losses = {"ce": self.seg_loss(outputs["logits"], labels),  # L_O, Eq. 18
                  "class_probability": self.seg_loss(outputs["class_logits"], labels)}  # L_W, Eq. 16
        if self.rcl and self.global_step >= self._rcl_start():
            losses["memory"] = representation_consistency_loss(self.classifier, self.memory.memory,
                                                               self.memory.initialized)  # L_M, Eq. 15, 17
        return losses

    def _rcl_start(self) -> int:
        if self.rcl_start_step is not None:
            return self.rcl_start_step
        trainer = self._trainer
        if trainer is None:
            return 0
        batches = trainer.num_training_batches
        if not isinstance(batches, int):  # unknown (inf) epoch length
            return 0
        return batches // max(trainer.accumulate_grad_batches, 1)

    def configure_callbacks(self) -> list[L.Callback]:
        """The momentum schedule (Eq. 7), the memory update after each step (Eq. 6-10) and its diagnostics (and the
        clustering initialisation before training, when chosen)."""
        callbacks = [self.momentum_schedule, MemoryUpdate(self.memory, "memory_features"),
                     MemorySimilarityLogger(self.memory, "memory", self.similarity_log_every_n_steps)]
        return callbacks if self.memory_initialization is None else [self.memory_initialization, *callbacks]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Checkpoints written before the momentum moved into the memory keep loading."""
        if prefix + "memory_momentum" in state_dict:
            state_dict[prefix + "memory.momentum"] = state_dict.pop(prefix + "memory_momentum")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
