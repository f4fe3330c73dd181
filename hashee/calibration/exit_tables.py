"""Building exit tables (DESIGN.md section 1) for any Hugging Face tokenizer.

Every hash kind first puts each vocabulary id into one of ``B`` buckets; bucket ``b`` (0-based)
exits after layer ``1 + floor(L * b / B)``, so with ``L = 12, B = 3`` the buckets exit at 1, 5 and
9.  Special tokens always exit at ``L``.  The table covers the whole vocabulary, ``len(tokenizer)``
ids, added tokens included.

Kinds:

``random``
    each id gets a uniformly random bucket from ``numpy.random.default_rng(seed)``; the same seed
    gives the same table in training and at inference (the *consistent* hash).
``random-incons``
    the inconsistent-hash ablation: a random table drawn from a *different* stream derived from the
    same ``seed`` (``default_rng([seed, 1])``), so training with ``random`` and inferring with
    ``random-incons`` at the same ``seed`` uses two unrelated tables.
``frequency``
    seen token types sorted by corpus frequency (descending, ties by id), split into ``B`` buckets
    of equal type count; the most frequent types exit earliest.
``mi``
    seen token types sorted by the mutual information between "the type occurs in the document" and
    the label (descending, ties by id), split like ``frequency``.  Any number of classes; float
    labels are regression targets and are binned into ``REGRESSION_BINS`` quantile bins first.
``cluster``
    k-means (scikit-learn, ``n_clusters=B``) over the rows of the input embedding matrix; clusters
    ordered by the mean L2 norm of their rows, the smallest norm exiting earliest.

For ``frequency`` and ``mi``, ids never seen in the texts exit at ``unseen`` (``"last"`` = L,
``"first"`` = 1, or an explicit layer).  ``random`` and ``cluster`` assign every id by the hash
itself; ids beyond the rows of the embedding matrix (tokens added to the tokenizer later) exit at L.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

import numpy as np

from hashee.errors import DataError, HashConfigError
from hashee.exit_table import ExitTable

HASH_KINDS: tuple[str, ...] = ("random", "random-incons", "frequency", "mi", "cluster")
UNSEEN_POLICIES: tuple[str, ...] = ("last", "first")
REGRESSION_BINS = 5
KMEANS_N_INIT = 4
INCONS_STREAM = 1  # random-incons draws from default_rng([seed, INCONS_STREAM])
_TOKENIZE_CHUNK = 8192

TextItem = Any  # a string, or a (text_a, text_b) pair; text_b may be None


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise HashConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def bucket_layers(num_layers: int, num_buckets: int, lowest: int = 1) -> list[int]:
    """Exit layer of each bucket: ``lowest + floor((L - lowest + 1) * b / B)`` for ``b = 0..B-1``.

    With ``lowest = 1`` (the seed) that is ``1 + floor(L * b / B)``; ``lowest = 2`` keeps every token
    for at least two layers.  Raises :class:`HashConfigError` unless ``1 <= B <= L - lowest + 1``.
    """
    num_layers = _check_int("num_layers", num_layers, 1)
    num_buckets = _check_int("num_buckets", num_buckets, 1)
    lowest = _check_int("the lowest exit layer", lowest, 1)
    if lowest > num_layers:
        raise HashConfigError(f"the lowest exit layer ({lowest}) exceeds num_layers ({num_layers})")
    span = num_layers - lowest + 1
    if num_buckets > span:
        raise HashConfigError(
            f"num_buckets ({num_buckets}) exceeds the {span} exit layers {lowest}..{num_layers}: two buckets "
            f"would share a layer; use at most {span} buckets (or an encoder with more layers)"
        )
    return [lowest + (span * b) // num_buckets for b in range(num_buckets)]


def _resolve_unseen(unseen: Any, num_layers: int) -> int:
    if isinstance(unseen, str):
        if unseen == "last":
            return num_layers
        if unseen == "first":
            return 1
    elif not isinstance(unseen, bool) and isinstance(unseen, (int, np.integer)) and 1 <= unseen <= num_layers:
        return int(unseen)
    raise HashConfigError(
        f"unseen must be 'last' (layer {num_layers}), 'first' (layer 1) or a layer in 1..{num_layers}; "
        f"got {unseen!r}"
    )


def _check_boundaries(boundaries: Any, num_buckets: int) -> list[float]:
    try:
        values = [float(x) for x in boundaries]
    except (TypeError, ValueError) as exc:
        raise HashConfigError(f"bucket_boundaries must be a list of numbers, got {boundaries!r}") from exc
    if len(values) != num_buckets - 1:
        raise HashConfigError(
            f"bucket_boundaries needs num_buckets - 1 = {num_buckets - 1} fractions, got {len(values)}"
        )
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0.0) or np.any(arr > 1.0) or np.any(np.diff(arr) < 0):
        raise HashConfigError(
            f"bucket_boundaries must be increasing fractions in (0, 1) of the sorted seen token types "
            f"(0 and 1 and repeats are accepted and leave a bucket empty); got {values}"
        )
    return values


def _vocab_size(tokenizer: Any) -> int:
    try:
        size = len(tokenizer)
    except TypeError as exc:
        raise HashConfigError(
            f"tokenizer {type(tokenizer).__name__} has no len(); pass a Hugging Face tokenizer"
        ) from exc
    if size < 1:
        raise HashConfigError(f"tokenizer has an empty vocabulary (len {size})")
    return int(size)


def _special_ids(tokenizer: Any, vocab_size: int) -> np.ndarray:
    ids = np.asarray(sorted(set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])), dtype=np.int64)
    return ids[(ids >= 0) & (ids < vocab_size)]


def _normalise_texts(texts: Iterable[TextItem]) -> list[tuple[str, str | None]]:
    if isinstance(texts, (str, bytes)):
        raise DataError("texts must be a list of strings or (text_a, text_b) pairs, not a single string")
    items: list[tuple[str, str | None]] = []
    for index, item in enumerate(texts):
        if isinstance(item, str):
            items.append((item, None))
        elif (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
              and (item[1] is None or isinstance(item[1], str))):
            items.append((item[0], item[1]))
        else:
            raise DataError(
                f"texts[{index}] is {type(item).__name__} {item!r:.80}; each text must be a string or a "
                f"(text_a, text_b) pair of strings"
            )
    return items


# --------------------------------------------------------------------------------------------
# tokenisation


def _batched_ids(tokenizer: Any, first: list[str], second: list[str] | None, **kwargs: Any) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(first), _TOKENIZE_CHUNK):
        stop = start + _TOKENIZE_CHUNK
        args = (first[start:stop],) if second is None else (first[start:stop], second[start:stop])
        enc = tokenizer(*args, return_attention_mask=False, return_token_type_ids=False, **kwargs)
        out.extend(enc["input_ids"])
    return out


def _flatten(rows: Sequence[Sequence[int]], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise HashConfigError(
            f"the tokenizer produced ids in {int(ids.min())}..{int(ids.max())} but len(tokenizer) is "
            f"{vocab_size}; the tokenizer is inconsistent"
        )
    return ids, lengths


def encode_for_counting(tokenizer: Any, items: list[tuple[str, str | None]],
                        vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of every document without special tokens: ``(flat_ids, doc_index_per_token)``.

    A pair counts as one document; its two segments are tokenised separately (no truncation).
    """
    segments: list[str] = []
    owners: list[int] = []
    for doc, (a, b) in enumerate(items):
        segments.append(a)
        owners.append(doc)
        if b is not None:
            segments.append(b)
            owners.append(doc)
    rows = _batched_ids(tokenizer, segments, None, add_special_tokens=False) if segments else []
    ids, lengths = _flatten(rows, vocab_size)
    docs = np.repeat(np.asarray(owners, dtype=np.int64), lengths)
    return ids, docs


