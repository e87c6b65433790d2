"""`llmjob-prepare`: text or JSONL files -> train.bin and val.bin token files.

    llmjob-prepare --stdlib --out data/     # demo corpus: this Python's standard library

Documents are tokenized with a Hugging Face tokenizer from a local directory or, by
default, byte-level (ids 0-255 are the bytes, 256 ends a document), and joined with
the end-of-document token. Every `1/validationFraction`-th document goes to val.bin.
"""

import argparse
import json
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmjob_trainer.data import BYTE_TOKENIZER, TokenHeader, write_tokens

BYTE_EOS = 256
EOS_TEXT = "<|endoftext|>"
TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst"}


def documents(inputs: list[Path], max_bytes: int | None) -> Iterator[str]:
    """Each document of the inputs in a stable order, stopping after max_bytes."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES | {".jsonl"})
            files.extend(sorted(p for p in found if p.is_file()))
        else:
            files.append(path)
    seen = 0
    for path in files:
        if path.suffix == ".jsonl":
            texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line]
        else:
            texts = [path.read_text(encoding="utf-8", errors="replace")]
        for text in texts:
            if max_bytes is not None and seen >= max_bytes:
                return
            seen += len(text.encode())
            yield text


def byte_encoder(text: str) -> list[int]:
    return [*text.encode("utf-8"), BYTE_EOS]


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


def prepare(
    inputs: list[Path],
    out: Path,
    tokenizer_dir: Path | None,
    validation_fraction: float,
    max_bytes: int | None,
) -> dict[str, int]:
    """Writes out/train.bin and out/val.bin; returns the token count of each."""
    encode: Callable[[str], list[int]]
    if tokenizer_dir is None:
        encode, vocab_size, eos, tokenizer_name = (
            byte_encoder,
            BYTE_EOS + 1,
            BYTE_EOS,
            BYTE_TOKENIZER,
        )
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        eos = tokenizer.eos_token_id

        def encode(text: str) -> list[int]:
            ids: list[int] = tokenizer(text)["input_ids"]
            return [*ids, eos] if eos is not None else ids

        vocab_size, tokenizer_name = len(tokenizer), str(tokenizer_dir.resolve())
    dtype = "uint16" if vocab_size <= 2**16 else "uint32"
    every = max(2, round(1 / validation_fraction)) if validation_fraction > 0 else 0
    splits: dict[str, list[int]] = {"train": [], "val": []}
    for index, text in enumerate(documents(inputs, max_bytes)):
        split = "val" if every and index % every == every - 1 else "train"
        splits[split].extend(encode(text))
    counts = {}
    for split, tokens in splits.items():
        header = TokenHeader(dtype, len(tokens), vocab_size, tokenizer_name, eos)
        write_tokens(out / f"{split}.bin", np.asarray(tokens, dtype=np.int64), header)
        counts[split] = len(tokens)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmjob-prepare", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="*", type=Path, help="text/JSONL files or directories")
    parser.add_argument("--stdlib", action="store_true", help="add the Python stdlib sources")
    parser.add_argument("--out", type=Path, required=True, help="directory for train/val.bin")
    parser.add_argument("--tokenizer", type=Path, help="local Hugging Face tokenizer directory")
    parser.add_argument("--validation-fraction", type=float, default=0.02)
    parser.add_argument("--max-bytes", type=int, help="stop after this much text")
    args = parser.parse_args(argv)
    inputs = list(args.inputs)
    if args.stdlib:
        inputs.append(Path(sysconfig.get_paths()["stdlib"]))
    if not inputs:
        parser.error("give input files or --stdlib")
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        print(f"llmjob-prepare: no such input: {', '.join(missing)}", file=sys.stderr)
        return 3
    counts = prepare(inputs, args.out, args.tokenizer, args.validation_fraction, args.max_bytes)
    print(f"wrote {args.out}/train.bin ({counts['train']} tokens), val.bin ({counts['val']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
