"""`segcentroids export`: every method's whole-image inference graph reproduces its own evaluation path (the oracle:
`method.infer` under whole-image inference) and carries none of the paper's training-only parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segcentroids.cli import main
from segcentroids.export import ExportError, export
from segcentroids.methods import MCIBI, MVSC, PNE, Baseline, MLSeg, Segmenter, SpecializeFuse
from segcentroids.models import SegModel
from tests.conftest import CONFIGS, tiny_overrides, tiny_segmodel

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

NUM_CLASSES = 5
SIZES = [(1, 64, 64), (2, 96, 80)]
"""(batch, height, width) checked against the method; 80 is not a multiple of the encoder's size divisor (32)."""


def tiny_vit() -> SegModel:
    return SegModel(arch="identity", encoder_name="tu-vit_tiny_patch16_224", encoder_weights=None,
                    encoder_kwargs={"depth": 2})


def build(name: str) -> tuple[Baseline, tuple[str, ...]]:
    """A tiny method and the prefixes of its training-only state, read off the papers: the auxiliary FCN head
    (aux_weight > 0), PNE's projection head (a plug-in loss), MVSC's centroids, MCIBI's update momentum and
    initialised-class flags (the memory itself is read at inference), the unity pyramid under fusion=finest."""
    torch.manual_seed(0)
    common = {"num_classes": NUM_CLASSES, "aux_weight": 0.4}
    if name == "Baseline":
        return Baseline(segmodel=tiny_segmodel(), **common), ("aux_head.",)
    if name == "MCIBI":
        method = MCIBI(segmodel=tiny_segmodel("deeplabv3"), memory_channels=32, transform_channels=16, **common)
        with torch.no_grad():
            method.memory.memory.normal_()  # a trained memory: not all zeros
        return method, ("aux_head.", "memory.momentum", "memory.initialized")
    if name == "PNE":
        return PNE(segmodel=tiny_segmodel(), embed_dim=16, **common), ("aux_head.", "extra_losses.")
    if name == "MVSC":
        return MVSC(segmodel=tiny_segmodel(), **common), ("aux_head.", "centroids.")
    if name == "SpecializeFuse":
        return SpecializeFuse(segmodel=tiny_segmodel(), unity_channels=16, semantic_channels=32, **common), \
            ("aux_head.",)
    if name == "SpecializeFuse-finest":
        return SpecializeFuse(segmodel=tiny_segmodel(), unity_channels=16, semantic_channels=32, fusion="finest",
                              **common), ("aux_head.", "unity_head.")
    if name == "MLSeg":
        return MLSeg(segmodel=tiny_vit(), kappa=3, num_heads=3, num_classes=NUM_CLASSES), ()
    if name == "Segmenter":
        return Segmenter(segmodel=tiny_vit(), num_heads=3, num_classes=NUM_CLASSES), ()
    raise KeyError(name)


def reference_logits(method: Baseline, images: torch.Tensor) -> np.ndarray:
    """The method's own whole-image evaluation: `infer` at the image size (the default InferenceConfig)."""
    method.eval()
    with torch.no_grad():
        return method.infer(images, tuple(images.shape[-2:])).numpy()


def images_of(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * width + batch))


def inference_state(method: Baseline, training_only: tuple[str, ...]) -> set[str]:
    """What an inference graph needs: every parameter and buffer but the training-only ones and BatchNorm's step
    counters (read in training only)."""
    names = [name for name, _ in (*method.named_parameters(), *method.named_buffers())]
    return {name for name in names if not name.startswith(training_only) and not name.endswith("num_batches_tracked")}


