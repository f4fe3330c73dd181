"""GPU tier: the reference model on CUDA (skipped with a reason where there is no GPU)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny import tiny_dense

from hashee.exit_table import ExitTable
from hashee.modeling import HashEEForSequenceClassification
from hashee.modeling.oracle import masked_oracle

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "albert", "electra"])
def test_cuda_matches_cpu_and_oracle(family):
    """Logits of order 1 (weights of std 0.2): a padding leak (~1e-2 on such logits) fails the 1e-4 bound."""
    dense = tiny_dense(family, vocab_size=120, num_layers=4, init_std=0.2)
    table = ExitTable(np.random.default_rng(0).integers(1, 5, 120), 4)
    model = HashEEForSequenceClassification.from_dense(dense, table).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 120, (8, 20), generator=generator)
    mask = (torch.arange(20)[None] < torch.randint(3, 21, (8, 1), generator=generator)).long()
    with torch.no_grad():
        cpu = model(ids, attention_mask=mask).logits
        alone = torch.cat([model(ids[i:i + 1, :int(mask[i].sum())]).logits for i in range(8)])
        model.cuda()
        cuda = model(ids.cuda(), attention_mask=mask.cuda()).logits.cpu()
        oracle = masked_oracle(model, ids.cuda(), mask.cuda()).logits.cpu()
    assert (cpu - cpu.mean(0)).abs().max() > 0.1  # logits move with the input: the bound below is meaningful
    assert torch.allclose(cpu, alone, atol=1e-4, rtol=0)  # and padding does not leak on the CPU
    assert torch.allclose(cuda, cpu, atol=1e-4, rtol=0)
    assert torch.allclose(cuda, oracle, atol=1e-4, rtol=0)


def test_cuda_forward_synchronises_once_per_batch():
    """The packed layout reads one small vector from the device per forward, never per layer."""
    dense = tiny_dense("bert", vocab_size=120, num_layers=4)
    table = ExitTable(np.random.default_rng(0).integers(1, 5, 120), 4)
    model = HashEEForSequenceClassification.from_dense(dense, table).eval().cuda()
    ids = torch.randint(5, 120, (8, 20), device="cuda")
    with torch.no_grad():
        model(ids)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model(ids)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, [str(w.message) for w in syncs]


def test_session_torch_backend_on_cuda_matches_onnxruntime_cpu(tiny_bundles):
    """The runtime's torch backend on CUDA gives the CPU ONNX Runtime logits of the same bundle."""
    from hashee.exporter.validate import sample_texts
    from hashee.runtime import Session

    texts = sample_texts(24) + ["", "a", "the the the the"]
    pairs = list(zip(texts[:12], texts[12:24]))
    with Session.load(tiny_bundles["bert"], backend="torch", device="cuda") as cuda, \
            Session.load(tiny_bundles["bert"], backend="onnxruntime", device="cpu") as cpu:
        assert cuda.backend == "torch-cuda"
        for inputs in (texts, pairs):
            assert np.abs(cuda.predict_logits(inputs, batch_size=8) - cpu.predict_logits(inputs)).max() < 1e-4


def test_auto_backend_on_a_gpu_machine_runs(tiny_bundles):
    """``auto`` on a GPU machine without an engine takes ONNX Runtime's best provider and gives the CPU logits."""
    from hashee.runtime import Session

    import onnxruntime

    available = onnxruntime.get_available_providers()  # the tiny bundle has no engine: never native TensorRT
    expected = ("onnxruntime-tensorrt" if "TensorrtExecutionProvider" in available
                else "onnxruntime-cuda" if "CUDAExecutionProvider" in available else "onnxruntime-cpu")
    with Session.load(tiny_bundles["bert"]) as session, \
            Session.load(tiny_bundles["bert"], backend="onnxruntime", device="cpu") as cpu:
        assert session.backend == expected
        texts = ["a fine film", "dull and long", ""]
        assert np.abs(session.predict_logits(texts) - cpu.predict_logits(texts)).max() < 1e-3
