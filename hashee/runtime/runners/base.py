"""The runner interface every backend implements (after Polygraphy's ``BaseRunner``).

A runner is created cheaply, loads its model in :meth:`Runner.activate`, answers
:meth:`Runner.infer` on already-validated numpy feeds (any number of threads at once), and frees the
model in :meth:`Runner.deactivate`.  Input validation belongs to :class:`hashee.runtime.Session`,
so runners stay small.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Runner(ABC):
    """One backend's way of running a bundle's graph contract on numpy arrays."""

    #: what ``Session.backend`` reports once active, e.g. ``onnxruntime-cpu``
    name: str = "runner"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.is_active = False

    def activate(self) -> "Runner":
        """Load the model (idempotent, thread-safe)."""
        with self._lock:
            if not self.is_active:
                self._activate()
                self.is_active = True
        return self

    def deactivate(self) -> None:
        """Free the model; :meth:`activate` loads it again."""
        with self._lock:
            if self.is_active:
                self._deactivate()
                self.is_active = False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for a feed of the graph's inputs (validated by the caller)."""
        if not self.is_active:
            self.activate()
        return self._infer(feed)

    @property
    @abstractmethod
    def input_names(self) -> list[str]:
        """The graph's input names, in order (after activation)."""

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _deactivate(self) -> None:  # noqa: B027 - optional hook: runners with nothing to free keep it
        """Free what :meth:`_activate` loaded (optional)."""

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()
