"""A training run's files, written so that a kill, a full disk or a diverged model never costs a checkpoint:
timm's ``CheckpointSaver`` with atomic replaces and links, and ``summary.csv`` rewritten atomically.

timm's saver unlinks ``last.pth.tar`` before renaming the new one over it (for Windows), and unlinks
``model_best`` / ``checkpoint-N`` before linking them: a process killed between the two steps leaves no
``last.pth.tar``. On POSIX ``os.replace`` is atomic, so here the old file stays until the new one is
complete and flushed to disk (benchmarks/fault_sweep.py measures both).
"""
import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from timm.utils import CheckpointSaver, update_summary

from .files import replacing

__all__ = ['AtomicCheckpointSaver', 'checkpoint_epoch', 'append_summary', 'trim_summary']


def _flush_to_disk(path: Union[str, Path]) -> None:
    with open(path, 'rb') as f:
        os.fsync(f.fileno())


class AtomicCheckpointSaver(CheckpointSaver):
    """timm's ``CheckpointSaver`` whose files are always complete: every checkpoint is written to timm's
    temporary name, flushed, then renamed over the old one (a failed write removes the temporary file and
    leaves the old one as it was); ``model_best`` and ``checkpoint-N`` are linked (or copied) to a temporary
    name and renamed the same way. ``position`` (set before ``save_recovery``) records where in an epoch a
    recovery checkpoint was taken, so that a resumed run can continue from that update."""

    position: Optional[Dict[str, Any]] = None

    def _save(self, save_path: str, epoch: int, metric: Optional[float] = None) -> None:
        """timm's checkpoint, serialised in memory and then written and flushed: a failing write (a full disk)
        raises the OSError that says why (torch's own file writer reports a RuntimeError) and removes the
        partial file. The price is one checkpoint's bytes of host memory while it is written."""
        buffer = io.BytesIO()
        super()._save(buffer, epoch, metric)
        try:
            with open(save_path, 'wb') as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(save_path).unlink(missing_ok=True)
            raise

    def _replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def _duplicate(self, src: str, dst: str) -> None:
        with replacing(dst) as tmp:
            try:
                os.link(src, tmp)
            except OSError:  # a file system without hard links
                shutil.copy2(src, tmp)
                _flush_to_disk(tmp)

    def state_dict(self, epoch: Optional[int] = None, metric: Optional[float] = None) -> Dict[str, Any]:
        state = super().state_dict(epoch, metric)
        if self.position is not None:
            state['position'] = self.position
        return state

    def save_recovery(self, epoch: int, batch_idx: int = 0) -> str:
        """timm's recovery checkpoint (with ``position``); returns its path."""
        super().save_recovery(epoch, batch_idx)
        return self.curr_recovery_file


def checkpoint_epoch(path: Union[str, Path]) -> Optional[int]:
    """The epoch a train.py checkpoint holds (its tensors memory-mapped, not read), None if it is not one."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=True).get('epoch')
    except Exception:  # noqa: BLE001  missing, partial or foreign: not a checkpoint to point at
        return None


def append_summary(path: Union[str, Path], epoch: int, train_metrics: Dict[str, float],
                   eval_metrics: Dict[str, float], lr: Optional[float] = None, log_wandb: bool = False) -> None:
    """timm's ``update_summary`` (one row per epoch), applied to a copy that then replaces ``path``: a kill
    leaves the old file or the new one, never half a row."""
    path = Path(path)
    with replacing(path) as tmp:
        if path.exists():
            shutil.copyfile(path, tmp)
        update_summary(epoch, train_metrics, eval_metrics, str(tmp), lr=lr, log_wandb=log_wandb)


def trim_summary(path: Union[str, Path], start_epoch: int) -> int:
    """Drop the rows of epochs ``>= start_epoch`` from a ``summary.csv`` (rows of a run that stopped before it
    saved them, or of an earlier run in the folder), so that a run writes each epoch once; returns how many."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows: List[Dict[str, str]] = list(reader)
    kept = [row for row in rows if (row.get('epoch') or '').isdigit() and int(row['epoch']) < start_epoch]
    if len(kept) < len(rows):
        with replacing(path) as tmp:
            with open(tmp, 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                if kept:
                    writer.writeheader()
                    writer.writerows(kept)
    return len(rows) - len(kept)
