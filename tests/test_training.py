"""hashee.training: a few real Trainer steps with a tiny random BERT (MiniLM vocabulary) on SST-2/SNLI slices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashee.data import label_mapping, load_examples, tokenize_examples
from hashee.errors import BackboneError, DataError, ExitTableError, HashConfigError, TrainConfigError
from hashee.evaluation import evaluate, format_eval_report
from hashee.training import TRAIN_META, format_train_report, train

torch = pytest.importorskip("torch")

# 12 full-batch steps over 8 examples: the tiny model overfits them whatever the seed.
STEPS = dict(max_steps=12, batch_size=8, learning_rate=2e-3, warmup_ratio=0.0, seed=42, progress=False)
LAYERS = 3


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, minilm_tokenizer):
    """A tiny random BERT encoder (hidden 32, 3 layers, 2 heads) saved with the real MiniLM tokenizer.

    Three layers, not two: with two, a token exiting at layer 1 gives layer 2 the same keys and
    values as the dense model, so [CLS] and the logits of HashEE and dense would coincide.  A wide
    initialiser and no dropout let a few steps overfit a handful of examples for any seed.  Saved as
    a bare ``BertModel`` (like MiniLM) so train() initialises the classification head itself.
    """
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


def _slice(src, dst, per_label, label_index=-1):
    """Header + the first ``per_label`` rows of each label, interleaved, copied byte for byte."""
    raw = src.read_bytes()
    bom = raw.startswith(b"\xef\xbb\xbf")
    lines = raw.decode("utf-8-sig").splitlines(keepends=True)
    by_label: dict[str, list[str]] = {}
    for line in lines[1:]:
        label = line.rstrip("\r\n").split("\t")[label_index]
        if len(by_label.setdefault(label, [])) < per_label:
            by_label[label].append(line)
    rows = [row for group in zip(*by_label.values()) for row in group]
    dst.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (lines[0] + "".join(rows)).encode())
    return dst


@pytest.fixture(scope="module")
def sst2(tmp_path_factory, elue_dir):
    folder = tmp_path_factory.mktemp("sst2")
    return (_slice(elue_dir / "SST-2" / "train.tsv", folder / "train.tsv", 4),
            _slice(elue_dir / "SST-2" / "dev.tsv", folder / "dev.tsv", 24))


def _loss(model, tokenizer, path, label2id):
    """Mean loss over every example of ``path`` in eval mode (one padded batch)."""
    from transformers import DataCollatorWithPadding

    data = tokenize_examples(load_examples(path), tokenizer, 128, label2id)
    batch = DataCollatorWithPadding(tokenizer)(data.features)
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def _initial_model(backbone, train_file, kind=None):
    """The model train() starts from: same seed, same head init, same exit table."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    examples = load_examples(train_file)
    id2label, label2id = label_mapping(examples.label_names)
    transformers.set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(backbone), num_labels=len(id2label), id2label=id2label, label2id=label2id,
        problem_type="single_label_classification")
    if kind is not None:
        from hashee.calibration import build_exit_table
        from hashee.modeling import HashEEForSequenceClassification

        table = build_exit_table(kind, tokenizer, texts=examples.inputs(), num_layers=LAYERS, num_buckets=LAYERS,
                                 seed=42)
        model = HashEEForSequenceClassification.from_dense(model, table)
    return model, tokenizer, label2id


