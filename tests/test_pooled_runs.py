"""Runs that start from, or measure importance on, a mean-pooled dense run (saved as a HashEE model).

``hashee train --dense --pooling mean`` saves a HashEE model with every token at the last layer; the
frontier's ``--init dense`` and ``--hash importance`` then read that run.  Each combination must work on
classification, sentence pairs and regression, and keep the mean pooling the run was trained with.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashee.errors import HashConfigError

torch = pytest.importorskip("torch")
STEPS = dict(max_steps=2, batch_size=8, learning_rate=1e-3, warmup_ratio=0.0, progress=False)
TASKS = ("classification", "pairs", "regression")


@pytest.fixture(scope="module")
def task_files(tmp_path_factory, elue_dir):
    folder = tmp_path_factory.mktemp("tasks")
    sst2 = (elue_dir / "SST-2" / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
    snli = (elue_dir / "SNLI" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()
    files = {"classification": folder / "sst2.tsv", "pairs": folder / "snli.tsv", "regression": folder / "scores.csv"}
    files["classification"].write_text("\n".join(sst2[:33]) + "\n")
    files["pairs"].write_text("\n".join(snli[:31]) + "\n")
    texts = [row.split("\t")[0].replace('"', "") for row in sst2[1:33]]
    files["regression"].write_text("text,score\n" + "".join(f'"{t}",{(i % 9) / 2:.1f}\n' for i, t in enumerate(texts)))
    return files


@pytest.fixture(scope="module")
def mean_dense_runs(task_files, tiny_bert_backbone, tmp_path_factory):
    """One mean-pooled dense run per task (what the frontier's dense point is with --pooling mean)."""
    from hashee.training import train

    folder = tmp_path_factory.mktemp("dense-mean")
    runs = {}
    for task, data in task_files.items():
        train(tiny_bert_backbone, train_file=data, dense=True, pooling="mean", output_dir=folder / task, **STEPS)
        assert json.loads((folder / task / "config.json").read_text())["model_type"] == "hashee"
        runs[task] = folder / task
    return runs


def _task(data):
    from hashee.training import _load_task

    return _load_task(data, None, (None, None, None), None)


@pytest.mark.parametrize("task", TASKS)
def test_a_run_starts_from_a_mean_pooled_dense_run(task, task_files, mean_dense_runs, minilm_tokenizer, tmp_path):
    from hashee.exit_table import ExitTable
    from hashee.modeling import HashEEForSequenceClassification
    from hashee.training import _load_classifier, train

    run_dir, data = mean_dense_runs[task], task_files[task]
    saved = HashEEForSequenceClassification.from_pretrained(str(run_dir)).eval()
    start = _load_classifier(run_dir, _task(data), 0, False, "mean")
    assert type(start).__name__.endswith("ForSequenceClassification") and start.config.model_type == "bert"
    want = saved.dense.state_dict()
    assert all(torch.equal(want[k], v) for k, v in start.state_dict().items()), "not the dense run's weights"
    # rewrapped with mean pooling and every token at the last layer, it is the saved run (head included)
    full = ExitTable(layers=np.full(len(minilm_tokenizer), 3, dtype=np.int64), num_layers=3, kind="dense")
    again = HashEEForSequenceClassification.from_dense(start.eval(), full, pooling="mean").eval()
    batch = minilm_tokenizer(["a gripping , funny film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(again(**batch).logits.numpy(), saved(**batch).logits.numpy(), atol=1e-6)
    hashee = train(run_dir, train_file=data, dev_file=data, pooling="mean", output_dir=tmp_path / "hashee", **STEPS)
    assert hashee.model.config.pooling == "mean" and hashee.flops_reduction > 1
    static = train(run_dir, train_file=data, dev_file=data, dense=True, num_layers=2, pooling="mean",
                   output_dir=tmp_path / "static", **STEPS)
    assert static.model.config.pooling == "mean" and static.model.num_layers == 2
    assert 1.3 < static.flops_reduction < 1.6  # two of three layers, against the full depth
    with pytest.raises(HashConfigError, match="--pooling mean"):  # its head reads the mean, never [CLS]
        train(run_dir, train_file=data, output_dir=tmp_path / "cls", **STEPS)


def _mean_query_importance(model, tokenizer, items):
    """Reference: one text at a time (no padding), attention received averaged over every query, in numpy."""
    vocab = len(tokenizer)
    sums, seen = np.zeros(vocab), np.zeros(vocab)
    with torch.no_grad():
        for first, second in items:
            batch = tokenizer(first, second, return_tensors="pt", truncation=True, max_length=128)
            attentions = model(**batch, output_attentions=True).attentions
            received = np.mean([a[0].numpy() for a in attentions], axis=(0, 1, 2))  # layers, heads, queries
            for token, value in zip(batch["input_ids"][0].numpy(), received):
                sums[token] += value
                seen[token] += 1
    return np.divide(sums, seen, out=np.zeros_like(sums), where=seen > 0), seen


@pytest.mark.parametrize("task", TASKS)
def test_importance_is_measured_on_a_mean_pooled_dense_run(task, task_files, mean_dense_runs, tiny_bert_backbone,
                                                           minilm_tokenizer, tmp_path):
    from hashee.calibration.importance import (cls_attention_importance, importance_pooling, importance_ranking,
                                               load_importance_model)
    from hashee.data import load_examples
    from hashee.training import train

    run_dir, data = mean_dense_runs[task], task_files[task]
    assert importance_pooling(run_dir) == "mean"
    scorer = load_importance_model(run_dir, len(minilm_tokenizer))
    inputs = load_examples(data).inputs()
    importance, counts = cls_attention_importance(scorer, minilm_tokenizer, inputs, batch_size=5, pooling="mean")
    want, seen = _mean_query_importance(scorer, minilm_tokenizer, [(x, None) if isinstance(x, str) else x
                                                                   for x in inputs])
    np.testing.assert_array_equal(counts, seen)
    np.testing.assert_allclose(importance, want, atol=1e-6)
    from_cls, _ = cls_attention_importance(scorer, minilm_tokenizer, inputs)
    # the mean-pooled head reads every query, not [CLS]: another ranking
    assert not np.array_equal(importance_ranking(importance, counts), importance_ranking(from_cls, counts))

    run = train(tiny_bert_backbone, train_file=data, dev_file=data, pooling="mean", hash_kind="importance",
                importance_model=run_dir, target_speedup=1.3, output_dir=tmp_path / "run", **STEPS)
    table = run.exit_table
    assert table.kind == "importance" and run.model.config.pooling == "mean"
    assert abs(table.metadata["calibration"]["achieved_speedup"] / 1.3 - 1) <= 0.05
    record = json.loads((tmp_path / "run" / "hashee_train.json").read_text())
    assert record["exit_table"]["importance"]["pooling"] == "mean"
    real = seen > 0
    real[np.asarray(minilm_tokenizer.all_special_ids)] = False
    early, late = importance[real & (table.layers == 1)], importance[real & (table.layers == 3)]
    assert early.size and late.size and late.mean() > early.mean()  # low-first: the important ones stay


def test_frontier_with_mean_pooling_init_dense_and_the_importance_hash(task_files, tiny_bert_backbone, tmp_path):
    from hashee.bench import frontier

    data = task_files["classification"]
    job = frontier.FrontierJob(data, data, tmp_path / "out", backbone=tiny_bert_backbone, progress=False)
    recipe = {"pooling": "mean", "init": "dense", "hash_kind": "importance", "max_steps": 2, "batch_size": 8}
    points = frontier.plan_points(3, [2], [1.3], recipe, seeds=1)
    result = frontier.run_frontier(job, points, seeds=1)
    assert len(result.trained) == 3
    report = {p["kind"]: p for p in result.report["points"]}
    assert set(report) == {"dense", "static", "hashee"}
    hashee = json.loads((job.run_dir(points[-1], 42) / "hashee_train.json").read_text())
    assert hashee["recipe"]["pooling"] == "mean" and hashee["exit_table"]["hash_kind"] == "importance"
    assert hashee["backbone"] == str(job.run_dir(points[0], 42))  # started from the dense run of its seed


@pytest.mark.parametrize("task", TASKS)
def test_exit_shares_and_the_lr_scheduler_run_on_every_task(task, task_files, tiny_bert_backbone, tmp_path):
    from hashee.training import train

    data = task_files[task]
    run = train(tiny_bert_backbone, train_file=data, dev_file=data, target_speedup=1.3, exit_shares="0,2,1",
                min_exit_layer=2, lr_scheduler="cosine", output_dir=tmp_path / "run", **STEPS)
    calibration = run.exit_table.metadata["calibration"]
    assert calibration["scheme"] == "shares" and calibration["shares"] == pytest.approx([0, 2 / 3, 1 / 3])
    assert abs(calibration["achieved_speedup"] / 1.3 - 1) <= 0.05
    assert run.exit_table.layers.min() == 2 and run.metrics is not None
    record = json.loads((tmp_path / "run" / "hashee_train.json").read_text())
    assert record["recipe"]["scheduler"] == "cosine" and record["task"] == ("regression" if task == "regression"
                                                                            else "classification")


def test_a_run_starts_only_from_a_dense_run_of_the_same_task(task_files, mean_dense_runs, tmp_path):
    from hashee.errors import BackboneError
    from hashee.training import train

    for start, data, message in (("classification", "pairs", "trained for labels"),
                                 ("regression", "classification", "trained for regression"),
                                 ("classification", "regression", "has regression scores")):
        with pytest.raises(BackboneError, match=message):
            train(mean_dense_runs[start], train_file=task_files[data], pooling="mean", output_dir=tmp_path / data,
                  **STEPS)
