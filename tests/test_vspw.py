"""VSPW: the DataModule on a tiny tree in the release layout, clips with one augmentation, the evaluation order and
sampler, the video-consistency metric against hand-computed toys, MLSeg's clip-level selection, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_trees import VSPW_STORED, VSPW_VIDEOS, vspw_tree

from segcentroids.data import VSPWDataModule
from segcentroids.data.clips import VideoShardSampler, synthetic_clip
from segcentroids.video_metrics import VideoConsistency
from tests.conftest import CONFIGS, tiny_segmodel

I = 255  # ignore  # noqa: E741


def vspw_rule(stored: np.ndarray) -> np.ndarray:
    """The VSPW rule written out: 0 and 255 ignored, k -> k - 1."""
    out = stored.astype(np.int64) - 1
    out[(stored == 0) | (stored == 255)] = 255
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("vspw")
    return root, vspw_tree(root)


def datamodule(root: Path, **kwargs) -> VSPWDataModule:
    options = {"crop_size": (8, 8), "scale": None, "num_workers": 0, "batch_size": 2, **kwargs}
    return VSPWDataModule(root=root, **options)


# ------------------------------------------------------------------------------------------------- the data
def test_labels_and_class_names() -> None:
    raw = np.array([0, 1, 2, 124, 125, 200, 255], dtype=np.uint8)
    assert VSPWDataModule.map_labels(raw).tolist() == [255, 0, 1, 123, -1, -1, 255]
    dm = VSPWDataModule(root="unused")
    assert dm.num_classes == 124 and len(set(dm.class_names)) == 124 and len(dm.palette) == 124
    assert dm.class_names[0] == "wall" and dm.class_names[-1] == "train" and dm.class_names[60] == "person"


def test_splits_list_every_frame_of_the_listed_videos(tree: tuple[Path, dict]) -> None:
    root, stored = tree
    dm = datamodule(root)
    for split in ("train", "val"):
        pairs = dm.list_split(split)
        names = [f"{image.parent.parent.name}/{image.stem}" for image, _ in pairs]
        assert names == sorted(name for s, name in stored if s == split)  # videos in list order, frames in order
    assert dm.list_split("test") == dm.list_split("val")  # test reads val.txt by default
    with pytest.raises(ValueError, match="listed name"):  # the test video has no masks
        datamodule(root, test_split="test").list_split("test")


def test_evaluation_goes_through_every_frame_in_video_order(tree: tuple[Path, dict]) -> None:
    root, stored = tree
    dm = datamodule(root, eval_clip_length=2, val_batch_size=2)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    names = [name for batch in batches for name in batch["name"]]
    assert names == sorted(name for s, name in stored if s == "val")
    for batch in batches:  # labels at their stored size, mapped; clip ids per batch; frame indices per video
        for name, mask, frame in zip(batch["name"], batch["mask"], batch["frame"]):
            assert np.array_equal(mask.numpy(), vspw_rule(stored[("val", name)]))
            assert int(frame) == int(name.split("/")[1])
        assert batch["image"].shape[-2:] == (16, 24)
    first = batches[0]
    assert first["clip"].tolist() == [0, 0, 1, 1] and first["video"] == ["2001_val_long"] * 4
    # 17 frames in clips of 2 -> 9 clips (the last holds one frame), then 3 frames -> clips of 2 and 1; 2 clips a
    # batch: the 5th batch holds the long video's last frame and the short video's first clip
    assert [len(batch["name"]) for batch in batches] == [4, 4, 4, 4, 3, 1]


def test_a_training_clip_gets_one_augmentation(tree: tuple[Path, dict]) -> None:
    """The static video repeats one frame: whatever resize, crop, flip and photometric distortion are drawn, its
    two frames must come out identical; the moving video's clips hold consecutive frames of one video."""
    root, _ = tree
    dm = datamodule(root, crop_size=(10, 10), ratio_range=(0.5, 2.0))
    dm.setup("fit")
    dataset = dm.datasets["train"]
    static = [i for i, (video, _) in enumerate(dataset.clips) if dataset.videos[video].name == "1002_static"]
    outputs = []
    for seed in range(6):
        dataset.transform.set_random_seed(seed)
        item = dataset[static[0]]
        assert item["image"].shape == (2, 3, 10, 10) and item["mask"].shape == (2, 10, 10)
        assert torch.equal(item["image"][0], item["image"][1]) and torch.equal(item["mask"][0], item["mask"][1])
        outputs.append(item["image"][0])
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])  # the augmentation does vary
    moving = [dataset[i] for i, (video, _) in enumerate(dataset.clips) if dataset.videos[video].name == "1001_train_a"]
    assert [item["frame"].tolist() for item in moving] == [[0, 1], [1, 2], [1, 2]]  # the last clip moved back
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 10, 10) and batch["clip"].tolist() == [0, 0, 1, 1]