def _logits(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def dense_run(backbone, sst2, tmp_path_factory):
    return train(backbone, train_file=sst2[0], dev_file=sst2[1], dense=True,
                 output_dir=tmp_path_factory.mktemp("run") / "dense", **STEPS)


@pytest.fixture(scope="module")
def hashee_run(backbone, sst2, tmp_path_factory):
    pytest.importorskip("hashee.modeling", reason="hashee.modeling is not written yet")
    return train(backbone, train_file=sst2[0], dev_file=sst2[1], hash_kind="frequency",
                 output_dir=tmp_path_factory.mktemp("run") / "hashee", **STEPS)


# ------------------------------------------------------------------------------------ dense

def test_dense_training_reduces_loss(dense_run, backbone, sst2):
    assert dense_run.kind == "dense" and dense_run.global_step == STEPS["max_steps"]
    model, tokenizer, label2id = _initial_model(backbone, sst2[0])
    before = _loss(model, tokenizer, sst2[0], label2id)
    after = _loss(dense_run.model, tokenizer, sst2[0], label2id)
    assert after < 0.5 * before, (before, after)


def test_dense_run_dir_round_trips(dense_run, sst2):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = dense_run.output_dir
    loaded = AutoModelForSequenceClassification.from_pretrained(str(run))
    tokenizer = AutoTokenizer.from_pretrained(str(run))
    texts = load_examples(sst2[1]).texts[:6]
    torch.testing.assert_close(_logits(loaded, tokenizer, texts), _logits(dense_run.model, tokenizer, texts))
    assert loaded.config.id2label == {0: "0", 1: "1"} and loaded.config.label2id == {"0": 0, "1": 1}
    record = json.loads((run / TRAIN_META).read_text())
    assert record["kind"] == "dense" and record["exit_table"] is None
    assert record["recipe"]["learning_rate"] == STEPS["learning_rate"] and record["recipe"]["max_steps"] == 12
    assert record["data"]["train_examples"] == 8 and record["data"]["dev_examples"] == 48
    assert set(record["dev_metrics"]) >= {"accuracy", "f1", "main"}
    assert record["flops"]["reduction"] == pytest.approx(1.0)
    assert not list(run.glob("*.bin")) and not list(run.glob("checkpoint-*"))  # no pickles, no checkpoints


def test_evaluate_dense(dense_run, sst2):
    result = evaluate(dense_run.output_dir, sst2[1], batch_size=7, progress=False)
    assert result.kind == "dense" and result.num_examples == 48
    assert result.flops_reduction == pytest.approx(1.0)
    assert result.metrics["main"] == result.metrics["accuracy"]
    assert result.metrics == pytest.approx(dense_run.metrics)
    # predictions come back in the file's order despite length-sorted batches
    texts = load_examples(sst2[1]).texts
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(dense_run.output_dir))
    one_by_one = np.concatenate([_logits(dense_run.model, tokenizer, [t]).numpy() for t in texts[:8]])
    np.testing.assert_allclose(result.logits[:8], one_by_one, rtol=1e-4, atol=1e-5)
    assert result.predicted_labels[:8] == [str(i) for i in one_by_one.argmax(1)]
    report = format_eval_report(result)
    assert "dense" in report and "1.00x" in report and "accuracy" in report


# ------------------------------------------------------------------------------------ HashEE

def test_hashee_training_reduces_loss(hashee_run, backbone, sst2):
    assert hashee_run.kind == "hashee" and hashee_run.exit_table.kind == "frequency"
    model, tokenizer, label2id = _initial_model(backbone, sst2[0], kind="frequency")
    assert model.exit_table == hashee_run.exit_table
    before = _loss(model, tokenizer, sst2[0], label2id)
    after = _loss(hashee_run.model, tokenizer, sst2[0], label2id)
    assert after < 0.5 * before, (before, after)


def test_hashee_run_dir_round_trips(hashee_run, sst2):
    from transformers import AutoTokenizer

    from hashee.modeling import HashEEForSequenceClassification

    run = hashee_run.output_dir
    assert json.loads((run / "config.json").read_text())["model_type"] == "hashee"
    loaded = HashEEForSequenceClassification.from_pretrained(str(run))
    assert loaded.exit_table == hashee_run.exit_table
    tokenizer = AutoTokenizer.from_pretrained(str(run))
    texts = load_examples(sst2[1]).texts[:6]
    torch.testing.assert_close(_logits(loaded, tokenizer, texts), _logits(hashee_run.model, tokenizer, texts))
    record = json.loads((run / TRAIN_META).read_text())
    assert record["exit_table"]["num_layers"] == record["exit_table"]["num_buckets"] == LAYERS
    assert record["flops"]["reduction"] > 1.0


