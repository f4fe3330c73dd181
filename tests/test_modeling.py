"""The HashEE reference model against the Hugging Face dense model and the masked oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import FAMILIES, tiny_dense

from hashee.errors import BackboneError, ExitTableError, ModelInputError
from hashee.exit_table import ExitTable
from hashee.modeling import HashEEForSequenceClassification
from hashee.modeling.oracle import masked_oracle

VOCAB, LAYERS = 120, 4
TOL = 1e-5


def random_table(seed: int = 0, layers: int = LAYERS, vocab: int = VOCAB) -> ExitTable:
    return ExitTable(np.random.default_rng(seed).integers(1, layers + 1, vocab), layers, kind="random")


def padded_batch(seed: int = 0, batch: int = 6, seq: int = 12, pairs: bool = False):
    """Random ids (>= 5, so never the pad id) with mixed lengths padded on the right."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, seq), generator=gen)
    lengths = torch.randint(2, seq + 1, (batch,), generator=gen)
    lengths[0] = seq
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask + (1 - mask) * 1  # pad id 1 (RoBERTa's), harmless for the others
    types = None
    if pairs:
        types = (torch.arange(seq)[None, :] >= (lengths[:, None] // 2)).long() * mask
    return ids, mask, types


def wrap(dense, table):
    return HashEEForSequenceClassification.from_dense(dense, table).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_all_tokens_at_last_layer_equal_dense(family):
    dense = tiny_dense(family, vocab_size=VOCAB, num_layers=LAYERS)
    model = wrap(dense, ExitTable(np.full(VOCAB, LAYERS), LAYERS))
    ids, mask, types = padded_batch(pairs=family != "distilbert" and family != "roberta")
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=types).logits
        kwargs = {} if types is None else {"token_type_ids": types}
        reference = dense(input_ids=ids, attention_mask=mask, **kwargs).logits
    assert torch.allclose(ours, reference, atol=TOL, rtol=0), (ours - reference).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["binary", "three-class-pairs", "regression"])
def test_random_table_matches_masked_oracle(family, task):
    num_labels = {"binary": 2, "three-class-pairs": 3, "regression": 1}[task]
    dense = tiny_dense(family, vocab_size=VOCAB, num_layers=LAYERS, num_labels=num_labels)
    model = wrap(dense, random_table(seed=7))
    ids, mask, types = padded_batch(seed=3, pairs=task == "three-class-pairs" and family != "roberta")
    with torch.no_grad():
        fast = model(ids, attention_mask=mask, token_type_ids=types, output_token_states=True)
        oracle = masked_oracle(model, ids, mask, types)
    assert fast.logits.shape == (ids.shape[0], num_labels)
    assert torch.allclose(fast.logits, oracle.logits, atol=TOL, rtol=0)
    real = mask.bool()
    assert torch.allclose(fast.token_states[real], oracle.token_states[real], atol=1e-4, rtol=0)
    # the table really made tokens exit early, and the oracle output differs from the dense one
    assert (fast.exit_layers[real] < LAYERS).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_sentence_alone_equals_sentence_in_padded_batch(family):
    dense = tiny_dense(family, vocab_size=VOCAB, num_layers=LAYERS)
    model = wrap(dense, random_table(seed=1))
    ids, mask, _ = padded_batch(seed=11, batch=8, seq=15)
    with torch.no_grad():
        batch_logits = model(ids, attention_mask=mask).logits
        for row in (0, 3, 7):
            length = int(mask[row].sum())
            alone = model(ids[row : row + 1, :length]).logits
            assert torch.allclose(alone[0], batch_logits[row], atol=TOL, rtol=0)


def test_exit_layer_override_all_first_layer_and_edge_shapes():
    dense = tiny_dense("bert", vocab_size=VOCAB, num_layers=LAYERS)
    model = wrap(dense, random_table(seed=2))
    ids, mask, _ = padded_batch(seed=5)
    ones = torch.ones_like(ids)
    with torch.no_grad():
        fast = model(ids, attention_mask=mask, exit_layers=ones)
        oracle = masked_oracle(model, ids, mask, exit_layers=ones)
        assert torch.allclose(fast.logits, oracle.logits, atol=TOL, rtol=0)
        # batch of one, and the longest sequence the position table allows
        long_ids = torch.randint(5, VOCAB, (1, 64))
        fast = model(long_ids)
        assert torch.allclose(fast.logits, masked_oracle(model, long_ids).logits, atol=TOL, rtol=0)
        # a sequence of only "special" tokens at layer L, beside a normal one
        table = random_table(seed=2).layers.copy()
        table[[2, 3]] = LAYERS
        special_model = wrap(dense, ExitTable(table, LAYERS))
        special = torch.tensor([[2, 3, 0, 0], [2, 50, 60, 3]])
        special_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
        fast = special_model(special, attention_mask=special_mask)
        oracle = masked_oracle(special_model, special, special_mask)
        assert torch.allclose(fast.logits, oracle.logits, atol=TOL, rtol=0)


def test_exit_layers_zero_at_padding_and_from_table():
    dense = tiny_dense("bert", vocab_size=VOCAB, num_layers=LAYERS)
    table = random_table(seed=4)
    model = wrap(dense, table)
    ids, mask, _ = padded_batch(seed=2)
    exits = model.exit_layers_for(ids, mask)
    expected = table.layers[ids.numpy()] * mask.numpy()
    np.testing.assert_array_equal(exits.numpy(), expected)


