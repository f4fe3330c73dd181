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
