"""Scale-out and fault tolerance without SLURM: atomic checkpoints, BatchNorm synchronised on CPU, DDP (2 gloo
processes) equal to one process, a SIGKILLed run resumed, bf16-mixed training of every method."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONFIGS, REPO, TINY_DATA
from torch import nn

import segcentroids.methods as methods
from segcentroids.callbacks import SlurmRequeue
from segcentroids.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from segcentroids.cli import SegCLI
from segcentroids.data import SegDataModule
from segcentroids.nn import GlobalBatchNorm, GlobalBatchNormSync

HELPERS = REPO / "tests" / "helpers"
TINY_MCIBI = str(HELPERS / "mcibi_tiny.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


class _BuildOnly(SegCLI):
    def _run_subcommand(self, subcommand: str) -> None:
        """Build model, data and trainer as `segcentroids fit` does, and run nothing."""


def build_cli(args: list[str]) -> SegCLI:
    """`segcentroids fit ARGS` with model, data and trainer built and nothing run."""
    return _BuildOnly(methods.Baseline, SegDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      args_list=["fit", *args], save_config_kwargs={"overwrite": True})


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in [k for k in env if k.startswith("SLURM_")]:  # a test run inside a SLURM job is not a SLURM run
        del env[key]
    # nor does it inherit a rendezvous: an in-process DDP run earlier in the session sets MASTER_PORT and may still
    # hold it (EADDRINUSE in the subprocess)
    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        env.pop(key, None)
    return env


def segcentroids_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "segcentroids.cli", *args]


# ------------------------------------------------------------------------------------------- atomic checkpoints
def test_atomic_save_keeps_the_previous_file_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, target)

    def crash_midway(obj, file, *args, **kwargs) -> None:
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the job is killed while writing

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no stray temporary file


def test_atomic_save_renames_within_the_target_folder(tmp_path: Path, monkeypatch) -> None:
    """The temporary file is beside the target, so the final rename never crosses filesystems (Lightning's own
    transaction writes it in the system temporary folder and falls back to a copy across filesystems)."""
    renames = []
    real_replace = os.replace

    def recording_replace(src, dst) -> None:
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)
    ((src, dst),) = renames
    assert src.parent == dst.parent == target.parent and dst == target
    assert torch.equal(torch.load(target)["w"], torch.ones(3))


# --------------------------------------------------------------------------------------------- GlobalBatchNorm
def test_global_batchnorm_plugin_swaps_and_reverts_keeping_state() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    model[1].running_mean.fill_(0.5)
    model[1].weight.data.fill_(2.0)
    model.eval()
    swapped = GlobalBatchNormSync().apply(model)
    assert isinstance(swapped[1], GlobalBatchNorm) and isinstance(swapped[2][0], GlobalBatchNorm)
    assert not swapped[1].training
    assert torch.equal(swapped[1].running_mean, torch.full((4,), 0.5)) and torch.equal(swapped[1].weight.data,
                                                                                       torch.full((4,), 2.0))
    reverted = GlobalBatchNormSync().revert(swapped)
    assert type(reverted[1]) is nn.BatchNorm2d and type(reverted[2][0]) is nn.BatchNorm1d
    assert torch.equal(reverted[1].running_mean, torch.full((4,), 0.5))


def test_global_batchnorm_without_process_group_is_batchnorm() -> None:
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(5)
    mine = GlobalBatchNorm(5)
    x = torch.randn(3, 5, 4, 4) * 3 + 1
    assert torch.allclose(mine(x), reference(x), atol=1e-6)
    assert torch.allclose(mine.running_var, reference.running_var)


# ------------------------------------------------------------------------------------------------------- DDP
def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    """MCIBI, one step of 2 gloo ranks x 2 images with BatchNorm synchronised vs 1 process x 4 images (the global
    batch is the whole training set in both). Memories (all-reduced update) and weights are identical across ranks
    and match the single process; validation metrics of the same weights are equal.

    One step only: later steps amplify float32 reduction-order differences (2 steps: 1.7e-3 in the memory) on this
    from-scratch network; the SLURM suite checks rank identity over 6 steps."""
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    common = ["--config", TINY_MCIBI, "--trainer.max_epochs=1", *QUIET]
    result = subprocess.run(
        segcentroids_cmd("fit", *common, "--trainer.devices=2", "--trainer.strategy=ddp",
                         f"--trainer.default_root_dir={ddp_dir}", "--trainer.callbacks+=rank_dump.RankStateDump"),
        env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = _state(ddp_dir / "rank_state" / "rank0.pt"), _state(ddp_dir / "rank_state" / "rank1.pt")
    assert torch.equal(rank0["memory.memory"], rank1["memory.memory"])
    assert torch.equal(rank0["memory.initialized"], rank1["memory.initialized"])
    assert rank0["memory.initialized"].sum() > 0
    assert _max_diff(rank0, rank1) == 0.0

    cli = build_cli([*common, "--data.init_args.batch_size=4", f"--trainer.default_root_dir={single_dir}"])
    cli.trainer.fit(cli.model, cli.datamodule)
    single = {k: v.detach() for k, v in cli.model.state_dict().items()}
    assert torch.allclose(single["memory.memory"], rank0["memory.memory"], atol=1e-5, rtol=1e-5)
    assert _max_diff(single, rank0) < 1e-4  # measured 2.7e-5 (float32 reduction order through BatchNorm)

    # the DDP run's validation (1 image per rank, confusion matrices summed) equals one process on its weights
    ddp_val = json.loads((ddp_dir / "metrics" / "val.json").read_text())
    cli.model.load_state_dict(rank0)
    cli.trainer.validate(cli.model, cli.datamodule)
    single_val = json.loads((single_dir / "metrics" / "val.json").read_text())
    for key in ("mIoU", "mAcc", "aAcc", "IoU"):
        assert single_val[key] == ddp_val[key], key


# ---------------------------------------------------------------------------------------------- crash and resume
@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--config", TINY_MCIBI, *QUIET, f"--trainer.default_root_dir={run}", "--trainer.max_epochs=1",
            "--data.init_args.train_size=24", "--trainer.limit_val_batches=0",
            "--trainer.plugins+=segcentroids.checkpoint_io.AtomicCheckpointIO",
            "--checkpoint.monitor=null", "--checkpoint.save_top_k=0", "--checkpoint.every_n_train_steps=1"]
    last = run / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(segcentroids_cmd("fit", *args), env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-epoch: the epoch has 12 steps, the first checkpoint is after step 1
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    killed_at = torch.load(last, map_location="cpu", weights_only=False)  # complete: atomic writes
    assert 1 <= killed_at["global_step"] < 12

    cli = build_cli([*args, "--data.init_args.train_size=24", "--ckpt_path=last"])  # as typed to resume
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path="last")
    assert cli.trainer.global_step == 12
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == 12 and final["epoch"] == 0
    assert torch.isfinite(final["state_dict"]["memory.memory"]).all()


# ------------------------------------------------------------------------------------- SIGUSR1: save and requeue
class _SignalAfterStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_slurm_requeue_saves_the_next_hpc_checkpoint_at_a_step_boundary(tmp_path: Path, monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(b"")  # an earlier preemption: the next one is number 4
    before = signal.getsignal(signal.SIGUSR1)
    cli = build_cli(["--config", TINY_MCIBI, *QUIET, "--trainer.max_epochs=6", "--trainer.limit_val_batches=0",
                     "--data.init_args.batch_size=4", f"--trainer.default_root_dir={tmp_path}"])
    cli.trainer.callbacks += [SlurmRequeue(), _SignalAfterStep(2)]
    cli.trainer.fit(cli.model, cli.datamodule)
    saved = torch.load(tmp_path / "hpc_ckpt_4.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2  # after step 2 and its memory update, before step 3
    assert saved["state_dict"]["memory.initialized"].sum() > 0
    assert cli.trainer.global_step < 6  # training stopped early
    assert signal.getsignal(signal.SIGUSR1) is before  # the previous handler is back


# --------------------------------------------------------------------------------------------- mixed precision
def _method_configs() -> dict[str, Path]:
    """A synthetic-data config for every method exported by `segcentroids.methods` (the Baseline: quickstart)."""
    found = {"Baseline": CONFIGS / "quickstart.yaml"}
    for path in sorted((CONFIGS / "experiments").glob("*/*synthetic*.yaml")):
        for line in path.read_text().splitlines():
            if line.strip().startswith("class_path: segcentroids.methods."):
                found.setdefault(line.split(".")[-1].strip(), path)
                break
    names = [n for n, obj in vars(methods).items() if isinstance(obj, type) and issubclass(obj, methods.Baseline)]
    missing = [n for n in names if n not in found]
    assert not missing, f"no synthetic config for methods {missing}"
    return {n: found[n] for n in sorted(names)}


class _LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().float())


@pytest.mark.parametrize(("name", "config"), list(_method_configs().items()))
def test_bf16_mixed_steps_are_finite_with_float32_state(name: str, config: Path, tmp_path: Path) -> None:
    cli = build_cli(["--config", str(config), f"--data={TINY_DATA}", *QUIET, "--trainer.accelerator=cpu",
                     "--trainer.devices=1", "--trainer.precision=bf16-mixed", "--trainer.max_steps=3",
                     "--trainer.limit_val_batches=0", "--trainer.logger=false", "--checkpoint.monitor=null",
                     "--checkpoint.save_last=false", "--checkpoint.save_top_k=0",
                     f"--trainer.default_root_dir={tmp_path}"])
    recorder = _LossRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert type(cli.model).__name__ == name
    assert len(recorder.losses) == 3 and all(torch.isfinite(loss) for loss in recorder.losses)
    for key, value in cli.model.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
            assert torch.isfinite(value).all(), key
