"""The run folder: where each command writes, what `--ckpt_path last` / `best` mean, and checkpoints read safely.

One training run owns one folder, `trainer.default_root_dir`; every command writes its own record inside it and
never over another's::

    <run>/config.yaml                          the fit's configuration, written once
    <run>/checkpoints/                         last.ckpt, best-*.ckpt, on_exception.ckpt
    <run>/metrics/                             the fit's val.json, val_all.json, cost.json, curves.csv
    <run>/events.out.* | metrics.csv | mlruns/ the logger's files (TensorBoard by default)
    <run>/resumes/<time>-<checkpoint>/         config.yaml of each resumed fit
    <run>/eval/<command>-<checkpoint>-<time>/  config.yaml, metrics/<split>.json, the logger's files
"""

from __future__ import annotations

import json
import math
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINTS = "checkpoints"
EVAL_COMMANDS = ("validate", "test", "predict")
UNTRAINED = "untrained"  # --ckpt_path untrained: evaluate the model as built, on purpose
ON_EXCEPTION = "on_exception"


class RunFolderError(ValueError):
    """A command that would score the wrong weights, lose a record or read a bad checkpoint; one line."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` (tensors memory-mapped, plain data only), or one line saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"checkpoint {path}: no such file")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as file:
            zip_header = file.read(4) == b"PK\x03\x04"
        what = "is truncated or damaged" if zip_header else "is not a PyTorch checkpoint"
        raise RunFolderError(f"checkpoint {path} {what} ({path.stat().st_size} bytes, not a complete zip archive)")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise RunFolderError(f"checkpoint {path} holds objects that are not plain data ({reason})") from None
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0]
        raise RunFolderError(f"checkpoint {path} is damaged ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RunFolderError(f"checkpoint {path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def checkpoint_position(checkpoint: dict[str, Any]) -> dict[str, int | None]:
    """The epoch and global step at which a checkpoint was saved."""
    return {"epoch": checkpoint.get("epoch"), "step": checkpoint.get("global_step")}


def _recorded_best(checkpoint: dict[str, Any]) -> str | None:
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("best_model_path"):
            return Path(state["best_model_path"]).name
    return None


def _newest(paths: list[Path]) -> Path:
    return max(paths, key=lambda p: p.stat().st_mtime)


def _resumable(checkpoints: Path) -> list[Path]:
    """The checkpoints `--ckpt_path last` may mean: `last.ckpt` and `on_exception.ckpt`, those that exist."""
    return [p for p in (checkpoints / "last.ckpt", checkpoints / f"{ON_EXCEPTION}.ckpt") if p.is_file()]


def best_checkpoint(checkpoints: Path) -> Path:
    """`best-*.ckpt` of `checkpoints`: the one the newest last/on-exception checkpoint records, else the only one."""
    bests = sorted(checkpoints.glob("best-*.ckpt"))
    if not bests:
        raise RunFolderError(f"--ckpt_path best: no best-*.ckpt in {checkpoints}")
    lasts = _resumable(checkpoints)
    recorded = _recorded_best(read_checkpoint(_newest(lasts))) if lasts else None
    if recorded is not None and (checkpoints / recorded).is_file():
        return checkpoints / recorded
    if len(bests) == 1:
        return bests[0]
    names = ", ".join(p.name for p in bests)
    raise RunFolderError(f"--ckpt_path best: {checkpoints} holds {len(bests)} best checkpoints ({names}) and no "
                         "last.ckpt says which is best; pass one by path")


def resolve_checkpoint(command: str, ckpt_path: str | None, checkpoints: Path) -> Path | None:
    """The checkpoint file a command starts from (None: the model as built), `last` / `best` resolved in
    `checkpoints`. An evaluation without `--ckpt_path` beside trained checkpoints is refused: it would score
    random weights."""
    if ckpt_path == UNTRAINED:
        if command not in EVAL_COMMANDS:
            raise RunFolderError(f"--ckpt_path {UNTRAINED} is for {', '.join(EVAL_COMMANDS)}; fit starts untrained "
                                 "without --ckpt_path")
        return None
    if ckpt_path is None:
        found = sorted(p.name for p in checkpoints.glob("*.ckpt")) if checkpoints.is_dir() else []
        if command in EVAL_COMMANDS and found:
            raise RunFolderError(f"{command} without --ckpt_path would score untrained weights, but {checkpoints} "
                                 f"holds {', '.join(found)}: pass --ckpt_path last, best or a file (or "
                                 f"--ckpt_path {UNTRAINED} to score the model as built)")
        return None
    if ckpt_path == "last":
        lasts = _resumable(checkpoints)
        if lasts:
            return _newest(lasts)
        if command == "fit":  # nothing to resume yet: the first start of a job that always passes `last`
            print(f"segcentroids: no last.ckpt in {checkpoints}: training from the start", flush=True)
            return None
        raise RunFolderError(f"--ckpt_path last: no last.ckpt in {checkpoints}")
    if ckpt_path == "best":
        return best_checkpoint(checkpoints)
    path = Path(ckpt_path)
    if not path.is_file():
        raise RunFolderError(f"--ckpt_path {ckpt_path}: no such file")
    return path


def check_fresh_run(run: Path) -> None:
    """A fit that starts from scratch must not write over a run already in `run`."""
    held = [name for name in ("config.yaml", f"{CHECKPOINTS}/last.ckpt") if (run / name).exists()]
    held += sorted(f"{CHECKPOINTS}/{p.name}" for p in (run / CHECKPOINTS).glob("best-*.ckpt"))
    if held:
        raise RunFolderError(f"{run} already holds a run ({', '.join(held)}): resume it with --ckpt_path last, or "
                             "train into another --trainer.default_root_dir")


def record_name(command: str, checkpoint: Path | None, parent: Path) -> str:
    """`<command>-<checkpoint>-<time>` (resumes: `<time>-<checkpoint>`), unique in `parent`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = checkpoint.stem if checkpoint is not None else UNTRAINED  # a fit: restarted with nothing to resume
    base = f"{stamp}-{stem}" if command == "fit" else f"{command}-{stem}-{stamp}"
    name, number = base, 1
    while (parent / name).exists():
        number += 1
        name = f"{base}-{number}"
    return name


