"""Synchronised BatchNorm for any device and backend (CPU + gloo included), and its Lightning `LayerSync` plugin.

`torch.nn.SyncBatchNorm` only runs on CUDA (DDP refuses it on CPU modules), so CPU DDP runs (CI, laptops) cannot
use `trainer.sync_batchnorm=true`. `GlobalBatchNorm` computes the batch mean and variance over the union of every
rank's batch with two autograd-aware all-reduces (sum, then sum of squared deviations), so a DDP run with B images
per rank normalises exactly like one process with the whole global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins import LayerSync
from torch import Tensor, nn

__all__ = ["GlobalBatchNorm", "GlobalBatchNormSync"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of the ranks' output gradients."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input rank >= 2) whose training statistics are taken over all ranks of the default group.

    Outside training, or without an initialised process group of more than one rank, it is plain BatchNorm.
    Statistics are float32; the running variance gets the unbiased global variance, as in `nn.SyncBatchNorm`.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm: expected input with >= 2 dims, got {input.dim()}")

    def forward(self, input: Tensor) -> Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        use_batch_stats = self.training or not self.track_running_stats
        if not (distributed and use_batch_stats):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        x = input.float()
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / channels])])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:channels] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _swap(module: nn.Module, to_global: bool) -> nn.Module:
    """`module` with every BatchNorm replaced by `GlobalBatchNorm` (or back), parameters and buffers kept."""
    source = (nn.modules.batchnorm._BatchNorm,) if to_global else (GlobalBatchNorm,)
    if isinstance(module, source) and (to_global != isinstance(module, GlobalBatchNorm)):
        cls = GlobalBatchNorm if to_global else getattr(module, "_original_class", nn.BatchNorm2d)
        ref = next(iter([*module.parameters(recurse=False), *module.buffers(recurse=False)]), None)
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                  device=None if ref is None else ref.device)
        if to_global:
            new._original_class = type(module)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        module = new
    for name, child in module.named_children():
        module.add_module(name, _swap(child, to_global))
    return module


class GlobalBatchNormSync(LayerSync):
    """Lightning plugin: `--trainer.plugins+=segcentroids.nn.GlobalBatchNormSync` synchronises BatchNorm on any
    device (use it instead of `trainer.sync_batchnorm=true`, which is CUDA-only in torch)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _swap(model, to_global=True)

    def revert(self, model: nn.Module) -> nn.Module:
        return _swap(model, to_global=False)
