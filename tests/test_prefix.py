"""The prefix layout (issue 14): host plan (numpy) and the PyTorch prefix mode against packed and the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_modeling import LAYERS, VOCAB, padded_batch, random_table, wrap
from tiny import FAMILIES, tiny_dense

from hashee.errors import InputError, ModelInputError
from hashee.exit_table import ExitTable
from hashee.modeling.oracle import masked_oracle
from hashee.modeling.prefix import prefix_encode, run_prefix
from hashee.prefix import CostModel, exit_layers_from_masks, mask_names, plan_prefix

TOL = 1e-5  # logits and token states
INIT_STD = 0.2  # weights of std 0.2: logits of order 1, so 1e-5 bounds mean something (HF's 0.02 gives ~0.01)


def _model(family, table, num_labels=2, **kwargs):
    """A tiny HashEE model of ``family`` whose logits are of order 1."""
    dense = tiny_dense(family, vocab_size=VOCAB, num_layers=LAYERS, num_labels=num_labels, init_std=INIT_STD, **kwargs)
    return wrap(dense, table)


def _max_length(family):
    """The longest sequence the tiny backbone embeds: RoBERTa's positions start after its pad id (1)."""
    return 64 - (2 if family == "roberta" else 0)


def _packed(model, ids, mask, types=None, exits=None):
    with torch.no_grad():
        out = model(ids, attention_mask=mask, token_type_ids=types, exit_layers=exits, output_token_states=True)
    return out.logits.numpy(), out.token_states.numpy()


