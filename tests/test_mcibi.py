"""MCIBI: feature memory (Eq. 6-10), momentum (Eq. 7), DCA / fuse / RCL, the method, DDP and resume exactness."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from segcentroids.callbacks.memory import (
    MemoryInitialization,
    MemorySimilarityLogger,
    MemoryUpdate,
    cosine_similarity_matrix,
    similarity_image,
)
from segcentroids.callbacks.momentum import MomentumSchedule, poly_momentum, set_module_value
from segcentroids.data import SyntheticDataModule
from segcentroids.losses.memory_consistency import representation_consistency_loss
from segcentroids.methods import MCIBI, Baseline
from segcentroids.models import SegModel
from segcentroids.nn.dataset_context import ContextFusion, CrossAttention, DatasetContextAggregation
from segcentroids.nn.memory import RESOLUTIONS, WEIGHT_EPS, FeatureMemory
from tests.conftest import segmodel_args, tiny_segmodel, tiny_segmodel_args
from tests.references import loop_image_class_means, loop_memory_update


# ------------------------------------------------------------------------------------------ memory by hand
def test_cosine_weights_by_hand():
    """Eq. 9-10 on three 2-D pixels of one initialised class, at feature resolution."""
    memory = FeatureMemory(2, 2, update_resolution="feature")
    memory.memory[0] = torch.tensor([1.0, 0.0])
    memory.initialized[0] = 1.0
    # pixels [1, 0] (s = 1, w = 0), [0, 1] (s = 0, w = 1), [-1, 0] (s = -1, w = 2)
    features = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).view(1, 2, 1, 3)
    labels = torch.zeros(1, 1, 3, dtype=torch.long)
    memory.update(features, labels, momentum=0.5)
    e = WEIGHT_EPS
    target = torch.tensor([e * 1 + 2 * -1.0, 1.0]) / (3 + 3 * e)  # (w1 f1 + w2 f2 + w3 f3) / sum w
    expected = 0.5 * torch.tensor([1.0, 0.0]) + 0.5 * target  # Eq. 6
    torch.testing.assert_close(memory.memory[0], expected, rtol=0, atol=1e-6)
    assert torch.allclose(memory.memory[0], torch.tensor([1 / 6, 1 / 6]), atol=1e-5)


def test_first_sight_absent_and_ignore_by_hand():
    memory = FeatureMemory(3, 2, update_resolution="feature")
    memory.memory[2] = torch.tensor([5.0, -5.0])
    memory.initialized[2] = 1.0
    # class 1: pixels [2, 4] and [4, 0]; an ignore pixel with a huge feature; class 0 and 2 absent
    features = torch.tensor([[2.0, 4.0, 1e6], [4.0, 0.0, -1e6]]).view(1, 2, 1, 3)
    labels = torch.tensor([[[1, 1, 255]]])
    memory.update(features, labels, momentum=0.9)
    torch.testing.assert_close(memory.memory[1], torch.tensor([3.0, 2.0]))  # class mean, no momentum
    torch.testing.assert_close(memory.memory[2], torch.tensor([5.0, -5.0]))  # absent: unchanged
    torch.testing.assert_close(memory.memory[0], torch.zeros(2))
    assert memory.initialized.tolist() == [0.0, 1.0, 1.0]
    assert memory.memory.dtype == torch.float32 and memory.initialized.dtype == torch.float32


def test_mean_weighting_by_hand():
    memory = FeatureMemory(1, 2, weighting="mean", update_resolution="feature")
    memory.memory[0] = torch.tensor([1.0, 1.0])
    memory.initialized[0] = 1.0
    features = torch.tensor([[3.0, 5.0], [1.0, -1.0]]).view(1, 2, 1, 2)
    memory.update(features, torch.zeros(1, 1, 2, dtype=torch.long), momentum=0.25)
    torch.testing.assert_close(memory.memory[0], 0.75 * torch.tensor([1.0, 1.0]) + 0.25 * torch.tensor([4.0, 0.0]))


def test_all_ignore_batch_leaves_memory_unchanged():
    for resolution in ("label", "feature"):
        memory = FeatureMemory(3, 4, update_resolution=resolution)
        memory.update(torch.randn(2, 4, 3, 3), torch.full((2, 12, 12), 255), momentum=0.5)
        assert memory.memory.abs().sum() == 0 and memory.initialized.sum() == 0


def test_label_resolution_upsamples_the_features():
    """One class covering the whole label map: its first-sight row is the mean of the bilinearly upsampled map
    (which differs from the mean of the feature grid)."""
    features = torch.tensor([[0.0, 0.0, 9.0]]).view(1, 1, 1, 3)
    labels = torch.zeros(1, 1, 7, dtype=torch.long)
    memory = FeatureMemory(1, 1, update_resolution="label")
    memory.update(features, labels, 0.5)
    # 7 outputs from 3 inputs at src = (i + 0.5) * 3 / 7 - 0.5: 0 up to src 1, then linear to 9 at src 2, then 9
    src = [(i + 0.5) * 3 / 7 - 0.5 for i in range(7)]
    upsampled = [9.0 * min(max(s - 1, 0.0), 1.0) for s in src]
    torch.testing.assert_close(memory.memory[0, 0], torch.tensor(sum(upsampled) / 7))


@pytest.mark.parametrize("resolution", ["label", "feature"])
@pytest.mark.parametrize("weighting", ["cosine", "mean"])
def test_update_matches_per_class_loop(resolution: str, weighting: str):
    torch.manual_seed(0)
    num_classes, channels = 5, 6
    module = FeatureMemory(num_classes, channels, weighting=weighting, update_resolution=resolution)
    memory, initialized = module.memory.clone(), module.initialized.clone()
    for step, (size, label_size) in enumerate([((3, 4), (13, 11)), ((4, 4), (16, 16)), ((5, 3), (9, 20))]):
        features = torch.randn(2, channels, *size)
        labels = torch.randint(0, 3 + step, (2, *label_size))  # classes 3, 4 absent at first
        labels[0, :2] = 255
        module.update(features, labels, momentum=0.3)
        memory, initialized = loop_memory_update(memory, initialized, features, labels, 0.3, weighting, resolution)
        torch.testing.assert_close(module.memory, memory, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(module.initialized, initialized)


def test_random_pixel_init_picks_one_pixel():
    torch.manual_seed(0)
    memory = FeatureMemory(2, 3, init="random_pixel", update_resolution="feature")
    features = torch.randn(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 2:] = 1
    memory.update(features, labels, 0.5)
    pixels = features[0].flatten(1).T
    for k in range(2):
        members = pixels[labels.flatten() == k]
        assert (members - memory.memory[k]).abs().amax(1).min() < 1e-6


def test_bad_options_name_key_and_value():
    with pytest.raises(ValueError, match="weighting.*'cos'"):
        FeatureMemory(3, 4, weighting="cos")
    with pytest.raises(ValueError, match="update_resolution.*'pixel'"):
        FeatureMemory(3, 4, update_resolution="pixel")
    with pytest.raises(ValueError, match="schedule.*'linear'"):
        MomentumSchedule(FeatureMemory(3, 4), schedule="linear")
    with pytest.raises(ValueError, match="fuse.*'sum'"):
        ContextFusion(8, "sum")


def test_bf16_features_give_float32_memory():
    memory = FeatureMemory(3, 4)
    features = torch.randn(1, 4, 3, 3).bfloat16()
    labels = torch.randint(0, 3, (1, 9, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        memory.update(features, labels, 0.5)
        memory.update(features, labels, 0.5)
    assert memory.memory.dtype == torch.float32 and torch.isfinite(memory.memory).all()


# ------------------------------------------------------------------------------------------------ DDP (gloo)
def _ddp_worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        for resolution in RESOLUTIONS:
            memory = FeatureMemory(4, 5, update_resolution=resolution)
            for features, labels in _ddp_batches():
                memory.update(features[rank * 2:(rank + 1) * 2], labels[rank * 2:(rank + 1) * 2], momentum=0.4)
            torch.save({"memory": memory.memory, "initialized": memory.initialized},
                       f"{folder}/{resolution}{rank}.pt")
        holder = _FeatureHolder()
        shards = [{"image": f[rank * 2:(rank + 1) * 2], "mask": y[rank * 2:(rank + 1) * 2]} for f, y in _ddp_batches()]
        MemoryInitialization(holder.memory, holder.memory_features).on_train_start(_fake_trainer(shards), holder)
        state = {"memory": holder.memory.memory, "initialized": holder.memory.initialized}
        torch.save(state, f"{folder}/init{rank}.pt")
    finally:
        dist.destroy_process_group()


class _FeatureHolder(torch.nn.Module):
    """A module whose memory features are its input (for the initialisation pass)."""

    device = torch.device("cpu")

    def __init__(self):
        super().__init__()
        self.memory = FeatureMemory(4, 5)

    def memory_features(self, images: torch.Tensor) -> torch.Tensor:
        return images


def _ddp_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        features = torch.randn(4, 5, 3, 3, generator=generator)
        labels = torch.randint(0, 3, (4, 10, 10), generator=generator)
        labels[2:, :3] = 3  # class 3 only on rank 1
        labels[0, 5:] = 255
        batches.append((features, labels))
    return batches


@pytest.mark.timeout(300)
def test_ddp_memories_identical_and_equal_to_single_process(tmp_path: Path):
    """Two gloo processes, each with half of every global batch. Forked rather than spawned: the workers need no
    fresh interpreter (and re-importing the package twice costs most of a minute on a loaded CPU); they use one
    thread, as DataLoader workers do."""
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=True, start_method=method)
    for resolution in RESOLUTIONS:
        ranks = [torch.load(tmp_path / f"{resolution}{r}.pt") for r in range(2)]
        assert torch.equal(ranks[0]["memory"], ranks[1]["memory"])
        assert torch.equal(ranks[0]["initialized"], ranks[1]["initialized"])
        single = FeatureMemory(4, 5, update_resolution=resolution)
        for features, labels in _ddp_batches():
            single.update(features, labels, momentum=0.4)
        torch.testing.assert_close(ranks[0]["memory"], single.memory, rtol=1e-5, atol=1e-6)
        assert ranks[0]["initialized"].tolist() == [1.0, 1.0, 1.0, 1.0]
    # the clustering initialisation: same rows on both ranks, equal to one process reading the global batches
    ranks = [torch.load(tmp_path / f"init{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["memory"], ranks[1]["memory"])
    single = _FeatureHolder()
    initialization = MemoryInitialization(single.memory, single.memory_features)
    initialization.on_train_start(_fake_trainer([{"image": f, "mask": y} for f, y in _ddp_batches()]), single)
    torch.testing.assert_close(ranks[0]["memory"], single.memory.memory, rtol=1e-5, atol=1e-6)
    assert ranks[0]["initialized"].tolist() == [1.0, 1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------- momentum, Eq. 7
def test_poly_momentum_eq7():
    assert poly_momentum(0, 100) == pytest.approx(0.9)
    assert poly_momentum(50, 100) == pytest.approx(0.5**0.9 * (0.9 - 0.009) + 0.009)
    assert poly_momentum(100, 100) == pytest.approx(0.009)
    assert poly_momentum(100, 100, m0=1.0, power=2.0) == pytest.approx(0.01)
    assert poly_momentum(25, 100, m0=1.0, power=2.0) == pytest.approx(0.75**2 * 0.99 + 0.01)
    memory = FeatureMemory(3, 4)
    constant = MomentumSchedule(memory, schedule="constant", m0=0.7)
    assert constant.value(0, 100) == constant.value(100, 100) == 0.7
    assert MomentumSchedule(memory, m0=0.9).value(50, 100) == pytest.approx(0.5**0.9 * 0.891 + 0.009)
    with pytest.raises(ValueError, match="finite"):
        MomentumSchedule(memory).value(3, math.inf)


def test_set_module_value_keeps_buffer_identity():
    module = torch.nn.Module()
    module.register_buffer("m", torch.tensor(0.9))
    buffer = module.m
    set_module_value(module, "m", 0.25)
    assert module.m is buffer and module.m.item() == 0.25 and module.m.dtype == torch.float32
    set_module_value(module, "plain", 0.5)
    assert module.plain == 0.5


def test_memory_update_callback_feeds_outputs():
    memory = FeatureMemory(2, 3, update_resolution="feature", momentum=0.5)
    features = torch.arange(12.0).view(1, 3, 2, 2)
    batch = {"mask": torch.tensor([[[0, 0], [1, 255]]])}
    update = MemoryUpdate(memory)
    update.on_train_batch_end(None, None, {"loss": 0, "outputs": {"memory_features": features}}, batch, 0)
    torch.testing.assert_close(memory.memory[0], features[0, :, 0, :2].mean(1))
    torch.testing.assert_close(memory.memory[1], features[0, :, 1, 0])
    with pytest.raises(KeyError, match="memory_features"):
        update.on_train_batch_end(None, None, {"loss": 0, "outputs": {}}, batch, 0)


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_image_class_means_match_per_image_loop(resolution: str):
    torch.manual_seed(0)
    features = torch.randn(3, 5, 4, 4)
    labels = torch.randint(0, 3, (3, 16, 16))
    labels[0, :6] = 255
    labels[2] = torch.where(labels[2] == 1, 255, labels[2])  # class 1 absent from image 2
    memory = FeatureMemory(4, 5, update_resolution=resolution)  # class 3 in no image
    means, present = memory.image_class_means(features, labels)
    expected_means, expected_present = loop_image_class_means(features, labels, 4, resolution)
    assert torch.equal(present, expected_present) and not present[:, 3].any() and not present[2, 1]
    torch.testing.assert_close(means, expected_means, atol=1e-5, rtol=1e-5)
    assert memory.initialized.sum() == 0  # a read-only pass


def test_image_class_means_reject_labels_out_of_range():
    memory = FeatureMemory(4, 5)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[1, 0, 0] = 4  # would alias class 0 of a third image
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\) or 255"):
        memory.image_class_means(torch.randn(2, 5, 4, 4), labels)


def _batches(count: int, num_classes: int = 4) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, num_classes - 1, (2, 32, 32), generator=generator)  # the last class never appears
        labels[:, :4] = 255
        batches.append({"image": torch.randn(2, 3, 32, 32, generator=generator), "mask": labels})
    return batches


def _fake_trainer(batches: list[dict], ckpt_path: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(ckpt_path=ckpt_path, train_dataloader=batches,
                           precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext))


def test_clustering_initialization_is_the_mean_of_per_image_class_means():
    """Table 2 "Clustering": one cosine k-means cluster per class over the per-image class means = their mean."""
    model = _model("fcn", memory_init="clustering", memory_init_batches=2)
    assert isinstance(model.configure_callbacks()[0], MemoryInitialization)
    assert model.memory.init == "first_batch_mean"  # classes not seen before training: set at first sight
    batches = _batches(3)
    batches[2]["mask"][:] = 3  # only the (unread) third batch shows class 3
    model.eval()
    buffers = {name: b.clone() for name, b in model.named_buffers() if not name.startswith("memory.")}
    model.memory_initialization.on_train_start(_fake_trainer(batches), model)
    assert not model.training  # the mode is put back, and every buffer (BatchNorm statistics) too
    assert all(torch.equal(buffers[name], b) for name, b in model.named_buffers() if name in buffers)
    model.train()  # the oracle: features as a training step computes them (batch statistics)
    with torch.no_grad():
        per_image = [loop_image_class_means(model.memory_features(b["image"]), b["mask"], 4, "label")
                     for b in batches[:2]]
    means = torch.cat([m for m, _ in per_image])
    present = torch.cat([p for _, p in per_image]).float()
    expected = (means * present[..., None]).sum(0) / present.sum(0).clamp_min(1)[:, None]
    torch.testing.assert_close(model.memory.memory[:3], expected[:3], atol=1e-5, rtol=1e-5)
    assert model.memory.initialized.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert torch.equal(model.memory.memory[3], torch.zeros(16))


def test_clustering_initialization_skips_resumed_or_filled_memories():
    model = _model("fcn", memory_init="clustering")
    callback = model.memory_initialization
    callback.on_train_start(_fake_trainer(_batches(1), ckpt_path="last.ckpt"), model)
    assert model.memory.initialized.sum() == 0
    model.memory.initialize_from_sums(torch.ones(4, 16), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    callback.on_train_start(_fake_trainer(_batches(1)), model)
    assert model.memory.initialized.tolist() == [0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="memory_init"):
        _model(memory_init="kmeans")
    with pytest.raises(ValueError, match="num_batches"):
        MemoryInitialization(FeatureMemory(3, 4), lambda images: images, num_batches=0)


def test_similarity_matrix_and_image():
    memory = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    torch.testing.assert_close(cosine_similarity_matrix(memory), expected)
    image = similarity_image(expected, cell=4)
    assert image.shape == (12, 12, 3) and image.dtype.name == "uint8"


def test_similarity_logger_writes_image_and_scalar():
    from types import SimpleNamespace

    images, scalars = [], {}
    holder = torch.nn.Module()
    holder.memory = FeatureMemory(3, 2)
    holder.memory.memory.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    holder.memory.initialized.copy_(torch.tensor([1.0, 1.0, 0.0]))
    holder.log = lambda name, value, **kwargs: scalars.update({name: float(value)})
    experiment = SimpleNamespace(add_image=lambda tag, image, step, dataformats: images.append((tag, image.shape)))
    trainer = SimpleNamespace(logger=SimpleNamespace(experiment=experiment), is_global_zero=True, global_step=4)
    MemorySimilarityLogger(holder.memory, every_n_steps=2, cell=2).on_train_batch_end(trainer, holder, None, None, 0)
    assert images == [("train/memory_similarity", (6, 6, 3))]
    assert scalars["train/memory_mean_similarity"] == pytest.approx(math.sqrt(0.5))  # classes 0, 1 only


# ----------------------------------------------------------------------------------------- DCA, fuse, RCL
def test_dca_coarse_context_is_probability_weighted_memory():
    """Eq. 12: with attention refining to the identity-free path checked separately, C'_bi = W^T M per pixel."""
    torch.manual_seed(0)
    dca = DatasetContextAggregation(channels=4, num_classes=3, transform_channels=2).eval()
    memory = torch.randn(3, 4)
    features = torch.randn(2, 4, 3, 3)
    captured = {}
    dca.refine.register_forward_hook(lambda module, args, out: captured.update(keys=args[1]))
    logits, context = dca(features, memory)
    probs = torch.softmax(logits, dim=1)
    for b, y, x in [(0, 0, 0), (1, 2, 1)]:
        by_hand = sum(probs[b, k, y, x] * memory[k] for k in range(3))
        torch.testing.assert_close(captured["keys"][b, :, y, x], by_hand)
    assert context.shape == features.shape


