"""Jobs on a real SLURM cluster (`bash scripts/slurm_up.sh` starts a one-node one): a 2-task DDP fit of MCIBI, a job
preempted with SIGUSR1 that requeues and resumes to the same result, and an ablation table as an array job.

Run with `python -m pytest -m slurm`. Without a cluster the suite skips, unless SEGCENTROIDS_REQUIRE_SLURM=1 (CI),
where it fails with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

pytestmark = pytest.mark.slurm

HELPERS = REPO / "tests" / "helpers"
TINY_MCIBI = str(HELPERS / "mcibi_tiny.yaml")
FIT_TEMPLATE = str(REPO / "configs" / "slurm" / "fit_single_node.sbatch")
TEST_TEMPLATE = str(REPO / "configs" / "slurm" / "test_checkpoint.sbatch")
EPOCHS = 6  # one optimizer step per epoch (4 images, 2 ranks x 2)
JOB_TIMEOUT = 900
CPU_JOB = ["--ntasks-per-node=2", "--gres=none", "--cpus-per-task=1", "--time=20"]


def _cluster_problem() -> str | None:
    for tool in ("sbatch", "squeue", "scontrol", "scancel", "sinfo"):
        if shutil.which(tool) is None:
            return f"{tool} not found: start the cluster with `bash scripts/slurm_up.sh`"
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"sinfo failed ({result.returncode}): {result.stderr.strip()}"
    states = result.stdout.split()
    if not any(state.rstrip("*") in ("idle", "mixed", "allocated", "completing") for state in states):
        return f"no usable SLURM node (sinfo states: {states})"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("SEGCENTROIDS_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM cluster required (SEGCENTROIDS_REQUIRE_SLURM=1) but not usable: {problem}")
        pytest.skip(problem)


def job_env(run_dir: Path) -> dict[str, str]:
    """The submitting environment (sbatch exports it): this interpreter's `segcentroids` first on PATH, the test
    callbacks importable, one thread per task."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", RUN_DIR=str(run_dir),
               PYTHONPATH=os.pathsep.join([str(HELPERS), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    return env


def submit(name: str, run_dir: Path, *fit_args: str) -> str:
    log = run_dir.parent / f"{name}.out"
    result = subprocess.run(["sbatch", "--parsable", f"--job-name={name}", f"--output={log}", *CPU_JOB,
                             FIT_TEMPLATE, TINY_MCIBI, f"--trainer.max_epochs={EPOCHS}",
                             "--trainer.callbacks+=rank_dump.RankStateDump", *fit_args],
                            env=job_env(run_dir), capture_output=True, text=True, cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def job_fields(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(job: str, log: Path) -> dict[str, str]:
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        fields = job_fields(job)
        if fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return fields
        time.sleep(1)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} did not finish in {JOB_TIMEOUT} s; log tail:\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def rank_states(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    return [torch.load(run_dir / "rank_state" / f"rank{r}.pt", map_location="cpu", weights_only=False)
            for r in (0, 1)]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> float:
    keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
    assert keys and a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys)


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory) -> tuple[Path, float]:
    """A 2-task DDP fit of MCIBI run to the end: (run folder, seconds from submission to completion)."""
    base = tmp_path_factory.mktemp("slurm_ddp")
    run_dir = base / "run"
    start = time.monotonic()
    job = submit("ddp2", run_dir)
    fields = wait_for(job, base / "ddp2.out")
    seconds = time.monotonic() - start
    assert fields["JobState"] == "COMPLETED" and fields.get("ExitCode") == "0:0", _tail(base / "ddp2.out")
    print(f"\n[slurm] 2-task DDP job {job}: {seconds:.1f} s")
    return run_dir, seconds


def test_two_task_ddp_job_ranks_hold_identical_memories(uninterrupted) -> None:
    run_dir, _ = uninterrupted
    rank0, rank1 = rank_states(run_dir)
    assert rank0["global_step"] == rank1["global_step"] == EPOCHS
    assert torch.equal(rank0["state"]["memory.memory"], rank1["state"]["memory.memory"])
    assert rank0["state"]["memory.initialized"].sum() > 0
    assert max_diff(rank0["state"], rank1["state"]) == 0.0  # weights too
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_checkpoint_test_job_writes_test_metrics(uninterrupted, tmp_path: Path) -> None:
    run_dir, _ = uninterrupted
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    log = tmp_path / "test.out"
    result = subprocess.run(["sbatch", "--parsable", "--job-name=test_ckpt", f"--output={log}", "--gres=none",
                             "--cpus-per-task=1", "--time=10", TEST_TEMPLATE, TINY_MCIBI, str(ckpt)],
                            env=job_env(tmp_path / "test_run"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    fields = wait_for(result.stdout.strip().split(";")[0], log)
    assert fields["JobState"] == "COMPLETED", _tail(log)
    records = list((tmp_path / "test_run" / "eval").glob("test-last-*/metrics/test.json"))
    assert "[test]" in log.read_text() and len(records) == 1, _tail(log)


def test_sigusr1_saves_hpc_checkpoint_requeues_and_resumes_exactly(uninterrupted, tmp_path: Path) -> None:
    reference_dir, _ = uninterrupted
    run_dir = tmp_path / "run"
    log = tmp_path / "preempted.out"
    start = time.monotonic()
    job = submit("preempted", run_dir)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (run_dir / "checkpoints" / "last.ckpt").exists():  # at least one epoch done
        assert time.monotonic() < deadline and job_fields(job).get("JobState") in ("PENDING", "RUNNING"), _tail(log)
        time.sleep(0.2)
    # what `#SBATCH --signal=SIGUSR1@120` does before the time limit: the signal to the srun tasks (not the shell)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    fields = wait_for(job, log)
    seconds = time.monotonic() - start
    text = log.read_text()
    assert fields["JobState"] == "COMPLETED" and fields.get("ExitCode") == "0:0", _tail(log)
    assert int(fields["Restarts"]) == 1, _tail(log)
    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in hpc] == ["hpc_ckpt_1.ckpt"], _tail(log)
    saved_step = torch.load(hpc[0], map_location="cpu", weights_only=False)["global_step"]
    assert 1 <= saved_step < EPOCHS
    assert "restart 1: run" in text and "resume from scratch" not in text.split("restart 1: run")[1], _tail(log)

    resumed, reference = rank_states(run_dir)[0], rank_states(reference_dir)[0]
    assert resumed["global_step"] == reference["global_step"] == EPOCHS
    weights = max_diff(resumed["state"], reference["state"])
    memory = max_diff(resumed["state"], reference["state"], prefix="memory.")
    print(f"\n[slurm] preempted job {job}: {seconds:.1f} s incl. requeue (HPC checkpoint at step {saved_step}); "
          f"max |resumed - uninterrupted|: weights {weights:.3g}, memory {memory:.3g}")
    assert weights < 1e-5 and memory < 1e-5


def test_ablation_table_runs_as_array_job(cluster, tmp_path: Path) -> None:
    table = tmp_path / "table.yaml"
    table.write_text(yaml.safe_dump({
        "title": "MCIBI memory weighting (tiny synthetic)",
        "base": [TINY_MCIBI],
        "baseline": "cosine",
        "seeds": [0],
        "metrics": ["test/mIoU"],
        "evaluate": "test",
        "rows": [{"name": "cosine", "overrides": []},
                 {"name": "mean", "overrides": ["--model.init_args.weighting=mean"]}],
    }))
    out = tmp_path / "out"
    start = time.monotonic()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "segcentroids-ablate"), str(table), "--launcher", "slurm", "--out", str(out),
         "--sbatch", "ntasks=1", "--sbatch", "cpus-per-task=1", "--sbatch", "time=20",
         "--trainer.max_epochs=1"],
        env=job_env(tmp_path), capture_output=True, text=True, timeout=JOB_TIMEOUT)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    markdown = (out / "table.md").read_text()
    assert "cosine" in markdown and "mean" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("|") and ("cosine" in line or "mean" in line)]
    assert len(rows) == 2 and all(re.search(r"\d+\.\d", row) for row in rows), markdown
    print(f"\n[slurm] 2-row ablation array job: {seconds:.1f} s")
