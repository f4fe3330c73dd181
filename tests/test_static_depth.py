"""Static-depth models: the first K layers of a backbone, trained and measured against the full depth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashee.errors import BackboneError, HashConfigError
from hashee.exit_table import ExitTable
from hashee.flops import EncoderDims, batch_flops
from tiny import FAMILIES, tiny_dense

torch = pytest.importorskip("torch")


def _batch(vocab=120, seed=3):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_truncated_backbone_equals_hugging_face_built_with_k_layers(family, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from hashee.modeling import HashEEForSequenceClassification
    from hashee.modeling.backbones import family_for

    tiny_dense(family, num_layers=4, initializer_range=0.5).save_pretrained(tmp_path)
    reference = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, num_hidden_layers=2, attn_implementation="eager").eval()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    family_for(model.config).truncate(model, 2)
    assert family_for(model.config).num_layers(model.config) == 2
    ids, mask = _batch()
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
        full = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()(
            input_ids=ids, attention_mask=mask).logits
    assert (want - full).abs().max() > 1e-3  # two layers fewer really changes the answer
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    table = ExitTable(layers=np.full(120, 2, dtype=np.int64), num_layers=2, kind="random")
    hashee = HashEEForSequenceClassification.from_dense(model, table).eval()
    with torch.no_grad():
        np.testing.assert_allclose(hashee(input_ids=ids, attention_mask=mask).logits.numpy(), want.numpy(), atol=1e-5)


def test_truncation_refuses_what_it_cannot_honour():
    from hashee.modeling.backbones import family_for

    model = tiny_dense("bert", num_layers=3)
    for bad in (0, 4, 2.0, True):
        with pytest.raises(BackboneError, match="--layers in 1..3"):
            family_for(model.config).truncate(model, bad)
    albert = tiny_dense("albert", num_layers=4, num_hidden_groups=2)
    with pytest.raises(BackboneError, match="num_hidden_groups=2"):
        family_for(albert.config).truncate(albert, 2)
    family_for(albert.config).truncate(albert, 4)  # keeping every layer is always fine


def test_flops_of_a_truncated_model_are_against_the_full_depth():
    exits = np.array([[2, 2, 2, 0], [2, 2, 0, 0]])
    dims = EncoderDims(2, 32, 64)
    own = batch_flops(exits, dims)
    against = batch_flops(exits, dims.against(6))
    assert own.speedup == pytest.approx(1.0)
    assert against.hashee_flops == own.hashee_flops
    head = 2 * 2 * (32 * 32 + 32 * 2)
    assert (against.dense_flops - head) == pytest.approx(3 * (own.dense_flops - head))


def test_train_layers_k_trains_the_first_k_layers(tmp_path, minilm_tokenizer, elue_dir):
    from transformers import AutoConfig, BertConfig, BertModel

    from hashee.evaluation import evaluate
    from hashee.training import TRAIN_META, train

    torch.manual_seed(0)
    backbone = tmp_path / "backbone"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(backbone)
    minilm_tokenizer.save_pretrained(backbone)
    rows = (elue_dir / "SST-2" / "train.tsv").read_text().splitlines()[:41]
    data = tmp_path / "train.tsv"
    data.write_text("\n".join(rows) + "\n")
    steps = dict(max_steps=2, batch_size=8, progress=False)
    static = train(backbone, train_file=data, dev_file=data, dense=True, num_layers=2,
                   output_dir=tmp_path / "static", **steps)
    assert AutoConfig.from_pretrained(tmp_path / "static").num_hidden_layers == 2
    # two of three layers: FLOPs fall by about 3/2 (the head is paid by both)
    assert 1.4 < static.flops_reduction < 1.5
    record = json.loads((tmp_path / "static" / TRAIN_META).read_text())
    assert record["depth"] == {"layers": 2, "backbone_layers": 3}
    evaluated = evaluate(tmp_path / "static", data, progress=False)
    assert evaluated.flops_reduction == pytest.approx(static.flops_reduction)

    hashee = train(backbone, train_file=data, dev_file=data, num_layers=2, output_dir=tmp_path / "hashee", **steps)
    assert hashee.exit_table.num_layers == 2 and hashee.model.num_layers == 2
    assert hashee.flops_reduction > static.flops_reduction
    with pytest.raises(HashConfigError, match="1..3"):
        train(backbone, train_file=data, dense=True, num_layers=4, output_dir=tmp_path / "x", **steps)


def test_a_class_seen_once_is_reported(tmp_path, elue_dir):
    import warnings

    from hashee.training import SingleExampleClassWarning, _load_task

    rows = (elue_dir / "SST-2" / "train.tsv").read_text().splitlines()[:21]
    data = tmp_path / "train.tsv"
    data.write_text("\n".join(rows + ["a stray row\tmaybe"]) + "\n")
    with pytest.warns(SingleExampleClassWarning, match=r"\['maybe'\].*row\(s\) \[21\]"):
        _load_task(data, None, (None, None, None), None)
    clean = tmp_path / "clean.tsv"
    clean.write_text("\n".join(rows) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingleExampleClassWarning)
        _load_task(clean, None, (None, None, None), None)


def test_train_refuses_layers_that_differ_from_a_given_exit_table(tiny_bert_backbone, tmp_path):
    import subprocess
    import sys

    from hashee.samples import SST2_DEV

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "hashee.cli", *args], capture_output=True, text=True, timeout=300)

    made = cli("hash", "--tokenizer", str(tiny_bert_backbone), "--data", str(SST2_DEV), "--kind", "frequency",
               "--layers", "3", "--buckets", "3", "-o", str(tmp_path / "table"))
    assert made.returncode == 0, made.stderr
    base = ["train", "--backbone", str(tiny_bert_backbone), "--train", str(SST2_DEV), "--exit-table",
            str(tmp_path / "table"), "--max-steps", "1", "--quiet"]
    for flag, value, has in (("--layers", "2", "3 layers"), ("--buckets", "2", "3 buckets")):
        out = cli(*base, flag, value, "-o", str(tmp_path / "run"))
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert f"{flag} {value} differs from the exit table's {has}" in lines[0] and f"drop {flag}" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written
