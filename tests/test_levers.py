"""The accuracy levers of issue 12: each one changes what it claims to (none is silently a no-op)."""

from __future__ import annotations

import numpy as np
import pytest

from hashee.calibration import calibrate_budget
from hashee.calibration.budget import boundaries_for_alpha
from hashee.calibration.exit_tables import bucket_layers, encode_for_counting
from hashee.errors import HashConfigError
from hashee.flops import EncoderDims

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def texts(sst2_sentences):
    return [text for text, _ in sst2_sentences[:200]]


def _seen(table, tokenizer, texts):
    ids, _ = encode_for_counting(tokenizer, [(t, None) for t in texts], len(tokenizer))
    counts = np.bincount(ids, minlength=len(tokenizer))
    specials = np.asarray(tokenizer.all_special_ids)
    counts[specials] = 0
    return counts


def test_lowest_exit_layer_moves_every_bucket_up():
    assert bucket_layers(6, 6) == [1, 2, 3, 4, 5, 6]
    assert bucket_layers(6, 5, lowest=2) == [2, 3, 4, 5, 6]
    assert bucket_layers(12, 3, lowest=3) == [3, 6, 9]
    with pytest.raises(HashConfigError, match="at most 5 buckets"):
        bucket_layers(6, 6, lowest=2)


def test_calibrated_table_with_a_lowest_exit_layer(minilm_tokenizer, texts):
    dims = EncoderDims(6, 384, 1536)
    seed = calibrate_budget(minilm_tokenizer, texts, 2.0, 6, 6, dims=dims)
    lifted = calibrate_budget(minilm_tokenizer, texts, 2.0, 6, 5, dims=dims, lowest_layer=2)
    counts = _seen(lifted, minilm_tokenizer, texts)
    assert seed.layers[counts > 0].min() == 1
    assert lifted.layers[counts > 0].min() == 2  # no token leaves after layer 1
    assert abs(lifted.metadata["calibration"]["achieved_speedup"] / 2.0 - 1) <= 0.05
    assert lifted.metadata["calibration"]["lowest_layer"] == 2


def test_mass_scheme_splits_token_occurrences_not_types(minilm_tokenizer, texts):
    dims = EncoderDims(6, 384, 1536)
    types = calibrate_budget(minilm_tokenizer, texts, 2.0, 6, 3, dims=dims)
    mass = calibrate_budget(minilm_tokenizer, texts, 2.0, 6, 3, dims=dims, scheme="mass")
    assert not np.array_equal(types.layers, mass.layers)
    counts = _seen(mass, minilm_tokenizer, texts)
    layers = bucket_layers(6, 3)
    # the first bucket holds (about) the first boundary's share of occurrences, not of types
    boundary = boundaries_for_alpha(mass.metadata["calibration"]["alpha"], 3)[0]
    first = counts[mass.layers == layers[0]].sum() / counts.sum()
    biggest = counts.max() / counts.sum()  # a bucket edge falls between two types
    assert abs(first - boundary) <= biggest + 1e-9
    share_of_types = (mass.layers[counts > 0] == layers[0]).mean()
    assert abs(share_of_types - boundary) > 0.05  # the type share is far from it: it really is by mass
    for table in (types, mass):
        assert abs(table.metadata["calibration"]["achieved_speedup"] / 2.0 - 1) <= 0.05
    with pytest.raises(HashConfigError, match="bucket scheme"):
        calibrate_budget(minilm_tokenizer, texts, 2.0, 6, 3, dims=dims, scheme="tokens")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, minilm_tokenizer):
    from transformers import AutoModelForSequenceClassification, BertConfig

    folder = tmp_path_factory.mktemp("tiny-cls")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=0.5)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


def test_importance_is_the_attention_received_from_cls(tiny_classifier, minilm_tokenizer, texts):
    from hashee.calibration.importance import cls_attention_importance, load_importance_model

    model = load_importance_model(tiny_classifier, len(minilm_tokenizer))
    sample = texts[:12]
    importance, counts = cls_attention_importance(model, minilm_tokenizer, sample, batch_size=5)
    # reference: one sentence at a time (no padding), numpy accumulation
    sums = np.zeros(len(minilm_tokenizer))
    seen = np.zeros(len(minilm_tokenizer))
    with torch.no_grad():
        for text in sample:
            batch = minilm_tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
            attentions = model(**batch, output_attentions=True).attentions
            received = np.mean([a[0, :, 0, :].numpy() for a in attentions], axis=(0, 1))
            for token, value in zip(batch["input_ids"][0].numpy(), received):
                sums[token] += value
                seen[token] += 1
    np.testing.assert_array_equal(counts, seen)
    want = np.divide(sums, seen, out=np.zeros_like(sums), where=seen > 0)
    np.testing.assert_allclose(importance, want, atol=1e-6)
    assert np.ptp(importance[seen > 0]) > 1e-3  # the ranking has something to rank