def test_video_shard_sampler_keeps_videos_whole(tree: tuple[Path, dict]) -> None:
    root, _ = tree
    dm = datamodule(root, eval_clip_length=1)
    dm.setup("validate")
    dataset = dm.datasets["val"]
    shards = [list(VideoShardSampler(dataset, num_replicas=2, rank=rank)) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(len(dataset))) and shards[0] == sorted(shards[0])
    videos = [{dataset.video_of_clip(i) for i in shard} for shard in shards]
    assert videos == [{0}, {1}]  # 17 frames, then 3: one video per process
    assert isinstance(dm.val_dataloader().sampler, torch.utils.data.DistributedSampler)  # Lightning keeps it


def test_synthetic_clip_moves_shapes() -> None:
    frames, labels = synthetic_clip(num_frames=5, size=(24, 24), num_classes=4, num_shapes=2, seed=3, speed=2.0)
    assert frames.shape == (5, 24, 24, 3) and labels.shape == (5, 24, 24) and labels.max() < 4
    assert not np.array_equal(labels[0], labels[-1])  # the shapes moved
    again, _ = synthetic_clip(num_frames=5, size=(24, 24), num_classes=4, num_shapes=2, seed=3, speed=2.0)
    assert np.array_equal(frames, again)


# ---------------------------------------------------------------------------------------- video consistency
# Two videos of 2x2 frames, pixels in row-major order (I = ignore). Video A, 4 frames:
A_TARGET = [[0, 1, 2, I], [0, 1, 3, I], [0, 1, 3, I], [0, 2, 3, I]]
A_PREDS = [[0, 1, 2, 0], [0, 0, 3, 0], [0, 1, 3, 0], [0, 2, 3, 1]]
# n = 2: window (0,1): ground truth constant at pixels 0, 1 (2 changes, 3 ignored); prediction constant and right
#        at pixel 0 only (pixel 1 goes 1 -> 0) -> 1/2. (1,2): constant at 0, 1, 2; right and constant at 0, 2 -> 2/3.
#        (2,3): constant at 0, 2; both kept -> 1. Video mean (1/2 + 2/3 + 1) / 3 = 13/18.
# n = 3: (0,1,2): constant at 0, 1; kept at 0 (pixel 1: 1, 0, 1) -> 1/2. (1,2,3): constant at 0, 2; both -> 1.
#        Video mean 3/4.
# Video B, 2 frames:
B_TARGET = [[5, 5, 5, 5], [5, 5, 5, 6]]
B_PREDS = [[5, 5, 4, 5], [5, 5, 4, 5]]
# n = 2: constant at 0, 1, 2; pixel 2 is constant but wrong -> 2/3 (constant only: 3/3). n = 3: no window.


def frames(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows).view(-1, 2, 2)


def feed(metric: VideoConsistency, per_frame: bool = False) -> VideoConsistency:
    for name, preds, target in (("A", A_PREDS, A_TARGET), ("B", B_PREDS, B_TARGET)):
        if per_frame:  # one update per frame, the video named
            for p, t in zip(frames(preds), frames(target)):
                metric.update(p, t, name)
        else:  # one update per whole video
            metric.update(frames(preds), frames(target))
    return metric


@pytest.mark.parametrize("per_frame", [False, True])
def test_video_consistency_matches_the_hand_computed_toy(per_frame: bool) -> None:
    by_videos = feed(VideoConsistency(windows=(2, 3)), per_frame).compute()
    assert by_videos["VC_2"].item() == pytest.approx((13 / 18 + 2 / 3) / 2)  # 25/36
    assert by_videos["VC_3"].item() == pytest.approx(3 / 4)  # B has no 3-frame window
    by_windows = feed(VideoConsistency(windows=(2, 3), average="windows"), per_frame).compute()
    assert by_windows["VC_2"].item() == pytest.approx((1 / 2 + 2 / 3 + 1 + 2 / 3) / 4)  # 17/24
    assert by_windows["VC_3"].item() == pytest.approx((1 / 2 + 1) / 2)
    constant_only = feed(VideoConsistency(windows=(2,), require_correct=False), per_frame).compute()
    assert constant_only["VC_2"].item() == pytest.approx((13 / 18 + 1) / 2)  # A as before, B 3/3


def test_video_consistency_empty_windows_and_reset() -> None:
    metric = VideoConsistency(windows=(2,))
    metric.update(frames([[I, I, I, I], [I, I, I, I]]), frames([[I, I, I, I], [I, I, I, I]]))  # nothing to score
    assert torch.isnan(metric.compute()["VC_2"])
    metric.reset()
    metric.update(frames(B_PREDS), frames(B_TARGET))
    assert metric.compute()["VC_2"].item() == pytest.approx(2 / 3)


