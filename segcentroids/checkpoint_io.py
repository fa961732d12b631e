"""Checkpoint files that are never left half-written: write a temporary file beside the target, fsync, rename.

Lightning's `TorchCheckpointIO` saves local files through an fsspec transaction whose temporary file is made by
`tempfile.mkstemp()` in the system temporary folder and then moved with `shutil.move`. When that folder is on another
filesystem than the run folder (node-local `/tmp`, run folder on NFS or Lustre: the usual cluster layout), the move
is a copy into the final path, and a job killed during the copy leaves a truncated `last.ckpt`. `AtomicCheckpointIO`
writes the temporary file in the target's own folder, so the final `os.replace` is one atomic rename on every POSIX
filesystem.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_torch_save"]


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj, path)` through `<folder>/.<name>.<random>.tmp` + fsync + `os.replace`.

    Readers see either the previous file or the complete new one; a crash leaves at most a stray `.tmp` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic renames in the checkpoint's folder (see the module doc).

    Remote paths (`s3://`, ...) keep Lightning's own transaction. Use it with `--trainer.plugins=
    segcentroids.checkpoint_io.AtomicCheckpointIO`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

