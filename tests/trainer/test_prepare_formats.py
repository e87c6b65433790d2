"""llmjob-prepare reads Parquet files and saved Hugging Face datasets as JSONL's equals."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from llmjob_trainer.errors import DataError
from llmjob_trainer.prepare import main, prepare

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
