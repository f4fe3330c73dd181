"""Budget calibration: a frequency exit table whose analytic FLOPs reduction hits a target.

The search runs over a one-parameter family of frequency tables.  With the seen token types sorted
by corpus frequency (most frequent first), bucket ``k`` starts at the fraction ``(k / B) ** alpha``
of the sorted types (``k = 1..B-1``).  ``alpha = 1`` is the plain equal-count frequency table;
small ``alpha`` moves the boundaries towards 1 (most types in the earliest bucket, fast), large
``alpha`` towards 0 (most types in the last bucket, slow).  Every boundary moves monotonically with
``alpha``, so the corpus FLOPs do too and a bisection on ``log(alpha)`` finds the target.

Budgets per layer (``shares``): the user gives each layer's share of the token occurrences that leave
there, ``s_1..s_L`` (a per-layer budget; the ranking fills the buckets by corpus mass in that order).
The family mixes them with the two extreme tables, one parameter ``t`` in ``[0, 2]``::

    t in [0, 1]:  (1 - t) * all-at-layer-L      + t * shares
    t in [1, 2]:  (2 - t) * shares              + (t - 1) * all-at-the-lowest-exit-layer

``t = 1`` is the shares exactly; below it the missing mass stays to layer L (slower), above it the
extra mass leaves at the lowest exit layer (faster).  Every cumulative boundary grows with ``t``, so
the FLOPs fall monotonically and a bisection on ``t`` finds the target; the shares' order among the
layers is kept, except at the one layer (L, or the lowest) that takes the difference.

The corpus is tokenised once as the encoder sees it (special tokens, truncated to ``max_length``);
each candidate table is evaluated by a numpy lookup and :func:`hashee.flops.batch_flops`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hashee.calibration.exit_tables import (
    TextItem,
    _check_int,
    _normalise_texts,
    _resolve_unseen,
    _special_ids,
    _vocab_size,
    base_metadata,
    bucket_layers,
    cuts_from_boundaries,
    cuts_from_mass,
    encode_for_counting,
    encode_with_specials,
    frequency_ranking,
    ranked_table,
    table_from_ranking,
)
from hashee.errors import DataError, HashConfigError
from hashee.exit_table import ExitTable
from hashee.flops import EncoderDims, FlopsReport, batch_flops

ALPHA_RANGE = (1e-6, 1e6)  # the family's ends: ~all seen types in the first / the last bucket
MAX_BISECTION_STEPS = 64
REFINE = 0.1  # bisection goes on until within REFINE * tolerance (or the steps run out)
_FLOPS_CHUNK = 2048  # sequences per batch_flops call (bounds the [chunk, L, seq] temporary)
MINILM_HIDDEN, MINILM_FFN = 384, 1536
BUCKET_SCHEMES = ("types", "mass")


def boundaries_for_alpha(alpha: float, num_buckets: int) -> list[float]:
    """The family's bucket boundaries: ``(k / B) ** alpha`` for ``k = 1..B-1``."""
    return [float((k / num_buckets) ** alpha) for k in range(1, num_buckets)]


