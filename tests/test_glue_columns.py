"""Column detection on the GLUE tasks' own headers, and header rows that must never become examples."""

from __future__ import annotations

import pytest

from hashee.data import load_examples
from hashee.errors import DataError

# The header rows of the GLUE train/dev files as distributed (tab-separated), written out here
# independently of hashee.data, with one data row each: (header, row, expected text/pair/label names).
GLUE = {
    "SST-2": ("sentence\tlabel", "a gorgeous film\t1", ("sentence", None, "label")),
    "MRPC": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t702876\t702977\tHe said so .\tHe said it .",
             ("#1 String", "#2 String", "Quality")),
    "STS-B": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
              "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off."
              "\t5.000", ("sentence1", "sentence2", "score")),
    "QQP": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "133273\t213221\t213222\tHow is it?\tWhat is it?\t0",
            ("question1", "question2", "is_duplicate")),
    "MNLI": ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
             "0\t31193\t31193n\tgovernment\t( ( a ) )\t( ( b ) )\t(ROOT (S a))\t(ROOT (S b))\tWe went .\tWe stayed ."
             "\tneutral\tneutral", ("sentence1", "sentence2", "gold_label")),
    "QNLI": ("index\tquestion\tsentence\tlabel", "0\tWhen was it built?\tIt was built in 1900.\tentailment",
             ("question", "sentence", "label")),
    "RTE": ("index\tsentence1\tsentence2\tlabel", "0\tNo weapons were found.\tWeapons were found.\tnot_entailment",
            ("sentence1", "sentence2", "label")),
    "WNLI": ("index\tsentence1\tsentence2\tlabel", "0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1",
             ("sentence1", "sentence2", "label")),
}


@pytest.mark.parametrize("task", sorted(GLUE))
def test_every_glue_header_gives_text_pair_and_label(task, tmp_path):
    header, row, (text, pair, label) = GLUE[task]
    path = tmp_path / f"{task}.tsv"
    path.write_text(f"{header}\n{row}\n{row}\n")
    examples = load_examples(path)
    assert examples.columns == {"text": text, "pair": pair, "label": label}
    fields = row.split("\t")
    names = header.split("\t")
    assert examples.texts == [fields[names.index(text)]] * 2
    if pair is not None:
        assert examples.pairs == [fields[names.index(pair)]] * 2
    assert examples.is_regression == (task == "STS-B")
    if task != "STS-B":
        assert examples.labels == [fields[names.index(label)]] * 2


def test_glue_test_files_without_labels(tmp_path):
    """GLUE test.tsv files lead with ``index``/``id`` and have no label: they load unlabelled."""
    for name, content, text in (("sst2.tsv", "index\tsentence\n0\tuneasy mishmash\n", "sentence"),
                                ("mrpc.tsv", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tA .\tB .\n",
                                 "#1 String"),
                                ("qqp.tsv", "id\tquestion1\tquestion2\n0\tWhy?\tHow?\n", "question1")):
        (tmp_path / name).write_text(content)
        examples = load_examples(tmp_path / name)
        assert examples.labels is None and examples.columns["text"] == text


def test_cola_has_no_header_and_the_message_says_which_flags(tmp_path):
    path = tmp_path / "cola.tsv"
    path.write_text("gj04\t1\t\tOur friends won't buy this analysis.\n"
                    "gj04\t0\t*\tOne more pseudo generalization and I'm giving up.\n"
                    "gj04\t1\t\tThe more we study verbs, the crazier they get.\n")
    with pytest.raises(DataError, match=r"CoLA.*--text-column 3 --label-column 1"):
        load_examples(path)
    examples = load_examples(path, text_column=3, label_column=1)
    assert len(examples) == 3 and examples.labels == ["1", "0", "1"]
    assert examples.texts[1] == "One more pseudo generalization and I'm giving up."


def test_mrpc_named_by_index_reads_the_header_as_a_header(tmp_path):
    """The flags an earlier error message suggested: `Quality` must not become a class."""
    path = tmp_path / "mrpc.tsv"
    rows = ["1\t1\t2\tA cat sat .\tThe cat sat .", "0\t3\t4\tIt rained .\tIt was sunny .",
            "1\t5\t6\tHe left .\tHe went away ."]
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(rows) + "\n")
    examples = load_examples(path, text_column=3, pair_column=4, label_column=0)
    assert examples.label_names == ["0", "1"] and len(examples) == 3
    assert examples.texts[0] == "A cat sat ." and examples.pairs[0] == "The cat sat ."


@pytest.mark.parametrize("first, rest, why", [
    ("Rating\tfirst\tsecond", ["1\ta\tb", "0\tc\td", "1\te\tf"], "not an integer"),
    ("stars\tthe text", ["0.5\tgood", "1.5\tbad", "2\tok"], "not a number"),
    ("kind\tbody", ["pos\tgood", "neg\tbad", "pos\tfine", "neg\tugly"], "no other row has"),
])
def test_an_unknown_header_read_by_index_is_refused(first, rest, why, tmp_path):
    path = tmp_path / "headed.tsv"
    path.write_text("\n".join([first, *rest]) + "\n")
    with pytest.raises(DataError, match=rf"headed.tsv:1: the first row looks like a header.*{why}"):
        load_examples(path, text_column=1, label_column=0)
    # named by header name, the same file reads the row as its header
    names = first.split("\t")
    examples = load_examples(path, text_column=names[1], label_column=names[0])
    assert len(examples) == len(rest)


@pytest.mark.parametrize("rows", [
    ["1\ta", "0\tb"],                          # two rows, two classes of one row each
    ["2\ta", "0\tb", "1\tc", "1\td"],           # the first row's class is rare, but so is another's
    ["0.5\ta", "1\tb", "2.25\tc"],             # regression: every label is a number
    ["neutral\ta", "entailment\tb", "neutral\tc", "entailment\td"],
])
def test_header_less_data_is_not_mistaken_for_a_header(rows, tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("\n".join(rows) + "\n")
    examples = load_examples(path, text_column=1, label_column=0)
    assert len(examples) == len(rows) and examples.texts[0] == "a"


def test_predict_input_files_detect_the_glue_headers(tmp_path):
    from hashee.runtime.files import read_records

    path = tmp_path / "mrpc.tsv"
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA .\tB .\n")
    assert list(read_records(path)) == [("A .", "B .")]
    path = tmp_path / "qnli.tsv"
    path.write_text("index\tquestion\tsentence\tlabel\n0\tWhy?\tBecause.\tentailment\n")
    assert list(read_records(path)) == [("Why?", "Because.")]