def test_cross_attention_by_hand():
    """Eq. 13-14 with identity-like projections: output = g_o(softmax(q k^T / sqrt(T)) v)."""
    torch.manual_seed(0)
    block = CrossAttention(2, 2, 2, 2).eval()
    queries, keys = torch.randn(1, 2, 1, 2), torch.randn(1, 2, 2, 1)
    q = block.query(queries).flatten(2)[0].T  # [2 query positions, T]
    k = block.key(keys).flatten(2)[0].T  # [2 key positions, T]
    v = block.value(keys).flatten(2)[0].T
    relation = torch.softmax(q @ k.T / math.sqrt(2), dim=1)
    expected = block.out((relation @ v).T.reshape(1, 2, 1, 2))
    torch.testing.assert_close(block(queries, keys), expected)


def test_fuse_modes():
    torch.manual_seed(0)
    r, c = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(ContextFusion(4, "add")(r, c), r + c)
    weighted = ContextFusion(4, "weighted_add")
    out = weighted(r, c)
    w = torch.softmax(weighted.merge(torch.cat([r, c], 1)), 1)
    torch.testing.assert_close(out, w[:, :1] * r + w[:, 1:] * c)
    concat = ContextFusion(4, "concat", context_channels=6)
    assert concat(r, c, torch.randn(2, 6, 6, 6)).shape == (2, 4, 6, 6)  # at C_wi's resolution
    with pytest.raises(ValueError, match="within-image"):
        concat(r, c)


