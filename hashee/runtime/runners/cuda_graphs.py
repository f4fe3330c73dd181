"""CUDA graphs per bucketed shape for the torch backend (issue 14).

The prefix layout makes every shape of a forward a function of the input shapes ``(B, S, W_1..W_L)``;
bucketing (:func:`hashee.prefix.plan_prefix` with ``bucket=True``) keeps the number of distinct shapes
small.  :class:`GraphCache` keeps one captured graph per shape, captured on first use, at most
``max_graphs`` of them (least recently used evicted first).  :func:`cuda_capture` captures a forward
with static input buffers: a replay copies the batch into them, replays the kernels, and reads the
output buffer.  torch is imported only when a graph is captured.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np

from hashee.errors import BackendError

#: a captured forward: numpy inputs by name -> the output (numpy)
Replay = Callable[[dict[str, np.ndarray]], np.ndarray]


class GraphCache:
    """At most ``max_graphs`` captured forwards keyed by shape; LRU eviction; thread-safe.

    ``capture(inputs)`` makes a :data:`Replay` for the shape of ``inputs`` (``cuda_capture`` on a GPU).
    """

    def __init__(self, capture: Callable[[dict[str, np.ndarray]], Replay], max_graphs: int = 32) -> None:
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise BackendError(f"max_graphs must be a positive integer, got {max_graphs!r}")
        self.capture, self.max_graphs = capture, max_graphs
        self._graphs: OrderedDict[Hashable, Replay] = OrderedDict()
        self._lock = threading.Lock()
        self.captures = 0
        self.replays = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def keys(self) -> list[Hashable]:
        """Shapes held, least recently used first."""
        return list(self._graphs)

    def run(self, key: Hashable, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Replay the graph of ``key`` on ``inputs`` (capturing it first when new)."""
        with self._lock:  # one replay at a time: the static buffers are shared
            replay = self._graphs.get(key)
            if replay is None:
                replay = self.capture(inputs)
                self.captures += 1
                self._graphs[key] = replay
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
            self.replays += 1
            return replay(inputs)


def cuda_capture(forward: Callable[[dict[str, Any]], Any], device: Any, pool: Any = None,
                 warmup: int = 2) -> Callable[[dict[str, np.ndarray]], Replay]:
    """A ``capture`` for :class:`GraphCache`: ``forward`` (torch tensors by name -> a tensor) as a CUDA graph.

    Static input buffers are allocated from the first batch of each shape; warm-up runs on a side
    stream (as ``torch.cuda.graphs`` requires), then one capture; graphs share ``pool`` (default: a new
    one), which is safe because replays are serialised by the cache's lock.
    """
    import torch

    if not torch.cuda.is_available():
        raise BackendError("CUDA graphs need a CUDA GPU; torch sees none here")
    shared = pool if pool is not None else torch.cuda.graph_pool_handle()

    def capture(inputs: dict[str, np.ndarray]) -> Replay:
        static = {name: torch.as_tensor(np.ascontiguousarray(a)).to(device) for name, a in inputs.items()}
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode():
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    forward(static)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=shared):
                output = forward(static)

        def replay(batch: dict[str, np.ndarray]) -> np.ndarray:
            for name, buffer in static.items():
                buffer.copy_(torch.as_tensor(np.ascontiguousarray(batch[name])))
            graph.replay()
            return output.float().cpu().numpy()

        return replay

    return capture