def test_save_and_load_round_trip_keeps_table_and_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification

    dense = tiny_dense("roberta", vocab_size=VOCAB, num_layers=LAYERS, num_labels=3)
    dense.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    dense.config.label2id = {v: k for k, v in dense.config.id2label.items()}
    table = ExitTable(random_table(seed=9).layers, LAYERS, kind="random", metadata={"seed": 9})
    model = wrap(dense, table)
    model.save_pretrained(tmp_path)
    loaded = HashEEForSequenceClassification.from_pretrained(tmp_path).eval()
    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(auto, HashEEForSequenceClassification)
    assert loaded.exit_table == table
    assert loaded.config.id2label[2] == "pos"
    ids, mask, _ = padded_batch(seed=1)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        assert torch.equal(loaded(ids, attention_mask=mask).logits, expected)
        assert torch.equal(auto(ids, attention_mask=mask).logits, expected)


def test_loss_and_gradients_reach_every_layer():
    dense = tiny_dense("bert", vocab_size=VOCAB, num_layers=LAYERS, num_labels=3)
    model = wrap(dense, random_table(seed=3)).train()
    ids, mask, _ = padded_batch(seed=4)
    out = model(ids, attention_mask=mask, labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    for layer in dense.bert.encoder.layer:
        assert layer.attention.self.query.weight.grad.abs().sum() > 0
    regression = wrap(tiny_dense("distilbert", vocab_size=VOCAB, num_layers=LAYERS, num_labels=1), random_table())
    out = regression(ids, attention_mask=mask, labels=torch.linspace(0, 1, 6))
    expected = torch.nn.functional.mse_loss(out.logits.squeeze(-1), torch.linspace(0, 1, 6))
    assert torch.allclose(out.loss, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=torch.ones(2, 3)), "integers"),
        (dict(input_ids=torch.ones(3, dtype=torch.long)), "2-D"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long)), "shape"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.full((2, 3), 2)), "0 and 1"),
        (dict(input_ids=torch.full((2, 3), VOCAB)), "0..119"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), exit_layers=torch.full((2, 3), LAYERS + 1)), "1..4"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), exit_layers=torch.zeros(2, 3, dtype=torch.long)), "1..4"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), exit_layers=torch.ones(2, 3)), "integers"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), exit_layers=torch.ones(3, 2, dtype=torch.long)), "shape"),
        (dict(input_ids=torch.ones(0, 3, dtype=torch.long)), "empty"),
        (dict(input_ids=[[1, 2]]), "torch.Tensor"),
        (dict(input_ids=torch.ones(2, 3, dtype=torch.long), token_type_ids=torch.full((2, 3), 2)), "0..1"),
    ],
)
def test_bad_model_inputs_raise_typed_errors(kwargs, message):
    model = wrap(tiny_dense("bert", vocab_size=VOCAB, num_layers=LAYERS), random_table())
    with pytest.raises(ModelInputError, match=message):
        model(**kwargs)


def test_bad_tables_and_backbones_raise_typed_errors():
    dense = tiny_dense("bert", vocab_size=VOCAB, num_layers=LAYERS)
    with pytest.raises(ExitTableError, match="--layers 4"):
        HashEEForSequenceClassification.from_dense(dense, random_table(layers=6))
    with pytest.raises(ExitTableError, match="vocabulary"):
        HashEEForSequenceClassification.from_dense(dense, random_table(vocab=VOCAB + 1))
    with pytest.raises(ExitTableError, match="hashee.ExitTable"):
        HashEEForSequenceClassification.from_dense(dense, np.ones(VOCAB))
    with pytest.raises(ExitTableError, match="1..4"):
        ExitTable(np.full(VOCAB, 5), LAYERS)
    import transformers

    gpt2 = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2))
    with pytest.raises(BackboneError, match="bert"):
        HashEEForSequenceClassification.from_dense(gpt2, ExitTable(np.ones(gpt2.config.vocab_size, int), 2))


@pytest.mark.slow
def test_real_minilm_all_last_layer_equals_dense(minilm_path, minilm_tokenizer):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    dense = AutoModelForSequenceClassification.from_pretrained(str(minilm_path), num_labels=2).eval()
    model = wrap(dense, ExitTable(np.full(len(minilm_tokenizer), 6), 6))
    texts = ["a gorgeously elaborate continuation .", "no .", "it 's a bad , bad movie that never ends"]
    pairs = ["two women are embracing .", "the sisters are hugging ."]
    for batch in (minilm_tokenizer(texts, padding=True, return_tensors="pt"),
                  minilm_tokenizer([pairs[0]], [pairs[1]], padding=True, return_tensors="pt")):
        with torch.no_grad():
            ours = model(**batch).logits
            reference = dense(**batch).logits
        assert torch.allclose(ours, reference, atol=TOL, rtol=0)


def test_token_never_seen_when_the_table_was_built_exits_last(minilm_tokenizer):
    import transformers

    from hashee.calibration import build_exit_table

    table = build_exit_table("frequency", minilm_tokenizer, texts=["a good film .", "a bad film ."],
                             num_layers=LAYERS, num_buckets=LAYERS)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(minilm_tokenizer), hidden_size=32, num_hidden_layers=LAYERS,
                                     num_attention_heads=4, intermediate_size=48)
    dense = transformers.BertForSequenceClassification(config).eval()
    model = wrap(dense, table)
    batch = minilm_tokenizer(["a good film .", "a wonderful film ."], padding=True, return_tensors="pt")
    unseen = minilm_tokenizer.convert_tokens_to_ids("wonderful")
    assert unseen != minilm_tokenizer.unk_token_id
    with torch.no_grad():
        out = model(**batch)
        oracle = masked_oracle(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    position = batch["input_ids"][1].tolist().index(unseen)
    assert out.exit_layers[1, position] == LAYERS
    assert out.exit_layers[0, 2] < LAYERS  # "film" was seen: it exits earlier
    assert torch.allclose(out.logits, oracle.logits, atol=TOL, rtol=0)
