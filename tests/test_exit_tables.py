"""Exit tables of every hash kind (hashee.calibration.build_exit_table)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from hashee.calibration import HASH_KINDS, bucket_layers, build_exit_table
from hashee.errors import DataError, ExitTableError, HashConfigError, HasheeError
from hashee.exit_table import ExitTable

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "movie", "film", "good", "bad", "great", "awful", "plot", "actor", "is", "was", "and",
         "but", "very", "not", "alpha", "bravo", "charlie", "delta", "echo", "fox", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "oscar", "papa", "romeo", "sierra", "tango", ".", ",", "##s",
         "neverused", "alsounused"]
FILLERS = ["delta", "echo", "fox", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "oscar",
           "papa", "romeo", "sierra", "tango"]


def make_tiny_tokenizer(added: tuple[str, ...] = ("addedword",)):
    """A WordPiece tokenizer built in-test (not BERT's vocab), with one added token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tok.add_tokens(list(added))
    return tok


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_tokenizer()


def tid(tok, word: str) -> int:
    return tok.convert_tokens_to_ids(word)


def make_corpus(num_docs: int = 240, seed: int = 0):
    """Sentences of filler words; 'alpha'/'bravo'/'charlie' occur exactly in class 0/1/2; 'the' in all."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(num_docs):
        label = i % 3
        words = ["the"] + list(rng.choice(FILLERS, size=int(rng.integers(3, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), ["alpha", "bravo", "charlie"][label])
        if rng.random() < 0.5:
            words += ["movie", "is", "good"]
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def counter_of(tok, texts) -> Counter:
    """Independent token count: tokenize each text segment and count with collections.Counter."""
    counts: Counter = Counter()
    for item in texts:
        for segment in ([item] if isinstance(item, str) else [s for s in item if s is not None]):
            counts.update(tok.convert_tokens_to_ids(tok.tokenize(segment)))
    return counts


def build(kind, tok, **kwargs):
    texts, labels = make_corpus()
    if kind in ("frequency", "mi"):
        kwargs.setdefault("texts", texts)
    if kind == "mi":
        kwargs.setdefault("labels", labels)
    if kind == "cluster":
        kwargs.setdefault("embeddings", np.random.default_rng(1).normal(size=(len(tok) - 1, 8)))
    return build_exit_table(kind, tok, **kwargs)


# ------------------------------------------------------------------------------------ layers


def test_bucket_layers_mapping():
    assert bucket_layers(12, 3) == [1, 5, 9]
    assert bucket_layers(6, 6) == [1, 2, 3, 4, 5, 6]
    assert bucket_layers(12, 1) == [1]
    assert bucket_layers(12, 4) == [1, 4, 7, 10]
    for num_layers in range(1, 25):
        for num_buckets in range(1, num_layers + 1):
            layers = bucket_layers(num_layers, num_buckets)
            assert layers[0] == 1 and len(layers) == num_buckets
            assert all(a < b for a, b in zip(layers, layers[1:])) and layers[-1] <= num_layers


@pytest.mark.parametrize("kind", HASH_KINDS)
def test_buckets_map_to_layers_1_5_9(tiny, kind):
    table = build(kind, tiny, num_layers=12, num_buckets=3)
    specials = set(tiny.all_special_ids)
    others = [i for i in range(len(tiny)) if i not in specials]
    assert set(table.layers[others].tolist()) <= {1, 5, 9, 12}
    assert {1, 5, 9} <= set(table.layers[others].tolist())
    assert table.metadata["bucket_layers"] == [1, 5, 9] and table.metadata["num_buckets"] == 3


@pytest.mark.parametrize("kind", HASH_KINDS)
def test_every_kind_covers_the_whole_vocab(tiny, kind):
    table = build(kind, tiny, num_layers=6, num_buckets=3)
    assert isinstance(table, ExitTable) and table.kind == kind
    assert table.vocab_size == len(tiny) == len(SPECIALS) + len(WORDS) + 1  # added token included
    assert table.layers.min() >= 1 and table.layers.max() <= 6
    assert np.all(table.layers[tiny.all_special_ids] == 6)
    assert table.metadata["seed"] == 0


def test_real_minilm_tokenizer_covers_30522_ids(minilm_tokenizer, sst2_sentences):
    texts = [s for s, _ in sst2_sentences]
    labels = [y for _, y in sst2_sentences]
    for kind in ("random", "frequency", "mi"):
        table = build_exit_table(kind, minilm_tokenizer, texts, labels, num_layers=6, num_buckets=6)
        assert table.vocab_size == len(minilm_tokenizer) == 30522
        assert np.all(table.layers[minilm_tokenizer.all_special_ids] == 6)
        assert table.metadata["num_texts"] == (None if kind == "random" else 400)
    freq = build_exit_table("frequency", minilm_tokenizer, texts, num_layers=6, num_buckets=6)
    assert freq.layers[minilm_tokenizer.convert_tokens_to_ids("the")] == 1
    assert freq.layers[minilm_tokenizer.convert_tokens_to_ids(".")] == 1


# ------------------------------------------------------------------------------------ frequency


def test_frequency_matches_an_independent_count(tiny):
    texts, _ = make_corpus()
    table = build_exit_table("frequency", tiny, texts, num_layers=4, num_buckets=4)
    counts = counter_of(tiny, texts)
    specials = set(tiny.all_special_ids)
    seen = sorted((i for i in counts if i not in specials), key=lambda i: (-counts[i], i))
    assert table.metadata["num_seen_types"] == len(seen)
    layers = table.layers[seen]
    assert np.all(np.diff(layers.astype(int)) >= 0), "more frequent types must never exit later"
    sizes = np.bincount(layers, minlength=5)[1:]
    assert sizes.sum() == len(seen) and sizes.max() - sizes.min() <= 1  # equal token-type counts
    top = seen[: len(seen) // 4]
    assert np.all(table.layers[top] == 1)
    assert table.layers[tid(tiny, "the")] == 1
    # a strictly rarer type never exits before a more frequent one
    for a in seen:
        for b in seen:
            if counts[a] > counts[b]:
                assert table.layers[a] <= table.layers[b]


@pytest.mark.parametrize("num_buckets", [1, 2, 3, 4, 6, 12])
def test_frequency_buckets_are_exactly_equal_when_divisible(tiny, num_buckets):
    words = FILLERS[:12]  # 12 seen types; the j-th occurs 12 - j times, so no ties
    texts = [" ".join(words[: 12 - i]) for i in range(12)]
    table = build_exit_table("frequency", tiny, texts, num_layers=12, num_buckets=num_buckets)
    layers = table.layers[[tid(tiny, w) for w in words]]
    expected = np.repeat(bucket_layers(12, num_buckets), 12 // num_buckets)
    assert layers.tolist() == expected.tolist()


def test_unseen_policies(tiny):
    texts, _ = make_corpus()
    seen = sorted(set(counter_of(tiny, texts)) - set(tiny.all_special_ids))
    unseen_ids = np.setdiff1d(np.arange(len(tiny)), seen + list(tiny.all_special_ids))
    assert {tid(tiny, "neverused"), tid(tiny, "alsounused"), tid(tiny, "addedword")} <= set(unseen_ids.tolist())
    for kind in ("frequency", "mi"):
        last = build(kind, tiny, num_layers=12, num_buckets=3)
        assert np.all(last.layers[unseen_ids] == 12) and last.metadata["unseen"] == "last"
        first = build(kind, tiny, num_layers=12, num_buckets=3, unseen="first")
        assert np.all(first.layers[unseen_ids] == 1) and first.metadata["unseen_layer"] == 1
        seven = build(kind, tiny, num_layers=12, num_buckets=3, unseen=7)
        assert np.all(seven.layers[unseen_ids] == 7) and seven.metadata["unseen"] == 7
        # the seen part does not depend on the unseen policy, specials stay at L
        assert np.array_equal(last.layers[seen], first.layers[seen])
        assert np.all(first.layers[tiny.all_special_ids] == 12)


def test_custom_bucket_boundaries(tiny):
    texts, _ = make_corpus()
    table = build_exit_table("frequency", tiny, texts, num_layers=3, num_buckets=3, bucket_boundaries=[0.5, 0.9])
    n = table.metadata["num_seen_types"]
    seen_layers = table.layers[[i for i in counter_of(tiny, texts) if i not in tiny.all_special_ids]]
    sizes = np.bincount(seen_layers, minlength=4)[1:]
    assert sizes.tolist() == [int(np.ceil(0.5 * n)), int(np.ceil(0.9 * n)) - int(np.ceil(0.5 * n)),
                              n - int(np.ceil(0.9 * n))]
    assert table.metadata["bucket_boundaries"] == [0.5, 0.9]
    default = build_exit_table("frequency", tiny, texts, num_layers=3, num_buckets=3)
    assert default.metadata["bucket_boundaries"] is None
    same = build_exit_table("frequency", tiny, texts, num_layers=3, num_buckets=3, bucket_boundaries=[1 / 3, 2 / 3])
    assert np.array_equal(same.layers, default.layers)


def test_pairs_count_both_segments(tiny):
    texts, labels = make_corpus(120)
    pairs = [(texts[i], texts[i + 1] if i % 4 else None) for i in range(0, 120, 2)]
    table = build_exit_table("frequency", tiny, pairs, num_layers=3, num_buckets=3)
    counts = counter_of(tiny, pairs)
    seen = sorted((i for i in counts if i not in tiny.all_special_ids), key=lambda i: (-counts[i], i))
    assert table.metadata["num_texts"] == 60 and table.metadata["num_seen_types"] == len(seen)
    assert np.all(np.diff(table.layers[seen].astype(int)) >= 0)
    mi = build_exit_table("mi", tiny, [(a, b) for a, b in zip(texts[::2], texts[1::2])], labels[::2],
                          num_layers=3, num_buckets=3)
    assert mi.layers[tid(tiny, "alpha")] == 1


# ------------------------------------------------------------------------------------ mi


def _mi_oracle(tok, texts, classes):
    from sklearn.metrics import mutual_info_score

    docs = [set(tok.convert_tokens_to_ids(tok.tokenize(t))) for t in texts]
    vocab = sorted(set().union(*docs) - set(tok.all_special_ids))
    return {v: mutual_info_score([v in d for d in docs], classes) for v in vocab}


def test_mi_three_classes_orders_by_mutual_information(tiny):
    texts, labels = make_corpus()
    table = build_exit_table("mi", tiny, texts, labels, num_layers=3, num_buckets=3)
    assert table.metadata["num_classes"] == 3 and table.metadata["label_type"] == "classification"
    for word in ("alpha", "bravo", "charlie"):  # each perfectly predicts its class
        assert table.layers[tid(tiny, word)] == 1
    assert table.layers[tid(tiny, "the")] == 3  # present in every document: MI exactly 0
    oracle = _mi_oracle(tiny, texts, labels)
    for a, mi_a in oracle.items():
        for b, mi_b in oracle.items():
            if mi_a > mi_b + 1e-9:
                assert table.layers[a] <= table.layers[b], (a, b, mi_a, mi_b)
    # string class names work the same
    named = build_exit_table("mi", tiny, texts, [["neg", "neu", "pos"][y] for y in labels], num_layers=3,
                             num_buckets=3)
    assert np.array_equal(named.layers, table.layers)


def test_mi_values_match_sklearn(tiny):
    from hashee.calibration.exit_tables import encode_for_counting, mutual_information

    texts, labels = make_corpus(90, seed=4)
    labels = [(y + (i % 2)) % 3 for i, y in enumerate(labels)]  # blur the labels: MI values vary
    ids, docs = encode_for_counting(tiny, [(t, None) for t in texts], len(tiny))
    ours = mutual_information(ids, docs, np.asarray(labels), len(tiny))
    oracle = _mi_oracle(tiny, texts, labels)
    assert len(set(round(v, 6) for v in oracle.values())) > 5
    for token, value in oracle.items():
        assert ours[token] == pytest.approx(value, abs=1e-12)
    unseen = np.setdiff1d(np.arange(len(tiny)), list(oracle))
    assert np.all(ours[unseen] == 0)


def test_mi_regression_labels_are_binned(tiny):
    texts, _ = make_corpus(250)
    rng = np.random.default_rng(3)
    # the 50 texts that get 'excellent'-like word 'great' carry the 50 highest scores (top quintile)
    texts = [t + (" great" if i < 50 else "") for i, t in enumerate(texts)]
    scores = np.where(np.arange(250) < 50, 4.0 + rng.random(250), 3.9 * rng.random(250)).astype(np.float32)
    table = build_exit_table("mi", tiny, texts, scores, num_layers=6, num_buckets=3)
    assert table.metadata["label_type"] == "regression" and table.metadata["num_classes"] == 5
    assert table.layers[tid(tiny, "great")] == 1
    assert table.layers[tid(tiny, "great")] < table.layers[tid(tiny, "the")]
    assert table.layers[tid(tiny, "the")] == 5  # label-independent: last bucket (layer 1 + 6*2//3)


# ------------------------------------------------------------------------------------ cluster


def _norm_clusters(vocab_rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    group = rng.permutation(np.arange(vocab_rows) % 3)  # 0: norm ~1, 1: norm ~10, 2: norm ~100
    scale = np.array([1.0, 10.0, 100.0])[group] * (1 + 0.01 * rng.random(vocab_rows))
    rows = scale[:, None] * (direction + 0.002 * rng.normal(size=(vocab_rows, 16)))
    return rows.astype(np.float32), group


def test_cluster_orders_clusters_by_norm(tiny):
    rows, group = _norm_clusters(len(tiny) - 1)  # the added token has no embedding row
    table = build_exit_table("cluster", tiny, embeddings=rows, num_layers=12, num_buckets=3, seed=5)
    specials = np.asarray(tiny.all_special_ids)
    ordinary = np.setdiff1d(np.arange(len(rows)), specials)
    expected = np.array([1, 5, 9])[group[ordinary]]
    assert np.array_equal(table.layers[ordinary], expected)
    assert table.layers[tid(tiny, "addedword")] == 12 and np.all(table.layers[specials] == 12)
    norms = table.metadata["cluster_mean_norms"]
    assert norms == sorted(norms) and table.metadata["embedding_rows"] == len(rows)
    torch = pytest.importorskip("torch")
    from_tensor = build_exit_table("cluster", tiny, embeddings=torch.from_numpy(rows), num_layers=12,
                                   num_buckets=3, seed=5)
    assert np.array_equal(from_tensor.layers, table.layers)
    # a matrix padded beyond the vocabulary (e.g. to a multiple of 8) is cut to len(tokenizer)
    padded_rows = np.vstack([rows, rows[:7] * 1000])
    wide = build_exit_table("cluster", tiny, embeddings=padded_rows[: len(tiny) + 6], num_layers=12, num_buckets=3)
    assert wide.vocab_size == len(tiny)


# ------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("kind", HASH_KINDS)
def test_same_inputs_same_table(tiny, kind):
    assert build(kind, tiny, num_layers=6, num_buckets=3, seed=11) == build(kind, tiny, num_layers=6,
                                                                             num_buckets=3, seed=11)


def test_random_seeds_and_inconsistent_ablation(tiny):
    vocab = len(tiny)
    a = build_exit_table("random", tiny, num_layers=12, num_buckets=12, seed=0)
    b = build_exit_table("random", tiny, num_layers=12, num_buckets=12, seed=1)
    incons = build_exit_table("random-incons", tiny, num_layers=12, num_buckets=12, seed=0)
    assert not np.array_equal(a.layers, b.layers)
    assert not np.array_equal(a.layers, incons.layers)
    assert not np.array_equal(b.layers, incons.layers)  # not simply seed + 1
    assert incons.kind == "random-incons" and incons.metadata["rng_seed"] == [0, 1]
    assert (a.layers != incons.layers).sum() > vocab // 2


# ------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("kind", HASH_KINDS)
def test_save_load_round_trip(tiny, tmp_path, kind):
    table = build(kind, tiny, num_layers=6, num_buckets=3, unseen=2)
    table.save(tmp_path / kind)
    loaded = ExitTable.load(tmp_path / kind, vocab_size=len(tiny))
    assert loaded == table
    with pytest.raises(ExitTableError, match="rebuild the table"):
        ExitTable.load(tmp_path / kind, vocab_size=len(tiny) + 1)
    with pytest.raises(ExitTableError):
        ExitTable.load(tmp_path / kind, vocab_size=30522)


# ------------------------------------------------------------------------------------ errors


def test_unknown_kind_lists_valid_kinds(tiny):
    with pytest.raises(HashConfigError) as info:
        build_exit_table("freq", tiny, ["the movie"])
    for kind in HASH_KINDS:
        assert kind in str(info.value)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kind="random", num_layers=6, num_buckets=7), HashConfigError, "at most 6 buckets"),
    (dict(kind="random", num_layers=6, num_buckets=0), HashConfigError, "num_buckets"),
    (dict(kind="random", num_layers=0, num_buckets=1), HashConfigError, "num_layers"),
    (dict(kind="random", num_layers=6.0, num_buckets=3), HashConfigError, "num_layers"),
    (dict(kind="random", seed=-1), HashConfigError, "seed"),
    (dict(kind="frequency"), HashConfigError, "needs texts"),
    (dict(kind="mi"), HashConfigError, "needs texts"),
    (dict(kind="mi", texts=["the movie", "a film"]), HashConfigError, "needs labels"),
    (dict(kind="mi", texts=["the movie", "a film"], labels=[0, 1, 1]), DataError, "3 labels for 2 texts"),
    (dict(kind="mi", texts=["the movie", "a film"], labels=[1, 1]), DataError, "two distinct labels"),
    (dict(kind="mi", texts=["the movie", "a film"], labels=[0.5, float("nan")]), DataError, "NaN"),
    (dict(kind="cluster"), HashConfigError, "needs embeddings"),
    (dict(kind="cluster", embeddings=np.ones(5)), DataError, "matrix"),
    (dict(kind="cluster", embeddings=np.full((50, 4), np.nan)), DataError, "NaN"),
    (dict(kind="frequency", texts="the movie is good"), DataError, "not a single string"),
    (dict(kind="frequency", texts=["the movie", 3]), DataError, r"texts\[1\]"),
    (dict(kind="frequency", texts=[("a", "b", "c")]), DataError, "pair"),
    (dict(kind="frequency", texts=[]), DataError, "empty"),
    (dict(kind="frequency", texts=["the"], unseen="middle"), HashConfigError, "unseen"),
    (dict(kind="frequency", texts=["the"], unseen=0), HashConfigError, "unseen"),
    (dict(kind="frequency", texts=["the"], unseen=13), HashConfigError, "unseen"),
    (dict(kind="random", unseen=True), HashConfigError, "unseen"),
    (dict(kind="random", bucket_boundaries=[0.5, 0.7]), HashConfigError, "frequency and mi"),
    (dict(kind="frequency", texts=["the"], bucket_boundaries=[0.5]), HashConfigError, "2 fractions"),
    (dict(kind="frequency", texts=["the"], bucket_boundaries=[0.7, 0.5]), HashConfigError, "increasing"),
    (dict(kind="frequency", texts=["the"], bucket_boundaries=[0.5, 1.5]), HashConfigError, "increasing"),
    (dict(kind="frequency", texts=["the"], bucket_boundaries=[float("nan"), 0.5]), HashConfigError, "increasing"),
])
def test_bad_inputs_raise_typed_errors(tiny, kwargs, error, match):
    kwargs = {"num_layers": 12, "num_buckets": 3, **kwargs}
    with pytest.raises(error, match=match) as info:
        build_exit_table(tokenizer=tiny, **kwargs)
    assert isinstance(info.value, HasheeError)


def test_no_heavy_imports_at_module_level():
    code = ("import sys, hashee.calibration; "
            "print(sorted(m for m in ('torch', 'sklearn', 'scipy', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
