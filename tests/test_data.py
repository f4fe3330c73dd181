"""hashee.data: real ELUE files as they are, CSV/JSONL, column flags, regression, malformed input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hashee.data import Examples, label_mapping, load_examples, tokenize_examples
from hashee.errors import DataError


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


# ----------------------------------------------------------------------------- real ELUE files

def test_sst2_train_loads_as_is(elue_dir, sst2_sentences):
    ex = load_examples(elue_dir / "SST-2" / "train.tsv")
    assert len(ex) == 8544
    assert ex.pairs is None and not ex.is_regression
    assert ex.label_names == ["0", "1"]
    assert ex.columns == {"text": "sentence", "pair": None, "label": "label"}
    # same rows as an independent csv-module read
    assert [(t, int(label)) for t, label in zip(ex.texts[:400], ex.labels[:400])] == sst2_sentences
    ids = ex.label_ids()
    assert ids.dtype == np.int64 and set(ids.tolist()) == {0, 1}
    assert ex.source == elue_dir / "SST-2" / "train.tsv"


def test_snli_dev_bom_crlf_pairs(elue_dir):
    raw = (elue_dir / "SNLI" / "dev.tsv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw[:500]  # the quirks are really there
    ex = load_examples(elue_dir / "SNLI" / "dev.tsv")
    assert len(ex) == 9842
    assert ex.columns == {"text": "premise", "pair": "hypothesis", "label": "label"}
    assert ex.label_names == ["0", "1", "2"]
    assert ex.pairs is not None and len(ex.pairs) == 9842
    assert ex.texts[0] == "Two women are embracing while holding to go packages ."
    assert not any("\r" in s or "\ufeff" in s for s in ex.texts + ex.pairs + ex.labels)
    inputs = ex.inputs()
    assert inputs[0] == (ex.texts[0], ex.pairs[0])


@pytest.mark.parametrize("rel, rows, pairs", [("SST-2/dev.tsv", 1101, False), ("SST-2/test_full.tsv", 2210, False),
                                              ("SNLI/test_full.tsv", 9824, True)])
def test_other_elue_files(elue_dir, rel, rows, pairs):
    ex = load_examples(elue_dir / rel)
    assert len(ex) == rows and (ex.pairs is not None) == pairs


def test_tokenize_real_pairs(elue_dir, minilm_tokenizer):
    from transformers import DataCollatorWithPadding

    ex = load_examples(elue_dir / "SNLI" / "dev.tsv")
    small = Examples(texts=ex.texts[:20], pairs=ex.pairs[:20], labels=ex.labels[:20], label_names=ex.label_names)
    data = tokenize_examples(small, minilm_tokenizer, max_length=16)
    assert len(data) == 20 and max(data.lengths) <= 16
    first = data[0]
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert first["labels"] == int(ex.labels[0])
    assert 1 in first["token_type_ids"]  # the second segment is there
    batch = DataCollatorWithPadding(minilm_tokenizer)([data[i] for i in range(4)])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    assert batch["labels"].tolist() == [int(x) for x in ex.labels[:4]]


# ----------------------------------------------------------------------------- formats

def test_csv_quotes_commas_newlines_bom_crlf(tmp_path):
    text = '\ufefftext,label\r\n"good, really good",pos\r\n"two\r\nlines",neg\r\nplain,pos\r\n\r\n\r\n'
    ex = load_examples(write(tmp_path / "a.csv", text))
    assert ex.texts == ["good, really good", "two\r\nlines", "plain"]
    assert ex.labels == ["pos", "neg", "pos"] and ex.label_names == ["neg", "pos"]
    assert ex.label_ids().tolist() == [1, 0, 1]


def test_tsv_stray_quotes_and_blank_lines(tmp_path):
    text = 'sentence\tlabel\nhe said "hi\t1\n\n`` quoted \'\' text\t0\nit\'s "fine"\t1\n\n\n'
    ex = load_examples(write(tmp_path / "a.tsv", text))
    assert ex.texts == ['he said "hi', "`` quoted '' text", 'it\'s "fine"']
    assert ex.labels == ["1", "0", "1"]


def test_jsonl_and_json_array(tmp_path):
    rows = [{"sentence1": "a b", "sentence2": "c", "label": 1, "idx": 0},
            {"sentence1": "d", "sentence2": "e f", "label": 0, "idx": 1}]
    lines = "\n".join(json.dumps(r) for r in rows) + "\n\n  \n"
    ex = load_examples(write(tmp_path / "a.jsonl", lines))
    assert ex.inputs() == [("a b", "c"), ("d", "e f")]
    assert ex.labels == ["1", "0"] and ex.label_names == ["0", "1"]
    ex2 = load_examples(write(tmp_path / "b.json", json.dumps(rows)))
    assert ex2.inputs() == ex.inputs() and ex2.labels == ex.labels


def test_unlabelled_file_loads_for_prediction(tmp_path):
    ex = load_examples(write(tmp_path / "p.tsv", "sentence\nfirst\nsecond\n"))
    assert ex.labels is None and ex.label_names is None and not ex.has_labels
    with pytest.raises(DataError, match="no labels"):
        ex.label_ids()


def test_pair_schemas(tmp_path):
    ex = load_examples(write(tmp_path / "q.tsv", "index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n"))
    assert ex.columns == {"text": "question", "pair": "sentence", "label": "label"}
    ex = load_examples(write(tmp_path / "m.csv", "Sentence1,Sentence2,Label\na,b,1\n"))
    assert ex.inputs() == [("a", "b")] and ex.labels == ["1"]


def test_integer_labels_sort_numerically(tmp_path):
    body = "".join(f"t{i}\t{i}\n" for i in (10, 2, 1, 0, 2))
    ex = load_examples(write(tmp_path / "n.tsv", "text\tlabel\n" + body))
    assert ex.label_names == ["0", "1", "2", "10"]
    assert ex.label_ids().tolist() == [3, 2, 1, 0, 2]
    id2label, label2id = label_mapping(ex.label_names)
    assert id2label == {0: "0", 1: "1", 2: "2", 3: "10"} and label2id["10"] == 3


def test_label_ids_with_foreign_mapping(tmp_path):
    ex = load_examples(write(tmp_path / "d.tsv", "text\tlabel\na\tpos\nb\tneutral\n"))
    assert ex.label_ids({"neg": 0, "pos": 1, "neutral": 2}).tolist() == [1, 2]
    with pytest.raises(DataError, match="neutral"):
        ex.label_ids({"neg": 0, "pos": 1})


# ----------------------------------------------------------------------------- column flags

def test_named_columns(tmp_path):
    path = write(tmp_path / "r.csv", "review_body,extra,stars\nnice,x,5\nbad,y,1\n")
    with pytest.raises(DataError, match="--text-column"):
        load_examples(path)
    ex = load_examples(path, text_column="review_body", label_column="stars")
    assert ex.texts == ["nice", "bad"] and ex.labels == ["5", "1"]
    ex = load_examples(path, text_column="review_body", pair_column="extra", label_column=2)
    assert ex.inputs() == [("nice", "x"), ("bad", "y")]
    with pytest.raises(DataError, match="no column 'nope'.*review_body"):
        load_examples(path, text_column="nope")


def test_headerless_needs_flags(tmp_path):
    path = write(tmp_path / "h.tsv", "a great movie\t1\na bad movie\t0\n")
    with pytest.raises(DataError) as info:
        load_examples(path)
    message = str(info.value)
    assert "--text-column" in message and "--label-column" in message and "h.tsv" in message
    ex = load_examples(path, text_column=0, label_column="1")
    assert ex.texts == ["a great movie", "a bad movie"] and ex.labels == ["1", "0"]
    with pytest.raises(DataError, match="out of range"):
        load_examples(path, text_column=0, label_column=5)
    with pytest.raises(DataError, match="no column 'sentence'.*0-based column indices"):
        load_examples(path, text_column="sentence")


def test_same_column_twice(tmp_path):
    path = write(tmp_path / "s.tsv", "sentence\tlabel\na\t1\n")
    with pytest.raises(DataError, match="twice"):
        load_examples(path, label_column="sentence")


def test_json_rejects_indices(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "a", "label": 1}\n')
    with pytest.raises(DataError, match="field name"):
        load_examples(path, text_column=0)


# ----------------------------------------------------------------------------- regression

def test_float_labels_mean_regression(tmp_path):
    ex = load_examples(write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\t0\ne\tf\t2.25\n"))
    assert ex.is_regression and ex.label_names is None
    assert isinstance(ex.labels, np.ndarray) and ex.labels.dtype == np.float64
    np.testing.assert_array_equal(ex.labels, [4.5, 0.0, 2.25])
    np.testing.assert_array_equal(ex.label_ids(), [4.5, 0.0, 2.25])


def test_regression_override(tmp_path):
    path = write(tmp_path / "r.tsv", "text\tlabel\na\t1\nb\t3\n")
    assert not load_examples(path).is_regression
    forced = load_examples(path, regression=True)
    assert forced.is_regression and forced.labels.tolist() == [1.0, 3.0]
    words = write(tmp_path / "w.tsv", "text\tlabel\na\t1\nb\tthree\n")
    with pytest.raises(DataError, match=r"w.tsv:3.*numeric"):
        load_examples(words, regression=True)
    assert load_examples(write(tmp_path / "j.jsonl", '{"text": "a", "label": 0.5}\n')).is_regression
    nan = write(tmp_path / "nan.tsv", "text\tscore\na\t0.5\nb\tnan\n")
    with pytest.raises(DataError, match=r"nan.tsv:3: regression needs finite"):
        load_examples(nan)


def test_tokenize_regression_and_unlabelled(tmp_path, minilm_tokenizer):
    ex = load_examples(write(tmp_path / "sts.tsv", "text\tscore\na good one\t4.5\nbad\t0.5\n"))
    data = tokenize_examples(ex, minilm_tokenizer, max_length=8)
    assert [f["labels"] for f in data.features] == [4.5, 0.5]
    plain = load_examples(write(tmp_path / "p.tsv", "text\nsome words here\n"))
    feature = tokenize_examples(plain, minilm_tokenizer, max_length=3)[0]
    assert "labels" not in feature and len(feature["input_ids"]) == 3
    with pytest.raises(DataError, match="max_length"):
        tokenize_examples(plain, minilm_tokenizer, max_length=1)


# ----------------------------------------------------------------------------- malformed input

@pytest.mark.parametrize("name, content, pattern", [
    ("wrong.tsv", "sentence\tlabel\nfine\t1\ntoo\tmany\tcols\n", r"wrong.tsv:3: expected 2 columns.*found 3"),
    ("short.tsv", "sentence\tlabel\nfine\t1\nnolabel\n", r"short.tsv:3: expected 2 columns.*found 1"),
    ("crlf.tsv", "\ufeffsentence\tlabel\r\nok\t1\r\n\r\nbad\t1\t2\r\n", r"crlf.tsv:4: expected 2"),
    ("empty.tsv", "", r"empty.tsv is empty"),
    ("blank.csv", "\ufeff \n\r\n\n", r"blank.csv is empty"),
    ("header.tsv", "sentence\tlabel\n\n", r"header.tsv has a header but no data rows"),
    ("data.txt", "sentence\tlabel\na\t1\n", r"unknown data format '.txt'"),
    ("nolabel.tsv", "sentence\tlabel\na\t1\nb\t\n", r"nolabel.tsv:3: the label field 'label' is empty"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n', r"bad.jsonl:2: invalid JSON"),
    ("list.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', r"list.jsonl:2: expected a JSON object"),
    ("missing.jsonl", '{"text": "a", "label": 1}\n\n{"label": 0}\n', r"missing.jsonl:3: the record has no 'text'"),
    ("nulllabel.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n', r"nulllabel.jsonl:2: the label"),
    ("number.jsonl", '{"text": 5, "label": 1}\n', r"number.jsonl:1: the text field 'text' is not a string"),
    ("quote.csv", 'text,label\n"open quote,1\nnext,0\n', r"quote.csv"),
    ("latin1.tsv", "sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"), r"latin1.tsv:2: not valid UTF-8"),
])
def test_malformed_inputs_raise_data_error(tmp_path, name, content, pattern):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=pattern):
        load_examples(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="not a file"):
        load_examples(tmp_path)


def test_import_is_light():
    import subprocess

    code = "import sys, hashee.data; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    assert out.stdout.split() == ["False", "False"]
