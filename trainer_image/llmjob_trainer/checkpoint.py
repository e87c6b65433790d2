"""Committed checkpoints of one run on top of DeepSpeed's `save_checkpoint` (DESIGN §3).

Layout on the checkpoint volume (`checkpoint.dir`):

    runs/<run id>/step_<step>/            what DeepSpeed writes, plus each rank's RNG state
    runs/<run id>/step_<step>/llmjob-manifest.json    the commit: written last, by rank 0
    runs/<run id>/step_<step>.universal/  a universal copy for another world size (own manifest)
    runs/<run id>/latest                  the newest commit's tag (advisory: resume reads manifests)
    runs/<run id>/fence/attempt-<n>       one file per operator attempt that started

A run is one LLMJOB_RUN_ID (the operator sets the job's UID); without it the run id is the
job name, so a standalone run resumes its own commits. Resume and pruning only ever look
at this run's directory: a re-created job never takes, or deletes, an earlier run's
checkpoints. `resume: Never` starts a fresh run (`<id>.fresh-<time>`) and deletes nothing.

Commit: every rank writes its files durably (fsync on the node that wrote them) and
reports name, size and crc32; the reports are gathered to rank 0, which checks that every
rank's expected files are there, then writes the manifest and only then `latest`. With
asynchronous saves the loop trains on while the files are written; the commit happens at
the first step boundary where every rank's writes are done. A directory without a valid
manifest is torn: resume skips it. A checkpoint whose files fail their checksums is marked
bad (`llmjob-bad.json`, never deleted) and resume falls back to the previous commit. A
read error (EIO, ESTALE, ...) is never taken for a torn checkpoint: it fails the attempt,
which is retried.

Fencing: each attempt registers its number under `fence/` at start; before the manifest
and again before `latest` the commit checks that no newer attempt has registered, so a
superseded attempt (a partitioned node still running) never commits over the new one.

Resuming at another world size converts the checkpoint to DeepSpeed's universal format
once (ds_to_universal), keeps the global batch by changing gradient accumulation, and
derives each rank's RNG from (seed, step, rank). Same world size resumes bit-identically.
"""

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from deepspeed.checkpoint.constants import (
    UNIVERSAL_CHECKPOINT_INFO,
    UNIVERSAL_CHECKPOINT_VERSION_KEY,
    UNIVERSAL_CHECKPOINT_VERSION_VALUE,
)

from llmjob_trainer.config import checkpoint_tag
from llmjob_trainer.durable import (
    FileRecord,
    file_crc32,
    fsync_directory,
    fsync_tree,
    publish,
    rename_replaces,
)
from llmjob_trainer.errors import ConfigError
from llmjob_trainer.writer import DurableCheckpointEngine

log = logging.getLogger(__name__)

FORMAT = "llmjob-checkpoint/2"
MANIFEST = "llmjob-manifest.json"
BAD_MARKER = "llmjob-bad.json"
LATEST = "latest"
FENCE = "fence"
UNIVERSAL_SUFFIX = ".universal"
TAG_PATTERN = re.compile(r"^step_(\d{8,})$")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUN_ID_ENV = "LLMJOB_RUN_ID"
ATTEMPT_ENV = "LLMJOB_ATTEMPT"
# Fault injection for the tests: "<point>:<step>[@<attempt>][#<rank>]" makes that rank
# (default 0) SIGKILL itself there, only on that operator attempt when one is given. The
# point "hold-before-fence" instead waits until the file LLMJOB_FAULT_RELEASE exists.
FAULT_ENV = "LLMJOB_FAULT"
FAULT_RELEASE_ENV = "LLMJOB_FAULT_RELEASE"


class CheckpointReadError(RuntimeError):
    """The volume failed a read: retryable, and never a reason to call a checkpoint torn."""


class SupersededError(RuntimeError):
    """A newer attempt of this run has started; this one must not commit."""


