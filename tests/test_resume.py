"""A killed training run resumes from its last epoch checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashee import training
from hashee.errors import TrainConfigError

torch = pytest.importorskip("torch")
RECIPE = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0, "seed": 7, "progress": False}


class Killed(Exception):
    """Stands for the process being killed right after the first epoch's checkpoint was written."""


@pytest.fixture(scope="module")
def backbone(tiny_bert_backbone):
    return tiny_bert_backbone


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    words = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull"]
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(48):
        picked = rng.choice(words, size=4)
        rows.append(f"{' '.join(picked)}\t{int(sum(w in ('good', 'fine', 'great', 'nice') for w in picked) >= 2)}")
    for name, part in (("train.tsv", rows[:40]), ("dev.tsv", rows[40:])):
        (folder / name).write_text("sentence\tlabel\n" + "\n".join(part) + "\n")
    return folder


def _watch(monkeypatch, kill: bool = False) -> list[int]:
    """Count the optimiser steps of the next run (and, with ``kill``, stop it after epoch 1's checkpoint)."""
    from transformers import TrainerCallback

    steps: list[int] = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

        def on_save(self, args, state, control, **kwargs):
            if kill and state.epoch is not None and state.epoch < 1.5:
                raise Killed()

    make = training._make_trainer

    def make_watched(*args, **kwargs):
        trainer = make(*args, **kwargs)
        trainer.add_callback(Watch())
        return trainer

    monkeypatch.setattr(training, "_make_trainer", make_watched)
    return steps


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("hashee, adapt", [(False, 0), (True, 0), (True, 2)], ids=["dense", "hashee", "adapted"])
def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(hashee, adapt, backbone, data, tmp_path, monkeypatch):
    options = dict(RECIPE, train_file=data / "train.tsv", dev_file=data / "dev.tsv", dense=not hashee,
                   adapt_steps=adapt)
    whole = training.train(backbone, output_dir=tmp_path / "whole", **options)
    assert not list((tmp_path / "whole").glob("checkpoint-*"))  # removed once the run is saved
    assert not (tmp_path / "whole" / training.RESUME_META).exists()

    with monkeypatch.context() as patch:
        _watch(patch, kill=True)
        with pytest.raises(Killed):
            training.train(backbone, output_dir=tmp_path / "killed", **options)
    assert [p.name for p in (tmp_path / "killed").glob("checkpoint-*")] == ["checkpoint-5"]
    assert not (tmp_path / "killed" / "hashee_train.json").exists()

    with pytest.raises(TrainConfigError, match="unfinished run .*learning_rate"):
        training.train(backbone, output_dir=tmp_path / "killed", **dict(options, learning_rate=5e-4))
    with monkeypatch.context() as patch:
        steps = _watch(patch)
        resumed = training.train(backbone, output_dir=tmp_path / "killed", **options)
    assert steps == [6, 7, 8, 9, 10]  # only the second epoch was trained again
    assert resumed.global_step == whole.global_step == 10
    record = json.loads((tmp_path / "killed" / "hashee_train.json").read_text())
    assert record["train"]["global_step"] == 10
    whole_record = json.loads((tmp_path / "whole" / "hashee_train.json").read_text())
    if adapt:  # the resumed record still carries the adaptation losses of the first call
        assert record["recipe"]["adaptation"]["last_loss"] == whole_record["recipe"]["adaptation"]["last_loss"]
    first, second = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_allclose(second[name], first[name], atol=1e-6, err_msg=name)
    assert resumed.metrics == pytest.approx(whole.metrics, abs=1e-6)
    # training moved the weights (the comparison above is not between two untouched copies)
    start = training.train(backbone, output_dir=tmp_path / "short", **dict(options, max_steps=1))
    assert start.global_step == 1
    moved = _weights(tmp_path / "short")
    assert any(not np.allclose(moved[n], first[n], atol=1e-4) for n in first)
