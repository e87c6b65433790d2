"""llmjob-prepare reads Parquet files and saved Hugging Face datasets as JSONL's equals."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from llmjob_trainer.errors import DataError
from llmjob_trainer.prepare import main, prepare

from .conftest import trainer_env

# Unicode, an empty document and one far longer than the rest: what must survive each format.
DOCS = [f"document {i}: " + "héllo wörld ß " * (i % 9) for i in range(60)] + ["", "x" * 5000]


def prepared(source: Path, out: Path, text_field: str = "text") -> dict[str, bytes]:
    prepare([source], out, None, 0.1, None, text_field=text_field, workers=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"][0]["documents"] == len(DOCS)
    return {name: (out / name).read_bytes() for name in ("train.bin", "val.bin")}


def test_parquet_and_a_saved_dataset_give_exactly_jsonls_tokens(tmp_path: Path) -> None:
    jsonl = tmp_path / "docs.jsonl"
    lines = (json.dumps({"content": d, "id": i}) + "\n" for i, d in enumerate(DOCS))
    jsonl.write_text("".join(lines))
    table = pa.table({"id": list(range(len(DOCS))), "content": DOCS})
    # Several row groups and several Arrow files: documents cross read boundaries in order.
    parquet_dir = tmp_path / "parquet"
    parquet_dir.mkdir()
    pq.write_table(table.slice(0, 25), parquet_dir / "part-0.parquet", row_group_size=7)
    pq.write_table(table.slice(25), parquet_dir / "part-1.parquet", row_group_size=7)
    saved = tmp_path / "saved"
    Dataset.from_dict({"id": list(range(len(DOCS))), "content": DOCS}).save_to_disk(
        saved, num_shards=3
    )

    expected = prepared(jsonl, tmp_path / "from-jsonl", "content")
    assert len(expected["train.bin"]) > 0 and len(expected["val.bin"]) > 0
    assert prepared(parquet_dir, tmp_path / "from-parquet", "content") == expected
    assert prepared(saved, tmp_path / "from-dataset", "content") == expected


def test_a_missing_or_non_text_column_is_an_error_naming_it(tmp_path: Path) -> None:
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [1, 2], "content": ["a", "b"]}), parquet)
    with pytest.raises(DataError, match=r"\.parquet: no column 'text' \(columns: id, content\)"):
        prepare([parquet], tmp_path / "out", None, 0.0, None)
    with pytest.raises(DataError, match=r"column 'id' holds int64, not text"):
        prepare([parquet], tmp_path / "out", None, 0.0, None, text_field="id")

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"content": "a"}\n\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"docs\.jsonl:3: no field 'content' \(fields: body\)"):
        prepare([jsonl], tmp_path / "out", None, 0.0, None, text_field="content")

    saved = tmp_path / "saved"
    Dataset.from_dict({"body": ["a", "b"]}).save_to_disk(saved)
    with pytest.raises(DataError, match=r"saved: no column 'text' \(columns: body\)"):
        prepare([saved], tmp_path / "out", None, 0.0, None)

    both = tmp_path / "dict"
    DatasetDict({"train": Dataset.from_dict({"text": ["a"]})}).save_to_disk(both)
    with pytest.raises(DataError, match=r"holds a DatasetDict: give one split's directory"):
        prepare([both], tmp_path / "out", None, 0.0, None)
    # The command line says which column, and exits 3 (unreadable data).
    assert main([str(parquet), "--out", str(tmp_path / "cli"), "--text-field", "body"]) == 3


# VmHWM, not ru_maxrss: the latter survives exec, so a child's starts at its parent's size.
PREPARE_PEAK = """
import re, sys
from pathlib import Path
from llmjob_trainer.prepare import prepare
prepare([Path(sys.argv[1])], Path(sys.argv[2]), None, 0.01, None, workers=2)
print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def test_prepare_memory_from_parquet_stays_flat_as_the_corpus_grows(tmp_path: Path) -> None:
    line = " ".join(["token", "corpus", "stream", "shard", "über", "ß"] * 40)
    peaks = {}
    for name, documents in {"small": 2_000, "large": 16_000}.items():  # ~3 MB, ~23 MB of text
        corpus = tmp_path / f"{name}.parquet"
        with pq.ParquetWriter(corpus, pa.schema([("text", pa.string())])) as writer:
            for start in range(0, documents, 1000):  # a row group at a time
                writer.write_table(pa.table({"text": [f"{start + i} {line}" for i in range(1000)]}))
        result = subprocess.run(
            [sys.executable, "-c", PREPARE_PEAK, str(corpus), str(tmp_path / name)],
            env=trainer_env(), capture_output=True, text=True, check=True,
        )  # fmt: skip
        peaks[name] = int(result.stdout)
    # As for JSONL (test_prepare): 8x the rows may add at most 25% (or 16 MiB) to the peak;
    # reading the whole column at once would add ~23 MB of text and more as Python strings.
    assert peaks["large"] <= max(peaks["small"] * 1.25, peaks["small"] + 16 * 1024), peaks
    print(f"prepare's peak RSS (KiB) from Parquet, ~3 MB and ~23 MB of text: {peaks}")