def test_video_consistency_sums_its_state_over_processes() -> None:
    """Two processes, one video each, the second video still in progress when `compute` syncs: the synced result
    is the one-process result (the video in progress is finished before the states are gathered)."""
    other = VideoConsistency(windows=(2, 3))
    other.update(frames(A_PREDS), frames(A_TARGET), "A")
    other.finish_video()
    other_states = iter([getattr(other, name).clone() for name in other._reductions])

    def gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        return [tensor, next(other_states)]

    metric = VideoConsistency(windows=(2, 3), dist_sync_fn=gather, distributed_available_fn=lambda: True)
    for p, t in zip(frames(B_PREDS), frames(B_TARGET)):
        metric.update(p, t, "B")  # never told that B ended
    scores = metric.compute()
    assert scores["VC_2"].item() == pytest.approx(25 / 36) and scores["VC_3"].item() == pytest.approx(3 / 4)


# ----------------------------------------------------------------------------------------------- MLSeg on clips
def test_mlseg_video_shares_the_selection_within_a_clip() -> None:
    from segcentroids.losses.asymmetric import AsymmetricLoss
    from segcentroids.methods import MLSeg, MLSegVideo
    from segcentroids.ops.selection import multi_hot_labels

    torch.manual_seed(0)
    options = {"num_classes": 8, "kappa": 3, "classifier": "linear", "rank_temperature": "per_rank"}
    model = MLSegVideo(segmodel=tiny_segmodel(seed=0), **options).eval()
    images = torch.randn(4, 3, 32, 32)
    labels = torch.full((4, 32, 32), 255)
    labels[0, :4], labels[1, :4], labels[2, :4], labels[3, :4] = 1, 2, 3, 3  # clip 0: {1, 2}; clip 1: {3}
    clips = torch.tensor([0, 0, 1, 1])
    with torch.no_grad(), model.sharing_clips(clips):
        outputs, losses = model.training_outputs(images, labels)
    scores, selected = outputs["multilabel_logits"], outputs["selected"]
    assert torch.equal(selected[0], selected[1]) and torch.equal(selected[2], selected[3])
    assert torch.allclose(scores[0], scores[1]) and torch.allclose(scores[2], scores[3])
    with torch.no_grad():
        frame_scores = model.multilabel_head(model.segmodel(images)["decoder"])[0]
    assert torch.allclose(scores[0], frame_scores[:2].mean(0), atol=1e-6)
    union = multi_hot_labels(labels, 8, 255)[[0, 2]]
    union[0] = torch.maximum(union[0], multi_hot_labels(labels, 8, 255)[1])
    expected = AsymmetricLoss(2.0, 0.0, 0.05)(scores[[0, 2]], union)
    assert losses["multilabel"].item() == pytest.approx(expected.item(), rel=1e-5)

    # without clips (or with clip_level_selection off) it is MLSeg: per-frame scores
    with torch.no_grad():
        plain = model.training_outputs(images, labels)[0]["multilabel_logits"]
    assert torch.allclose(plain, frame_scores, atol=1e-6)
    reference = MLSeg(segmodel=tiny_segmodel(seed=0), **options).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(reference.training_outputs(images, labels)[0]["logits"],
                              model.training_outputs(images, labels)[0]["logits"], atol=1e-6)


def test_clip_pooling_with_unequal_clips_in_any_order() -> None:
    """Clips of 3 and 1 frames with interleaved ids: each frame gets its clip's mean, the union of its clip's
    classes, and the multi-label loss weighs each clip once (the mean over clips, by hand)."""
    from segcentroids.losses.asymmetric import AsymmetricLoss
    from segcentroids.methods.mlseg_video import clip_mean, clip_shares, clip_union

    clips = torch.tensor([7, 2, 7, 7])
    values = torch.tensor([[1.0, 0.0], [5.0, 5.0], [2.0, 3.0], [3.0, 3.0]])
    expected = torch.tensor([[2.0, 2.0], [5.0, 5.0], [2.0, 2.0], [2.0, 2.0]])
    torch.testing.assert_close(clip_mean(values, clips), expected)
    targets = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0]])
    union = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 1, 0], [1, 1, 0]])
    assert torch.equal(clip_union(targets, clips), union)
    loss = AsymmetricLoss()
    logits = clip_mean(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), clips)
    per_clip = (loss(logits[[0]], union[[0]]) + loss(logits[[1]], union[[1]])) / 2
    torch.testing.assert_close(loss(logits, union, clip_shares(clips)), per_clip)