def test_rcl_loss_by_hand_only_initialised_rows():
    classifier = torch.nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        classifier.weight.copy_(torch.eye(3, 2).view(3, 2, 1, 1))  # logits = [m0, m1, 0]
    memory = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    initialized = torch.tensor([1.0, 1.0, 0.0])
    loss = representation_consistency_loss(classifier, memory, initialized)
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1 + 1))
    ce1 = -math.log(math.e / (1 + math.e + 1))
    assert loss.item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    assert representation_consistency_loss(classifier, memory, torch.zeros(3)).item() == 0.0


# ------------------------------------------------------------------------------------------------- the method
def _model(arch: str = "fcn", num_classes: int = 4, **kwargs) -> MCIBI:
    segmodel = tiny_segmodel(arch, seed=0, num_classes=num_classes if arch == "ocr" else None)
    return MCIBI(segmodel=segmodel, num_classes=num_classes, memory_channels=16, transform_channels=8, **kwargs)


@pytest.mark.parametrize("arch", ["fcn", "pspnet", "deeplabv3", "ocr", "fpn"])
def test_mcibi_frameworks_train_and_infer(arch: str):
    model = _model(arch, rcl_start_step=0, aux_weight=0.4)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    labels[1] = 255  # an all-ignore crop
    outputs, losses = model.training_outputs(images, labels)
    assert set(losses) == {"ce", "class_probability", "aux", "memory"} | ({"soft_regions"} if arch == "ocr" else set())
    assert all(torch.isfinite(v) for v in losses.values())
    model.total_loss(losses).backward()
    assert model.bottleneck[0].weight.grad is not None and model.dca.classify[0][0].weight.grad is not None
    assert model.memory.memory.grad is None  # not learnable
    # FCN + MCIBI: R from the encoder only, no decoder parameters
    assert (not list(model.segmodel.decoder.parameters())) == (arch == "fcn")
    model.memory.update(outputs["memory_features"], labels, 0.9)
    assert model.memory.initialized.sum() > 0
    model.eval()
    before = model.memory.memory.clone()
    logits = model(images)
    assert logits.shape == (2, 4, *outputs["logits"].shape[-2:])
    assert torch.equal(model.memory.memory, before)


