"""`llmjob-prepare`: text, JSONL, Parquet or saved `datasets` sources -> train.bin and val.bin.

    llmjob-prepare --stdlib --out data/     # demo corpus: this Python's standard library
    llmjob-prepare web.jsonl@3 code/@0.5 --text-field content --tokenizer tok/ --out data/

Documents stream from the sources (a text file is one document; a JSONL line, a Parquet
row or a row of a Hugging Face dataset saved with `save_to_disk` is one, its `--text-field`),
weighted (`PATH@WEIGHT`: each document of that source is taken WEIGHT times on average, so
0.5 keeps every other one), and go in batches to worker processes that tokenize them and
write uint16/uint32 shards; the shards are then appended in order, so the output does not
depend on the number of workers and memory does not grow with the corpus (Parquet and
datasets are read ROWS_PER_READ rows of the one column at a time). Every
`1/validationFraction`-th document goes to val.bin. Tokenized with a Hugging Face tokenizer
from a local directory (copied to `<out>/tokenizer`, which the token files name relative to
themselves) or, by default, byte-level (ids 0-255 are the bytes, 256 ends a document).
`<out>/manifest.json` records each source's and split's documents and tokens.
"""

import argparse
import json
import os
import shutil
import sys
import sysconfig
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from llmjob_trainer.data import BYTE_TOKENIZER, TokenHeader, write_header
from llmjob_trainer.errors import EXIT_UNREADABLE_DATA, DataError

BYTE_EOS = 256
EOS_TEXT = "<|endoftext|>"
TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst"}
TABLE_SUFFIXES = {".jsonl", ".parquet"}  # a document per line or row
ROWS_PER_READ = 1024  # Parquet/dataset rows per read: amortises the call, bounds memory
TOKENIZER_DIR = "tokenizer"
BATCH_BYTES = 1 << 20  # text per worker task: big enough to amortise, small to stream
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Source:
    """Files or directories read as one source, and its weight in the mixture."""

    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "Source":
        path, _, weight = text.rpartition("@") if "@" in text else (text, "", "1")
        if float(weight) < 0:
            raise ValueError(f"{text}: a weight is >= 0")
        return cls(Path(path), float(weight))


@dataclass
class Counts:
    documents: int = 0
    tokens: int = 0

    def to_json(self) -> dict[str, int]:
        return {"documents": self.documents, "tokens": self.tokens}


@dataclass
class Tally:
    splits: dict[str, Counts] = field(default_factory=lambda: {s: Counts() for s in SPLITS})
    sources: list[Counts] = field(default_factory=list)


def saved_dataset(path: Path) -> bool:
    """Whether `path` is a Hugging Face Dataset written by `save_to_disk`."""
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def source_files(path: Path) -> list[Path]:
    """The files of a source (a saved dataset is one "file": its directory), in a stable order."""
    if not path.is_dir() or saved_dataset(path):
        return [path]
    if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk: one dir per split
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise DataError(
            f"{path} holds a DatasetDict: give one split's directory "
            f"({', '.join(str(path / split) for split in splits)})"
        )
    found = (p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES | TABLE_SUFFIXES)
    return sorted(p for p in found if p.is_file())


def source_documents(path: Path, text_field: str) -> Iterator[str]:
    """Each document of one source, in a stable order, read a line, a file or a batch of
    rows at a time."""
    for file in source_files(path):
        if file.is_dir():
            yield from dataset_documents(file, text_field)
        elif file.suffix == ".parquet":
            yield from parquet_documents(file, text_field)
        elif file.suffix == ".jsonl":
            with file.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        row = json.loads(line)
                        if text_field not in row:
                            raise DataError(
                                f"{file}:{number}: no field {text_field!r} "
                                f"(fields: {', '.join(row)}); choose one with --text-field"
                            )
                        yield str(row[text_field])
        else:
            yield file.read_text(encoding="utf-8", errors="replace")


def parquet_documents(file: Path, column: str) -> Iterator[str]:
    """The text column of a Parquet file, ROWS_PER_READ rows at a time (nulls skipped)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    check_text_column(file, column, parquet.schema_arrow)
    # One thread: with Arrow's thread pool the read's peak RSS grew with the file (89 to 119
    # MiB from 2k to 16k rows of 1.4 kB); the tokenizing workers bound the throughput anyway.
    batches = parquet.iter_batches(batch_size=ROWS_PER_READ, columns=[column], use_threads=False)
    for batch in batches:
        yield from (text for text in batch.column(0).to_pylist() if text is not None)


def dataset_documents(directory: Path, column: str) -> Iterator[str]:
    """The text column of a saved Hugging Face Dataset, ROWS_PER_READ rows at a time, as Arrow
    (load_from_disk memory-maps its files: the corpus is never loaded; nulls skipped)."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(directory))
    check_text_column(directory, column, dataset.data.schema)
    rows = dataset.select_columns([column]).with_format("arrow")
    for batch in rows.iter(batch_size=ROWS_PER_READ):
        yield from (text for text in batch.column(0).to_pylist() if text is not None)