def test_evaluate_hashee(hashee_run, sst2):
    result = evaluate(hashee_run.output_dir, sst2[1], progress=False)
    assert result.kind == "hashee"
    assert result.flops_reduction > 1.0
    assert result.flops_reduction == pytest.approx(hashee_run.flops_reduction)
    assert result.metrics == pytest.approx(hashee_run.metrics)
    assert result.flops.active_fraction[0] == 1.0 and result.flops.active_fraction[-1] < 1.0
    report = format_eval_report(result)
    assert "HashEE" in report and "frequency" in report and f"{result.flops_reduction:.2f}x" in report


def test_train_report_names_the_run_and_its_scores(hashee_run):
    report = format_train_report(hashee_run)
    assert str(hashee_run.output_dir) in report and f"{hashee_run.flops_reduction:.2f}x" in report
    assert f"accuracy {hashee_run.metrics['accuracy']:.4f}" in report


def test_evaluate_with_another_exit_table(hashee_run, sst2, minilm_tokenizer, tmp_path):
    """The consistency ablation: a model trained with one table, evaluated with another."""
    from hashee.calibration import build_exit_table
    from hashee.flops import EncoderDims, batch_flops

    incons = build_exit_table("random-incons", minilm_tokenizer, num_layers=LAYERS, num_buckets=LAYERS, seed=3)
    incons.save(tmp_path / "incons")
    run_config = (hashee_run.output_dir / "config.json").read_bytes()
    result = evaluate(hashee_run.output_dir, sst2[1], progress=False, exit_table=tmp_path / "incons")
    assert result.exit_table_meta["kind"] == "random-incons"
    # FLOPs follow the swapped table: recompute them from the table by lookup alone
    data = tokenize_examples(load_examples(sst2[1]), minilm_tokenizer, 128)
    dims = EncoderDims.from_config(hashee_run.model.dense.config)
    expected = batch_flops([incons.lookup(np.asarray(f["input_ids"])) for f in data.features], dims)
    assert result.flops.hashee_flops == pytest.approx(expected.hashee_flops)
    assert result.flops_reduction != pytest.approx(hashee_run.flops_reduction)
    assert (hashee_run.output_dir / "config.json").read_bytes() == run_config  # the run is untouched
    with pytest.raises(ExitTableError, match="--layers 3"):
        evaluate(hashee_run.output_dir, sst2[1], progress=False,
                 exit_table=build_exit_table("random", minilm_tokenizer, num_layers=6, num_buckets=6))


def test_evaluate_dense_run_rejects_an_exit_table(dense_run, sst2, minilm_tokenizer):
    from hashee.calibration import build_exit_table

    table = build_exit_table("random", minilm_tokenizer, num_layers=LAYERS, num_buckets=LAYERS)
    with pytest.raises(BackboneError, match="dense"):
        evaluate(dense_run.output_dir, sst2[1], progress=False, exit_table=table)


def test_hashee_pairs_mi_without_dev(backbone, elue_dir, tmp_path):
    pytest.importorskip("hashee.modeling", reason="hashee.modeling is not written yet")
    snli = _slice(elue_dir / "SNLI" / "dev.tsv", tmp_path / "snli.tsv", 16)
    result = train(backbone, train_file=snli, hash_kind="mi", output_dir=tmp_path / "run",
                   **{**STEPS, "max_steps": 3})
    assert result.metrics is None and result.exit_table.kind == "mi"
    assert result.flops.num_sequences == 48  # FLOPs by table lookup on the training file
    evaluated = evaluate(tmp_path / "run", snli, progress=False)
    assert set(evaluated.label_names) == {"0", "1", "2"} and 0 <= evaluated.metrics["f1"] <= 1
    # the table lookup in train() and the model's own exit layers in evaluate() agree
    assert evaluated.flops_reduction == pytest.approx(result.flops_reduction)


