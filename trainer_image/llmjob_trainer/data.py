"""Token files and the deterministic, resumable sampler that reads them.

A token file is a flat array of uint16/uint32 token ids (read with a memmap) beside a
JSON side file `<file>.json` that says its dtype, token count, vocabulary size and
tokenizer. A training sample is a window of seqLen + 1 tokens; windows do not overlap.
"""

import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from llmjob_trainer.errors import ConfigError, DataError

HEADER_FORMAT = "llmjob-tokens"
BYTE_TOKENIZER = "bytes"


def header_path(token_path: Path) -> Path:
    return token_path.with_name(token_path.name + ".json")


@dataclass(frozen=True)
class TokenHeader:
    """What the side file says about a token file."""

    dtype: str
    count: int
    vocab_size: int | None
    tokenizer: str | None
    eos_token_id: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": HEADER_FORMAT,
            "dtype": self.dtype,
            "count": self.count,
            "vocabSize": self.vocab_size,
            "tokenizer": self.tokenizer,
            "eosTokenId": self.eos_token_id,
        }


def write_tokens(path: Path, tokens: npt.NDArray[np.integer[Any]], header: TokenHeader) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens.astype(header.dtype).tofile(path)
    write_header(path, header)


def write_header(path: Path, header: TokenHeader) -> None:
    header_path(path).write_text(json.dumps(header.to_json(), indent=2) + "\n")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def resolve_tokenizer(token_path: Path, header: TokenHeader, model_path: str | None) -> str | None:
    """The tokenizer the export ships, checked at start-up (a missing one is a config error).

    A tokenizer in model.path wins (the model was trained with it); else the header's:
    "bytes", or a directory relative to the token file (llmjob-prepare copies the
    tokenizer beside it), or an absolute one, which must exist on this machine too.
    """
    if model_path is not None and has_tokenizer(Path(model_path)):
        return model_path
    named = header.tokenizer
    if named is None or named == BYTE_TOKENIZER:
        return named
    directory = token_path.parent / named  # an absolute `named` stays absolute
    if not has_tokenizer(directory):
        raise ConfigError(
            f"{header_path(token_path)} names tokenizer {named!r}, but {directory} holds no "
            f"{' or '.join(TOKENIZER_FILES)}; re-run llmjob-prepare (it copies the tokenizer "
            "beside the token file) or put the tokenizer in model.path"
        )
    return str(directory)


def read_header(path: Path, dtype: str | None) -> TokenHeader:
    """The header of a token file; `dtype` (from the config) is needed only without one."""
    if not path.is_file():
        raise DataError(f"token file {path} does not exist")
    side = header_path(path)
    if side.is_file():
        try:
            raw = json.loads(side.read_text())
            header = TokenHeader(
                dtype=str(raw["dtype"]),
                count=int(raw["count"]),
                vocab_size=raw.get("vocabSize"),
                tokenizer=raw.get("tokenizer"),
                eos_token_id=raw.get("eosTokenId"),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"token header {side} is unreadable: {err}") from err
        if header.dtype not in ("uint16", "uint32"):
            raise DataError(f"token header {side} names dtype {header.dtype!r}")
        if dtype is not None and dtype != header.dtype:
            raise ConfigError(
                f"data.dtype is {dtype} but {side} says the file holds {header.dtype}"
            )
    else:
        if dtype is None:
            raise DataError(f"{path} has no header {side.name}; set data.dtype")
        header = TokenHeader(
            dtype, path.stat().st_size // np.dtype(dtype).itemsize, None, None, None
        )
    expected_bytes = header.count * np.dtype(header.dtype).itemsize
    if path.stat().st_size != expected_bytes:
        raise DataError(
            f"{path} holds {path.stat().st_size} bytes; its header promises {expected_bytes}"
        )
    return header


class TokenWindows:
    """Non-overlapping windows of `seq_len + 1` tokens over a memory-mapped token file."""

    def __init__(self, path: Path, seq_len: int, dtype: str | None) -> None:
        self.path = path
        self.header = read_header(path, dtype)
        self.seq_len = seq_len
        self.count = (self.header.count - 1) // seq_len
        if self.count < 1:
            raise DataError(
                f"{path} holds {self.header.count} tokens, fewer than one sample of "
                f"seqLen + 1 = {seq_len + 1}"
            )
        try:
            self._tokens = np.memmap(path, dtype=self.header.dtype, mode="r")
        except (OSError, ValueError) as err:
            raise DataError(f"cannot map {path}: {err}") from err

    def window(self, index: int) -> npt.NDArray[np.int64]:
        start = index * self.seq_len
        return np.asarray(self._tokens[start : start + self.seq_len + 1], dtype=np.int64)


