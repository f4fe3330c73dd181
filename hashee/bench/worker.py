"""One measured backend in a process of its own (spawned by :mod:`hashee.bench.driver`).

Each backend runs in a fresh process so that its peak resident memory (``VmHWM``) is its own, while
the driver keeps every worker alive and sends them one timed pass at a time in turn, so backends are
measured side by side and a noisy neighbour slows all of them alike.

Protocol (over a ``multiprocessing`` pipe): the worker answers its start with ``("ready", info)`` or
``("skipped", reason)``; then ``("logits",)`` -> ``("ok", logits of every example, in input order)``,
``("time", batch_size, passes)`` -> ``("ok", {"passes": [s, ...], "batches": [s, ...]})``,
``("memory",)`` -> ``("ok", {"peak_mib", "current_mib"})`` and ``("close",)``.  Any error is answered
``("error", message)``.  What is timed per batch: building the exit masks from the exit table (HashEE)
and the backend's inference call, which returns host numpy arrays (so GPU work is synchronised);
tokenisation is done once beforehand and is the same for every backend.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any


def memory_mib() -> dict[str, float]:
    """This process's peak (VmHWM) and current (VmRSS) resident memory in MiB (Linux /proc)."""
    out = {"peak_mib": float("nan"), "current_mib": float("nan")}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    out["peak_mib"] = int(line.split()[1]) / 1024
                elif line.startswith("VmRSS:"):
                    out["current_mib"] = int(line.split()[1]) / 1024
    except OSError:
        import resource

        out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


class Measured:
    """A loaded Session with its inputs tokenised and its batches padded, ready to time."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import numpy as np

        from hashee.runtime import Session
        from hashee.runtime.batching import pad
        from hashee.runtime.inputs import normalize_texts

        self.np = np
        self.session = Session.load(spec["bundle"], backend=spec["backend"], device=spec.get("device"),
                                    threads=spec.get("threads"), reference=spec.get("reference"),
                                    precision=spec.get("precision"))
        firsts, seconds = normalize_texts(spec["inputs"])
        encoded = self.session.encoder.encode(firsts, seconds)
        self.count = len(firsts)
        self.table = self.session.bundle.exit_table
        self.layers = self.session.bundle.num_layers
        self.width = len(self.session.bundle.labels)
        pad_id = self.session.encoder.pad_id
        self.plans: dict[int, list[tuple[Any, dict[str, Any]]]] = {}
        plans = {int(size): plan for size, plan in spec["plans"].items()}
        plans[0] = spec["accuracy_plan"]  # every example, at the largest batch size
        for size, plan in plans.items():
            batches = []
            for index in plan:
                index = np.asarray(index, dtype=np.int64)
                ids, mask = pad(encoded.ids, index, pad_id)
                feed = {"input_ids": ids, "attention_mask": mask}
                if self.session.uses_token_type_ids:
                    feed["token_type_ids"], _ = pad(encoded.types, index, 0)
                batches.append((index, feed))
            self.plans[size] = batches

    def infer(self, feed: dict[str, Any]) -> Any:
        from hashee.runtime.batching import exit_masks

        if self.table is not None and not self.session.embedded_table:  # --embed-exit-table: the graph's own
            feed = dict(feed, exit_masks=exit_masks(feed["input_ids"], feed["attention_mask"], self.table,
                                                    self.layers))
        return self.session.run_feed(feed)["logits"]  # a prefix-layout bundle: the host sort is timed too

    def logits(self) -> Any:
        out = self.np.empty((self.count, self.width), dtype=self.np.float32)
        for index, feed in self.plans[0]:
            out[index] = self.infer(feed)
        return out

    def time(self, size: int, passes: int) -> dict[str, list[float]]:
        clock = time.perf_counter
        totals, batches = [], []
        for _ in range(passes):
            start = clock()
            for _, feed in self.plans[size]:
                before = clock()
                self.infer(feed)
                batches.append(clock() - before)
            totals.append(clock() - start)
        return {"passes": totals, "batches": batches}


def serve(conn: Any, spec: dict[str, Any]) -> None:
    """Worker entry point: load, answer commands until ``close``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.simplefilter("ignore")
    from hashee.errors import HasheeError

    before = memory_mib()
    try:
        measured = Measured(spec)
    except HasheeError as exc:
        conn.send(("skipped", str(exc)))
        conn.close()
        return
    except Exception as exc:  # a bug or a library failure: reported, never silently dropped
        conn.send(("skipped", f"failed to load: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
        conn.close()
        return
    conn.send(("ready", {"device": measured.session.backend, "start_mib": before["current_mib"],
                         "loaded_mib": memory_mib()["current_mib"]}))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        try:
            if message[0] == "close":
                conn.send(("ok", None))
                return
            if message[0] == "logits":
                conn.send(("ok", measured.logits()))
            elif message[0] == "time":
                conn.send(("ok", measured.time(int(message[1]), int(message[2]))))
            elif message[0] == "memory":
                conn.send(("ok", memory_mib()))
            else:
                conn.send(("error", f"unknown command {message[0]!r}"))
        except Exception as exc:  # keep serving: the driver records the failure
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))