def check_text_column(source: Path, column: str, schema: Any) -> None:
    """Raise DataError unless the Arrow `schema` has `column` and it holds strings."""
    import pyarrow as pa

    if column not in schema.names:
        raise DataError(
            f"{source}: no column {column!r} (columns: {', '.join(schema.names)}); "
            "choose one with --text-field"
        )
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{source}: column {column!r} holds {kind}, not text")


def weighted(documents: Iterator[str], weight: float) -> Iterator[str]:
    """Document i repeated floor((i+1)w) - floor(iw) times: w times on average, exactly."""
    for index, text in enumerate(documents):
        for _ in range(int((index + 1) * weight) - int(index * weight)):
            yield text


def mixture(
    sources: list[Source], text_field: str, max_bytes: int | None, tally: Tally
) -> Iterator[tuple[int, str]]:
    """(source index, document) of every source in turn, stopping after max_bytes."""
    seen = 0
    for index, source in enumerate(sources):
        tally.sources.append(Counts())
        for text in weighted(source_documents(source.path, text_field), source.weight):
            if max_bytes is not None and seen >= max_bytes:
                return
            seen += len(text.encode())
            yield index, text


def byte_encoder(text: str) -> list[int]:
    """The byte-level encoding of one document (the workers compute it vectorised)."""
    return [*text.encode("utf-8"), BYTE_EOS]


# One tokenizer per worker process, loaded once by its initializer ("tokenizer" key).
_worker: dict[str, Any] = {}