class ShuffledSampler:
    """Which window each sample of the run reads: a fresh permutation per epoch.

    Sample `g` of the whole run (counted across every rank) is a pure function of the
    seed and `g`, so the sampler's only state is `position`, the number of samples the
    run has consumed. Rank `r` of `world_size` takes its `micro_batch_size` samples at
    offset `r * micro_batch_size` of every micro-step's slice of the global batch.
    """

    def __init__(self, window_count: int, seed: int) -> None:
        self.window_count = window_count
        self.seed = seed
        self.position = 0
        self._epoch = -1
        self._permutation: npt.NDArray[np.int64] = np.arange(0)

    def window_of(self, sample: int) -> int:
        epoch, offset = divmod(sample, self.window_count)
        if epoch != self._epoch:
            generator = np.random.default_rng([self.seed, epoch])
            self._permutation = generator.permutation(self.window_count)
            self._epoch = epoch
        return int(self._permutation[offset])

    def next_step(
        self, micro_batch_size: int, accumulation_steps: int, rank: int, world_size: int
    ) -> list[list[int]]:
        """This rank's window indices for each micro-step of the next optimizer step."""
        micro_steps = []
        for micro_step in range(accumulation_steps):
            first = self.position + (micro_step * world_size + rank) * micro_batch_size
            micro_steps.append([self.window_of(first + i) for i in range(micro_batch_size)])
        self.position += micro_batch_size * accumulation_steps * world_size
        return micro_steps

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "windowCount": self.window_count, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["windowCount"] != self.window_count or state["seed"] != self.seed:
            raise ConfigError(
                f"the checkpoint's sampler read {state['windowCount']} windows with seed "
                f"{state['seed']}; this data and config give {self.window_count} and {self.seed}"
            )
        self.position = state["position"]


def validation_windows(
    windows: TokenWindows, batches: int, micro_batch_size: int, rank: int, world_size: int
) -> list[list[int]]:
    """A fixed slice of validation windows for this rank: the same every evaluation."""
    per_batch = micro_batch_size * world_size
    batches = min(batches, windows.count // per_batch)
    if batches < 1:
        raise DataError(
            f"{windows.path} has {windows.count} windows, fewer than one validation batch "
            f"of microBatchSize x world size = {per_batch}"
        )
    return [
        [(batch * world_size + rank) * micro_batch_size + i for i in range(micro_batch_size)]
        for batch in range(batches)
    ]


@dataclass(frozen=True)
class StepBatches:
    """One optimizer step's micro-batches for this rank, and the window indices they hold."""

    indices: list[list[int]]
    tensors: list[Any]  # torch.Tensor: torch loads lazily, prepare's workers never need it


class BatchPrefetcher:
    """Reads the next steps' batches on a thread while the current step computes.

    The thread walks its own copy of the sampler from the sampler's position, so it
    reads exactly the windows the sampler will hand out; the training loop still
    advances its sampler once per step (its position is what a checkpoint saves) and
    checks that the batches it takes are the ones the sampler chose. On a GPU the
    batches are in pinned memory, so the copy to the device can be non-blocking.
    """

    def __init__(
        self,
        windows: TokenWindows,
        sampler: ShuffledSampler,
        micro_batch_size: int,
        accumulation_steps: int,
        rank: int,
        world_size: int,
        pin_memory: bool,
        depth: int = 2,
    ) -> None:
        self._windows = windows
        self._sampler = ShuffledSampler(sampler.window_count, sampler.seed)
        self._sampler.position = sampler.position
        self._shape = (micro_batch_size, accumulation_steps, rank, world_size)
        self._pin = pin_memory
        self._queue: queue.Queue[StepBatches | BaseException] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _read(self, indices: list[int]) -> Any:
        import torch

        stacked = torch.from_numpy(np.stack([self._windows.window(i) for i in indices]))
        return stacked.pin_memory() if self._pin else stacked

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                indices = self._sampler.next_step(*self._shape)
                item = StepBatches(indices, [self._read(micro) for micro in indices])
                while not self._stopped.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # surfaced in the training thread by next_step()
            self._queue.put(err)

    def next_step(self, expected: list[list[int]]) -> StepBatches:
        """The next step's batches; `expected` is what the loop's own sampler chose."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise DataError(f"reading batches from {self._windows.path} failed: {item}") from item
        if item.indices != expected:
            raise RuntimeError("the prefetcher and the sampler disagree on the next windows")
        return item

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