# ---------------------------------------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("name", ["Baseline", "MCIBI", "PNE", "MVSC"])
def test_onnx_graph_reproduces_the_methods_evaluation(name: str, tmp_path: Path) -> None:
    method, training_only = build(name)
    path = export(method, "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path))
    for size in [*SIZES, (1, 67, 71)]:
        images = images_of(*size)
        (logits,) = session.run(None, {"images": images.numpy()})
        assert logits.shape == (size[0], NUM_CLASSES, *size[1:])
        np.testing.assert_allclose(logits, reference_logits(method, images), atol=1e-4, rtol=0)
    graph = onnx.load(str(path)).graph
    names = [i.name for i in graph.initializer] + [n.name for n in graph.node]
    assert not [n for n in names if any(prefix.rstrip(".") in n for prefix in training_only)]
    weights = [onnx.numpy_helper.to_array(i) for i in graph.initializer]
    for key, tensor in method.state_dict().items():
        if key.startswith(training_only) and tensor.numel() > 1 and tensor.float().std() > 0:  # identifiable
            assert not any(w.shape == tuple(tensor.shape) and np.allclose(w, tensor.numpy()) for w in weights), key


@pytest.mark.parametrize(("name", "op"), [("SpecializeFuse", "adaptive_avg_pool2d"),
                                          ("MLSeg", "_upsample_bicubic2d_aa")])
def test_onnx_refusal_names_the_op_and_the_other_formats(name: str, op: str, tmp_path: Path) -> None:
    method, _ = build(name)
    with pytest.raises(ExportError, match=f"{name} has no ONNX graph.*{op}.*--format torchscript"):
        export(method, "onnx", tmp_path / "model.onnx")


# ----------------------------------------------------------------------------------- TorchScript, ExportedProgram
@pytest.mark.parametrize("name", ["Baseline", "MCIBI", "PNE", "MVSC", "SpecializeFuse", "SpecializeFuse-finest",
                                  "MLSeg", "Segmenter"])
def test_torchscript_reproduces_the_methods_evaluation(name: str, tmp_path: Path) -> None:
    method, training_only = build(name)
    loaded = torch.jit.load(str(export(method, "torchscript", tmp_path / "model.ts")))
    for size in SIZES:  # multiples of Specialize-and-Fuse's finest stride: see docs/export.md
        images = images_of(*size)
        with torch.no_grad():
            np.testing.assert_allclose(loaded(images).numpy(), reference_logits(method, images), atol=1e-4, rtol=0)
    exported = {name for name, _ in (*loaded.named_parameters(), *loaded.named_buffers())}
    assert exported == {f"method.{n}" for n in inference_state(method, training_only)}


@pytest.mark.parametrize("name", ["Baseline", "MVSC"])
def test_exported_program_reproduces_the_methods_evaluation(name: str, tmp_path: Path) -> None:
    method, training_only = build(name)
    program = torch.export.load(str(export(method, "exported_program", tmp_path / "model.pt2")))
    for size in [(1, 64, 64), (2, 96, 128)]:  # within torch.export's shape guards: multiples of 32
        images = images_of(*size)
        with torch.no_grad():
            np.testing.assert_allclose(program.module()(images).numpy(), reference_logits(method, images),
                                       atol=1e-4, rtol=0)
    assert set(program.state_dict) == {f"method.{n}" for n in inference_state(method, training_only)}


def test_export_refuses_an_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'tflite'"):
        export(build("Baseline")[0], "tflite", tmp_path / "model")


# -------------------------------------------------------------------------------------------------- the command
QUICKSTART = str(CONFIGS / "quickstart.yaml")
MVSC_CONFIG = str(CONFIGS / "experiments" / "mvsc" / "fpn_r18_mvsc_synthetic.yaml")


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    main(["fit", "--config", QUICKSTART, *tiny_overrides(run_dir, "--trainer.max_steps=1",
                                                         "--trainer.limit_val_batches=1")])
    return run_dir


def test_cli_exports_a_fitted_run_to_onnx(one_step_run: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = one_step_run / "checkpoints" / "last.ckpt"
    output = one_step_run / "exported" / "model.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--config", QUICKSTART, *tiny_overrides(one_step_run), "--ckpt_path", str(checkpoint),
              "--format", "onnx", "--output", str(output)])
    assert exit_info.value.code == 0 and str(output) in capsys.readouterr().out
    method = Baseline.load_from_checkpoint(checkpoint)  # the checkpoint's own model, built by Lightning
    images = images_of(2, 64, 96)
    (logits,) = ort.InferenceSession(str(output)).run(None, {"images": images.numpy()})
    np.testing.assert_allclose(logits, reference_logits(method, images), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("args", "named"), [
    (["--ckpt_path", "missing.ckpt", "--format", "onnx"], "checkpoint missing.ckpt: no such file"),
    (["--ckpt_path", "{ckpt}", "--format", "tflite"], "invalid choice: 'tflite'"),
    (["--ckpt_path", "{ckpt}", "--format", "onnx", "--config", MVSC_CONFIG],
     "was written by segcentroids.methods.Baseline, but the config builds segcentroids.methods.mvsc.MVSC"),
])
def test_cli_bad_input_gets_one_line(one_step_run: Path, args: list[str], named: str,
                                     capsys: pytest.CaptureFixture) -> None:
    checkpoint = str(one_step_run / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--config", QUICKSTART, *tiny_overrides(one_step_run),
              *[arg.format(ckpt=checkpoint) for arg in args]])
    assert exit_info.value.code != 0
    assert named in capsys.readouterr().err