@dataclass(frozen=True)
class Manifest:
    run_id: str
    attempt: int
    step: int
    world_size: int
    samples_per_step: int
    max_steps: int
    config_hash: str
    files: dict[str, FileRecord]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "runId": self.run_id,
            "attempt": self.attempt,
            "step": self.step,
            "worldSize": self.world_size,
            "samplesPerStep": self.samples_per_step,
            "maxSteps": self.max_steps,
            "configHash": self.config_hash,
            "files": {n: {"size": r.size, "crc32": r.crc32} for n, r in self.files.items()},
            "committedAt": time.time(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Manifest":
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, not {FORMAT}")
        files = {
            str(name): FileRecord(str(name), int(entry["size"]), int(entry["crc32"]))
            for name, entry in raw["files"].items()
        }
        return cls(
            str(raw["runId"]), int(raw["attempt"]), int(raw["step"]), int(raw["worldSize"]),
            int(raw["samplesPerStep"]), int(raw["maxSteps"]), str(raw["configHash"]), files,
        )  # fmt: skip


def inspect(checkpoint: Path) -> Manifest | str:
    """The manifest of a usable commit, or why the directory is torn or bad.

    Only content decides (no manifest, a malformed one, a missing or short file, a bad
    marker); any other read error raises CheckpointReadError.
    """
    try:
        if (checkpoint / BAD_MARKER).exists():
            reason = json.loads((checkpoint / BAD_MARKER).read_text()).get("reason", "")
            return f"marked bad ({reason})"
        manifest = Manifest.from_json(json.loads((checkpoint / MANIFEST).read_text()))
        for name, record in manifest.files.items():
            if (checkpoint / name).stat().st_size != record.size:
                return f"{name} is not {record.size} bytes"
    except FileNotFoundError as err:
        return "no manifest" if Path(str(err.filename)).name == MANIFEST else f"missing {err}"
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return f"unreadable manifest ({err})"
    except OSError as err:
        raise CheckpointReadError(f"cannot read checkpoint {checkpoint}: {err}") from err
    return manifest


def scan(run_dir: Path) -> list[tuple[int, Path]]:
    """Every step_* directory of the run, newest first."""
    try:
        children = list(run_dir.iterdir()) if run_dir.is_dir() else []
    except OSError as err:
        raise CheckpointReadError(f"cannot list {run_dir}: {err}") from err
    found = []
    for child in children:
        match = TAG_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found, reverse=True)


def newest_committed(run_dir: Path, log_skips: bool) -> tuple[Path, Manifest] | None:
    for _step, checkpoint in scan(run_dir):
        manifest = inspect(checkpoint)
        if isinstance(manifest, Manifest):
            return checkpoint, manifest
        if log_skips:
            log.warning("skipping checkpoint %s: %s", checkpoint, manifest)
    return None


def stale(run_dir: Path, keep_last: int) -> list[Path]:
    """Checkpoints to delete: commits beyond the newest keep_last, and torn ones older than
    the newest commit (a torn newer one is replaced when its step commits). Checkpoints
    marked bad stay for a person to look at."""
    doomed, kept = [], 0
    for _step, checkpoint in scan(run_dir):
        state = inspect(checkpoint)
        if isinstance(state, str) and state.startswith("marked bad"):
            continue
        if isinstance(state, Manifest) and kept < keep_last:
            kept += 1
        elif kept > 0:
            doomed.append(checkpoint)
    return doomed


