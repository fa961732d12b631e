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