def test_train_with_the_importance_hash_sends_important_tokens_late(tiny_classifier, sst2_sentences, tmp_path,
                                                                    minilm_tokenizer):
    from hashee.calibration.importance import cls_attention_importance, load_importance_model
    from hashee.training import train

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2_sentences[:60]))
    runs = {}
    for order in ("low-first", "high-first"):
        runs[order] = train(tiny_classifier, train_file=data, hash_kind="importance", importance_model=tiny_classifier,
                            importance_order=order, target_speedup=1.5, max_steps=1, batch_size=8, progress=False,
                            output_dir=tmp_path / order)
    model = load_importance_model(tiny_classifier, len(minilm_tokenizer))
    importance, counts = cls_attention_importance(model, minilm_tokenizer, [t for t, _ in sst2_sentences[:60]])
    specials = np.asarray(minilm_tokenizer.all_special_ids)
    counts[specials] = 0
    for order, sign in (("low-first", 1), ("high-first", -1)):
        table = runs[order].exit_table
        assert table.kind == "importance"
        early = importance[(counts > 0) & (table.layers == 1)].mean()
        late = importance[(counts > 0) & (table.layers == 3)].mean()
        assert sign * (late - early) > 0
        assert abs(runs[order].exit_table.metadata["calibration"]["achieved_speedup"] / 1.5 - 1) <= 0.05
    with pytest.raises(HashConfigError, match="importance-model"):
        train(tiny_classifier, train_file=data, hash_kind="importance", target_speedup=1.5, output_dir=tmp_path / "x")
    with pytest.raises(HashConfigError, match="target speed-up"):
        train(tiny_classifier, train_file=data, bucket_scheme="mass", output_dir=tmp_path / "x")


def test_train_min_exit_layer_reaches_the_table(tiny_classifier, sst2_sentences, tmp_path):
    from hashee.training import train

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2_sentences[:60]))
    run = train(tiny_classifier, train_file=data, min_exit_layer=2, max_steps=1, batch_size=8, progress=False,
                output_dir=tmp_path / "run")
    assert run.exit_table.layers.min() == 2 and run.exit_table.metadata["bucket_layers"] == [2, 3]
    assert run.flops_reduction > 1.0


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_mean_pooling_reads_the_mean_of_exit_states(family):
    from hashee.exit_table import ExitTable
    from hashee.modeling import HashEEForSequenceClassification
    from tiny import tiny_dense

    dense = tiny_dense(family, num_layers=3, initializer_range=0.5)
    ids = torch.randint(5, 120, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    full = ExitTable(layers=np.full(120, 3, dtype=np.int64), num_layers=3, kind="random")
    model = HashEEForSequenceClassification.from_dense(dense, full, pooling="mean").eval()
    cls = HashEEForSequenceClassification.from_dense(dense, full).eval()
    with torch.no_grad():
        base = getattr(dense, family)
        last = base(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask[:, :, None].float()
        pooled = (last * weights).sum(1) / weights.sum(1)
        want = model.family.head(dense, pooled[:, None])
        got = model(input_ids=ids, attention_mask=mask).logits
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
        assert (got - cls(input_ids=ids, attention_mask=mask).logits).abs().max() > 1e-3
        # a sentence alone equals the same sentence in the padded batch
        alone = model(input_ids=ids[1:2, :4], attention_mask=mask[1:2, :4]).logits
        np.testing.assert_allclose(alone.numpy(), got[1:2].numpy(), atol=1e-5)
        # with early exits, the mean is over each token's state at its exit layer
        exits = torch.full_like(ids, 3)
        exits[:, 2:] = 1
        early = model(input_ids=ids, attention_mask=mask, exit_layers=exits).logits
        assert (early - got).abs().max() > 1e-4


def test_train_and_export_a_mean_pooled_run(tiny_classifier, sst2_sentences, tmp_path):
    import json

    from hashee.exporter import export
    from hashee.training import train

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2_sentences[:40]))
    run = train(tiny_classifier, train_file=data, dev_file=data, pooling="mean", max_steps=1, batch_size=8,
                progress=False, output_dir=tmp_path / "hashee")
    assert run.model.config.pooling == "mean"
    dense = train(tiny_classifier, train_file=data, dev_file=data, pooling="mean", dense=True, max_steps=1,
                  batch_size=8, progress=False, output_dir=tmp_path / "dense")
    assert dense.flops_reduction == pytest.approx(1.0) and dense.model.config.pooling == "mean"
    assert json.loads((tmp_path / "dense" / "hashee_train.json").read_text())["kind"] == "dense"
    for target in ("onnxruntime", "tensorrt"):  # export validates the graph against PyTorch (1e-4)
        result = export(tmp_path / "hashee", tmp_path / f"bundle-{target}", target=target, progress=False)
        assert result.meta is not None