def remove(checkpoint: Path) -> None:
    """The manifest goes first, so a half-deleted checkpoint is never taken as committed."""
    (checkpoint / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(checkpoint, ignore_errors=True)
    universal = checkpoint.with_name(checkpoint.name + UNIVERSAL_SUFFIX)
    if universal.exists():
        (universal / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(universal, ignore_errors=True)


def mark_bad(checkpoint: Path, reason: str) -> None:
    """Keeps the files (for a person to look at); resume and pruning pass it by."""
    log.error("marking checkpoint %s bad: %s", checkpoint, reason)
    (checkpoint / BAD_MARKER).write_text(json.dumps({"reason": reason, "time": time.time()}))


def expected_files(zero_stage: int, rank: int) -> set[str]:
    """The files DeepSpeed (model parallel 1) and we write for `rank`."""
    expected = {rng_file(rank)}
    if zero_stage >= 1:
        expected.add(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    if zero_stage == 3:
        expected.add(f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
    elif rank == 0:
        expected.add("mp_rank_00_model_states.pt")
    return expected


@dataclass(frozen=True)
class RankReport:
    rank: int
    files: list[FileRecord]
    error: str | None


def check_reports(reports: list[RankReport], world_size: int, zero_stage: int) -> list[str]:
    """What is wrong with the ranks' reports; empty when the checkpoint may be committed."""
    problems = []
    by_rank = {report.rank: report for report in reports}
    seen: dict[str, int] = {}
    for rank in range(world_size):
        report = by_rank.get(rank)
        if report is None:
            problems.append(f"rank {rank} sent no report")
            continue
        if report.error:
            problems.append(f"rank {rank} failed to write: {report.error}")
        names = {record.name for record in report.files}
        if missing := expected_files(zero_stage, rank) - names:
            problems.append(f"rank {rank} did not write {', '.join(sorted(missing))}")
        for name in names:
            if name in seen:
                problems.append(f"{name} reported by ranks {seen[name]} and {rank}")
            seen[name] = rank
    return problems


def register_attempt(run_dir: Path, attempt: int) -> int:
    """Records that `attempt` started; returns the newest attempt that ever started."""
    (run_dir / FENCE).mkdir(parents=True, exist_ok=True)
    (run_dir / FENCE / f"attempt-{attempt:08d}").touch(exist_ok=True)
    fsync_directory(run_dir / FENCE)
    return newest_attempt(run_dir)


def newest_attempt(run_dir: Path) -> int:
    names = [p.name for p in (run_dir / FENCE).iterdir() if p.name.startswith("attempt-")]
    return max((int(name.removeprefix("attempt-")) for name in names), default=0)


def run_id_from(env: dict[str, str], job_name: str) -> str:
    run_id = env.get(RUN_ID_ENV) or job_name
    if not RUN_ID_PATTERN.match(run_id):
        raise ConfigError(
            f"run id {run_id!r} (env {RUN_ID_ENV}, else jobName) must match "
            f"{RUN_ID_PATTERN.pattern}"
        )
    return run_id


def accumulation_for(samples_per_step: int, micro_batch_size: int, world_size: int) -> int:
    """Gradient accumulation that keeps the checkpoint's global batch at this world size."""
    per_micro_step = micro_batch_size * world_size
    if samples_per_step % per_micro_step:
        raise ConfigError(
            f"the checkpoint was trained with a global batch of {samples_per_step} samples; "
            f"{world_size} ranks x microBatchSize {micro_batch_size} = {per_micro_step} does "
            f"not divide it, so no gradient accumulation keeps it: use a world size or "
            f"microBatchSize whose product divides {samples_per_step}"
        )
    return samples_per_step // per_micro_step


def fault_armed(spec: str, point: str, step: int, attempt: str | None, rank: int) -> bool:
    spec, _, only_rank = spec.partition("#")
    where, _, only_attempt = spec.partition("@")
    return (
        where == f"{point}:{step}"
        and (not only_attempt or only_attempt == attempt)
        and rank == int(only_rank or 0)
    )


def inject_fault(point: str, step: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not fault_armed(spec, point, step, os.environ.get(ATTEMPT_ENV), dist.get_rank()):
        return
    if point.startswith("hold-"):
        release = Path(os.environ[FAULT_RELEASE_ENV])
        log.warning("fault injection: holding at %s of step %d until %s", point, step, release)
        while not release.exists():
            time.sleep(0.1)
        return
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


def seed_rank(seed: int, step: int, rank: int) -> None:
    """RNG of a rank that has no saved state (a new world size): a function of its place."""
    derived = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def convert_to_universal(checkpoint: Path, output: Path) -> None:
    """DeepSpeed's own ds_to_universal, as a child process (it uses process pools)."""
    shutil.rmtree(output, ignore_errors=True)
    command = [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
        "--input_folder", str(checkpoint), "--output_folder", str(output),
        "--num_extract_workers", "1", "--num_merge_workers", "1",
    ]  # fmt: skip
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"ds_to_universal failed on {checkpoint}:\n{(result.stdout + result.stderr)[-3000:]}"
        )


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from, and how DeepSpeed must load it."""

    checkpoint: Path
    manifest: Manifest
    load_tag: str  # the tag under the run directory: step_X, or step_X.universal
    universal: bool
    same_world: bool  # else each rank's RNG is derived, not restored


@dataclass
class PendingCommit:
    step: int
    checkpoint: Path
    started: float
    blocking_seconds: float


@dataclass(frozen=True)
class Committed:
    checkpoint: Path
    step: int
    size_bytes: int
    seconds: float  # from the save's start to the commit
    blocking_seconds: float  # of that, the time the training loop waited


@dataclass
class Checkpointer:
    """Commits and resumes a DeepSpeed engine's checkpoints in this run's directory."""

    root: Path
    run_id: str
    attempt: int
    keep_last: int
    config_hash: str
    rank: int
    world_size: int
    zero_stage: int
    samples_per_step: int
    max_steps: int
    asynchronous: bool
    legacy_config_hash: str | None = None
    """Also accepted at resume: the hash older checkpoints of this config were committed under."""
    fallbacks: list[tuple[int, str]] = field(default_factory=list)
    pending: PendingCommit | None = None
    rename_works: bool = True
    engine: Any = None
    writer: DurableCheckpointEngine | None = None

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / self.run_id

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    def start(self) -> None:
        """Collective: registers this attempt (the fence) and probes the volume."""
        state: list[Any] = [None]
        if self.is_master:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                newest = register_attempt(self.run_dir, self.attempt)
                state = [(newest, rename_replaces(self.run_dir))]
            except OSError as err:
                state = [f"checkpoint volume {self.run_dir}: {err}"]
        dist.broadcast_object_list(state, src=0)
        if isinstance(state[0], str):
            raise CheckpointReadError(state[0])
        newest, self.rename_works = state[0]
        if newest > self.attempt:
            raise SupersededError(
                f"attempt {newest} of run {self.run_id} has started; attempt {self.attempt} stops"
            )
        if not self.rename_works and self.is_master:
            log.warning(
                "%s cannot replace files by rename (a FUSE object-store mount?): manifests and "
                "latest are written in place; resume reads manifests, never latest",
                self.run_dir,
            )

    # ---- resume -------------------------------------------------------------------------

    def choose(self) -> Resume | None:
        """Collective, before the engine exists: the newest commit whose files verify.

        A commit that fails verification is marked bad and the previous one is tried.
        At another world size the choice is converted to universal format (cached).
        """
        while True:
            choice: list[Any] = [None]
            if self.is_master:
                try:
                    found = newest_committed(self.run_dir, log_skips=True)
                    choice = [None if found is None else (str(found[0]), found[1])]
                except CheckpointReadError as err:
                    choice = [str(err)]  # every rank fails the attempt, not rank 0 alone
            dist.broadcast_object_list(choice, src=0)
            if isinstance(choice[0], str):
                raise CheckpointReadError(choice[0])
            if choice[0] is None:
                return None
            checkpoint, manifest = Path(choice[0][0]), choice[0][1]
            if manifest.config_hash not in (self.config_hash, self.legacy_config_hash):
                raise ConfigError(
                    f"checkpoint {checkpoint} was trained with another model or training "
                    f"config (hash {manifest.config_hash}, now {self.config_hash}); restore it, "
                    f"or set checkpoint.resume to Never to start a fresh run"
                )
            problem = self._verify(checkpoint, manifest)
            same_world = manifest.world_size == self.world_size
            # ZeRO partitions need the universal format at another world size; stage 0
            # keeps the whole optimizer in one file that any world size loads.
            if problem is None and not same_world and self.zero_stage > 0:
                universal, copy_problem = self._universal(checkpoint, manifest)
                if copy_problem is not None:  # the source verified: retry, never mark it bad
                    raise RuntimeError(
                        f"{checkpoint}: {copy_problem}; the next attempt converts again"
                    )
                return Resume(checkpoint, manifest, universal.name, True, same_world)
            if problem is None:
                return Resume(checkpoint, manifest, checkpoint.name, False, same_world)
            if self.is_master:
                mark_bad(checkpoint, problem)
                log.warning("falling back from step %d to the previous commit", manifest.step)
            self.fallbacks.append((manifest.step, problem))
            dist.barrier()

    def _verify(self, checkpoint: Path, manifest: Manifest) -> str | None:
        """Collective: every file's size and crc32, shared out over the ranks."""
        names = sorted(manifest.files)
        mine = names[self.rank :: self.world_size]
        found: str | None = None
        for name in mine:
            record = manifest.files[name]
            try:
                actual = file_crc32(checkpoint / name)
            except FileNotFoundError:
                found = f"bad: {name} is missing"
                break
            except OSError as err:
                found = f"io: reading {name}: {err}"
                break
            if actual != record.crc32:
                found = f"bad: {name} has crc32 {actual:08x}, the manifest says {record.crc32:08x}"
                break
        results: list[str | None] = [None] * self.world_size
        dist.all_gather_object(results, found)
        if io := [r for r in results if r and r.startswith("io: ")]:
            raise CheckpointReadError(f"verifying {checkpoint}: {io[0].removeprefix('io: ')}")
        bad = [r.removeprefix("bad: ") for r in results if r]
        return "; ".join(bad) if bad else None

    def _universal(self, checkpoint: Path, manifest: Manifest) -> tuple[Path, str | None]:
        """Collective: the cached universal copy of `checkpoint`, converted once."""
        output = checkpoint.with_name(checkpoint.name + UNIVERSAL_SUFFIX)
        outcome: list[Any] = ["conversion failed on rank 0"]
        if self.is_master:
            try:
                outcome = [self._convert_once(checkpoint, manifest, output)]
            except (OSError, RuntimeError) as err:
                log.error("universal conversion of %s failed: %s", checkpoint, err)
        dist.broadcast_object_list(outcome, src=0)
        if isinstance(outcome[0], str):
            raise RuntimeError(f"universal copy {output}: {outcome[0]}")
        problem = self._verify(output, outcome[0])
        if problem is not None and self.is_master:
            # The cache is derived data: a bad copy goes, and the next try converts again.
            log.warning("discarding the universal copy %s: %s", output, problem)
            remove(output)
        return output, None if problem is None else f"its universal copy: {problem}"

    def _convert_once(self, checkpoint: Path, manifest: Manifest, output: Path) -> Manifest | str:
        """On rank 0: the universal copy's manifest, converting unless a valid one is cached."""
        cached = inspect(output) if output.is_dir() else "absent"
        if isinstance(cached, Manifest):
            log.info("using the cached universal checkpoint %s", output)
            return cached
        started = time.perf_counter()
        log.info(
            "world size %d -> %d: converting %s to universal format",
            manifest.world_size, self.world_size, checkpoint,
        )  # fmt: skip
        convert_to_universal(checkpoint, output)
        fsync_tree(output)
        files = {
            str(p.relative_to(output)): FileRecord(
                str(p.relative_to(output)), p.stat().st_size, file_crc32(p)
            )
            for p in sorted(output.rglob("*"))
            if p.is_file()
        }
        converted = Manifest(
            self.run_id, self.attempt, manifest.step, manifest.world_size,
            manifest.samples_per_step, manifest.max_steps, manifest.config_hash, files,
        )  # fmt: skip
        publish(output / MANIFEST, json.dumps(converted.to_json()), self.rename_works)
        log.info(
            "converted %s to universal format in %.1f s",
            checkpoint.name, time.perf_counter() - started,
        )  # fmt: skip
        return inspect(output)

    def load(self, engine: Any, resume: Resume, seed: int) -> dict[str, Any]:
        """Loads `resume` into the engine; returns its client state."""
        try:
            path, client_state = engine.load_checkpoint(
                str(self.run_dir), tag=resume.load_tag, load_optimizer_states=True
            )
        except OSError as err:
            raise CheckpointReadError(f"loading {resume.checkpoint}: {err}") from err
        except Exception as err:
            # Verified files that still do not load: the next attempt must not pick it again.
            mark_bad(resume.checkpoint, f"DeepSpeed could not load it: {err!r}")
            raise RuntimeError(f"checkpoint {resume.checkpoint} failed to load") from err
        if path is None:
            mark_bad(resume.checkpoint, "DeepSpeed found nothing to load")
            raise RuntimeError(f"DeepSpeed could not load the committed {resume.checkpoint}")
        if not resume.same_world:
            seed_rank(seed, resume.manifest.step, self.rank)
        else:
            state = torch.load(resume.checkpoint / rng_file(self.rank), weights_only=False)
            restore_rng_state(state)
        return dict(client_state)

    # ---- commit -------------------------------------------------------------------------

    def attach(self, engine: Any) -> None:
        """Routes the engine's saves through the durable (and maybe asynchronous) writer."""
        self.engine = engine
        self.writer = DurableCheckpointEngine(self.asynchronous, self._after_file)
        engine.checkpoint_engine = self.writer

    def _after_file(self, name: str) -> None:
        if self.pending is not None:
            inject_fault("during-write", self.pending.step)

    def save(self, step: int, client_state: dict[str, Any]) -> None:
        """Collective: starts the checkpoint of `step` (a previous one is committed first)."""
        assert self.writer is not None, "attach() first"
        started = time.perf_counter()
        if self.pending is not None:
            self.commit_pending()
        checkpoint = self.run_dir / checkpoint_tag(step)
        if self.is_master and checkpoint.exists():
            self._clear(checkpoint)
        dist.barrier()
        self.writer.begin(checkpoint)
        self.pending = PendingCommit(step, checkpoint, started, 0.0)
        # ds_to_universal refuses a checkpoint without this key (Megatron-DeepSpeed sets it too).
        universal_info = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
        self.engine.save_checkpoint(
            str(self.run_dir),
            tag=checkpoint.name,
            client_state={**client_state, UNIVERSAL_CHECKPOINT_INFO: universal_info},
            save_latest=False,
        )
        checkpoint.mkdir(parents=True, exist_ok=True)
        self.writer.save_object(rng_state(), checkpoint / rng_file(self.rank))
        self.pending.blocking_seconds = time.perf_counter() - started

    def _clear(self, checkpoint: Path) -> None:
        """Makes room for a new save of the same step: a torn copy goes, a bad one moves."""
        state = inspect(checkpoint)
        if isinstance(state, str) and state.startswith("marked bad") and self.rename_works:
            aside = checkpoint.with_name(f"{checkpoint.name}.bad-{int(time.time())}")
            log.info("moving the bad %s aside to %s before saving", checkpoint, aside.name)
            checkpoint.rename(aside)
        else:
            log.info("removing the uncommitted or outdated %s before saving", checkpoint)
            remove(checkpoint)

    def written(self) -> bool:
        """This rank's part of the pending checkpoint is on disk (never blocks)."""
        return self.pending is None or (self.writer is not None and self.writer.written())

    def commit_pending(self) -> Committed:
        """Collective: waits for this rank's writes, gathers reports, commits on rank 0."""
        assert self.pending is not None and self.writer is not None
        pending, waited = self.pending, time.perf_counter()
        try:
            records, error = self.writer.wait(), None
        except Exception as err:  # reported, so every rank fails the commit together
            records, error = [], repr(err)
        if error is None:
            fsync_directory(pending.checkpoint)
        inject_fault("before-report", pending.step)
        reports: list[Any] = [None] * self.world_size
        dist.all_gather_object(reports, RankReport(self.rank, records, error))
        inject_fault("before-manifest", pending.step)
        outcome: list[Any] = [None]
        if self.is_master:
            try:
                outcome = [self._commit_on_master(pending, reports)]
            except OSError as err:  # every rank fails the attempt, not rank 0 alone
                outcome = [("failed", f"committing {pending.checkpoint}: {err}")]
        dist.broadcast_object_list(outcome, src=0)
        self.pending = None
        if outcome[0] is not None:
            kind, message = outcome[0]
            raise (SupersededError if kind == "superseded" else RuntimeError)(message)
        size = sum(record.size for report in reports for record in report.files)
        blocking = pending.blocking_seconds + time.perf_counter() - waited
        return Committed(
            pending.checkpoint,
            pending.step,
            size,
            time.perf_counter() - pending.started,
            blocking,
        )

    def _commit_on_master(
        self, pending: PendingCommit, reports: list[RankReport]
    ) -> tuple[str, str] | None:
        problems = check_reports(reports, self.world_size, self.zero_stage)
        if problems:
            return "failed", f"{pending.checkpoint} not committed: {'; '.join(problems)}"
        files = {r.name: r for report in reports for r in report.files}
        manifest = Manifest(
            self.run_id, self.attempt, pending.step, self.world_size, self.samples_per_step,
            self.max_steps, self.config_hash, files,
        )  # fmt: skip
        inject_fault("hold-before-fence", pending.step)
        if (superseded := self._superseded()) is not None:
            return "superseded", superseded
        publish(pending.checkpoint / MANIFEST, json.dumps(manifest.to_json()), self.rename_works)
        if (superseded := self._superseded()) is not None:
            return "superseded", superseded
        publish(self.run_dir / LATEST, pending.checkpoint.name, self.rename_works)
        assert self.writer is not None
        self.writer.run_behind(self._prune)
        return None

    def _superseded(self) -> str | None:
        newest = newest_attempt(self.run_dir)
        if newest <= self.attempt:
            return None
        log.error(
            "attempt %d of this run has started: attempt %d commits nothing", newest, self.attempt
        )
        return f"superseded by attempt {newest}: attempt {self.attempt} may not commit"

    def _prune(self) -> None:
        try:
            doomed = stale(self.run_dir, self.keep_last)
        except CheckpointReadError as err:
            log.warning("not pruning this time: %s", err)
            return
        for old in doomed:
            log.info("removing old checkpoint %s", old)
            remove(old)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def fresh_run_id(run_id: str) -> str:
    """Collective: the id of a `resume: Never` run, the same on every rank."""
    chosen: list[Any] = [f"{run_id}.fresh-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"]
    dist.broadcast_object_list(chosen, src=0)
    return str(chosen[0])
