"""Budget calibration (hashee.calibration.calibrate_budget), checked by recomputing the FLOPs."""

from __future__ import annotations

import numpy as np
import pytest

from hashee.calibration import build_exit_table, calibrate_budget
from hashee.errors import DataError, HashConfigError
from hashee.flops import EncoderDims, batch_flops


def independent_speedup(tokenizer, texts, table, dims, max_length=128) -> float:
    """FLOPs reduction recomputed from scratch: tokenise per text, look up, batch_flops on a list."""
    sequences = []
    for item in texts:
        args = (item,) if isinstance(item, str) else tuple(item)
        ids = tokenizer(*args, truncation=True, max_length=max_length)["input_ids"]
        sequences.append(table.lookup(np.asarray(ids)))
    return batch_flops(sequences, dims).speedup


@pytest.fixture(scope="module")
def sst2_texts(sst2_sentences):
    return [sentence for sentence, _ in sst2_sentences]


@pytest.mark.parametrize("target", [2.0, 2.5])
def test_sst2_minilm_six_layers_hits_target(minilm_tokenizer, sst2_texts, target):
    table = calibrate_budget(minilm_tokenizer, sst2_texts, target, num_layers=6, num_buckets=6)
    dims = EncoderDims(6, 384, 1536)
    achieved = independent_speedup(minilm_tokenizer, sst2_texts, table, dims)
    assert abs(achieved / target - 1) <= 0.05
    calib = table.metadata["calibration"]
    assert calib["achieved_speedup"] == pytest.approx(achieved, rel=1e-9)
    assert calib["target_speedup"] == target and calib["alpha"] > 0
    assert table.kind == "frequency" and table.vocab_size == len(minilm_tokenizer)
    assert np.all(table.layers[minilm_tokenizer.all_special_ids] == 6)
    # the recorded boundaries rebuild the same table with build_exit_table
    rebuilt = build_exit_table("frequency", minilm_tokenizer, sst2_texts, num_layers=6, num_buckets=6,
                               bucket_boundaries=table.metadata["bucket_boundaries"])
    assert np.array_equal(rebuilt.layers, table.layers)


def test_sst2_minilm_three_x(minilm_tokenizer, sst2_texts):
    """3x is above what L=6 can give (exited tokens still pay K/V; [CLS]/[SEP] run all layers), so the
    error names the reachable range; with L=B=12 the same target is hit."""
    with pytest.raises(HashConfigError, match=r"out of reach: .* gives 1\.000x\.\.2\.\d+x"):
        calibrate_budget(minilm_tokenizer, sst2_texts, 3.0, num_layers=6, num_buckets=6)
    dims = EncoderDims(12, 384, 1536)
    table = calibrate_budget(minilm_tokenizer, sst2_texts, 3.0, num_layers=12, num_buckets=12, dims=dims)
    assert abs(independent_speedup(minilm_tokenizer, sst2_texts, table, dims) / 3.0 - 1) <= 0.05


def test_higher_target_sends_more_types_to_the_first_layer(minilm_tokenizer, sst2_texts):
    slow = calibrate_budget(minilm_tokenizer, sst2_texts, 1.5, num_layers=6, num_buckets=6)
    fast = calibrate_budget(minilm_tokenizer, sst2_texts, 2.5, num_layers=6, num_buckets=6)
    assert fast.histogram()[1] > slow.histogram()[1]
    assert fast.metadata["calibration"]["alpha"] < slow.metadata["calibration"]["alpha"]


@pytest.mark.parametrize("target", [50.0, 0.5])
def test_unreachable_target_says_the_range(minilm_tokenizer, sst2_texts, target):
    with pytest.raises(HashConfigError, match=r"1\.000x\.\.2\.\d+x"):
        calibrate_budget(minilm_tokenizer, sst2_texts, target, num_layers=6, num_buckets=6)


def test_fewer_buckets_limit_the_range(minilm_tokenizer, sst2_texts):
    # L=12, B=3: the last bucket exits at 9, so even the slowest table is faster than dense
    with pytest.raises(HashConfigError, match="below the reachable range"):
        calibrate_budget(minilm_tokenizer, sst2_texts, 1.0, num_layers=12, num_buckets=3,
                         dims=EncoderDims(12, 384, 1536))


# ------------------------------------------------------------------------------ any tokenizer, no data


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(60)]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def zipf_corpus(num_docs=300, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 61)
    p /= p.sum()
    return [" ".join(f"w{i}" for i in rng.choice(60, size=int(rng.integers(5, 30)), p=p)) for _ in range(num_docs)]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_tokenizer()


def test_tiny_tokenizer_hits_an_attainable_target(tiny):
    texts = zipf_corpus()
    dims = EncoderDims(4, 64, 256)
    plain = build_exit_table("frequency", tiny, texts, num_layers=4, num_buckets=4)
    target = independent_speedup(tiny, texts, plain, dims)  # the equal-count table's speed-up
    table = calibrate_budget(tiny, texts, target, num_layers=4, num_buckets=4, dims=dims, tolerance=0.01)
    assert abs(independent_speedup(tiny, texts, table, dims) / target - 1) <= 0.01
    assert table.vocab_size == len(tiny)


def test_pairs_and_truncation(tiny):
    texts = zipf_corpus(200, seed=1)
    pairs = list(zip(texts[::2], texts[1::2]))
    dims = EncoderDims(4, 64, 256)
    table = calibrate_budget(tiny, pairs, 1.8, num_layers=4, num_buckets=4, dims=dims, max_length=16)
    assert abs(independent_speedup(tiny, pairs, table, dims, max_length=16) / 1.8 - 1) <= 0.05
    assert table.metadata["calibration"]["max_length"] == 16 and table.metadata["num_texts"] == 100


def test_calibration_is_deterministic(tiny):
    texts = zipf_corpus()
    dims = EncoderDims(4, 64, 256)
    a = calibrate_budget(tiny, texts, 1.7, num_layers=4, num_buckets=4, dims=dims, unseen="first")
    b = calibrate_budget(tiny, texts, 1.7, num_layers=4, num_buckets=4, dims=dims, unseen="first")
    assert a == b and a.metadata["unseen"] == "first"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(target_speedup=0.0), HashConfigError, "positive"),
    (dict(target_speedup=float("nan")), HashConfigError, "positive"),
    (dict(target_speedup="2"), HashConfigError, "positive"),
    (dict(tolerance=0.0), HashConfigError, "tolerance"),
    (dict(tolerance=1.5), HashConfigError, "tolerance"),
    (dict(num_buckets=5), HashConfigError, "at most 4 buckets"),
    (dict(dims=EncoderDims(6, 64, 256)), HashConfigError, "dims.num_layers"),
    (dict(dims=(4, 64, 256)), HashConfigError, "EncoderDims"),
    (dict(max_length=0), HashConfigError, "max_length"),
    (dict(unseen="sometimes"), HashConfigError, "unseen"),
    (dict(texts=[]), DataError, "empty"),
    (dict(texts="w1 w2"), DataError, "single string"),
])
def test_bad_arguments(tiny, kwargs, error, match):
    args = {"texts": zipf_corpus(50), "target_speedup": 1.5, "num_layers": 4, "num_buckets": 4,
            "dims": EncoderDims(4, 64, 256), **kwargs}
    with pytest.raises(error, match=match):
        calibrate_budget(tiny, **args)
