"""One session, many threads: identical results to sequential calls; random Unicode never crashes it."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("onnxruntime")

from hashee.exporter.validate import sample_texts  # noqa: E402
from hashee.runtime import Session  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::hashee.runtime.inputs.TruncationWarning")


@pytest.fixture(scope="module")
def session(tiny_bundles):
    with Session.load(tiny_bundles["bert"], backend="onnxruntime", threads=1) as s:
        yield s


def test_eight_threads_give_the_sequential_results(session):
    texts = sample_texts(16) + ["", "x" * 300, "the " * 60]
    calls = [[texts[(i + j) % len(texts)] for j in range(1 + i % 7)] for i in range(100)]  # 100 distinct calls
    expected = [session.predict(call, batch_size=4) for call in calls]
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(thread: int) -> None:
        try:
            start.wait()
            results[thread] = [session.predict(calls[(i + 13 * thread) % 100], batch_size=4) for i in range(100)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for thread in range(8):
        for i in range(100):
            assert results[thread][i] == expected[(i + 13 * thread) % 100]


TEXT = st.text(st.characters(codec="utf-8", categories=None), max_size=200) | st.sampled_from([
    "\u202eRTL override \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "\U0001f600\U0001f3f3\ufe0f\u200d\U0001f308 emoji \u2764\ufe0f",
    "\x00\x01\x07\x1b[31m control \r\n\t",
    "a" * 5000,  # one very long word
    "supercalifragilistic" * 100,
    "",
    " ",
    "\u0301\u0301 combining",
])
ITEMS = st.lists(TEXT, min_size=1, max_size=6) | st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=6)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(items=ITEMS)
def test_random_unicode_never_crashes(session, items):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = session.predict(items, batch_size=4)
    assert len(results) == len(items)
    for result in results:
        assert set(result) == {"label", "score"} and result["label"] in session.labels
        assert np.isfinite(result["score"]) and 0.5 <= result["score"] <= 1.0


def _in_threads(count: int, work) -> list:
    """``work(thread)`` in ``count`` threads started together; their results in thread order."""
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(thread: int) -> None:
        try:
            start.wait()
            results[thread] = work(thread)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return [results[t] for t in range(count)]


def test_threads_with_different_batch_sizes_share_one_session(session):
    texts = sample_texts(16) + ["", "the " * 60]
    sizes = [1, 3, 8, 32]
    expected = session.predict_logits(texts, batch_size=4)
    got = _in_threads(8, lambda t: [session.predict_logits(texts[t:] + texts[:t], batch_size=sizes[t % 4])
                                    for _ in range(5)])
    for thread, runs in enumerate(got):
        want = np.concatenate([expected[thread:], expected[:thread]])
        for logits in runs:
            assert np.abs(logits - want).max() < 1e-5


def test_session_run_from_several_threads(session):
    """The low-level ``run`` with arrays of different shapes per thread gives the sequential answers."""
    encoder = session.encoder
    feeds = []
    for count in (1, 2, 5, 7):
        encoded = encoder.encode(sample_texts(count + 3)[3:])
        width = max(len(i) for i in encoded.ids)
        ids = np.array([list(i) + [encoder.pad_id] * (width - len(i)) for i in encoded.ids])
        mask = np.array([[1] * len(i) + [0] * (width - len(i)) for i in encoded.ids])
        feeds.append((ids, mask, np.zeros_like(ids)))
    expected = [session.run(*feed)["logits"] for feed in feeds]
    got = _in_threads(8, lambda t: [session.run(*feeds[(t + i) % 4])["logits"] for i in range(12)])
    for thread, runs in enumerate(got):
        for i, logits in enumerate(runs):
            assert logits.shape == expected[(thread + i) % 4].shape
            assert np.abs(logits - expected[(thread + i) % 4]).max() < 1e-6


def test_torch_backend_from_several_threads(tiny_bundles):
    texts = sample_texts(12) + ["", "a"]
    with Session.load(tiny_bundles["bert"], backend="torch", device="cpu", threads=1) as torch_session:
        expected = [torch_session.predict_logits(texts[i:] + texts[:i], batch_size=1 + i) for i in range(4)]
        got = _in_threads(4, lambda t: [torch_session.predict_logits(texts[t:] + texts[:t], batch_size=1 + t)
                                        for _ in range(3)])
    for thread, runs in enumerate(got):
        for logits in runs:
            assert np.abs(logits - expected[thread]).max() < 1e-5