def pad_ragged(ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids + lengths -> ``[N, T]`` ids (0 where padding) and the non-padding mask."""
    width = int(lengths.max()) if lengths.size else 0
    rows = np.repeat(np.arange(lengths.shape[0]), lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    cols = np.arange(ids.shape[0]) - np.repeat(starts, lengths)
    padded = np.zeros((lengths.shape[0], width), dtype=np.int64)
    mask = np.zeros((lengths.shape[0], width), dtype=bool)
    padded[rows, cols] = ids
    mask[rows, cols] = True
    return padded, mask


def corpus_flops(exit_layers: np.ndarray, dims: EncoderDims) -> FlopsReport:
    """:func:`hashee.flops.batch_flops` over ``[N, T]`` exit layers (0 = padding), in chunks."""
    report: FlopsReport | None = None
    for start in range(0, exit_layers.shape[0], _FLOPS_CHUNK):
        part = batch_flops(exit_layers[start:start + _FLOPS_CHUNK], dims)
        report = part if report is None else report + part
    if report is None:
        raise DataError("the corpus has no sequences")
    return report


def calibrate_budget(tokenizer: Any, texts: Iterable[TextItem], target_speedup: float, num_layers: int,
                     num_buckets: int, dims: EncoderDims | None = None, unseen: str | int = "last",
                     tolerance: float = 0.05, max_length: int = 128, lowest_layer: int = 1,
                     scheme: str = "types", ranking: np.ndarray | None = None,
                     ranking_kind: str = "frequency", shares: Sequence[float] | None = None) -> ExitTable:
    """Frequency exit table whose FLOPs reduction on ``texts`` is ``target_speedup`` (within tolerance).

    Args:
        tokenizer: any Hugging Face tokenizer; the table covers ``len(tokenizer)`` ids.
        texts: the corpus (strings or ``(text_a, text_b)`` pairs), used both to rank token types by
            frequency and to measure the FLOPs.
        target_speedup: wanted dense FLOPs / HashEE FLOPs on the corpus (> 0).
        num_layers: L; num_buckets: B (``1 <= B <= L``), as for :func:`build_exit_table`.
        dims: encoder sizes for the FLOPs; default MiniLM sizes ``EncoderDims(L, 384, 1536)``.
        unseen: exit layer of ids not in the corpus (``"last"``, ``"first"`` or a layer).
        tolerance: accepted relative error ``|achieved / target - 1|``, in (0, 1).
        max_length: truncation length of the corpus sequences, special tokens included.
        lowest_layer: the earliest exit layer (1, the seed; 2 keeps every token for two layers).
        scheme: what the bucket boundaries are fractions of: ``"types"`` (the seed: distinct token
            types) or ``"mass"`` (token occurrences in the corpus, so each bucket's share of the work
            is what the boundary says).
        ranking: seen ids in exit order, earliest first (default: by corpus frequency, most frequent
            first); ``ranking_kind`` names it in the table (e.g. ``"importance"``).
        shares: per-layer budgets instead of the ``alpha`` family: ``L`` non-negative numbers, the
            relative token mass leaving at layers ``1..L`` (zero below ``lowest_layer``; one bucket per
            layer, so ``B = L - lowest_layer + 1``), mixed towards the target as the module says.
            Shares are always fractions of token occurrences: ``scheme`` does not apply (the
            calibration records the scheme ``"shares"``).

    Returns:
        An :class:`ExitTable` of kind ``frequency`` (or ``ranking_kind``) with
        ``metadata["bucket_boundaries"]`` set to the chosen boundaries (for the ``types`` scheme,
        ``build_exit_table("frequency", ..., bucket_boundaries=...)`` rebuilds it) and
        ``metadata["calibration"]`` recording target, achieved speed-up, ``alpha`` (or the shares and
        the mix ``t``) and the range.

    Raises:
        HashConfigError: bad arguments, or a target the family cannot reach (the message gives the
            reachable range and what to change).
        DataError: malformed or empty texts.
    """
    layers = bucket_layers(num_layers, num_buckets, lowest_layer)
    num_layers, num_buckets = int(num_layers), int(num_buckets)
    unseen_layer, max_length, target, tolerance, dims = _check_budget_args(num_layers, scheme, unseen, max_length,
                                                                          target_speedup, tolerance, dims)
    search = _AlphaSearch(num_buckets) if shares is None else \
        _ShareSearch(check_shares(shares, num_layers, lowest_layer, num_buckets), lowest_layer)
    items = _normalise_texts(texts)
    if not items:
        raise DataError("texts is empty; budget calibration needs a corpus")
    family = _Family.on_corpus(tokenizer, items, ranking, max_length, layers, num_buckets, num_layers, unseen_layer,
                               dims, "mass" if shares is not None else scheme)

    def speedup(u: float) -> float:
        return family.speedup(search.boundaries(u))

    fastest, slowest = speedup(search.fast), speedup(search.slow)
    _check_reach(target, tolerance, fastest, slowest, num_layers, num_buckets, layers, len(items), max_length,
                 search.name)
    error, u, achieved = _bisect(speedup, target, tolerance, fastest, slowest, search.fast, search.slow)
    if error > tolerance:
        raise HashConfigError(
            f"no table of the {search.name} is within {tolerance:.1%} of {target:g}x: the FLOPs jump past "
            f"it (closest {achieved:.3f}x); allow a larger tolerance, use a larger corpus or more buckets"
        )

    boundaries = search.boundaries(u)
    meta = base_metadata(layers, 0, family.vocab_size, family.specials)
    table = ranked_table(family.ranked, boundaries, layers, family.vocab_size, family.specials, unseen, num_layers,
                         meta, len(items))
    if family.scheme == "mass":  # the same boundaries, as fractions of occurrences
        table = family.table(boundaries)
    meta["calibration"] = {
        "family": search.describe(ranking_kind, scheme), **search.parameters(u),
        "scheme": "shares" if shares is not None else scheme, "lowest_layer": int(lowest_layer),
        "ranking": ranking_kind, "target_speedup": target, "achieved_speedup": float(achieved),
        "tolerance": tolerance, "reachable_speedup": [float(slowest), float(fastest)],
        "max_length": max_length,
        "dims": {"num_layers": dims.num_layers, "hidden_size": dims.hidden_size,
                 "intermediate_size": dims.intermediate_size, "num_labels": dims.num_labels,
                 "embedding_size": dims.embedding_size},
    }
    return ExitTable(layers=table, num_layers=num_layers, kind=ranking_kind, metadata=meta)


@dataclass
class _AlphaSearch:
    """The seed-style family: bucket k starts at fraction ``(k/B)**alpha``; searched over ``u = log(alpha)``."""

    num_buckets: int
    name: str = "frequency family"
    fast: float = math.log(ALPHA_RANGE[0])  # ~all seen types in the first bucket
    slow: float = math.log(ALPHA_RANGE[1])  # ~all in the last

    def boundaries(self, u: float) -> list[float]:
        return boundaries_for_alpha(math.exp(u), self.num_buckets)

    def parameters(self, u: float) -> dict[str, Any]:
        return {"alpha": float(math.exp(u))}

    @staticmethod
    def describe(ranking_kind: str, scheme: str) -> str:
        return (f"bucket k starts at fraction (k/B)**alpha of the {ranking_kind}-sorted seen "
                f"{'token occurrences' if scheme == 'mass' else 'types'}")


@dataclass
class _ShareSearch:
    """Per-layer budgets: the shares mixed with all-at-L (``t < 1``) or all-at-the-lowest-layer (``t > 1``)."""

    shares: np.ndarray  # [L], sums to 1, zero below the lowest exit layer
    lowest_layer: int
    name: str = "per-layer shares family"
    fast: float = 2.0
    slow: float = 0.0

    def mixed(self, t: float) -> np.ndarray:
        """Each layer's share of the token mass at mix ``t`` (``t = 1``: the shares)."""
        t = min(max(float(t), 0.0), 2.0)
        end = np.zeros_like(self.shares)
        end[-1 if t <= 1 else self.lowest_layer - 1] = 1.0
        return (1 - t) * end + t * self.shares if t <= 1 else (2 - t) * self.shares + (t - 1) * end

    def boundaries(self, t: float) -> list[float]:
        cumulative = np.cumsum(self.mixed(t)[self.lowest_layer - 1:])[:-1]
        return [float(min(max(x, 0.0), 1.0)) for x in cumulative]

    def parameters(self, t: float) -> dict[str, Any]:
        return {"alpha": None, "shares": [float(x) for x in self.shares], "mix": float(t),
                "effective_shares": [float(x) for x in self.mixed(t)]}

    @staticmethod
    def describe(ranking_kind: str, scheme: str) -> str:
        return (f"layer l takes share s_l of the {ranking_kind}-sorted seen token occurrences; the shares mixed "
                f"with every token at layer L (t < 1) or at the lowest exit layer (t > 1), t = 1 the shares")


def check_shares(shares: Any, num_layers: int, lowest_layer: int, num_buckets: int) -> np.ndarray:
    """Per-layer shares as an ``[L]`` array summing to 1; a :class:`HashConfigError` says what is wrong.

    ``shares`` is a sequence of ``L`` non-negative numbers (or a string ``"s_1,...,s_L"``), zero below
    ``lowest_layer``, not all zero; the shares need one bucket per exit layer.
    """
    values = parse_shares(shares)
    if values.shape[0] != num_layers:
        raise HashConfigError(f"exit shares need one number per layer (1..{num_layers}), got {values.shape[0]}: "
                              f"{format_shares(values)}")
    if not np.all(np.isfinite(values)) or (values < 0).any() or values.sum() <= 0:
        raise HashConfigError(f"exit shares must be non-negative numbers, not all zero; got {format_shares(values)}")
    if (values[:lowest_layer - 1] > 0).any():
        raise HashConfigError(f"exit shares give tokens to layers below the lowest exit layer {lowest_layer}; set "
                              f"the first {lowest_layer - 1} to 0 or lower the lowest exit layer")
    span = num_layers - lowest_layer + 1
    if num_buckets != span:
        raise HashConfigError(f"exit shares put one bucket on each exit layer {lowest_layer}..{num_layers} "
                              f"({span} buckets), not {num_buckets}; drop the bucket count")
    return values / values.sum()


def parse_shares(shares: Any) -> np.ndarray:
    """``"4,3,2,1"`` or a sequence of numbers -> a float array (a HashConfigError for anything else)."""
    if isinstance(shares, str):
        try:
            return np.asarray([float(part) for part in shares.split(",") if part.strip()], dtype=np.float64)
        except ValueError:
            raise HashConfigError(f"exit shares must be comma-separated numbers, e.g. 4,3,2,1; got {shares!r}") from None
    try:
        items = list(shares)
        values = np.asarray(items, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise HashConfigError(f"exit shares must be a sequence of numbers, got {shares!r}") from None
    if any(isinstance(x, bool) for x in items):
        raise HashConfigError(f"exit shares must be numbers, got {shares!r}")
    return values


def format_shares(values: Any) -> str:
    """``4,3,2,1``: shares as the command line writes them."""
    return ",".join(f"{float(x):g}" for x in np.asarray(values, dtype=np.float64).reshape(-1))


def _check_budget_args(num_layers: int, scheme: str, unseen: str | int, max_length: Any, target_speedup: Any,
                       tolerance: Any, dims: EncoderDims | None) -> tuple[int, int, float, float, EncoderDims]:
    """The unseen ids' layer, max length, target, tolerance and encoder sizes; HashConfigError on a bad one."""
    if scheme not in BUCKET_SCHEMES:
        raise HashConfigError(f"unknown bucket scheme {scheme!r}; use one of {', '.join(BUCKET_SCHEMES)}")
    unseen_layer = _resolve_unseen(unseen, num_layers)
    max_length = _check_int("max_length", max_length, 1)
    if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(target_speedup)) or target_speedup <= 0:
        raise HashConfigError(f"target_speedup must be a positive number, got {target_speedup!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)) \
            or not 0 < float(tolerance) < 1:
        raise HashConfigError(f"tolerance must be a relative error in (0, 1), got {tolerance!r}")
    if dims is None:
        dims = EncoderDims(num_layers, MINILM_HIDDEN, MINILM_FFN)
    elif not isinstance(dims, EncoderDims):
        raise HashConfigError(f"dims must be a hashee.flops.EncoderDims, got {type(dims).__name__}")
    if dims.num_layers != num_layers:
        raise HashConfigError(f"dims.num_layers ({dims.num_layers}) differs from num_layers ({num_layers})")
    return unseen_layer, max_length, float(target_speedup), float(tolerance), dims


@dataclass
class _Family:
    """The one-parameter family of tables on a corpus: the ranking, its counts and the tokenised corpus."""

    ranked: np.ndarray  # seen ids in exit order
    counts: np.ndarray  # corpus occurrences of ``ranked``
    corpus_ids: np.ndarray  # [N, T] as the encoder sees them
    mask: np.ndarray  # [N, T] real tokens
    vocab_size: int
    specials: np.ndarray
    layers: list[int]  # each bucket's exit layer
    num_buckets: int
    num_layers: int
    unseen_layer: int
    dims: EncoderDims
    scheme: str

    @classmethod
    def on_corpus(cls, tokenizer: Any, items: list, ranking: np.ndarray | None, max_length: int, layers: list[int],
                  num_buckets: int, num_layers: int, unseen_layer: int, dims: EncoderDims, scheme: str) -> "_Family":
        """Rank the corpus's token types (or check a given ranking) and tokenise the corpus once."""
        vocab_size = _vocab_size(tokenizer)
        specials = _special_ids(tokenizer, vocab_size)
        count_ids, _ = encode_for_counting(tokenizer, items, vocab_size)
        ranked = frequency_ranking(count_ids, vocab_size, specials) if ranking is None else \
            _check_ranking(ranking, vocab_size, specials)
        if ranked.shape[0] == 0:
            raise DataError("the corpus has no non-special tokens to rank")
        counts = np.bincount(count_ids, minlength=vocab_size)[ranked]
        corpus_ids, mask = pad_ragged(*encode_with_specials(tokenizer, items, vocab_size, max_length))
        return cls(ranked, counts, corpus_ids, mask, vocab_size, specials, layers, num_buckets, num_layers,
                   unseen_layer, dims, scheme)

    def cuts(self, boundaries: Sequence[float]) -> np.ndarray:
        if self.scheme == "mass":
            return cuts_from_mass(boundaries, self.counts)
        return cuts_from_boundaries(boundaries, self.ranked.shape[0], self.num_buckets)

    def table(self, boundaries: Sequence[float]) -> np.ndarray:
        return table_from_ranking(self.ranked, self.cuts(boundaries), self.layers, self.vocab_size, self.specials,
                                  self.unseen_layer, self.num_layers)

    def speedup(self, boundaries: Sequence[float]) -> float:
        """The corpus FLOPs reduction of the table with these bucket boundaries."""
        return corpus_flops(np.where(self.mask, self.table(boundaries)[self.corpus_ids], 0), self.dims).speedup


def _check_reach(target: float, tolerance: float, fastest: float, slowest: float, num_layers: int, num_buckets: int,
                 layers: list[int], num_texts: int, max_length: int, name: str = "frequency family") -> None:
    """HashConfigError (with what to change) when ``target`` lies outside the family's reachable range."""
    reach = f"{slowest:.3f}x..{fastest:.3f}x"
    if target > fastest * (1 + tolerance):
        raise HashConfigError(
            f"target speed-up {target:g}x is out of reach: with L={num_layers}, B={num_buckets} the {name} "
            f"gives {reach} on this corpus ({num_texts} texts, max_length {max_length}); lower the "
            f"target, or use more buckets so that the first bucket exits earlier (B = L exits it at layer 1)"
        )
    if target < slowest * (1 - tolerance):
        raise HashConfigError(
            f"target speed-up {target:g}x is below the reachable range {reach} (L={num_layers}, "
            f"B={num_buckets}): even the slowest table exits its last bucket at layer {layers[-1]}; raise "
            f"the target or use B = L buckets so that the last bucket exits at layer {num_layers}"
        )


def _bisect(speedup: Callable[[float], float], target: float, tolerance: float, fastest: float, slowest: float,
            fast: float, slow: float) -> tuple[float, float, float]:
    """Bisect the family's parameter between ``fast`` (speed-up ``fastest``) and ``slow`` towards ``target``.

    Returns the closest ``(relative error, parameter, speed-up)`` seen.
    """
    candidates = [(abs(fastest / target - 1), fast, fastest), (abs(slowest / target - 1), slow, slowest)]
    for _ in range(MAX_BISECTION_STEPS):
        best = min(candidates)
        if best[0] <= REFINE * tolerance or abs(slow - fast) < 1e-12:
            break
        mid = 0.5 * (fast + slow)
        achieved = speedup(mid)
        candidates.append((abs(achieved / target - 1), mid, achieved))
        if achieved > target:
            fast = mid  # too fast: move towards the slow end (later exits)
        else:
            slow = mid
    return min(candidates)


def _check_ranking(ranking: Any, vocab_size: int, specials: np.ndarray) -> np.ndarray:
    """A given ranking: distinct in-vocabulary ids, special tokens removed (they exit at L)."""
    ranked = np.asarray(ranking, dtype=np.int64).reshape(-1)
    if ranked.size and (ranked.min() < 0 or ranked.max() >= vocab_size):
        raise HashConfigError(f"the ranking holds ids outside 0..{vocab_size - 1}")
    if np.unique(ranked).shape[0] != ranked.shape[0]:
        raise HashConfigError("the ranking lists an id more than once")
    return ranked[~np.isin(ranked, specials)]


def texts_flops(table: ExitTable, tokenizer: Any, texts: Iterable[TextItem], dims: EncoderDims,
                max_length: int = 128) -> FlopsReport:
    """Analytic FLOPs of ``table`` on ``texts`` tokenised as the encoder sees them (specials, truncated)."""
    items = _normalise_texts(texts)
    if not items:
        raise DataError("texts is empty; FLOPs need at least one text")
    vocab_size = _vocab_size(tokenizer)
    table.check_vocab_size(vocab_size)
    corpus_ids, mask = pad_ragged(*encode_with_specials(tokenizer, items, vocab_size, max_length))
    return corpus_flops(np.where(mask, table.layers[corpus_ids], 0), dims)
