"""Texts in, token arrays out: input validation and a thread-safe tokenizer.

The tokenizer is the bundle's ``tokenizer.json`` loaded with the Rust ``tokenizers`` library and
configured once (truncation to the bundle's max length, no padding), so concurrent calls never mutate
it: Hugging Face's Python wrapper re-configures truncation on every call and is not safe to share
between threads.  It gives the same ids as ``AutoTokenizer(..., truncation=True)`` (tested).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from hashee.errors import BundleError, InputError


class TruncationWarning(UserWarning):
    """Some inputs were longer than the bundle's max length and were cut (``count`` of them)."""

    def __init__(self, message: str, count: int = 0) -> None:
        super().__init__(message)
        self.count = count


def _kind(item: Any) -> str:
    return type(item).__name__


def _check_text(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    if item is None:
        raise InputError(f"{where} is None; pass a string (use '' for an empty text)")
    if isinstance(item, (bytes, bytearray, memoryview)):
        raise InputError(f"{where} is bytes; decode it first, e.g. text.decode('utf-8')")
    if isinstance(item, (int, float, complex, np.number)):
        raise InputError(f"{where} is a number ({item!r}); pass a string, e.g. str(value)")
    raise InputError(f"{where} is a {_kind(item)}; pass a string or a (text, text) pair")


def normalize_texts(texts: Any) -> tuple[list[str], list[str] | None]:
    """``(first texts, second texts or None)`` from a list of strings or of (text, text) pairs.

    Raises :class:`InputError` for anything else: a bare string or bytes instead of a list, items
    that are None, bytes or numbers, pairs with a side missing, strings mixed with pairs.
    """
    if isinstance(texts, str):
        raise InputError("predict takes a list of texts, got a single string; wrap it: predict([text])")
    if isinstance(texts, (bytes, bytearray)):
        raise InputError("predict takes a list of texts, got bytes; decode and wrap it: predict([data.decode('utf-8')])")
    if texts is None or isinstance(texts, dict) or not isinstance(texts, Iterable):
        raise InputError(f"predict takes a list of strings or (text, text) pairs, got {_kind(texts)}")
    items = list(texts)
    firsts: list[str] = []
    seconds: list[str] = []
    pair_mode: bool | None = None
    for index, item in enumerate(items):
        is_pair = isinstance(item, (tuple, list))
        if pair_mode is None:
            pair_mode = is_pair
        elif is_pair != pair_mode:
            raise InputError(f"item {index} is a {'pair' if is_pair else 'single text'} but item 0 is "
                             f"{'a pair' if pair_mode else 'a single text'}; do not mix strings and pairs in "
                             f"one call: make two calls")
        if is_pair:
            if len(item) != 2:
                raise InputError(f"item {index} is a pair with {len(item)} element(s); a pair is (text, text): "
                                 f"pass '' for an empty side, or a plain string for a single text")
            firsts.append(_check_text(item[0], f"item {index}, first text,"))
            seconds.append(_check_text(item[1], f"item {index}, second text,"))
        else:
            firsts.append(_check_text(item, f"item {index}"))
    for index, text in list(enumerate(firsts)) + list(enumerate(seconds)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"item {index} holds a lone surrogate ({exc.reason}); clean it, "
                             f"e.g. text.encode('utf-8', 'replace').decode('utf-8')") from None
    return firsts, (seconds if pair_mode else None)


@dataclass
class Encoded:
    """Token ids of a list of inputs, unpadded (one int64 array per item)."""

    ids: list[np.ndarray]
    types: list[np.ndarray]
    truncated: int

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(i) for i in self.ids), dtype=np.int64, count=len(self.ids))


class TextEncoder:
    """The bundle's tokenizer, configured once; :meth:`encode` is safe to call from many threads."""

    def __init__(self, tokenizer_dir: Any, max_length: int, pad_token: str | None = None) -> None:
        from tokenizers import Tokenizer

        path = tokenizer_dir / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust library raises a bare Exception for a malformed file
            raise BundleError(f"{path} cannot be read as a tokenizer ({str(exc).splitlines()[0]}); "
                              f"re-export the bundle") from exc
        tokenizer.no_padding()
        # a second, untruncated copy tells whether a pair that fills max_length was cut: the Rust
        # library reports overflowing tokens for single texts but not always for pairs
        self.untruncated = Tokenizer.from_str(tokenizer.to_str())
        self.untruncated.no_truncation()
        tokenizer.enable_truncation(max_length, strategy="longest_first")
        self.tokenizer, self.max_length = tokenizer, max_length
        pad = tokenizer.token_to_id(pad_token) if pad_token else None
        if pad is None:
            padding = tokenizer.padding or {}
            pad = padding.get("pad_id", 0)
        self.pad_id = int(pad)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, firsts: list[str], seconds: list[str] | None = None) -> Encoded:
        inputs: list[Any] = list(zip(firsts, seconds)) if seconds is not None else firsts
        if not inputs:
            return Encoded([], [], 0)
        encodings = self.tokenizer.encode_batch(inputs, add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        types = [np.asarray(e.type_ids, dtype=np.int64) for e in encodings]
        truncated = sum(1 for e in encodings if e.overflowing)
        if seconds is not None:
            full = [i for i, e in enumerate(encodings) if len(e.ids) == self.max_length and not e.overflowing]
            if full:
                lengths = self.untruncated.encode_batch([inputs[i] for i in full], add_special_tokens=True)
                truncated += sum(1 for e in lengths if len(e.ids) > self.max_length)
        return Encoded(ids, types, truncated)


def warn_truncated(count: int, total: int, max_length: int) -> None:
    if count:
        warnings.warn(TruncationWarning(
            f"{count} of {total} input(s) were longer than the bundle's max length of {max_length} tokens and "
            f"were truncated; shorten them or export with a larger --max-length", count), stacklevel=3)