def scored_state(trainer: Any) -> dict[str, Any]:
    """What an evaluation scored: the checkpoint file with its epoch and step (the live weights in a fit), and
    when."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = getattr(trainer, "ckpt_path", None)
    if trainer.state.fn == "fit" or path is None:
        return {"checkpoint": None, "epoch": trainer.current_epoch, "step": trainer.global_step, "time": stamp}
    return {"checkpoint": str(Path(path).resolve()), **checkpoint_position(read_checkpoint(path)), "time": stamp}


def _json_safe(value: Any) -> Any:
    """NaN floats as None (JSON null), recursively through dicts and lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_record(trainer: Any, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Writes `record` (NaN as null) to `<trainer.default_root_dir>/metrics/<name>.json`, the command's record
    folder, and returns what was written."""
    folder = Path(trainer.default_root_dir) / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    record = _json_safe(record)
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2))
    return record


def write_metrics_file(trainer: Any, name: str, content: str | bytes) -> Path:
    """Writes `content` (text or bytes) to `<trainer.default_root_dir>/metrics/<name>`, beside the records."""
    path = Path(trainer.default_root_dir) / "metrics" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def tensorboard_of(trainer: Any) -> Any | None:
    """The TensorBoard writer of the trainer's logger (anything with `add_image`), or None."""
    logger = getattr(trainer, "logger", None)
    experiment = getattr(logger, "experiment", None) if logger is not None else None
    return experiment if hasattr(experiment, "add_image") else None