def test_mcibi_paper_defaults_and_switches():
    model = _model()
    assert model.loss_weights["class_probability"] == 0.4 and model.loss_weights["memory"] == 1.0
    assert model.memory.weighting == "cosine" and model.memory.update_resolution == "label"
    assert model.momentum_schedule.m0 == 0.9 and model.momentum_schedule.power == 0.9
    assert model.momentum_schedule.schedule == "poly" and model.fusion.fuse == "concat" and model.rcl
    switched = _model(weighting="mean", momentum_schedule="constant", fuse="add", rcl=False, alpha=0.2,
                      update_resolution="feature", m0=1.0)
    assert switched.memory.weighting == "mean" and switched.memory.update_resolution == "feature"
    assert switched.momentum_schedule.schedule == "constant" and switched.momentum_schedule.m0 == 1.0
    assert switched.fusion.fuse == "add" and switched.loss_weights["class_probability"] == 0.2
    _, losses = switched.training_outputs(torch.randn(1, 3, 32, 32), torch.randint(0, 4, (1, 32, 32)))
    assert "memory" not in losses
    names = [type(c).__name__ for c in model.configure_callbacks()]
    assert names == ["MomentumSchedule", "MemoryUpdate", "MemorySimilarityLogger"]
    with pytest.raises(ValueError, match="alpha"):
        _model(alpha=-1.0)