def test_adaptation_brings_the_routed_model_closer_to_dense(tiny_classifier, minilm_tokenizer, sst2_sentences,
                                                            tmp_path):
    import copy

    from transformers import AutoModelForSequenceClassification

    from hashee.adapt import adapt, final_states, state_loss
    from hashee.calibration import build_exit_table
    from hashee.data import Examples, tokenize_examples
    from hashee.modeling import HashEEForSequenceClassification

    texts = [t for t, _ in sst2_sentences[:48]]
    dense = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    teacher = copy.deepcopy(dense).eval()
    table = build_exit_table("frequency", minilm_tokenizer, texts=texts, num_layers=3, num_buckets=3)
    student = HashEEForSequenceClassification.from_dense(dense, table)
    held_out = minilm_tokenizer([t for t, _ in sst2_sentences[100:116]], padding=True, return_tensors="pt")

    def gap():
        student.eval()
        with torch.no_grad():
            return float(state_loss(final_states(student, held_out), final_states(teacher, held_out),
                                    held_out["attention_mask"]))

    before = gap()
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = tokenize_examples(Examples(texts=texts), minilm_tokenizer, 64, None)
    losses = adapt(student, teacher, data, minilm_tokenizer, steps=20, learning_rate=1e-3, batch_size=8, seed=0,
                   output_dir=tmp_path / "adapt")
    after = gap()
    assert after < 0.7 * before, (before, after)
    assert losses[-1] < losses[0]
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())  # the target never moves


def test_train_with_adaptation_records_it_and_refuses_a_full_dense_run(tiny_classifier, sst2_sentences, tmp_path):
    import json

    from hashee.errors import TrainConfigError
    from hashee.training import train

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2_sentences[:40]))
    steps = dict(max_steps=1, batch_size=8, progress=False)
    train(tiny_classifier, train_file=data, adapt_steps=4, adapt_learning_rate=1e-3, output_dir=tmp_path / "h", **steps)
    train(tiny_classifier, train_file=data, dense=True, num_layers=2, adapt_steps=4, output_dir=tmp_path / "s", **steps)
    for run in ("h", "s"):
        adaptation = json.loads((tmp_path / run / "hashee_train.json").read_text())["recipe"]["adaptation"]
        assert adaptation["steps"] == 4 and adaptation["last_loss"] > 0
    with pytest.raises(TrainConfigError, match="nothing to adapt"):
        train(tiny_classifier, train_file=data, dense=True, adapt_steps=4, output_dir=tmp_path / "d", **steps)


def test_hidden_state_distillation_adds_the_state_term(tiny_classifier, minilm_tokenizer, sst2_sentences, tmp_path):
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    from hashee.calibration import build_exit_table
    from hashee.distill import DistillationTrainer
    from hashee.errors import TrainConfigError
    from hashee.modeling import HashEEForSequenceClassification
    from hashee.training import train

    texts = [t for t, _ in sst2_sentences[:8]]
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    torch.manual_seed(1)
    other = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    table = build_exit_table("frequency", minilm_tokenizer, texts=texts, num_layers=3, num_buckets=3)
    student = HashEEForSequenceClassification.from_dense(other, table).eval()
    batch = dict(minilm_tokenizer(texts, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([y for _, y in sst2_sentences[:8]])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    losses = {}
    for hidden in (0.0, 2.0):
        trainer = DistillationTrainer(model=student, args=args, teacher=teacher, alpha=0.5, temperature=2.0,
                                      regression=False, hidden=hidden)
        with torch.no_grad():
            losses[hidden] = float(trainer.compute_loss(student, dict(batch)))
    with torch.no_grad():  # reference: numpy MSE per hidden unit over the real tokens
        mine = student(**{k: v for k, v in batch.items() if k != "labels"}, output_token_states=True).token_states
        theirs = teacher(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True).hidden_states[-1]
    mask = batch["attention_mask"].numpy().astype(bool)
    want = ((mine.numpy() - theirs.numpy())[mask] ** 2).mean()
    assert want > 1e-4
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * want, rel=1e-4)
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2_sentences[:20]))
    with pytest.raises(TrainConfigError, match="--teacher"):
        train(tiny_classifier, train_file=data, distill_hidden=1.0, output_dir=tmp_path / "x")