def _load_worker_tokenizer(tokenizer_dir: str | None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        _worker["tokenizer"] = AutoTokenizer.from_pretrained(tokenizer_dir)


def _encode(texts: list[str], eos: int | None) -> list[np.ndarray[Any, Any]]:
    tokenizer = _worker.get("tokenizer")
    if tokenizer is None:
        ends = np.array([BYTE_EOS], dtype=np.uint32)
        return [
            np.concatenate([np.frombuffer(t.encode("utf-8"), dtype=np.uint8), ends]) for t in texts
        ]
    tail = [eos] if eos is not None else []
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [np.asarray([*ids, *tail], dtype=np.uint32) for ids in encoded]


def encode_shard(
    texts: list[str], splits: list[str], shard: Path, dtype: str, eos: int | None
) -> dict[str, list[int]]:
    """Tokenizes a batch into `<shard>.<split>` files; each document's token count per split."""
    lengths: dict[str, list[int]] = {s: [] for s in SPLITS}
    arrays: dict[str, list[np.ndarray[Any, Any]]] = {s: [] for s in SPLITS}
    for split, ids in zip(splits, _encode(texts, eos), strict=True):
        arrays[split].append(ids)
        lengths[split].append(len(ids))
    for split in SPLITS:
        tokens = np.concatenate(arrays[split]) if arrays[split] else np.zeros(0)
        tokens.astype(dtype).tofile(shard.with_suffix(f".{split}"))
    return lengths


def prepare(
    inputs: list[Path | Source],
    out: Path,
    tokenizer_dir: Path | None,
    validation_fraction: float,
    max_bytes: int | None,
    *,
    text_field: str = "text",
    workers: int = 1,
) -> dict[str, int]:
    """Writes out/train.bin, out/val.bin and out/manifest.json; returns each split's tokens."""
    sources = [s if isinstance(s, Source) else Source(s) for s in inputs]
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        vocab_size, eos, tokenizer_name = BYTE_EOS + 1, BYTE_EOS, BYTE_TOKENIZER
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        vocab_size, eos, tokenizer_name = len(tokenizer), tokenizer.eos_token_id, TOKENIZER_DIR
        # Beside the token files: the path of this machine means nothing in a pod.
        shutil.rmtree(out / TOKENIZER_DIR, ignore_errors=True)
        tokenizer.save_pretrained(out / TOKENIZER_DIR)
    dtype = "uint16" if vocab_size <= 2**16 else "uint32"
    every = max(2, round(1 / validation_fraction)) if validation_fraction > 0 else 0
    shards = out / ".shards"
    shutil.rmtree(shards, ignore_errors=True)
    shards.mkdir()
    outputs = {split: (out / f"{split}.bin").open("wb") for split in SPLITS}
    tally = Tally()
    pending: deque[tuple[Path, list[int], list[str], Future[dict[str, list[int]]]]] = deque()

    def finish_oldest() -> None:
        shard, source_of, splits, future = pending.popleft()
        lengths = future.result()
        offsets = dict.fromkeys(SPLITS, 0)
        for source, split in zip(source_of, splits, strict=True):
            tokens = lengths[split][offsets[split]]
            offsets[split] += 1
            tally.sources[source].documents += 1
            tally.sources[source].tokens += tokens
            tally.splits[split].documents += 1
            tally.splits[split].tokens += tokens
        for split in SPLITS:
            part = shard.with_suffix(f".{split}")
            with part.open("rb") as data:
                shutil.copyfileobj(data, outputs[split])
            part.unlink()

    tokenizer_arg = None if tokenizer_dir is None else str(tokenizer_dir)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_load_worker_tokenizer,
        initargs=(tokenizer_arg,),
    ) as pool:
        batch: tuple[list[int], list[str], list[str]] = ([], [], [])
        batch_bytes, shard_number = 0, 0

        def submit() -> None:
            nonlocal batch, batch_bytes, shard_number
            shard = shards / f"{shard_number:012d}"
            shard_number += 1
            future = pool.submit(encode_shard, batch[2], batch[1], shard, dtype, eos)
            pending.append((shard, batch[0], batch[1], future))
            batch, batch_bytes = ([], [], []), 0
            if len(pending) > 2 * workers:  # bounded: memory stays flat
                finish_oldest()

        for index, (source, text) in enumerate(mixture(sources, text_field, max_bytes, tally)):
            split = "val" if every and index % every == every - 1 else "train"
            batch[0].append(source)
            batch[1].append(split)
            batch[2].append(text)
            batch_bytes += len(text)
            if batch_bytes >= BATCH_BYTES:
                submit()
        if batch[2]:
            submit()
        while pending:
            finish_oldest()
    for split in SPLITS:
        outputs[split].close()
        count = tally.splits[split].tokens
        write_header(
            out / f"{split}.bin", TokenHeader(dtype, count, vocab_size, tokenizer_name, eos)
        )
    shards.rmdir()
    manifest = {
        "format": "llmjob-prepared",
        "dtype": dtype,
        "vocabSize": vocab_size,
        "eosTokenId": eos,
        "tokenizer": tokenizer_name,
        "textField": text_field,
        "validationFraction": validation_fraction,
        "splits": {split: tally.splits[split].to_json() for split in SPLITS},
        "sources": [
            {"path": str(source.path), "weight": source.weight, **counts.to_json()}
            for source, counts in zip(sources, tally.sources, strict=False)
        ],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {split: tally.splits[split].tokens for split in SPLITS}


def byte_level_tokenizer() -> Any:
    """The byte-level fallback as a Hugging Face tokenizer (id = byte value, 256 = EOS),
    so an exported model trained on byte tokens is served with text in and text out."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}  # type: ignore[no-untyped-call]
    vocab[EOS_TEXT] = BYTE_EOS
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TEXT)  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmjob-prepare", description=__doc__.split("\n")[0])
    parser.add_argument(
        "inputs",
        nargs="*",
        help="text/JSONL/Parquet files, directories of them or saved datasets, "
        "each PATH or PATH@WEIGHT",
    )
    parser.add_argument("--stdlib", action="store_true", help="add the Python stdlib sources")
    parser.add_argument("--out", type=Path, required=True, help="directory for train/val.bin")
    parser.add_argument("--tokenizer", type=Path, help="local Hugging Face tokenizer directory")
    parser.add_argument(
        "--text-field",
        "--jsonl-field",
        default="text",
        help="the JSONL field, Parquet column or dataset column holding the text",
    )
    parser.add_argument("--validation-fraction", type=float, default=0.02)
    parser.add_argument("--max-bytes", type=int, help="stop after this much text")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    try:
        inputs: list[Path | Source] = [Source.parse(text) for text in args.inputs]
    except ValueError as err:
        parser.error(str(err))
    if args.stdlib:
        inputs.append(Source(Path(sysconfig.get_paths()["stdlib"])))
    if not inputs:
        parser.error("give input files or --stdlib")
    missing = [str(s.path) for s in inputs if isinstance(s, Source) and not s.path.exists()]
    if missing:
        print(f"llmjob-prepare: no such input: {', '.join(missing)}", file=sys.stderr)
        return EXIT_UNREADABLE_DATA
    try:
        counts = prepare(
            inputs,
            args.out,
            args.tokenizer,
            args.validation_fraction,
            args.max_bytes,
            text_field=args.text_field,
            workers=args.workers,
        )
    except DataError as err:
        print(f"llmjob-prepare: {err}", file=sys.stderr)
        return EXIT_UNREADABLE_DATA
    print(f"wrote {args.out}/train.bin ({counts['train']} tokens), val.bin ({counts['val']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
