"""Speed options (`segcentroids.callbacks.SpeedOptions`): compiled and channels-last runs compute what the eager,
contiguous model computes."""

from __future__ import annotations

import copy

import pytest
import torch

from segcentroids.callbacks import SpeedOptions
from tests.conftest import tiny_segmodel


def _method(name: str):
    """A tiny method without dropout (compiled code draws other random numbers than eager code)."""
    from segcentroids.methods import MCIBI, Baseline

    torch.manual_seed(0)
    if name == "MCIBI":
        return MCIBI(segmodel=tiny_segmodel(seed=0), num_classes=4, memory_channels=16, transform_channels=8,
                     dropout=0.0)
    return Baseline(segmodel=tiny_segmodel(seed=0), num_classes=4, dropout=0.0)


def _loss_and_grads(model, images, labels) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    _, losses = model.training_outputs(images, labels)
    loss = model.total_loss(losses)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=generator), torch.randint(0, 4, (2, 64, 64), generator=generator)


COMPILED = {"compile": True, "backend": "aot_eager"}  # the graph captured by dynamo + AOT autograd, no codegen


@pytest.mark.parametrize("options", [
    {"channels_last": True}, COMPILED, {**COMPILED, "compile_modules": ["all"], "channels_last": True},
    pytest.param({"compile": True}, marks=pytest.mark.inductor),  # inductor's kernels: minutes on 2 CPU cores
], ids=["channels_last", "compile", "compile_all_channels_last", "compile_inductor"])
def test_equal_loss_and_gradients_on_a_fixed_batch(options: dict) -> None:
    """The loss and every parameter's gradient of one training step equal the eager model's (float32 tolerance)."""
    images, labels = _batch()
    eager = _method("Baseline").train()
    fast = copy.deepcopy(eager)
    SpeedOptions(**options).apply(fast)
    if options.get("channels_last"):
        assert fast.segmodel.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        images_fast = images.contiguous(memory_format=torch.channels_last)
    else:
        images_fast = images
    eager_loss, eager_grads = _loss_and_grads(eager, images, labels)
    fast_loss, fast_grads = _loss_and_grads(fast, images_fast, labels)
    torch.testing.assert_close(fast_loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert len(fast_grads) == len(eager_grads)
    for fast_grad, eager_grad in zip(fast_grads, eager_grads):
        torch.testing.assert_close(fast_grad, eager_grad, atol=1e-4, rtol=1e-3)
    assert fast.state_dict().keys() == eager.state_dict().keys()  # checkpoints stay interchangeable


def test_a_compiled_method_with_float32_state_keeps_it() -> None:
    """MCIBI compiled whole: its memory buffer stays float32 and the loss equals the eager one."""
    images, labels = _batch()
    eager = _method("MCIBI").train()
    fast = copy.deepcopy(eager)
    SpeedOptions(**COMPILED, compile_modules=["all"]).apply(fast)
    eager_loss, _ = _loss_and_grads(eager, images, labels)
    fast_loss, _ = _loss_and_grads(fast, images, labels)
    torch.testing.assert_close(fast_loss, eager_loss, atol=1e-5, rtol=1e-5)
    assert fast.memory.memory.dtype == torch.float32


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ValueError, match="compile_mode"):
        SpeedOptions(compile_mode="fastest")
    with pytest.raises(ValueError, match="compile_modules names \\['decoder_head'\\]"):
        SpeedOptions(compile=True, compile_modules=["decoder_head"]).apply(_method("Baseline"))


def test_fit_with_speed_options_through_the_trainer(tmp_path) -> None:
    """One training step through Lightning with the callback: the batch reaches the model channels-last."""
    import lightning as L

    seen = []


    model = _method("Baseline")
    original = model.training_outputs

    def recording(images, labels):
        seen.append(images.is_contiguous(memory_format=torch.channels_last))
        return original(images, labels)

    model.training_outputs = recording
    images, labels = _batch()
    data = [{"image": images[i], "mask": labels[i]} for i in range(2)]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[SpeedOptions(channels_last=True)], default_root_dir=tmp_path)
    trainer.fit(model, loader)
    assert seen == [True]