def test_exit_curriculum_moves_from_the_last_layer_to_the_table(minilm_tokenizer, sst2_sentences):
    from hashee.calibration import build_exit_table
    from hashee.curriculum import curriculum_exits
    from hashee.modeling import HashEEForSequenceClassification
    from tiny import tiny_dense

    dense = tiny_dense("bert", vocab_size=30522, num_layers=3)
    texts = [t for t, _ in sst2_sentences[:40]]
    table = build_exit_table("frequency", minilm_tokenizer, texts=texts, num_layers=3, num_buckets=3)
    model = HashEEForSequenceClassification.from_dense(dense, table)
    batch = minilm_tokenizer(texts, padding=True, return_tensors="pt")
    routed = model.exit_layers_for(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    early = real & (routed < 3)
    assert early.sum() > 50
    start = curriculum_exits(model, batch, 0.0, seed=1)
    assert (start[real] == 3).all()  # every token at the last layer
    np.testing.assert_array_equal(curriculum_exits(model, batch, 1.0, seed=1)[real], routed[real])
    half = curriculum_exits(model, batch, 0.5, seed=1)
    share = (half[early] == routed[early]).float().mean()
    assert 0.4 < share < 0.6
    assert not torch.equal(half, curriculum_exits(model, batch, 0.5, seed=2))  # a fresh draw every step


def test_train_with_a_curriculum_trains_with_it(tiny_classifier, sst2_sentences, tmp_path):
    import json

    from hashee.training import _make_trainer, train

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2_sentences[:40]))
    run = train(tiny_classifier, train_file=data, curriculum=0.5, max_steps=2, batch_size=8, progress=False,
                output_dir=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "hashee_train.json").read_text())["recipe"]["curriculum"] == 0.5
    assert run.global_step == 2
    with pytest.raises(HashConfigError, match="dense run has none"):
        train(tiny_classifier, train_file=data, curriculum=0.5, dense=True, output_dir=tmp_path / "x")
    # the trainer train() builds routes the first step through the last layer only
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hashee.curriculum import CurriculumMixin
    from hashee.data import tokenize_examples
    from hashee.training import _load_task

    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    task = _load_task(data, None, (None, None, None), None)
    dataset = tokenize_examples(task.train, tokenizer, 64, task.label_map)
    recipe = json.loads((tmp_path / "run" / "hashee_train.json").read_text())["recipe"]
    trainer = _make_trainer(run.model, tokenizer, dataset, None, task, tmp_path / "t", {**recipe, "max_steps": 4}, False)
    assert isinstance(trainer, CurriculumMixin) and trainer.curriculum_steps == 2
    batch = DataCollatorWithPadding(tokenizer)(dataset.features[:8])
    model = run.model.eval()
    with torch.no_grad():
        first = float(trainer.compute_loss(model, dict(batch)))
        last_layer = float(model(**batch, exit_layers=torch.full_like(batch["input_ids"], 3)).loss)
        routed = float(model(**batch).loss)
    assert first == pytest.approx(last_layer, rel=1e-6) and abs(routed - last_layer) > 1e-6


def test_a_mean_pooled_run_is_never_exported_as_a_cls_dense_baseline(tiny_classifier, sst2_sentences, tmp_path):
    from hashee.errors import ExportError
    from hashee.exporter import export
    from hashee.training import train

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2_sentences[:24]))
    train(tiny_classifier, train_file=data, pooling="mean", max_steps=1, batch_size=8, progress=False,
          output_dir=tmp_path / "run")
    with pytest.raises(ExportError, match="reads \\[CLS\\]"):
        export(tmp_path / "run", tmp_path / "dense", dense=True, progress=False)
    with pytest.raises(ExportError, match="packed layout"):
        export(tmp_path / "run", tmp_path / "prefix", layout="prefix", progress=False)
    assert not (tmp_path / "dense").exists() or not any((tmp_path / "dense").iterdir())


def _layer_mass(table, counts, num_layers):
    return np.array([counts[table.layers == layer].sum() for layer in range(1, num_layers + 1)]) / counts.sum()


@pytest.mark.parametrize("order", ["frequency", "rare-first"])
def test_exit_shares_meet_the_target_and_keep_their_order(minilm_tokenizer, texts, order):
    from hashee.calibration.exit_tables import frequency_ranking

    dims = EncoderDims(4, 384, 1536)
    ids, _ = encode_for_counting(minilm_tokenizer, [(t, None) for t in texts], len(minilm_tokenizer))
    ranking = None if order == "frequency" else \
        frequency_ranking(ids, len(minilm_tokenizer), np.asarray(minilm_tokenizer.all_special_ids))[::-1]
    counts = _seen(None, minilm_tokenizer, texts)
    biggest = counts.max() / counts.sum()  # a layer's edge falls between two types
    shares = [4, 3, 2, 1]  # the shares alone give about 1.6x here
    for target, kept in ((1.3, slice(0, 3)), (1.9, slice(1, 4))):  # slower than the shares / faster
        table = calibrate_budget(minilm_tokenizer, texts, target, 4, 4, dims=dims, shares=shares, ranking=ranking)
        calibration = table.metadata["calibration"]
        assert abs(calibration["achieved_speedup"] / target - 1) <= calibration["tolerance"]
        assert calibration["scheme"] == "shares"
        np.testing.assert_allclose(calibration["shares"], np.array(shares) / 10)
        mass = _layer_mass(table, counts, 4)
        np.testing.assert_allclose(mass, calibration["effective_shares"], atol=biggest + 1e-9)
        assert np.all(np.diff(mass[kept]) < 0), mass  # the shares' order (4 > 3 > 2 > 1) holds
        assert (calibration["mix"] < 1) == (target == 1.3)
    # the lowest exit layer: no seen token leaves at layer 1, the shares fill layers 2..4
    lifted = calibrate_budget(minilm_tokenizer, texts, 1.3, 4, 3, dims=dims, shares=[0, 2, 1, 1],
                              lowest_layer=2, ranking=ranking)
    assert lifted.layers[counts > 0].min() == 2
    assert abs(lifted.metadata["calibration"]["achieved_speedup"] / 1.3 - 1) <= 0.05
    for bad, buckets, low, message in (([1, 1, 1], 4, 1, "one number per layer"), ([1, -1, 1, 1], 4, 1,
                                       "non-negative"), ([1, 1, 1, 1], 3, 2, "below the lowest exit layer"),
                                       ([1, 1, 1, 1], 2, 1, "one bucket on each exit layer")):
        with pytest.raises(HashConfigError, match=message):
            calibrate_budget(minilm_tokenizer, texts, 1.3, 4, buckets, dims=dims, shares=bad, lowest_layer=low)