def test_mcibi_bf16_autocast_float32_memory_finite_losses():
    model = _model(rcl_start_step=0)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            outputs, losses = model.training_outputs(images, labels)
            model.memory.update(outputs["memory_features"].detach(), labels, 0.5)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert model.memory.memory.dtype == torch.float32 and torch.isfinite(model.memory.memory).all()


# ------------------------------------------------------------------------------------ Trainer: schedule, resume
class UnshuffledData(SyntheticDataModule):
    """Training batches in a fixed order: Lightning does not restore the global RNG that shuffling draws from, so
    only a fixed order makes an exact-resume comparison possible."""

    def train_dataloader(self):
        return self._loader("train", self.batch_size, training=False)


def _tiny_fit(root: Path, callbacks: list | None = None, ckpt_path: str | None = None, **model_kwargs) -> MCIBI:
    L.seed_everything(0)
    data = UnshuffledData(num_classes=4, image_size=(32, 32), train_size=4, val_size=2, test_size=2,
                               batch_size=2, val_batch_size=2, num_workers=0, ratio_range=(1.0, 1.0), flip_prob=0.0,
                               photometric=False)
    model = _model(dropout=0.0, similarity_log_every_n_steps=1, **model_kwargs)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=bool(callbacks),
                        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=root)
    # our own checkpoint: hand-built modules keep dataclass hyper-parameters, which weights-only loading refuses
    trainer.fit(model, data, ckpt_path=ckpt_path, weights_only=False)
    return model


