"""`benchmarks/gpu.py` runs unchanged on the CPU at a small size (the GPU table comes from the same command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(BENCHMARKS / "gpu.py"), "--models", "fpn_r18_scratch_ch64", "--size", "32",
               "--batch", "2", "--classes", "4", "--repeats", "1", "--methods", "Baseline", "MCIBI",
               "--compile-backend", "aot_eager", "--json", str(out), "--markdown", str(tmp_path / "gpu.md")]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, cwd=BENCHMARKS, env=env, capture_output=True, timeout=900)
    result = json.loads(out.read_text())
    assert result["device_name"] == "cpu" and result["peak_bf16_tflops"] is None
    rows = {(row["method"], row["variant"]): row for row in result["rows"]}
    assert set(rows) == {(m, v) for m in ("Baseline", "MCIBI") for v in ("eager", "fast")}
    for row in rows.values():
        assert row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0
        assert row["peak_train_memory_MiB"] > 0 and row["train_tflops"] > 0 and row["share_of_bf16_peak"] is None
    table = (tmp_path / "gpu.md").read_text()
    assert table.count("| fpn_r18_scratch_ch64 |") == 4


def test_device_peaks_by_name() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu import device_peak
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert device_peak("NVIDIA H100 80GB HBM3") == 989.4
    assert device_peak("NVIDIA H100 PCIe") == 756.0
    assert device_peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert device_peak("NVIDIA L40S") == 362.0 and device_peak("NVIDIA L4") == 121.0
    assert device_peak("Some CPU") is None


def test_overheads_before_variants_switch_the_fixes_off_and_give_the_same_unity() -> None:
    """`benchmarks/overheads.py`'s "before" switches: PNE off the grouped product inside the block only; the unity
    head as it was gives the new head's output (the refactor is exact)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from overheads import copied_templates, difference_maps
    finally:
        sys.path.remove(str(BENCHMARKS))
    import torch

    from segcentroids.nn.pyramid_heads import UnityHead
    from segcentroids.ops import blocks

    rows, templates = torch.zeros(3, 4, 8), torch.zeros(3, 8, 8)
    with copied_templates():
        assert not blocks.grouped_path_applies(rows, templates)
    assert blocks.grouped_path_applies(rows, templates)
    torch.manual_seed(0)
    head, x = UnityHead(6, [4, 2], unity_channels=5), torch.randn(2, 6, 8, 8)
    after = head(x)
    with difference_maps():
        before = head(x)
    for new, old in zip(after, before, strict=True):
        torch.testing.assert_close(new, old)


@pytest.mark.slow
def test_profile_step_sums_every_op_into_a_kind(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    command = [sys.executable, str(BENCHMARKS / "profile_step.py"), "--method", "PNE", "--steps", "1", "--top", "3",
               "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, cwd=BENCHMARKS, env=env, capture_output=True, timeout=900)
    result = json.loads(out.read_text())
    kinds = result["categories"]
    for side, total in (("baseline_ms", "baseline_total_ms"), ("method_ms", "method_total_ms")):
        assert sum(kinds[kind][side] for kind in ("arithmetic", "moves", "other")) == pytest.approx(result[total],
                                                                                                    abs=0.1)
    assert kinds["gflops_per_image"]["method"] > kinds["gflops_per_image"]["baseline"] > 0
    assert len(result["ops"]) == 3


def test_profile_kinds_of_op() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from profile_step import category
    finally:
        sys.path.remove(str(BENCHMARKS))
    expected = {"aten::mkldnn_convolution": "arithmetic", "aten::convolution_backward": "arithmetic",
                "aten::_slow_conv2d_forward": "arithmetic", "aten::mm": "arithmetic", "aten::_grouped_mm": "arithmetic",
                "aten::baddbmm": "arithmetic", "aten::index_select": "moves", "aten::copy_": "moves",
                "aten::scatter_add_": "moves", "aten::sort": "moves", "aten::native_batch_norm": "other",
                "aten::mul": "other", "aten::_softmax": "other", "aten::summary": "other"}
    assert {op: category(op) for op in expected} == expected
