"""Speed options any run can turn on from YAML: `torch.compile`, channels-last memory format, cuDNN autotuning.

bf16 is the trainer's own switch (`trainer.precision: bf16-mixed`); the losses and the buffers the design keeps in
float32 (MCIBI's memory, MVSC's centroids, PNE's and the metrics' arithmetic) stay float32 under it, because they
cast or disable autocast themselves.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class SpeedOptions(L.Callback):
    """Applies the speed options when the model is set up (every command: fit, validate, test, predict).

    Args:
        compile: `torch.compile` the modules named by `compile_modules`, in place (`nn.Module.compile`: parameter
            names and checkpoints stay those of the eager model).
        compile_mode: `torch.compile`'s mode.
        compile_modules: attributes of the method to compile; `["all"]`: every direct child module (the SegModel,
            the classifier, the method's heads).
        dynamic: `torch.compile`'s `dynamic` (None: PyTorch decides; evaluation sees other image sizes than
            training).
        backend: `torch.compile`'s backend (`inductor` generates kernels; `aot_eager` only captures the graph).
        channels_last: the model's weights and every batch's images in channels-last memory format.
        cudnn_benchmark: `torch.backends.cudnn.benchmark` (autotuned convolution algorithms; fixed crop sizes).
    """

    def __init__(self, compile: bool = False, compile_mode: str = "default",
                 compile_modules: list[str] | None = None, dynamic: bool | None = None, backend: str = "inductor",
                 channels_last: bool = False, cudnn_benchmark: bool = False) -> None:
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"SpeedOptions: compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.compile = compile
        self.compile_mode = compile_mode
        self.compile_modules = list(compile_modules or ["segmodel"])
        self.dynamic = dynamic
        self.backend = backend
        self.channels_last = channels_last
        self.cudnn_benchmark = cudnn_benchmark
        self.applied = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.apply(pl_module)

    def apply(self, module: nn.Module) -> None:
        """Turns the options on for `module` (once)."""
        if self.applied:
            return
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        if self.compile:
            for submodule in self._modules_to_compile(module):
                submodule.compile(dynamic=self.dynamic, backend=self.backend,
                                  **({"mode": self.compile_mode} if self.backend == "inductor" else {}))
        self.applied = True

    def _modules_to_compile(self, module: nn.Module) -> list[nn.Module]:
        if self.compile_modules == ["all"]:
            return list(module.children())
        missing = [name for name in self.compile_modules if not isinstance(getattr(module, name, None), nn.Module)]
        if missing:
            children = [name for name, _ in module.named_children()]
            raise ValueError(f"SpeedOptions: compile_modules names {missing}, which {type(module).__name__} does not "
                             f"have as modules (it has {children})")
        return [getattr(module, name) for name in self.compile_modules]

    def _images_channels_last(self, batch: Any) -> None:
        if self.channels_last and isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor) \
                and batch["image"].dim() == 4:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._images_channels_last(batch)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._images_channels_last(batch)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._images_channels_last(batch)

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        self._images_channels_last(batch)