def test_schedule_memory_update_and_resume_exactness(tmp_path: Path):
    """A run resumed from its epoch-1 checkpoint ends with the same weights, memory, flags and momentum as the
    uninterrupted run; the callbacks came from `configure_callbacks` alone."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full = _tiny_fit(tmp_path / "a", [checkpoints])
    assert full.memory.initialized.tolist() == [1.0, 1.0, 1.0, 1.0]
    # 4 steps in all: the last batch started at step 3 -> Eq. 7 with t = 3, T = 4
    assert full.memory.momentum.item() == pytest.approx(0.25**0.9 * 0.891 + 0.009, rel=1e-6)
    halfway = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=False)["state_dict"]
    assert halfway["memory.initialized"].sum() > 0
    assert not torch.equal(halfway["memory.memory"], full.memory.memory)
    resumed = _tiny_fit(tmp_path / "b", ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"))
    expected, got = full.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


class FirstStepMemory(L.Callback):
    """Records the memory as the first training batch starts."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            self.initialized = pl_module.memory.initialized.clone()
            self.memory = pl_module.memory.memory.clone()


def test_clustering_initialization_before_the_first_step_and_skipped_on_resume(tmp_path: Path):
    probe = FirstStepMemory()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full = _tiny_fit(tmp_path / "a", [checkpoints, probe], memory_init="clustering", memory_init_batches=1)
    assert probe.initialized.sum() > 0 and probe.memory.abs().sum() > 0  # set by the data pass before step 0
    resumed = _tiny_fit(tmp_path / "b", ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"), memory_init="clustering",
                        memory_init_batches=1)
    expected, got = full.state_dict(), resumed.state_dict()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------------------------------------- configs
ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "configs" / "experiments" / "mcibi").glob("*.yaml"))
ABLATIONS = sorted((ROOT / "configs" / "ablations" / "mcibi").glob("*.yaml"))
TINY_DATA = str(ROOT / "configs" / "data" / "synthetic_tiny.yaml")


