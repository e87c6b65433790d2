"""The DeepSpeed checkpoint engine that writes this rank's files durably, at once or behind.

DeepSpeed hands every file of a checkpoint to its engine's `save(state_dict, path)`. This
engine writes each one fsynced and checksummed, and keeps what it wrote as `FileRecord`s:
the rank's report for the manifest (DESIGN §3).

Asynchronous mode copies the state to host memory (the only time training waits) and
writes it on one background thread, so the loop trains on while the bytes go out. Why
not DeepSpeed's own decoupled engine: it waits for the write at the next optimizer step
(overlap of at most one step) and needs the fast (aio) writer; torch.distributed.checkpoint's
async_save writes its own format, which ds_to_universal cannot convert.
"""

import copy
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import (
    CheckpointCommitInfo,
    CheckpointEngine,
)

from llmjob_trainer.durable import FileRecord, write_durably

log = logging.getLogger(__name__)


def host_copy(value: Any) -> Any:
    """A deep copy with every tensor in host memory: what the background write reads."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        copied = copy.copy(value)
        for key, item in value.items():
            copied[key] = host_copy(item)
        return copied
    if isinstance(value, list):
        return [host_copy(item) for item in value]
    if isinstance(value, tuple):
        items = [host_copy(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return copy.deepcopy(value)


class DurableCheckpointEngine(CheckpointEngine):  # type: ignore[misc]
    """Install with `engine.checkpoint_engine = DurableCheckpointEngine(...)`."""

    def __init__(self, asynchronous: bool, after_file: Callable[[str], None]) -> None:
        super().__init__()
        self.name = "llmjob-durable"
        self.asynchronous = asynchronous
        self.after_file = after_file  # fault injection between a checkpoint's files
        self._directory: Path | None = None
        self._records: list[FileRecord] = []
        self._pending: list[Future[FileRecord]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")

    def begin(self, directory: Path) -> None:
        """Files saved from now on belong to the checkpoint in `directory`."""
        self._directory = directory
        self._records, self._pending = [], []

    def create(self, info: CheckpointCommitInfo) -> None:
        """DeepSpeed's per-save hook; `begin` already did what is needed."""

    def save(self, state_dict: Any, path: str) -> None:
        self.save_object(state_dict, Path(path))

    def save_object(self, state: Any, path: Path) -> None:
        assert self._directory is not None, "save outside begin()"
        name = str(path.relative_to(self._directory))

        def write(payload: Any) -> FileRecord:
            record = write_durably(path, name, lambda stream: torch.save(payload, stream))
            self.after_file(name)
            return record

        if self.asynchronous:
            self._pending.append(self._executor.submit(write, host_copy(state)))
        else:
            self._records.append(write(state))

    def load(self, path: str, map_location: Any = None) -> Any:
        return torch.load(path, map_location=map_location, weights_only=False)

    def commit(self, info: CheckpointCommitInfo) -> bool:
        """DeepSpeed calls this once its saves are queued; the manifest commits, not this."""
        return True

    def written(self) -> bool:
        """Whether every file of the current checkpoint is on disk (never blocks)."""
        return all(future.done() for future in self._pending)

    def wait(self) -> list[FileRecord]:
        """Blocks until this rank's files are durable; raises the write's error if one failed."""
        records = self._records + [future.result() for future in self._pending]
        self._records, self._pending = records, []
        return records

    def run_behind(self, task: Callable[[], None]) -> None:
        """Work off the critical path (pruning), after the writes queued before it."""

        def guarded() -> None:
            try:
                task()
            except OSError as err:  # pruning again at the next commit is harmless
                log.warning("background checkpoint task failed: %s", err)

        self._executor.submit(guarded)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
