"""Committed checkpoints on top of DeepSpeed's `save_checkpoint` (DESIGN §3).

A checkpoint is the directory `<dir>/step_<step>` that DeepSpeed writes, plus each
rank's RNG state. It is *committed* once rank 0, after a barrier that every rank
reaches only when its files are written, fsyncs the files and writes
`llmjob-manifest.json` (atomically) listing them; only then does rank 0 atomically
replace `<dir>/latest`. A directory without a valid manifest is torn: resume skips
it (with a log line) and the next commit of that step or pruning removes it.

The run refuses to resume at another world size (exit 2): a ZeRO checkpoint holds
optimizer partitions per data-parallel rank, and each rank's RNG and data position.
"""

import json
import logging
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from llmjob_trainer.config import checkpoint_tag
from llmjob_trainer.errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST = "llmjob-manifest.json"
LATEST = "latest"
TAG_PATTERN = re.compile(r"^step_(\d{8,})$")
# Fault injection for the resume tests: "<point>:<step>" makes rank 0 SIGKILL itself there;
# "<point>:<step>@<attempt>" only on that operator attempt (LLMJOB_ATTEMPT), so the retry
# that resumes can pass the same point.
FAULT_ENV = "LLMJOB_FAULT"


@dataclass(frozen=True)
class Manifest:
    step: int
    world_size: int
    config_hash: str
    files: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "worldSize": self.world_size,
            "configHash": self.config_hash,
            "files": self.files,
            "committedAt": time.time(),
        }


def read_manifest(checkpoint: Path) -> Manifest | str:
    """The manifest of a committed checkpoint, or why the directory is torn."""
    try:
        raw = json.loads((checkpoint / MANIFEST).read_text())
        manifest = Manifest(
            int(raw["step"]), int(raw["worldSize"]), str(raw["configHash"]), dict(raw["files"])
        )
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable manifest ({err})"
    for name, size in manifest.files.items():
        path = checkpoint / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} missing or not {size} bytes"
    return manifest


def scan(directory: Path) -> list[tuple[int, Path]]:
    """Every step_* directory, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = TAG_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found, reverse=True)


def newest_committed(directory: Path, is_master: bool) -> tuple[Path, Manifest] | None:
    for _step, checkpoint in scan(directory):
        manifest = read_manifest(checkpoint)
        if isinstance(manifest, Manifest):
            return checkpoint, manifest
        if is_master:
            log.warning("skipping torn checkpoint %s: %s", checkpoint, manifest)
    return None


def stale(directory: Path, keep_last: int) -> list[Path]:
    """Checkpoints to delete: committed ones beyond the newest keep_last, and torn ones
    older than the newest commit (torn newer ones are removed when that step commits)."""
    doomed, kept = [], 0
    for _step, checkpoint in scan(directory):
        committed = isinstance(read_manifest(checkpoint), Manifest)
        if committed and kept < keep_last:
            kept += 1
        elif kept > 0:
            doomed.append(checkpoint)
    return doomed


def remove(checkpoint: Path) -> None:
    """The manifest goes first, so a half-deleted checkpoint is never taken as committed."""
    (checkpoint / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(checkpoint, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old content or the new, never part of it, even after a crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fault_armed(spec: str, point: str, step: int, attempt: str | None) -> bool:
    where, _, only_attempt = spec.partition("@")
    return where == f"{point}:{step}" and (not only_attempt or only_attempt == attempt)


def inject_fault(point: str, step: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    armed = fault_armed(spec, point, step, os.environ.get("LLMJOB_ATTEMPT"))
    if armed and dist.get_rank() == 0:
        log.warning("fault injection: SIGKILL at %s of step %d", point, step)
        os.kill(os.getpid(), signal.SIGKILL)


def rng_file(rank: int) -> str:
    return f"rng_rank_{rank:05d}.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Commits and resumes a DeepSpeed engine's checkpoints in one directory."""

    def __init__(
        self, directory: Path, keep_last: int, config_hash: str, rank: int, world_size: int
    ) -> None:
        self.directory = directory
        self.keep_last = keep_last
        self.config_hash = config_hash
        self.rank = rank
        self.world_size = world_size
        self.is_master = rank == 0

    def commit(self, engine: Any, step: int, client_state: dict[str, Any]) -> Path:
        """Saves on every rank and commits; returns the committed directory."""
        tag = checkpoint_tag(step)
        checkpoint = self.directory / tag
        if self.is_master:
            self.directory.mkdir(parents=True, exist_ok=True)
            if checkpoint.exists():
                log.info("removing the uncommitted or outdated %s before saving", checkpoint)
                remove(checkpoint)
        dist.barrier()
        engine.save_checkpoint(
            str(self.directory), tag=tag, client_state=client_state, save_latest=False
        )
        checkpoint.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), checkpoint / rng_file(self.rank))
        dist.barrier()  # every rank's files are written and closed
        inject_fault("before-manifest", step)
        if self.is_master:
            files = {}
            for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
                files[str(path.relative_to(checkpoint))] = path.stat().st_size
            manifest = Manifest(step, self.world_size, self.config_hash, files)
            write_atomically(checkpoint / MANIFEST, json.dumps(manifest.to_json(), indent=2))
            write_atomically(self.directory / LATEST, tag)
            for old in stale(self.directory, self.keep_last):
                log.info("removing old checkpoint %s", old)
                remove(old)
        dist.barrier()  # no rank runs on (or exits) before the commit is durable
        return checkpoint

    def resume(self, engine: Any) -> dict[str, Any] | None:
        """Loads the newest committed checkpoint into the engine; returns its client state."""
        choice: list[Any] = [None]
        if self.is_master:
            found = newest_committed(self.directory, self.is_master)
            choice = [None if found is None else (str(found[0]), found[1])]
        dist.broadcast_object_list(choice, src=0)
        if choice[0] is None:
            return None
        checkpoint, manifest = Path(choice[0][0]), choice[0][1]
        if manifest.world_size != self.world_size:
            raise ConfigError(
                f"checkpoint {checkpoint} was written by {manifest.world_size} ranks and this run "
                f"has {self.world_size}; resuming ZeRO state at another world size is not "
                f"supported: restore the worker count, or set checkpoint.resume to Never"
            )
        if manifest.config_hash != self.config_hash:
            raise ConfigError(
                f"checkpoint {checkpoint} was trained with another model or training config "
                f"(hash {manifest.config_hash}, now {self.config_hash}); use a new "
                f"checkpoint directory or set checkpoint.resume to Never"
            )
        path, client_state = engine.load_checkpoint(
            str(self.directory), tag=checkpoint.name, load_optimizer_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the committed checkpoint {checkpoint}")
        restore_rng_state(torch.load(checkpoint / rng_file(self.rank), weights_only=False))
        return dict(client_state)