def _fast_dev_run(config: Path, run_dir: Path, *extra: str) -> None:
    """fast_dev_run of a config on the tiny synthetic data with a tiny SegModel of the same arch."""
    from segcentroids.cli import main

    arch = segmodel_args(config)["arch"]
    tiny = tiny_segmodel_args(arch)
    if arch == "ocr":
        tiny["num_classes"] = 8
    segmodel = json.dumps({"class_path": "segcentroids.models.SegModel", "init_args": tiny})
    # the paper configs' crop / resize settings would otherwise carry over to the synthetic DataModule, and
    # Cityscapes' 512x1024 slide windows would be padded around the 64x64 images
    data = ["--data.init_args.crop_size=[64,64]", "--data.init_args.scale=null", "--data.init_args.test_scale=null",
            "--model.init_args.inference.mode=whole"]
    if "lip_flip" in config.read_text():  # the flip test swaps classes 14..19: synthetic scenes of LIP's 20 classes
        data.append("--data.init_args.num_classes=20")
    main(["fit", "--config", str(config), "--data", TINY_DATA, *data, "--trainer.fast_dev_run=true",
          "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={run_dir}",
          f"--model.init_args.segmodel={segmodel}", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("config", EXPERIMENTS, ids=[c.stem for c in EXPERIMENTS])
def test_config_fast_dev_run(config: Path, tmp_path: Path):
    spec = yaml.safe_load(config.read_text())
    assert spec["model"]["class_path"] == "segcentroids.methods.MCIBI"
    small = ["--model.init_args.memory_channels=32", "--model.init_args.transform_channels=16"]
    _fast_dev_run(config, tmp_path, *small)


@pytest.mark.slow
def test_baseline_row_switches_the_class(tmp_path: Path, capsys: pytest.CaptureFixture):
    """An ablation row `--model.class_path=...Baseline` on an MCIBI config runs the Baseline of the same model."""
    table = yaml.safe_load((ROOT / "configs" / "ablations" / "mcibi" / "table1_fuse.yaml").read_text())
    row = next(r for r in table["rows"] if r["name"] == table["baseline"])
    _fast_dev_run(ROOT / table["base"][0], tmp_path, *row["overrides"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _fast_dev_run(ROOT / table["base"][0], tmp_path, *row["overrides"], "--print_config")
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "segcentroids.methods.Baseline"
    assert "memory_channels" not in printed["model"]["init_args"]


SMALL_STAND_INS = {"tu-resnest101e": "tu-resnest14d", "tu-hrnet_w48": "tu-hrnet_w18_small",
                   "tu-vit_large_patch16_384": "tu-vit_tiny_patch16_224", "resnet50": "resnet18"}
"""The tables' backbones, built small here (same family)."""


@pytest.mark.parametrize("table", ABLATIONS, ids=[t.stem for t in ABLATIONS])
def test_ablation_rows_are_mcibi_overrides(table: Path):
    """Every row is the base config plus constructor switches: build each row's model (tiny) from its overrides."""
    import inspect

    from segcentroids.ablate import load_ablation

    load_ablation(table)  # the runner's format check
    spec = yaml.safe_load(table.read_text())
    assert all((ROOT / base).is_file() for base in spec["base"])
    names = [row["name"] for row in spec["rows"]]
    assert len(set(names)) == len(names) and set(spec["paper"]) == set(names) and spec["baseline"] in names
    arguments = inspect.signature(MCIBI.__init__).parameters
    base_arch = segmodel_args(ROOT / spec["base"][0])
    segmodels: dict[tuple, SegModel] = {}
    for row in spec["rows"]:
        method, kwargs, seg = MCIBI, {}, {"arch": base_arch["arch"]}
        for override in row["overrides"]:
            key, value = override.removeprefix("--").split("=", 1)
            if key == "model.class_path":
                assert value == "segcentroids.methods.Baseline"
                method = Baseline
            elif key in ("data", "model.init_args.inference"):  # another data / test protocol file
                assert (ROOT / value).is_file(), override
            elif key.startswith("model.init_args.segmodel.init_args."):
                name, parsed = key.rsplit(".", 1)[1], yaml.safe_load(value)
                seg[name] = SMALL_STAND_INS.get(parsed, parsed) if name == "encoder_name" else parsed
            else:
                name = key.removeprefix("model.init_args.")
                assert name in arguments, override
                kwargs[name] = yaml.safe_load(value)
        if "num_classes" in seg:
            seg["num_classes"] = 4
        key = tuple(sorted(seg.items()))
        if key not in segmodels:
            segmodels[key] = tiny_segmodel(**seg)
        segmodel = copy.deepcopy(segmodels[key])  # MCIBI on FCN removes the decoder of its SegModel
        extra = {"memory_channels": 16, "transform_channels": 8} if method is MCIBI else {}
        model = method(segmodel=segmodel, num_classes=4, **extra, **kwargs)
        assert type(model) is method
        for name, value in kwargs.items():
            assert model.hparams[name] == value, (row["name"], name)


def test_fcn_mcibi_leaves_the_given_segmodel_and_loads_checkpoints_with_the_old_momentum_key():
    segmodel = tiny_segmodel("fcn")
    model = MCIBI(segmodel=segmodel, num_classes=4, memory_channels=16, transform_channels=8)
    assert model.segmodel.encoder is segmodel.encoder and list(segmodel.decoder.parameters())  # not mutated
    state = model.state_dict()
    state["memory_momentum"] = state.pop("memory.momentum").clone().fill_(0.3)  # a checkpoint from before
    model.load_state_dict(state)
    assert model.memory.momentum.item() == pytest.approx(0.3)


# ----------------------------------------------------------------------------- where R is built (memory_input)
@pytest.mark.parametrize(("encoder", "stages"), [("resnet18", [64, 128, 256, 512]),
                                                  ("tu-hrnet_w18_small", [16, 32, 64, 128])])
def test_hrnet_concat_builds_r_memory_and_dca_at_stride_4(encoder: str, stages: list[int]):
    """`memory_input="hrnet_concat"` (Tables 7-8 on HRNetV2-W48): R's bottleneck reads the stride 4-32 stages,
    upsampled to stride 4 and concatenated (sum of the stage channels), so R, H1's logits and the output are at
    stride 4; its value is the bottleneck applied to that concatenation written out here."""
    torch.manual_seed(0)
    segmodel = SegModel(**tiny_segmodel_args("deeplabv3", encoder_name=encoder, output_stride=4))
    model = MCIBI(segmodel=segmodel, num_classes=4, memory_channels=16, transform_channels=8,
                  memory_input="hrnet_concat").eval()
    assert model.bottleneck[0].in_channels == sum(stages)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = model.segmodel(images)
        outputs = model.head_outputs(features)
        pyramid = features["encoder"]
        assert [f.shape[1] for f in pyramid[2:]] == stages
        quarter = pyramid[2].shape[-2:]
        concat = torch.cat([pyramid[2], *(torch.nn.functional.interpolate(f, size=quarter, mode="bilinear")
                                          for f in pyramid[3:])], dim=1)
        expected = model.bottleneck(concat)
    assert quarter == (16, 24)
    assert outputs["memory_features"].shape == (2, 16, 16, 24)
    assert outputs["class_logits"].shape == (2, 4, 16, 24) and outputs["logits"].shape == (2, 4, 16, 24)
    torch.testing.assert_close(outputs["memory_features"], expected)
    torch.testing.assert_close(model.memory_features(images), expected)


def test_encoder_last_reads_the_deepest_stage_and_bad_memory_input_names_the_key():
    model = _model("fcn").eval()  # dilated ResNet-18, stride 8: C5
    assert model.memory_input == "encoder_last" and model.bottleneck[0].in_channels == 512
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        deepest = model.segmodel(images)["encoder"][-1]
        torch.testing.assert_close(model.memory_features(images), model.bottleneck(deepest))
    assert model.memory_features(images).shape[-2:] == (4, 4)
    with pytest.raises(ValueError, match="memory_input"):
        _model(memory_input="c5")


# ------------------------------------------------------------------------------------------ Fig. 3: t-SNE
def test_image_class_means_by_hand():
    from segcentroids.nn.memory import image_class_means

    features = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # [1, 1, 2, 2]
    labels = torch.tensor([[[0, 0], [2, 255]]])
    means, present = image_class_means(features, labels, num_classes=3, ignore_index=255)
    assert present.tolist() == [[True, False, True]]
    assert means[0, :, 0].tolist() == [2.0, 0.0, 5.0]


def test_feature_tsne_writes_a_png_with_one_point_per_image_class(tmp_path: Path):
    """Fig. 3 on a tiny run: the PNG holds one point per (validation image, class present) pair, counted here from
    the validation masks, plus one star per initialised memory row, and a legend of the classes."""
    from PIL import Image

    from segcentroids.callbacks import FeatureTSNE

    L.seed_everything(0)
    data = UnshuffledData(num_classes=4, image_size=(32, 32), train_size=4, val_size=3, test_size=2, batch_size=2,
                          val_batch_size=2, num_workers=0, ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False)
    tsne = FeatureTSNE(resolution="label", perplexity=2.0)
    model = _model(dropout=0.0)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[tsne],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, data)
    pairs = sum(len(set(batch["mask"][i].unique().tolist()) - {255})
                for batch in data.val_dataloader() for i in range(len(batch["mask"])))
    assert tsne.last_path is not None and tsne.last_path.parent == tmp_path / "tsne"
    image = Image.open(tsne.last_path)
    assert image.format == "PNG" and image.width > 200 and image.height > 200
    assert int(image.info["points"]) == pairs > 3
    assert int(image.info["memory_points"]) == int(model.memory.initialized.sum()) > 0
    assert json.loads(image.info["classes"]) == data.class_names[:4]
    pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 4  # not a blank canvas


def test_feature_tsne_bad_options_name_the_key():
    from segcentroids.callbacks import FeatureTSNE

    with pytest.raises(ValueError, match="resolution"):
        FeatureTSNE(resolution="pixel")
    with pytest.raises(ValueError, match="every_n_epochs"):
        FeatureTSNE(every_n_epochs=0)


def test_table2_full_model_and_table5_fcn_mcibi_are_the_same_run():
    """Both tables quote 42.84 for FCN+MCIBI on ADE20K: same base, same switches once the defaults are filled in."""
    import inspect

    from segcentroids.ablate import load_ablation

    defaults = {name: p.default for name, p in inspect.signature(MCIBI.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def settings(table: str, row: str) -> tuple[list[str], dict]:
        ablation = load_ablation(ROOT / "configs" / "ablations" / "mcibi" / table)
        args = dict(defaults)
        for override in [*ablation.overrides, *ablation.row(row).overrides]:
            key, value = override.removeprefix("--model.init_args.").split("=", 1)
            args[key] = yaml.safe_load(value)
        return ablation.base, args

    assert settings("table2_memory.yaml", "cosine + poly + RCL") == settings("table5_frameworks_ade20k.yaml",
                                                                             "FCN+MCIBI")
    assert settings("table2_memory.yaml", "cosine + poly + RCL")[1]["memory_init"] == "random_pixel"