def test_hashee_cluster_regression(backbone, sst2, tmp_path):
    pytest.importorskip("hashee.modeling", reason="hashee.modeling is not written yet")
    texts = load_examples(sst2[0]).texts[:40]
    data = tmp_path / "scores.csv"
    data.write_text("text,score\n" + "".join(f'"{t.replace(chr(34), "")}",{(i % 9) / 2:.1f}\n'
                                             for i, t in enumerate(texts)))
    result = train(backbone, train_file=data, dev_file=data, hash_kind="cluster", output_dir=tmp_path / "run",
                   **{**STEPS, "max_steps": 3})
    assert set(result.metrics) == {"pearson", "spearman", "pearson_spearman_mean", "main"}
    evaluated = evaluate(tmp_path / "run", data, progress=False)
    assert evaluated.is_regression and evaluated.predictions.dtype == np.float64
    from hashee.modeling import HashEEForSequenceClassification

    loaded = HashEEForSequenceClassification.from_pretrained(str(tmp_path / "run"))
    assert loaded.config.num_labels == 1 and loaded.config.problem_type == "regression"
    assert loaded.exit_table.kind == "cluster"


# ------------------------------------------------------------------------------------ unlabelled data, errors

def test_evaluate_unlabelled_file(dense_run, tmp_path):
    data = tmp_path / "predict.tsv"
    data.write_text("sentence\na fine film\nworst ever\n")
    result = evaluate(dense_run.output_dir, data, progress=False)
    assert result.metrics == {} and result.num_examples == 2
    assert set(result.predicted_labels) <= {"0", "1"}
    assert "no labels" in format_eval_report(result)


@pytest.mark.parametrize("change, error, pattern", [
    ({"train_file": "missing.tsv"}, DataError, "does not exist"),
    ({"dev_file": "missing.tsv"}, DataError, "does not exist"),
    ({"num_buckets": LAYERS + 1}, HashConfigError, "num_buckets"),
    ({"num_buckets": 0}, HashConfigError, "num_buckets"),
    ({"num_layers": 6}, HashConfigError, "depth"),
    ({"hash_kind": "md5"}, HashConfigError, "unknown hash kind"),
    ({"learning_rate": 0}, TrainConfigError, "learning_rate"),
    ({"batch_size": 0}, TrainConfigError, "batch_size"),
    ({"epochs": -1.0}, TrainConfigError, "epochs"),
    ({"warmup_ratio": 1.5}, TrainConfigError, "warmup_ratio"),
    ({"max_length": 256}, TrainConfigError, "max_length 256 exceeds"),
    ({"backbone": "no-such-folder"}, BackboneError, "never downloads"),
    ({"backbone": "EMPTY"}, BackboneError, "no config.json"),
])
def test_bad_train_arguments(backbone, sst2, tmp_path, change, error, pattern):
    kwargs = {"backbone": backbone, "train_file": sst2[0], "output_dir": tmp_path / "run", **STEPS}
    kwargs.update(change)
    for key in ("train_file", "dev_file"):
        if kwargs.get(key) == "missing.tsv":
            kwargs[key] = tmp_path / "missing.tsv"
    if kwargs["backbone"] == "EMPTY":
        (tmp_path / "empty").mkdir()
        kwargs["backbone"] = tmp_path / "empty"
    elif kwargs["backbone"] == "no-such-folder":
        kwargs["backbone"] = tmp_path / "no-such-folder"
    with pytest.raises(error, match=pattern):
        train(**kwargs)
    assert not (tmp_path / "run").exists()