def test_exit_shares_go_from_the_command_line_to_the_table(tiny_classifier, sst2_sentences, tmp_path, capsys):
    import json

    from hashee.bench import frontier
    from hashee.cli import main
    from hashee.modeling import HashEEForSequenceClassification

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2_sentences[:60]))
    base = ["train", "--backbone", str(tiny_classifier), "--train", str(data), "--target-speedup", "1.3",
            "--max-steps", "1", "--batch-size", "8", "--quiet"]
    assert main([*base, "--exit-shares", "3,2,1", "-o", str(tmp_path / "run")]) == 0
    table = HashEEForSequenceClassification.from_pretrained(str(tmp_path / "run")).exit_table
    calibration = table.metadata["calibration"]
    assert calibration["scheme"] == "shares" and calibration["shares"] == pytest.approx([3 / 6, 2 / 6, 1 / 6])
    assert abs(calibration["achieved_speedup"] / 1.3 - 1) <= 0.05
    counts = _seen(None, tiny_classifier_tokenizer(tiny_classifier), [t for t, _ in sst2_sentences[:60]])
    np.testing.assert_allclose(_layer_mass(table, counts, 3), calibration["effective_shares"],
                               atol=counts.max() / counts.sum() + 1e-9)
    record = json.loads((tmp_path / "run" / "hashee_train.json").read_text())
    assert record["exit_table"]["exit_shares"] == pytest.approx([3 / 6, 2 / 6, 1 / 6])
    capsys.readouterr()
    for shares, message in (("3,2", "one number per layer"), ("3,x,1", "comma-separated numbers")):
        assert main([*base, "--exit-shares", shares, "-o", str(tmp_path / "bad")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    untargeted = [a for i, a in enumerate(base) if "--target-speedup" not in base[max(i - 1, 0):i + 1]]
    assert main([*untargeted, "--exit-shares", "3,2,1", "-o", str(tmp_path / "bad")]) == 1
    assert "--target-speedup" in capsys.readouterr().err
    # the frontier passes the recipe key to HashEE points only (static points share their runs)
    job = frontier.FrontierJob(data, data, tmp_path / "frontier", backbone=tiny_classifier, progress=False)
    points = frontier.plan_points(3, [2], [1.3], {"exit_shares": "3,2,1"}, seeds=1)
    kinds = {p.kind: frontier.train_kwargs(job, p, 42) for p in points}
    assert kinds["hashee"]["exit_shares"] == "3,2,1"
    assert "exit_shares" not in kinds["static"] and "exit_shares" not in kinds["dense"]
    assert "--exit-shares 3,2,1" in frontier.train_command(job, points[-1])
    assert points[-1].name == "hashee-1.3x+shares3,2,1" and points[1].name == "static-L2"


def tiny_classifier_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture
def trainers(monkeypatch):
    """The real trainers train() builds, kept for inspection (a spy around _make_trainer, nothing replaced)."""
    import hashee.training as training

    made, real = [], training._make_trainer

    def spy(model, *args, **kwargs):
        made.append({"trainer": real(model, *args, **kwargs),
                     "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}})
        return made[-1]["trainer"]

    monkeypatch.setattr(training, "_make_trainer", spy)
    return made


def _train_file(tmp_path, sst2_sentences, rows=40):
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sst2_sentences[:rows]))
    return data


def test_the_lr_scheduler_reaches_training_arguments(tiny_classifier, sst2_sentences, tmp_path, trainers, capsys):
    import json

    from transformers import get_scheduler
    from transformers.trainer_utils import SchedulerType

    from hashee.cli import LR_SCHEDULERS_HELP, main
    from hashee.training import LR_SCHEDULERS, train

    assert set(LR_SCHEDULERS) <= {t.value for t in SchedulerType} and LR_SCHEDULERS_HELP == ", ".join(LR_SCHEDULERS)
    data = _train_file(tmp_path, sst2_sentences)
    logged = {}
    for name in ("linear", "cosine"):
        run = train(tiny_classifier, train_file=data, lr_scheduler=name, max_steps=6, batch_size=4, learning_rate=1e-3,
                    warmup_ratio=0.0, progress=False, output_dir=tmp_path / name)
        assert trainers[-1]["trainer"].args.lr_scheduler_type == SchedulerType(name)
        assert json.loads((tmp_path / name / "hashee_train.json").read_text())["recipe"]["scheduler"] == name
        logged[name] = [entry["learning_rate"] for entry in run.log_history if "learning_rate" in entry]
        # reference: the Hugging Face schedule itself on a one-parameter optimiser, the rate of steps 1..6
        optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        schedule = get_scheduler(name, optimiser, num_warmup_steps=0, num_training_steps=6)
        want = []
        for _ in range(6):
            want.append(schedule.get_last_lr()[0])
            optimiser.step()
            schedule.step()
        assert logged[name] == pytest.approx(want[:len(logged[name])], rel=1e-6) and len(logged[name]) >= 5
    assert logged["linear"] != pytest.approx(logged["cosine"])
    capsys.readouterr()
    status = main(["train", "--backbone", str(tiny_classifier), "--train", str(data), "--lr-scheduler", "cosine_annealing",
                   "-o", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "unknown learning-rate scheduler 'cosine_annealing'" in err[0], err
    assert "constant_with_warmup" in err[0] and not (tmp_path / "bad").exists()


def test_the_frontier_gives_every_point_the_lr_scheduler(tmp_path):
    from hashee.bench import frontier

    job = frontier.FrontierJob(tmp_path / "t.tsv", tmp_path / "d.tsv", tmp_path / "out", progress=False)
    points = frontier.plan_points(3, [2], [1.5], {"lr_scheduler": "cosine"}, seeds=1)
    for point in points:  # like the learning rate: dense, static and HashEE points alike
        assert frontier.train_kwargs(job, point, 42)["lr_scheduler"] == "cosine"
        assert "--lr-scheduler cosine" in frontier.train_command(job, point)
        assert point.name.endswith("+sched-cosine")
    seed = frontier.plan_points(3, [2], [1.5], {}, seeds=1)
    assert [p.name for p in seed] == ["dense-L3", "static-L2", "hashee-1.5x"]  # existing run folders keep their names
    assert all(frontier.train_kwargs(job, p, 42)["lr_scheduler"] == "linear" for p in seed)


def test_a_run_recorded_before_an_option_existed_resumes_with_its_default(tmp_path):
    import json

    from hashee.errors import TrainConfigError
    from hashee.training import RESUME_META, Checkpoints, _train_defaults

    (tmp_path / "checkpoint-3").mkdir()
    old = {"learning_rate": 5e-5, "pooling": "cls"}  # written before lr_scheduler and exit_shares existed
    (tmp_path / RESUME_META).write_text(json.dumps({"settings": old, "notes": {}}))
    now = {**old, "lr_scheduler": "linear", "exit_shares": None}
    assert Checkpoints(tmp_path, now, _train_defaults()).find() == tmp_path / "checkpoint-3"
    with pytest.raises(TrainConfigError, match="lr_scheduler"):
        Checkpoints(tmp_path, {**now, "lr_scheduler": "cosine"}, _train_defaults()).find()


# ------------------------------------------------------------------ train(): no lever is dropped on the way


def test_bucket_scheme_mass_reaches_the_saved_table(tiny_classifier, sst2_sentences, tmp_path):
    import json

    from hashee.modeling import HashEEForSequenceClassification
    from hashee.training import train

    data = _train_file(tmp_path, sst2_sentences, 60)
    tables = {}
    for scheme in ("types", "mass"):
        train(tiny_classifier, train_file=data, target_speedup=1.3, bucket_scheme=scheme, max_steps=1, batch_size=8,
              progress=False, output_dir=tmp_path / scheme)
        tables[scheme] = HashEEForSequenceClassification.from_pretrained(str(tmp_path / scheme)).exit_table
        assert tables[scheme].metadata["calibration"]["scheme"] == scheme
        record = json.loads((tmp_path / scheme / "hashee_train.json").read_text())
        assert record["exit_table"]["bucket_scheme"] == scheme == record["exit_table"]["metadata"]["calibration"]["scheme"]
    assert not np.array_equal(tables["types"].layers, tables["mass"].layers)


def test_distill_hidden_reaches_the_trainer(tiny_classifier, sst2_sentences, tmp_path, trainers):
    import json

    from hashee.distill import DistillationTrainer
    from hashee.training import train

    data = _train_file(tmp_path, sst2_sentences, 24)
    steps = dict(max_steps=1, batch_size=8, progress=False)
    train(tiny_classifier, train_file=data, dense=True, output_dir=tmp_path / "teacher", **steps)
    train(tiny_classifier, train_file=data, teacher=tmp_path / "teacher", distill_alpha=0.7, distill_hidden=0.35,
          output_dir=tmp_path / "student", **steps)
    trainer = trainers[-1]["trainer"]
    assert isinstance(trainer, DistillationTrainer)
    assert (trainer.hidden, trainer.alpha) == (0.35, 0.7)
    assert json.loads((tmp_path / "student" / "hashee_train.json").read_text())["recipe"]["distillation"]["hidden"] == 0.35


def test_adapt_steps_change_the_weights_before_task_training(tiny_classifier, sst2_sentences, tmp_path, trainers):
    from hashee.training import train

    data = _train_file(tmp_path, sst2_sentences, 24)
    steps = dict(max_steps=1, batch_size=8, seed=3, progress=False)
    train(tiny_classifier, train_file=data, output_dir=tmp_path / "plain", **steps)
    train(tiny_classifier, train_file=data, adapt_steps=3, adapt_learning_rate=1e-3, output_dir=tmp_path / "adapted",
          **steps)
    plain, adapted = trainers[0]["weights"], trainers[1]["weights"]  # what task training starts from
    assert plain.keys() == adapted.keys()
    moved = [k for k in plain if not torch.equal(plain[k], adapted[k])]
    assert any("encoder.layer" in k for k in moved), moved
    from transformers import AutoModelForSequenceClassification

    backbone = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).state_dict()
    assert all(torch.equal(plain[f"dense.{k}"], v) for k, v in backbone.items())  # without it: the backbone as is


class _Called(Exception):
    pass


def test_every_lever_flag_reaches_train(monkeypatch, tmp_path):
    import inspect

    import hashee.training as training
    from hashee.cli import main

    seen = {}

    def record(backbone, **kwargs):
        seen.update(kwargs, backbone=backbone)
        raise _Called

    signature = {k: p.default for k, p in inspect.signature(training.train).parameters.items()}
    monkeypatch.setattr(training, "train", record)  # the CLI's call is what is tested: it stops there
    base = ["train", "--train", "t.tsv", "-o", str(tmp_path / "run")]
    with pytest.raises(_Called):
        main(base)
    assert set(signature) - set(seen) == {"regression"}  # every other train() option has a flag
    for name, default in signature.items():  # no flag given: train()'s own defaults
        if name not in ("train_file", "output_dir", "progress", "regression"):
            assert seen[name] == default, name
    levers = {"--pooling": ("mean", "pooling", "mean"), "--bucket-scheme": ("mass", "bucket_scheme", "mass"),
              "--min-exit-layer": ("2", "min_exit_layer", 2), "--hash": ("importance", "hash_kind", "importance"),
              "--importance-order": ("high-first", "importance_order", "high-first"),
              "--importance-model": ("dense-run", "importance_model", "dense-run"),
              "--adapt-steps": ("7", "adapt_steps", 7), "--adapt-lr": ("0.002", "adapt_learning_rate", 0.002),
              "--teacher": ("teacher-run", "teacher", "teacher-run"), "--distill-alpha": ("0.9", "distill_alpha", 0.9),
              "--distill-temperature": ("3", "distill_temperature", 3.0),
              "--distill-hidden": ("0.3", "distill_hidden", 0.3), "--curriculum": ("0.25", "curriculum", 0.25),
              "--exit-shares": ("3,2,1", "exit_shares", "3,2,1"), "--lr-scheduler": ("cosine", "lr_scheduler", "cosine"),
              "--state-target": ("exit", "state_target", "exit"),
              "--target-speedup": ("2", "target_speedup", 2.0), "--layers": ("2", "num_layers", 2),
              "--buckets": ("2", "num_buckets", 2), "--lr": ("1e-4", "learning_rate", 1e-4),
              "--warmup-ratio": ("0.2", "warmup_ratio", 0.2), "--max-steps": ("9", "max_steps", 9),
              "--dense": (None, "dense", True), "--exit-table": ("table", "exit_table", "table")}
    argv = [*base]
    for flag, (value, _, _) in levers.items():
        argv += [flag] if value is None else [flag, value]
    seen.clear()
    with pytest.raises(_Called):
        main(argv)
    for flag, (_, name, want) in levers.items():
        assert seen[name] == want and seen[name] != signature[name], flag


# ------------------------------------------------------------------ state targets: the dense state at a token's exit


def _mixed_student(tiny_classifier, minilm_tokenizer, texts):
    """A HashEE model from the tiny classifier's weights whose real tokens exit at layers 1, 2 and 3."""
    from transformers import AutoModelForSequenceClassification

    from hashee.calibration import build_exit_table
    from hashee.modeling import HashEEForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    table = build_exit_table("frequency", minilm_tokenizer, texts=texts, num_layers=3, num_buckets=3)
    student = HashEEForSequenceClassification.from_dense(
        AutoModelForSequenceClassification.from_pretrained(tiny_classifier), table).eval()
    return dense, student


def test_exit_target_is_the_dense_state_after_each_tokens_exit_layer(tiny_classifier, minilm_tokenizer,
                                                                     sst2_sentences):
    from hashee.adapt import routed_states, teacher_states

    texts = [t for t, _ in sst2_sentences[:16]]
    dense, student = _mixed_student(tiny_classifier, minilm_tokenizer, texts)
    batch = dict(minilm_tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        states, layers = routed_states(student, batch)
        aligned = teacher_states(dense, batch, layers).numpy()
        last = teacher_states(dense, batch, None).numpy()
        every = [h.numpy() for h in dense.bert(**batch, output_hidden_states=True).hidden_states]
    real = batch["attention_mask"].numpy().astype(bool)
    exits = layers.numpy()
    assert {1, 2, 3} <= set(exits[real].tolist())
    for b, s in zip(*np.nonzero(real)):  # numpy reference: the dense model's state after that token's layer
        np.testing.assert_array_equal(aligned[b, s], every[exits[b, s]][b, s])
    np.testing.assert_array_equal(last, every[-1])
    # layers 1 and 2 see every token's current state as keys and values, exactly as the dense model does:
    # a token leaving there already is the dense state after its exit layer; later, frozen keys differ
    mine = states.numpy()
    early, late = real & (exits <= 2), real & (exits == 3)
    np.testing.assert_allclose(mine[early], aligned[early], atol=1e-5)
    assert np.abs(mine[late] - aligned[late]).max() > 1e-3
    assert np.abs(mine[early] - last[early]).max() > 1e-2  # the last-layer target would pull those tokens


def test_adaptation_and_the_hidden_term_use_the_exit_target(tiny_classifier, minilm_tokenizer, sst2_sentences,
                                                            tmp_path):
    import copy

    from transformers import TrainingArguments

    from hashee.adapt import AdaptationTrainer, state_loss, teacher_states
    from hashee.distill import DistillationTrainer
    from hashee.training import _truncate

    texts = [t for t, _ in sst2_sentences[:8]]
    dense, student = _mixed_student(tiny_classifier, minilm_tokenizer, texts)
    batch = dict(minilm_tokenizer(texts, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([y for _, y in sst2_sentences[:8]])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    mask = batch["attention_mask"]
    with torch.no_grad():
        out = student(**{k: v for k, v in batch.items() if k != "labels"}, output_token_states=True)
        want = {target: float(state_loss(out.token_states, teacher_states(dense, batch, layers), mask))
                for target, layers in (("exit", out.exit_layers), ("last", None))}
    assert want["exit"] < 0.5 * want["last"]
    for target in ("exit", "last"):
        adaptation = AdaptationTrainer(model=student, args=args, teacher=dense, state_target=target)
        hidden = DistillationTrainer(model=student, args=args, teacher=dense, alpha=0.5, temperature=2.0,
                                     regression=False, hidden=2.0, state_target=target)
        plain = DistillationTrainer(model=student, args=args, teacher=dense, alpha=0.5, temperature=2.0,
                                    regression=False)
        with torch.no_grad():
            assert float(adaptation.compute_loss(student, dict(batch))) == pytest.approx(want[target], rel=1e-5)
            gap = float(hidden.compute_loss(student, dict(batch))) - float(plain.compute_loss(student, dict(batch)))
        assert gap == pytest.approx(2.0 * want[target], rel=1e-4)
    cut = copy.deepcopy(dense)  # a static-depth student: the first two layers
    _truncate(cut, 2)
    with torch.no_grad():  # against the dense state after its own depth it starts exact; the last one is far
        for target, far in (("exit", False), ("last", True)):
            loss = float(AdaptationTrainer(model=cut, args=args, teacher=dense, state_target=target)
                         .compute_loss(cut, dict(batch)))
            assert (loss > 1e-3) if far else loss < 1e-10, (target, loss)


def test_state_target_reaches_the_trainers_and_is_refused_where_it_means_nothing(tiny_classifier, sst2_sentences,
                                                                                tmp_path, trainers):
    import json

    from hashee.distill import DistillationTrainer
    from hashee.errors import TrainConfigError
    from hashee.training import train

    data = _train_file(tmp_path, sst2_sentences, 24)
    steps = dict(max_steps=1, batch_size=8, progress=False)
    train(tiny_classifier, train_file=data, dense=True, output_dir=tmp_path / "teacher", **steps)
    train(tiny_classifier, train_file=data, teacher=tmp_path / "teacher", distill_hidden=0.5, state_target="exit",
          adapt_steps=2, output_dir=tmp_path / "student", **steps)
    trainer = trainers[-1]["trainer"]
    assert isinstance(trainer, DistillationTrainer) and trainer.state_target == "exit"
    recipe = json.loads((tmp_path / "student" / "hashee_train.json").read_text())["recipe"]
    assert recipe["state_target"] == "exit" and recipe["adaptation"]["last_loss"] > 0
    with pytest.raises(TrainConfigError, match="--adapt-steps or --distill-hidden"):
        train(tiny_classifier, train_file=data, state_target="exit", output_dir=tmp_path / "x", **steps)
    with pytest.raises(TrainConfigError, match="unknown state_target"):
        train(tiny_classifier, train_file=data, adapt_steps=2, state_target="first", output_dir=tmp_path / "y", **steps)
    with pytest.raises(TrainConfigError, match="HashEE run"):  # a routed teacher has no state after every layer
        train(tiny_classifier, train_file=data, teacher=tmp_path / "student", distill_hidden=0.5,
              state_target="exit", output_dir=tmp_path / "z", **steps)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_the_frontier_gives_static_and_hashee_points_the_state_target(tmp_path):
    from hashee.bench import frontier
    from hashee.errors import TrainConfigError

    job = frontier.FrontierJob(tmp_path / "t.tsv", tmp_path / "d.tsv", tmp_path / "out", progress=False)
    recipe = {"teacher": "dense", "distill_hidden": 1.0, "state_target": "exit"}
    dense, static, hashee = frontier.plan_points(3, [2], [1.5], recipe, seeds=1)
    assert frontier.train_kwargs(job, dense, 42)["state_target"] == "last"  # the teacher has nothing to match
    for point in (static, hashee):  # whatever HashEE gets, the static baseline gets too
        assert frontier.train_kwargs(job, point, 42)["state_target"] == "exit"
        assert "--state-target exit" in frontier.train_command(job, point)
        assert point.name.endswith("_h1_st-exit")
    with pytest.raises(TrainConfigError, match="--adapt-steps or --distill-hidden"):
        frontier.plan_points(3, [2], [1.5], {"state_target": "exit"}, seeds=1)