def test_mlseg_video_evaluates_clip_by_clip() -> None:
    from segcentroids.methods import MLSegVideo

    torch.manual_seed(0)
    model = MLSegVideo(segmodel=tiny_segmodel(seed=0), num_classes=8, kappa=3, classifier="linear").eval()
    images, labels = torch.randn(5, 3, 64, 64), torch.zeros(5, 64, 64, dtype=torch.long)
    model._eval_clips = torch.tensor([0, 0, 1, 1, 2])
    with torch.no_grad():
        preds, extras = model.evaluation_outputs(images, labels, "val")
        model._eval_clips = None
        _, alone = model.evaluation_outputs(images[2:4], labels[2:4], "val")
    assert preds.shape == (5, 64, 64) and extras["multilabel_logits"].shape == (5, 8)
    scores = extras["multilabel_logits"]
    assert torch.allclose(scores[0], scores[1]) and not torch.allclose(scores[1], scores[2])
    # the selection (top 3) is shared: the frames of a clip predict the same classes
    assert set(preds[0].unique().tolist()) | set(preds[1].unique().tolist()) <= set(scores[0].topk(3).indices.tolist())
    # a clip of 2 differs from the frames alone ...
    assert not torch.allclose(alone["multilabel_logits"], scores[2:4])
    with torch.no_grad(), model.sharing_clips(torch.zeros(2, dtype=torch.long)):
        together, together_extras = model.evaluation_outputs(images[2:4], labels[2:4], "val")
    # ... and equals the clip inferred alone
    assert torch.equal(together, preds[2:4])
    assert torch.allclose(together_extras["multilabel_logits"], scores[2:4], atol=1e-5)
    model.inference.window_batch_size = 1  # a clip of 2 frames cannot share one forward: said, not done per frame
    model._eval_clips = torch.tensor([0, 0, 1, 1, 2])
    with torch.no_grad(), pytest.raises(ValueError, match="window_batch_size >= 2"):
        model.evaluation_outputs(images, labels, "val")


# ------------------------------------------------------------------------------------------------ the command
@pytest.mark.parametrize("method", ["Baseline", "MLSegVideo"])
def test_fit_and_test_report_video_consistency(method: str, tree: tuple[Path, dict], tmp_path: Path) -> None:
    from segcentroids.cli import main

    root, _ = tree
    common = [
        "--config", str(CONFIGS / "quickstart.yaml"),
        "--data", str(CONFIGS / "data" / "vspw.yaml"),
        f"--data.init_args.root={root}",
        "--data.init_args.crop_size=[32,32]",
        "--data.init_args.test_scale=[64,64]",  # FPN's GroupNorm needs more than a 1x1 map at stride 32
        "--data.init_args.scale=null",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        f"--model.class_path=segcentroids.methods.{method}",
        "--model.init_args.segmodel.init_args.decoder_channels=32",
        *(["--model.init_args.kappa=50", "--model.init_args.classifier=linear"] if method != "Baseline" else []),
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]
    main(["fit", *common, "--trainer.fast_dev_run=true"])
    main(["test", *common, "--ckpt_path", "untrained"])
    (evaluation,) = (tmp_path / "run" / "eval").glob("test-untrained*")
    record = json.loads((evaluation / "metrics" / "test_video_consistency.json").read_text())
    assert record["split"] == "test" and 0.0 <= record["VC_8"] <= 100.0 and 0.0 <= record["VC_16"] <= 100.0
    scores = json.loads((evaluation / "metrics" / "test.json").read_text())
    assert len(scores["IoU"]) == 124


def test_tree_is_what_the_tests_expect() -> None:
    assert {split for split, _, _ in VSPW_VIDEOS} == {"train", "val"} and 124 in VSPW_STORED and 255 in VSPW_STORED


VSPW_EXPERIMENTS = sorted((CONFIGS / "experiments").rglob("*vspw*.yaml"))


@pytest.mark.parametrize("config", VSPW_EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_fast_dev_run_on_the_tiny_tree(config: Path, tree: tuple[Path, dict], tmp_path: Path) -> None:
    """Each VSPW experiment trains a step and validates a batch of clips on the tiny tree (a tiny ViT, CPU)."""
    from segcentroids.cli import main

    root, _ = tree
    segmodel = {"class_path": "segcentroids.models.SegModel",
                "init_args": {"arch": "identity", "encoder_name": "tu-vit_tiny_patch16_224", "encoder_weights": None,
                              "encoder_kwargs": {"depth": 2}}}
    main(["fit", "--config", str(config), f"--data.init_args.root={root}", "--data.init_args.crop_size=[32,32]",
          "--data.init_args.scale=null", "--data.init_args.num_workers=0", "--trainer.fast_dev_run=true",
          "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          f"--trainer.default_root_dir={tmp_path}", f"--model.init_args.segmodel={json.dumps(segmodel)}",
          "--model.init_args.num_heads=3"])
