"""One column-detection rule (hashee.data.detect_columns) for training data, predict --input and infer."""

from __future__ import annotations

import json

import pytest

from hashee.data import detect_columns, load_examples
from hashee.runtime.files import read_records
from hashee.serve.infer import resolve_columns

HEADERS = [
    (["question", "sentence", "label"], ("question", "sentence")),  # QNLI: the pair schema wins over 'sentence'
    (["Premise", "Hypothesis", "label"], ("Premise", "Hypothesis")),
    (["id", "text", "label"], ("text", None)),
    (["sentence", "text_b"], ("sentence", "text_b")),
]


@pytest.mark.parametrize("header,expected", HEADERS)
def test_every_reader_finds_the_same_text_and_pair_columns(tmp_path, header, expected):
    assert detect_columns(header) == expected
    values = {name: f"{name}-value" for name in header}
    values["label"] = "1"
    row = [values[name] for name in header]
    tsv = tmp_path / "data.tsv"
    tsv.write_text("\t".join(header) + "\n" + "\t".join(row) + "\n")
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(json.dumps(values) + "\n")
    text, pair = expected
    record = (values[text], values[pair]) if pair else values[text]
    assert list(read_records(tsv)) == [record]
    assert list(read_records(jsonl)) == [record]
    examples = load_examples(tsv)
    assert examples.texts == [values[text]] and (examples.pairs == [values[pair]] if pair else examples.pairs is None)
    assert resolve_columns(header, None, None, None, tsv)[:2] == expected


def test_a_named_text_column_keeps_its_pair_only_when_asked():
    assert detect_columns(["sentence1", "sentence2"], text="sentence1") == ("sentence1", None)
    assert detect_columns(["sentence1", "sentence2"], text="sentence1", guess_pair=True) == ("sentence1", "sentence2")
    assert detect_columns(["a", "b"]) == (None, None)