def test_train_data_errors(backbone, tmp_path):
    unlabelled = tmp_path / "u.tsv"
    unlabelled.write_text("sentence\na\nb\n")
    with pytest.raises(DataError, match="--label-column"):
        train(backbone, train_file=unlabelled, output_dir=tmp_path / "run", dense=True, **STEPS)
    one_class = tmp_path / "one.tsv"
    one_class.write_text("sentence\tlabel\na\t1\nb\t1\n")
    with pytest.raises(DataError, match="two classes"):
        train(backbone, train_file=one_class, output_dir=tmp_path / "run", dense=True, **STEPS)


def test_evaluate_errors(dense_run, sst2, tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        evaluate(tmp_path / "nothing", sst2[1])
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(BackboneError, match="config.json"):
        evaluate(tmp_path / "not-a-run", sst2[1])
    with pytest.raises(DataError, match="does not exist"):
        evaluate(dense_run.output_dir, tmp_path / "missing.tsv")
    foreign = tmp_path / "foreign.tsv"
    foreign.write_text("sentence\tlabel\na\tpositive\n")
    with pytest.raises(DataError, match="positive"):
        evaluate(dense_run.output_dir, foreign, progress=False)


def test_headerless_columns_carry_over_to_evaluate(backbone, sst2, tmp_path):
    rows = load_examples(sst2[0])
    data = tmp_path / "noheader.tsv"
    data.write_text("".join(f"{label}\t{text}\n" for text, label in zip(rows.texts, rows.labels)))
    with pytest.raises(DataError, match="--text-column"):
        train(backbone, train_file=data, output_dir=tmp_path / "run", dense=True, **STEPS)
    result = train(backbone, train_file=data, output_dir=tmp_path / "run", dense=True, text_column=1,
                   label_column=0, **{**STEPS, "max_steps": 2})
    assert result.metrics is None and result.flops_reduction == pytest.approx(1.0)
    evaluated = evaluate(tmp_path / "run", data, progress=False)  # the run remembers the columns
    assert evaluated.num_examples == 8 and "accuracy" in evaluated.metrics


def test_train_with_a_given_table_and_with_a_target_speedup(backbone, sst2, minilm_tokenizer, tmp_path):
    from hashee.calibration import build_exit_table

    table = build_exit_table("random", minilm_tokenizer, num_layers=LAYERS, num_buckets=2, seed=5)
    table.save(tmp_path / "table")
    run = train(backbone, train_file=sst2[0], output_dir=tmp_path / "given", exit_table=tmp_path / "table",
                **{**STEPS, "max_steps": 2})
    assert run.exit_table == table and run.model.exit_table == table
    record = json.loads((tmp_path / "given" / TRAIN_META).read_text())
    assert record["exit_table"]["hash_kind"] == "random" and record["exit_table"]["num_buckets"] == 2

    run = train(backbone, train_file=sst2[0], output_dir=tmp_path / "budget", target_speedup=1.5,
                **{**STEPS, "max_steps": 2})
    calibration = run.exit_table.metadata["calibration"]
    assert abs(calibration["achieved_speedup"] / 1.5 - 1) <= 0.05
    assert run.flops_reduction == pytest.approx(calibration["achieved_speedup"], rel=1e-6)
    with pytest.raises(HashConfigError, match="not both"):
        train(backbone, train_file=sst2[0], output_dir=tmp_path / "x", exit_table=table, target_speedup=2.0)
    with pytest.raises(HashConfigError, match="frequency"):
        train(backbone, train_file=sst2[0], output_dir=tmp_path / "x", hash_kind="mi", target_speedup=2.0)


# ------------------------------------------------------------------------------- distillation

def _kd_reference(student, teacher, labels, alpha, temperature):
    """The distillation loss in numpy: (1 - a) CE + a T^2 KL(p_teacher || p_student), batch mean."""
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ce = -log_softmax(student)[np.arange(len(labels)), labels].mean()
    log_p_t, log_p_s = log_softmax(teacher / temperature), log_softmax(student / temperature)
    kl = (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1).mean()
    return (1 - alpha) * ce + alpha * temperature ** 2 * kl


def test_distillation_loss_matches_numpy():
    from hashee.distill import distillation_loss

    rng = np.random.default_rng(3)
    student, teacher = rng.normal(size=(6, 3)) * 2, rng.normal(size=(6, 3)) * 2
    labels = rng.integers(0, 3, 6)
    for alpha, temperature in ((0.0, 1.0), (0.5, 2.0), (1.0, 4.0)):
        got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), alpha,
                                temperature, regression=False)
        assert float(got) == pytest.approx(_kd_reference(student, teacher, labels, alpha, temperature), rel=1e-9)
    values = rng.normal(size=6)
    got = distillation_loss(torch.tensor(student[:, :1]), torch.tensor(teacher[:, :1]), torch.tensor(values), 0.25,
                            2.0, regression=True)
    want = 0.75 * np.mean((student[:, 0] - values) ** 2) + 0.25 * np.mean((student[:, 0] - teacher[:, 0]) ** 2)
    assert float(got) == pytest.approx(want, rel=1e-9)