def encode_with_specials(tokenizer: Any, items: list[tuple[str, str | None]], vocab_size: int,
                         max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs as the encoder sees them: ``(flat_ids, lengths)`` with special tokens, truncated."""
    rows: list[Any] = [None] * len(items)
    singles = [i for i, (_, b) in enumerate(items) if b is None]
    pairs = [i for i, (_, b) in enumerate(items) if b is not None]
    kwargs = dict(add_special_tokens=True, truncation=True, max_length=max_length)
    if singles:
        for i, r in zip(singles, _batched_ids(tokenizer, [items[i][0] for i in singles], None, **kwargs)):
            rows[i] = r
    if pairs:
        enc = _batched_ids(tokenizer, [items[i][0] for i in pairs], [items[i][1] for i in pairs], **kwargs)
        for i, r in zip(pairs, enc):
            rows[i] = r
    return _flatten(rows, vocab_size)


# --------------------------------------------------------------------------------------------
# rankings and bucket assignment


def frequency_ranking(ids: np.ndarray, vocab_size: int, special_ids: np.ndarray) -> np.ndarray:
    """Seen non-special ids sorted by count (descending), ties broken by id (ascending)."""
    counts = np.bincount(ids, minlength=vocab_size)
    counts[special_ids] = 0
    seen = np.flatnonzero(counts)
    order = np.lexsort((seen, -counts[seen]))
    return seen[order]


def _labels_to_classes(labels: Any, num_docs: int) -> tuple[np.ndarray, dict[str, Any]]:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"labels must be one label per text (1-D), got shape {y.shape}")
    if y.shape[0] != num_docs:
        raise DataError(f"got {y.shape[0]} labels for {num_docs} texts; mi needs exactly one label per text")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise DataError("regression labels for mi contain NaN or infinity")
        edges = np.quantile(y, np.linspace(0.0, 1.0, REGRESSION_BINS + 1)[1:-1])
        binned = np.searchsorted(edges, y, side="right")
        _, classes = np.unique(binned, return_inverse=True)
        info = {"label_type": "regression", "regression_bins": REGRESSION_BINS}
    elif y.dtype.kind in "iubUSO":
        try:
            _, classes = np.unique(y, return_inverse=True)
        except TypeError as exc:
            raise DataError(f"labels for mi must be of one comparable type ({exc})") from exc
        info = {"label_type": "classification"}
    else:
        raise DataError(f"labels of dtype {y.dtype} are not supported for mi; use integers, strings or floats")
    classes = classes.reshape(-1).astype(np.int64)
    num_classes = int(classes.max()) + 1 if classes.size else 0
    if num_classes < 2:
        raise DataError("mi needs at least two distinct labels (or label bins): with one, every token's "
                        "mutual information is zero")
    info["num_classes"] = num_classes
    return classes, info


def mutual_information(ids: np.ndarray, docs: np.ndarray, classes: np.ndarray, vocab_size: int) -> np.ndarray:
    """MI (nats) between each id's presence in a document and the document's class, per vocab id."""
    from scipy import sparse

    num_docs = classes.shape[0]
    num_classes = int(classes.max()) + 1
    presence = sparse.csr_matrix((np.ones(ids.shape[0], dtype=np.float64), (docs, ids)),
                                 shape=(num_docs, vocab_size))
    presence.sum_duplicates()
    presence.data[:] = 1.0
    onehot = sparse.csr_matrix((np.ones(num_docs), (np.arange(num_docs), classes)),
                               shape=(num_docs, num_classes))
    n11 = np.asarray((presence.T @ onehot).todense(), dtype=np.float64)  # [V, C] docs with id and class
    n_c = np.bincount(classes, minlength=num_classes).astype(np.float64)  # [C]
    n_1 = n11.sum(axis=1, keepdims=True)  # [V, 1]
    n01 = n_c[None, :] - n11
    n_0 = num_docs - n_1
    total = float(num_docs)

    def term(joint: np.ndarray, marginal: np.ndarray) -> np.ndarray:
        denom = marginal * n_c[None, :]
        ratio = np.divide(joint * total, denom, out=np.ones_like(joint), where=(joint > 0) & (denom > 0))
        return joint / total * np.log(ratio)

    return (term(n11, n_1) + term(n01, n_0)).sum(axis=1)


def mi_ranking(ids: np.ndarray, docs: np.ndarray, classes: np.ndarray, vocab_size: int,
               special_ids: np.ndarray) -> np.ndarray:
    """Seen non-special ids sorted by mutual information (descending), ties broken by id."""
    mi = mutual_information(ids, docs, classes, vocab_size)
    seen_mask = np.bincount(ids, minlength=vocab_size) > 0
    seen_mask[special_ids] = False
    seen = np.flatnonzero(seen_mask)
    # round away float noise so that equal counts give exactly equal keys
    key = np.round(mi[seen], 12)
    return seen[np.lexsort((seen, -key))]


def cuts_from_boundaries(boundaries: Sequence[float] | None, num_seen: int, num_buckets: int) -> np.ndarray:
    """Rank positions where buckets start (``B - 1`` of them) for ``num_seen`` sorted types."""
    if boundaries is None:
        k = np.arange(1, num_buckets, dtype=np.int64)
        return -((-k * num_seen) // num_buckets)  # ceil(k * n / B), exact
    frac = np.asarray(boundaries, dtype=np.float64)
    return np.clip(np.ceil(frac * num_seen - 1e-6), 0, num_seen).astype(np.int64)


def cuts_from_mass(boundaries: Sequence[float], counts: np.ndarray) -> np.ndarray:
    """Rank positions where buckets start when ``boundaries`` are fractions of token *occurrences*.

    ``counts`` are the corpus counts of the ranked types, in rank order: type ``i`` falls in the
    bucket whose boundary the occurrences before it have not yet reached.
    """
    before = np.concatenate(([0.0], np.cumsum(counts, dtype=np.float64)[:-1])) / max(float(counts.sum()), 1.0)
    return np.searchsorted(before, np.asarray(boundaries, dtype=np.float64) - 1e-12, side="left").astype(np.int64)


def table_from_ranking(ranked: np.ndarray, cuts: np.ndarray, layers: Sequence[int], vocab_size: int,
                       special_ids: np.ndarray, unseen_layer: int, num_layers: int) -> np.ndarray:
    """Exit layers for the whole vocabulary from a ranking of seen ids and bucket cut positions."""
    table = np.full(vocab_size, unseen_layer, dtype=np.int64)
    buckets = np.searchsorted(cuts, np.arange(ranked.shape[0]), side="right")
    table[ranked] = np.asarray(layers, dtype=np.int64)[buckets]
    table[special_ids] = num_layers
    return table


def ranked_table(ranked: np.ndarray, boundaries: Sequence[float] | None, layers: Sequence[int], vocab_size: int,
                 special_ids: np.ndarray, unseen: str | int, num_layers: int, meta: dict[str, Any],
                 num_texts: int) -> np.ndarray:
    """Table of a ranked kind (frequency, mi); records the ranking facts in ``meta`` (updated in place)."""
    unseen_layer = _resolve_unseen(unseen, num_layers)
    cuts = cuts_from_boundaries(boundaries, ranked.shape[0], len(layers))
    table = table_from_ranking(ranked, cuts, layers, vocab_size, special_ids, unseen_layer, num_layers)
    meta.update(unseen=unseen if isinstance(unseen, str) else int(unseen), unseen_layer=unseen_layer,
                num_texts=int(num_texts), num_seen_types=int(ranked.shape[0]),
                bucket_boundaries=None if boundaries is None else [float(x) for x in boundaries])
    return table


def _cluster_table(embeddings: Any, vocab_size: int, num_buckets: int, layers: Sequence[int],
                   special_ids: np.ndarray, num_layers: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().float().cpu().numpy()
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise DataError(f"embeddings must be a [vocab, dim] matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise DataError("embeddings contain NaN or infinity")
    rows = min(matrix.shape[0], vocab_size)
    fit_mask = np.ones(rows, dtype=bool)
    fit_mask[special_ids[special_ids < rows]] = False
    fit_ids = np.flatnonzero(fit_mask)
    if fit_ids.shape[0] < num_buckets:
        raise DataError(f"cluster needs at least num_buckets={num_buckets} non-special embedding rows, "
                        f"got {fit_ids.shape[0]}")
    from sklearn.cluster import KMeans

    points = matrix[fit_ids]
    kmeans = KMeans(n_clusters=num_buckets, n_init=KMEANS_N_INIT, random_state=seed).fit(points)
    assign = kmeans.labels_.astype(np.int64)
    norms = np.linalg.norm(points, axis=1)
    sizes = np.bincount(assign, minlength=num_buckets)
    sums = np.bincount(assign, weights=norms, minlength=num_buckets)
    mean_norm = np.where(sizes > 0, sums / np.maximum(sizes, 1), np.inf)
    order = np.lexsort((np.arange(num_buckets), mean_norm))  # cluster ids, smallest mean norm first
    bucket_of_cluster = np.empty(num_buckets, dtype=np.int64)
    bucket_of_cluster[order] = np.arange(num_buckets)
    table = np.full(vocab_size, num_layers, dtype=np.int64)
    table[fit_ids] = np.asarray(layers, dtype=np.int64)[bucket_of_cluster[assign]]
    table[special_ids] = num_layers
    info = {"embedding_rows": int(matrix.shape[0]), "embedding_dim": int(matrix.shape[1]),
            "kmeans_n_init": KMEANS_N_INIT,
            "cluster_mean_norms": [float(mean_norm[c]) for c in order]}
    return table, info


def base_metadata(layers: Sequence[int], seed: int, vocab_size: int, special_ids: np.ndarray) -> dict[str, Any]:
    """Metadata every built table records."""
    return {"num_buckets": len(layers), "bucket_layers": list(layers), "seed": int(seed),
            "vocab_size": int(vocab_size), "num_special_ids": int(special_ids.shape[0])}


# --------------------------------------------------------------------------------------------
# public API


def build_exit_table(kind: str, tokenizer: Any, texts: Iterable[TextItem] | None = None,
                     labels: Any = None, num_layers: int = 12, num_buckets: int = 3,
                     embeddings: Any = None, seed: int = 0, unseen: str | int = "last",
                     bucket_boundaries: Sequence[float] | None = None, lowest_layer: int = 1) -> ExitTable:
    """Build an exit table of hash kind ``kind`` covering all ``len(tokenizer)`` ids.

    Args:
        kind: one of :data:`HASH_KINDS` (see the module docstring for what each does).
        tokenizer: any Hugging Face tokenizer (fast ones tokenise fastest).
        texts: corpus for ``frequency`` and ``mi``: strings or ``(text_a, text_b)`` pairs.
        labels: one label per text, for ``mi``; integers/strings are classes, floats are regression
            targets binned into :data:`REGRESSION_BINS` quantile bins.
        num_layers: L, the encoder depth; exit layers lie in ``1..L``.
        num_buckets: B, ``1 <= B <= L``; bucket ``b`` exits at ``1 + floor(L*b/B)``.
        embeddings: ``[rows, dim]`` input embedding matrix (numpy or torch), for ``cluster``.
        seed: seed of the random hash and of k-means.
        unseen: exit layer of ids never seen in ``texts`` (``frequency``/``mi``): ``"last"``,
            ``"first"`` or a layer number.
        bucket_boundaries: for ``frequency``/``mi``, ``B - 1`` non-decreasing fractions of the sorted
            seen types at which buckets split (default: equal type counts).
        lowest_layer: the earliest exit layer (default 1); buckets spread over ``lowest_layer..L``.

    Raises:
        HashConfigError: inconsistent arguments (unknown kind, ``B > L``, missing inputs, ...).
        DataError: malformed texts, labels or embeddings.
    """
    if kind not in HASH_KINDS:
        raise HashConfigError(f"unknown hash kind {kind!r}; valid kinds are {', '.join(HASH_KINDS)}")
    layers = bucket_layers(num_layers, num_buckets, lowest_layer)
    num_layers, num_buckets = int(num_layers), int(num_buckets)
    seed = _check_int("seed", seed, 0)
    _resolve_unseen(unseen, num_layers)  # validated for every kind, used by frequency and mi
    if bucket_boundaries is not None:
        if kind not in ("frequency", "mi"):
            raise HashConfigError(f"bucket_boundaries applies to the frequency and mi kinds, not {kind!r}")
        bucket_boundaries = _check_boundaries(bucket_boundaries, num_buckets)
    vocab_size = _vocab_size(tokenizer)
    specials = _special_ids(tokenizer, vocab_size)
    meta = base_metadata(layers, seed, vocab_size, specials)

    if kind in ("random", "random-incons"):
        rng = np.random.default_rng(seed if kind == "random" else [seed, INCONS_STREAM])
        table = np.asarray(layers, dtype=np.int64)[rng.integers(0, num_buckets, size=vocab_size)]
        table[specials] = num_layers
        meta.update(unseen=None, num_texts=None,
                    rng_seed=seed if kind == "random" else [seed, INCONS_STREAM])
    elif kind == "cluster":
        if embeddings is None:
            raise HashConfigError("the cluster kind needs embeddings: the model's input embedding matrix "
                                  "[vocab, dim] (model.get_input_embeddings().weight)")
        table, info = _cluster_table(embeddings, vocab_size, num_buckets, layers, specials, num_layers, seed)
        meta.update(unseen=None, num_texts=None, **info)
    else:
        if texts is None:
            raise HashConfigError(f"the {kind} kind needs texts (the corpus to count tokens in)")
        items = _normalise_texts(texts)
        if not items:
            raise DataError(f"texts is empty; the {kind} kind needs a corpus")
        if kind == "mi" and labels is None:
            raise HashConfigError("the mi kind needs labels, one per text")
        ids, docs = encode_for_counting(tokenizer, items, vocab_size)
        if kind == "frequency":
            ranked = frequency_ranking(ids, vocab_size, specials)
        else:
            classes, info = _labels_to_classes(labels, len(items))
            meta.update(info)
            ranked = mi_ranking(ids, docs, classes, vocab_size, specials)
        table = ranked_table(ranked, bucket_boundaries, layers, vocab_size, specials, unseen, num_layers, meta,
                             len(items))
    return ExitTable(layers=table, num_layers=num_layers, kind=kind, metadata=meta)