def _check_all_three(model, ids, mask, types=None, exits=None, bucket=False):
    logits, states = run_prefix(model, ids, mask, types, exits, bucket=bucket, output_token_states=True)
    packed_logits, packed_states = _packed(model, ids, mask, types, exits)
    oracle = masked_oracle(model, ids, mask, types, exits)
    real = mask.bool().numpy()
    np.testing.assert_allclose(logits, packed_logits, atol=TOL, rtol=0)
    np.testing.assert_allclose(logits, oracle.logits.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(states[real], packed_states[real], atol=TOL, rtol=0)
    np.testing.assert_allclose(states[real], oracle.token_states.numpy()[real], atol=TOL, rtol=0)
    return logits


# ------------------------------------------------------------------ the host plan (numpy)
def test_plan_sorts_stably_descending_and_masks_are_prefixes():
    ids = np.array([[10, 11, 12, 13, 14], [20, 21, 22, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    exits = np.array([[3, 1, 3, 2, 1], [1, 2, 1, 9, 9]])
    plan = plan_prefix(ids, mask, exits, 3)
    np.testing.assert_array_equal(plan.position_ids, [[0, 2, 3, 1, 4], [1, 0, 2, 3, 4]])
    np.testing.assert_array_equal(plan.input_ids, [[10, 12, 13, 11, 14], [21, 20, 22, 0, 0]])
    np.testing.assert_array_equal(plan.attention_mask, [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert plan.widths == (5, 3, 2)  # W_1 = seq; W_2 = 3 (row 0), W_3 = 2 (row 0)
    np.testing.assert_array_equal(plan.exit_masks[0], mask.astype(bool))
    np.testing.assert_array_equal(plan.exit_masks[1], [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(plan.exit_masks[2], [[1, 1], [0, 0]])
    # the masks give back each slot's exit layer, and restore_tokens the original order
    sorted_exits = np.take_along_axis(exits * mask, plan.position_ids, axis=1)
    stacked = np.stack([np.pad(m, ((0, 0), (0, 5 - m.shape[1]))) for m in plan.exit_masks])
    np.testing.assert_array_equal(exit_layers_from_masks(stacked), sorted_exits)
    np.testing.assert_array_equal(plan.restore_tokens(plan.input_ids), ids)
    assert list(plan.feed()) == ["input_ids", "attention_mask", "position_ids", *mask_names(3)]


def test_plan_bucketing_shapes_and_width_floor():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, (5, 13))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    exits = np.ones_like(ids)  # nothing above layer 1: W_l floors at 1 (8 when bucketed)
    exits[0, :9] = 3
    plan = plan_prefix(ids, mask, exits, 4, bucket=True, max_length=64, pad_id=0)
    assert plan.shape == (8, 16, 16, 16, 16, 8)
    assert (plan.rows, plan.length) == (5, 13)
    assert plan.restore_tokens(plan.input_ids).shape == (5, 13)
    assert plan_prefix(ids, mask, exits, 4).widths == (13, 9, 9, 1)
    # the sequence is never rounded past max_length
    assert plan_prefix(ids, mask, exits, 4, bucket=True, max_length=14).shape[1] == 14
    with pytest.raises(InputError):
        plan_prefix(ids, mask[:, :3], exits, 4)


def test_dense_form_widths_are_the_sequence():
    ids = np.arange(12).reshape(2, 6) + 5
    exits = np.array([[2, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 2]])
    plan = plan_prefix(ids, np.ones_like(ids), exits, 3)
    dense = plan.dense()
    assert dense.widths == (6, 6, 6)
    assert dense.exit_masks[1].sum() == plan.exit_masks[1].sum() == 2


# ------------------------------------------------------------------ prefix == packed == oracle
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["binary", "pairs", "regression"])
def test_prefix_equals_packed_and_oracle(family, task):
    num_labels = {"binary": 2, "pairs": 3, "regression": 1}[task]
    model = _model(family, random_table(seed=7), num_labels)
    ids, mask, types = padded_batch(seed=3, pairs=task == "pairs" and family != "roberta")
    logits = _check_all_three(model, ids, mask, types)
    assert np.abs(logits - logits.mean(axis=0)).max() > 0.1  # logits move with the input: 1e-5 is a real bound
    # the table really made tokens exit early
    assert (model.exit_layers_for(ids, mask)[mask.bool()] < LAYERS).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_bucket_padding_leaves_logits_unchanged(family):
    model = _model(family, random_table(seed=5))
    ids, mask, _ = padded_batch(seed=9, batch=5, seq=11)
    plain, plain_states = run_prefix(model, ids, mask, output_token_states=True)
    bucketed, bucketed_states = run_prefix(model, ids, mask, bucket=True, output_token_states=True)
    dense_form = run_prefix(model, ids, mask, bucket=True, dense_form=True)[0]
    assert bucketed.shape == plain.shape == (5, 2)
    np.testing.assert_allclose(bucketed, plain, atol=TOL, rtol=0)
    np.testing.assert_allclose(dense_form, plain, atol=TOL, rtol=0)
    real = mask.bool().numpy()
    np.testing.assert_allclose(bucketed_states[real], plain_states[real], atol=TOL, rtol=0)


def test_edge_cases_batch_of_one_specials_layer_one():
    model = _model("bert", random_table(seed=2))
    ids, mask, _ = padded_batch(seed=5)
    _check_all_three(model, ids, mask, exits=torch.ones_like(ids))  # every token at layer 1
    _check_all_three(model, ids[:1], mask[:1])  # batch of 1
    table = random_table(seed=2).layers.copy()
    table[[2, 3]] = LAYERS
    special = wrap(model.dense, ExitTable(table, LAYERS))
    only_special = torch.tensor([[2, 3, 0, 0], [2, 50, 60, 3]])
    _check_all_three(special, only_special, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]))
    _check_all_three(special, torch.tensor([[2, 3]]), torch.tensor([[1, 1]]))  # a sequence of only special tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_max_length(family):
    """Sequences as long as the backbone embeds (bucketing must not round past it), mixed exit layers."""
    model = _model(family, random_table(seed=2))
    longest = _max_length(family)
    long_ids = torch.randint(5, VOCAB, (2, longest), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(long_ids)
    mask[1, longest // 2:] = 0
    assert run_prefix(model, long_ids, mask, bucket=True)[0].shape == (2, 2)
    _check_all_three(model, long_ids, mask, bucket=True)
    _check_all_three(model, long_ids, mask)


def test_cls_not_first_after_sorting_and_token_order():
    """Random exit layers put [CLS] anywhere in the sorted order; logits still use it, states come back in order."""
    model = _model("roberta", random_table(seed=3))
    ids, mask, _ = padded_batch(seed=4)
    exits = torch.randint(1, LAYERS + 1, ids.shape, generator=torch.Generator().manual_seed(0))
    exits[:, 0] = 1
    exits[:, 1] = LAYERS
    plan = plan_prefix(ids.numpy(), mask.numpy(), exits.numpy(), LAYERS)
    assert (plan.position_ids[:, 0] != 0).all()
    _check_all_three(model, ids, mask, exits=exits)


def test_prefix_encode_checks_shapes():
    model = wrap(tiny_dense("bert", vocab_size=VOCAB, num_layers=LAYERS), random_table())
    ids = torch.randint(5, VOCAB, (2, 6))
    masks = [torch.ones(2, 6, dtype=torch.bool)] * LAYERS
    positions = torch.arange(6).expand(2, 6)
    with pytest.raises(ModelInputError):
        prefix_encode(model, ids, torch.ones_like(ids), positions, masks[:-1])
    with pytest.raises(ModelInputError):
        prefix_encode(model, ids, torch.ones_like(ids), positions, [torch.ones(2, 7, dtype=torch.bool)] * LAYERS)


# ------------------------------------------------------------------ the cost model
def _plan(batch, seq, active_above_one, layers=6):
    exits = np.ones((batch, seq), dtype=np.int64)
    exits[:, :active_above_one] = layers
    return plan_prefix(np.full((batch, seq), 7), np.ones((batch, seq)), exits, layers, bucket=True)


def test_cost_model_choices_on_constructed_cases():
    model = CostModel(num_layers=6, hidden_size=384, intermediate_size=1536, flops_per_second=50e12,
                      launch_seconds=5e-6)
    # every token at L: same FLOPs, more launches -> dense
    assert not model.prefers_hashee(_plan(32, 64, 64))
    # most tokens exit at layer 1 in a big batch -> HashEE
    assert model.prefers_hashee(_plan(128, 64, 8))
    # one short sentence: the FLOPs saved are worth less than the extra launches -> dense
    assert not model.prefers_hashee(_plan(1, 16, 8))
    # with CUDA graphs (launches nearly free) the same short sentence goes to HashEE
    graphs = CostModel(6, 384, 1536, flops_per_second=50e12, launch_seconds=1e-9)
    assert graphs.prefers_hashee(_plan(1, 16, 8))
    chosen = model.choose(_plan(1, 16, 8))
    assert chosen.widths == (16,) * 6
    # the FLOPs term is the analytic one: W_l = S gives the dense formula
    flops = model.plan_flops(2, 10, [10] * 6)
    d, f = 384, 1536
    assert flops == pytest.approx(2 * 2 * 6 * (2 * 10 * d * d + 2 * 10 * d * d + 2 * 10 * 10 * d + 2 * 10 * d * f))


# ------------------------------------------------------------------ what a forward launches
SYNCING_OPS = {"aten.nonzero", "aten.masked_select", "aten._local_scalar_dense", "aten.unique_consecutive",
               "aten._unique2", "aten.unique_dim", "aten.repeat_interleave", "aten.index(bool mask)"}  # shapes from values


def _dispatched_ops(forward):
    """The non-view aten ops one call of ``forward`` dispatches (about the kernels it launches on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                name = str(func.overloadpacket)
                masks = [i for i in (args[1] if name == "aten.index" else ()) if i is not None and i.dtype == torch.bool]
                self.ops.append("aten.index(bool mask)" if masks else name)  # x[mask]: a shape from values
            return func(*args, **(kwargs or {}))

    with torch.no_grad():
        forward()  # warm: lazy initialisation is not the forward
        record = Record()
        with record:
            forward()
    return record.ops


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_forward_launches_about_as_many_ops_as_dense_and_never_reads_values_for_shapes(family):
    """Item 4: the prefix mode's forward dispatches no more ops than the Hugging Face dense forward (+10 %)
    and none whose output shape comes from tensor values (no device synchronisation); the recorder does
    see such ops where they are (so the check can fail)."""
    dense = tiny_dense(family, vocab_size=VOCAB, num_layers=LAYERS, init_std=INIT_STD)
    model = wrap(dense, random_table())
    ids, mask, _ = padded_batch(batch=8, seq=16)
    table = model.exit_table_layers.numpy()
    plan = plan_prefix(ids.numpy(), mask.numpy(), table[ids.numpy()], LAYERS)
    assert min(plan.widths[1:]) < plan.widths[0]  # some layers really run narrower
    inputs = [torch.as_tensor(a) for a in (plan.input_ids, plan.attention_mask, plan.position_ids)]
    prefix = _dispatched_ops(lambda: prefix_encode(model, *inputs, [torch.as_tensor(m) for m in plan.exit_masks]))
    reference = _dispatched_ops(lambda: dense(ids, attention_mask=mask))
    assert len(prefix) <= 1.1 * len(reference), (len(prefix), len(reference))
    assert not SYNCING_OPS & set(prefix), sorted(SYNCING_OPS & set(prefix))
    values = torch.tensor([0.0, 1.0, 2.0])
    for syncing in (lambda: values.nonzero(), lambda: values[values > 0], lambda: values.sum().item()):
        assert SYNCING_OPS & set(_dispatched_ops(syncing))


def test_bucketed_plan_without_row_padding_keeps_the_rows_and_rounds_the_widths():
    ids, mask, _ = padded_batch(batch=5, seq=12)
    exits = random_table().layers[ids.numpy()]
    padded = plan_prefix(ids.numpy(), mask.numpy(), exits, LAYERS, bucket=True, max_length=64)
    rows_kept = plan_prefix(ids.numpy(), mask.numpy(), exits, LAYERS, bucket=True, max_length=64, pad_rows=False)
    assert padded.shape[0] == 8 and rows_kept.shape[0] == 5 and rows_kept.shape[1:] == padded.shape[1:]
    np.testing.assert_array_equal(rows_kept.input_ids, padded.input_ids[:5])
    assert all(w % 8 == 0 or w == rows_kept.shape[1] for w in rows_kept.widths)