def test_train_with_a_teacher_follows_the_teacher(backbone, sst2, dense_run, tmp_path):
    """alpha = 1: the student learns the teacher's answers, here a teacher that contradicts every label."""
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(str(dense_run.output_dir)).eval()
    with torch.no_grad():  # the contrarian: the dense run with its classifier negated
        teacher.classifier.weight.neg_()
        teacher.classifier.bias.neg_()
    teacher.save_pretrained(tmp_path / "contrarian")
    examples = load_examples(sst2[0])
    texts, labels = examples.inputs(), examples.label_ids()
    _, tokenizer, _ = _initial_model(backbone, sst2[0])
    teacher_labels = _logits(teacher, tokenizer, texts).argmax(-1).numpy()
    assert (teacher_labels != labels).mean() >= 0.75

    run = train(backbone, train_file=sst2[0], output_dir=tmp_path / "kd", hash_kind="frequency",
                teacher=tmp_path / "contrarian", distill_alpha=1.0, distill_temperature=2.0, **STEPS)
    student = _logits(run.model, tokenizer, texts).argmax(-1).numpy()
    assert (student == teacher_labels).mean() >= 0.75  # with the labels alone it would side with them
    record = json.loads((tmp_path / "kd" / TRAIN_META).read_text())
    assert record["recipe"]["distillation"] == {"teacher": str(tmp_path / "contrarian"), "alpha": 1.0,
                                                "temperature": 2.0, "hidden": 0.0}


def test_bad_teachers_and_distillation_options(backbone, sst2, dense_run, tmp_path):
    import shutil

    kwargs = {"train_file": sst2[0], "output_dir": tmp_path / "run", **STEPS}
    with pytest.raises(TrainConfigError, match="distill_alpha"):
        train(backbone, teacher=dense_run.output_dir, distill_alpha=1.5, **kwargs)
    with pytest.raises(TrainConfigError, match="distill_temperature"):
        train(backbone, teacher=dense_run.output_dir, distill_temperature=0, **kwargs)
    with pytest.raises(BackboneError, match="not a run directory"):
        train(backbone, teacher=tmp_path / "nowhere", **kwargs)
    for change, pattern in (({"label2id": {"neg": 0, "pos": 1}, "id2label": {"0": "neg", "1": "pos"}}, "labels"),
                            ({"vocab_size": 100}, "vocabulary")):
        other = tmp_path / f"teacher-{pattern}"
        shutil.copytree(dense_run.output_dir, other)
        config = json.loads((other / "config.json").read_text())
        config.update(change)
        (other / "config.json").write_text(json.dumps(config))
        with pytest.raises(BackboneError, match=pattern):
            train(backbone, teacher=other, **kwargs)
    assert not (tmp_path / "run").exists()
