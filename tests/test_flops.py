"""Analytic FLOPs against torch's own FLOP counter on the reference model, and a hand count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_dense
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from hashee.exit_table import ExitTable
from hashee.flops import EncoderDims, batch_flops
from hashee.modeling import HashEEForSequenceClassification


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    # torch's counter knows the CUDA attention kernels but not the CPU one: teach it with torch's formula
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def counted_flops(model, **inputs) -> int:
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        model(**inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("family", ["bert", "albert", "distilbert"])
def test_analytic_flops_match_flop_counter_within_2_percent(family):
    layers, seq, batch = 4, 24, 3
    dense = tiny_dense(family, vocab_size=120, num_layers=layers, num_labels=3)
    table = ExitTable(np.random.default_rng(0).integers(1, layers + 1, 120), layers)
    model = HashEEForSequenceClassification.from_dense(dense, table).eval()
    dims = EncoderDims.from_config(dense.config)
    ids = torch.randint(5, 120, (batch, seq))
    # every sequence with the same exit profile: the padded attention grid then holds no waste,
    # so the counter (which counts the grid) and the analytic formula (which counts the work) agree
    exits = torch.from_numpy(np.random.default_rng(1).integers(1, layers + 1, seq))[None].repeat(batch, 1)
    for exit_layers in (exits, torch.full_like(exits, layers)):
        counted = counted_flops(model, input_ids=ids, exit_layers=exit_layers)
        analytic = batch_flops(exit_layers, dims).hashee_flops
        assert abs(counted - analytic) / analytic < 0.02, (counted, analytic)
    dense_counted = counted_flops(model, input_ids=ids, exit_layers=torch.full_like(exits, layers))
    assert abs(batch_flops(exits, dims).dense_flops - dense_counted) / dense_counted < 0.02


def test_batch_flops_by_hand_and_padding_is_free():
    dims = EncoderDims(num_layers=2, hidden_size=4, intermediate_size=8, num_labels=2)
    # one sequence of 3 tokens: exits 2, 1, 2 -> layer 1: m=3, layer 2: m=2; n=3
    def macs(m, n):
        d, f = 4, 8
        return m * d * d + 2 * n * d * d + 2 * m * n * d + m * d * d + 2 * m * d * f
    head = 4 * 4 + 4 * 2
    report = batch_flops(np.array([[2, 1, 2, 0, 0]]), dims)
    assert report.hashee_flops == 2 * (macs(3, 3) + macs(2, 3) + head)
    assert report.dense_flops == 2 * (2 * macs(3, 3) + head)
    assert report.active_fraction == (1.0, 2 / 3)
    assert batch_flops([np.array([2, 1, 2])], dims).hashee_flops == report.hashee_flops
    combined = report + batch_flops(np.array([[1, 1]]), dims)
    assert combined.num_sequences == 2 and combined.num_tokens == 5
    assert report.speedup == pytest.approx(report.dense_flops / report.hashee_flops)
