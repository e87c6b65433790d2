"""llmjob-prepare: streamed, multi-process, weighted, with a manifest and its tokenizer."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmjob_trainer.data import TokenHeader, read_header, resolve_tokenizer
from llmjob_trainer.errors import ConfigError
from llmjob_trainer.prepare import BYTE_EOS, Source, byte_encoder, byte_level_tokenizer, prepare

from .conftest import Trainer, train_command, trainer_env, write_config


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def tokens(path: Path) -> list[int]:
    header = read_header(path, None)
    values: list[int] = np.fromfile(path, dtype=header.dtype).tolist()
    return values


DOCS = [f"document {i}: " + "héllo wörld " * (i % 7) for i in range(40)]


def test_the_output_is_the_byte_encoding_whatever_the_number_of_workers(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "a.jsonl", DOCS, field="content")
    expected_train = [t for i, d in enumerate(DOCS) if i % 4 != 3 for t in byte_encoder(d)]
    expected_val = [t for i, d in enumerate(DOCS) if i % 4 == 3 for t in byte_encoder(d)]
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        counts = prepare([corpus], out, None, 0.25, None, text_field="content", workers=workers)
        assert tokens(out / "train.bin") == expected_train
        assert tokens(out / "val.bin") == expected_val
        assert counts == {"train": len(expected_train), "val": len(expected_val)}
    assert (tmp_path / "out1" / "train.bin").read_bytes() == (
        tmp_path / "out3" / "train.bin"
    ).read_bytes()


def test_weights_repeat_or_thin_each_source_and_the_manifest_counts_them(tmp_path: Path) -> None:
    first = write_jsonl(tmp_path / "first.jsonl", DOCS[:10])
    second = tmp_path / "second"
    second.mkdir()
    for i in range(6):
        (second / f"{i}.txt").write_text(f"text file {i}\n")
    out = tmp_path / "out"
    prepare([Source(first, 2.0), Source(second, 0.5)], out, None, 0.0, None, workers=2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["documents"] for s in manifest["sources"]] == [20, 3]
    assert manifest["sources"][0]["tokens"] == 2 * sum(len(byte_encoder(d)) for d in DOCS[:10])
    assert manifest["splits"]["train"]["documents"] == 23
    assert manifest["splits"]["train"]["tokens"] == len(tokens(out / "train.bin"))
    assert manifest["splits"]["val"] == {"documents": 0, "tokens": 0}
    assert tokens(out / "train.bin").count(BYTE_EOS) == 23
    assert Source.parse("web.jsonl@0.25") == Source(Path("web.jsonl"), 0.25)


def test_a_hugging_face_tokenizer_is_copied_beside_the_tokens(tmp_path: Path) -> None:
    tokenizer_dir = tmp_path / "machine-local" / "tokenizer"
    byte_level_tokenizer().save_pretrained(tokenizer_dir)
    corpus = write_jsonl(tmp_path / "a.jsonl", DOCS)
    out = tmp_path / "data"
    prepare([corpus], out, tokenizer_dir, 0.0, None, workers=2)
    header = read_header(out / "train.bin", None)
    assert header.tokenizer == "tokenizer"  # relative to the token file, not this machine's
    assert tokens(out / "train.bin") == [t for d in DOCS for t in byte_encoder(d)]

    # In a pod the data sits elsewhere: the tokenizer travels with it.
    moved = tmp_path / "pod" / "data"
    moved.parent.mkdir()
    out.rename(moved)
    (tmp_path / "machine-local").rename(tmp_path / "gone")
    assert resolve_tokenizer(moved / "train.bin", header, None) == str(moved / "tokenizer")


def test_a_missing_tokenizer_is_a_configuration_error_and_model_path_wins(tmp_path: Path) -> None:
    header = TokenHeader("uint16", 10, 300, "/nowhere/tokenizer", 256)
    with pytest.raises(ConfigError, match=r"/nowhere/tokenizer.*holds no tokenizer\.json"):
        resolve_tokenizer(tmp_path / "train.bin", header, None)
    model_dir = tmp_path / "model"
    byte_level_tokenizer().save_pretrained(model_dir)
    assert resolve_tokenizer(tmp_path / "train.bin", header, str(model_dir)) == str(model_dir)
    bytes_header = TokenHeader("uint16", 10, 257, "bytes", 256)
    assert resolve_tokenizer(tmp_path / "train.bin", bytes_header, str(tmp_path)) == "bytes"


# The main process's peak is its VmHWM: ru_maxrss survives exec, so this child's would
# start at the size of the test process that started it. A worker's is ru_maxrss (at least
# the main process's size when it was spawned, as the workers are its children).
PREPARE_PEAK = """
import re, resource, sys
from pathlib import Path
from llmjob_trainer.prepare import prepare
prepare([Path(sys.argv[1])], Path(sys.argv[2]), None, 0.01, None, workers=2)
print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_kib_of_prepare(corpus: Path, out: Path) -> tuple[int, int]:
    """Peak RSS of prepare's main process and of its largest worker, in KiB."""
    result = subprocess.run(
        [sys.executable, "-c", PREPARE_PEAK, str(corpus), str(out)],
        env=trainer_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    main, worker = result.stdout.split()
    return int(main), int(worker)


def test_prepare_memory_stays_flat_as_the_corpus_grows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = ["token", "corpus", "stream", "shard", "weight", "values", "über", "ß"]
    line = " ".join(rng.choice(words, 200).tolist())
    sizes = {"small": 2_000, "large": 16_000}  # documents: ~3 MB and ~24 MB of text
    peaks = {}
    for name, documents in sizes.items():
        corpus = tmp_path / f"{name}.jsonl"
        with corpus.open("w") as f:
            for i in range(documents):
                f.write(json.dumps({"text": f"{i} {line}"}) + "\n")
        peaks[name], peaks[f"{name} worker"] = peak_kib_of_prepare(corpus, tmp_path / name)
        assert read_header(tmp_path / name / "train.bin", None).count > documents * 1000
    # Tolerance: 8x the text and tokens may add at most 25% (or 16 MiB) to the peak;
    # holding the tokens would add ~24M x 8 bytes = 190 MB.
    for process in ("", " worker"):
        small, large = peaks[f"small{process}"], peaks[f"large{process}"]
        assert large <= max(small * 1.25, small + 16 * 1024), peaks
    print(f"prepare peak RSS (KiB) for ~3 MB and ~24 MB of text: {peaks}")


@pytest.mark.slow
def test_the_trainer_refuses_a_missing_tokenizer_at_start_up_with_exit_2(
    tmp_path: Path, token_data: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.bin", "val.bin"):
        (data / name).write_bytes((token_data / name).read_bytes())
        header = json.loads((token_data / f"{name}.json").read_text())
        header["tokenizer"] = "/machine/that/ran/prepare/tokenizer"  # as prepare once wrote
        (data / f"{name}.json").write_text(json.dumps(header))
    config = write_config(tmp_path, data)
    trainer = Trainer(train_command(config), trainer_env(), tmp_path / "run.log")
    assert trainer.wait(timeout=300) == 2, trainer.output()[-3000:]
    assert "invalid configuration" in trainer.output()
    assert "/machine/that/ran/prepare/tokenizer" in trainer.output()
    assert not (tmp_path / "checkpoints").exists()  # refused before any training
