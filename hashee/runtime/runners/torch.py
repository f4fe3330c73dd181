"""PyTorch runner: the reference model (:mod:`hashee.modeling`), for parity checks and GPU serving.

Its weights come from the bundle's ``reference/`` folder (``hashee export --with-reference``:
config.json + model.safetensors) or from a run folder passed as ``reference=``.  Only safetensors are
loaded (``use_safetensors=True``), never a pickle, and no remote code.

**Modes** (HashEE bundles; ``mode=``): ``packed`` (the reference layout, eager), ``prefix`` (the
prefix layout, eager: the host sorts and builds the masks, :mod:`hashee.prefix`) and ``graphs`` (the
prefix layout with bucketed shapes, one CUDA graph per bucket captured on first use, at most
``max_graphs``, LRU: :mod:`hashee.runtime.runners.cuda_graphs`).  In the prefix modes a host-side
:class:`~hashee.prefix.CostModel` sends a batch to the dense form (every ``W_l`` = the sequence: the
same answers, dense kernels) when HashEE would not pay.  ``auto``: ``graphs`` on a GPU, ``packed`` on CPU.

**What ran.** :attr:`TorchRunner.stats` (a :class:`PrefixStats`) counts the prefix-mode batches, how
many of them the cost model sent to the dense form, and the last batch's shape as run; tests and
monitoring read it to see the cost model act.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashee.bundle import Bundle
from hashee.errors import BackendError, BundleError
from hashee.extras import EXTRA_MODULES, install_hint, missing_modules
from hashee.runtime.runners.base import Runner

TORCH_MODES = ("auto", "packed", "prefix", "graphs")


def reference_folder(bundle: Bundle, reference: str | Path | None) -> Path:
    folder = Path(reference) if reference is not None else bundle.reference_dir
    if folder is None:
        raise BackendError(f"backend 'torch' needs the PyTorch weights, which {bundle.path} does not hold; re-export "
                           f"with hashee export --with-reference, or pass reference=RUN_DIR (the run it came from)")
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise BundleError(f"the reference folder {folder} lacks {name}; backend 'torch' reads config.json and "
                              f"model.safetensors (re-export with --with-reference)")
    return folder


@dataclass
class PrefixStats:
    """What a :class:`TorchRunner` ran in its prefix modes since it was created."""

    batches: int = 0  #: batches run in the prefix layout
    dense_batches: int = 0  #: of those, how many the cost model sent to the dense form (every ``W_l`` = S)
    last_shape: tuple[int, ...] | None = None  #: ``(B, S, W_1, ..., W_L)`` of the last batch, as run

    @property
    def last_widths(self) -> tuple[int, ...] | None:
        """``W_1..W_L`` of the last batch as run (all equal to S when it went dense)."""
        return None if self.last_shape is None else self.last_shape[2:]


class TorchRunner(Runner):
    """The PyTorch model of the bundle on CPU or CUDA; exit masks become per-token exit layers.

    ``bucket`` pads each prefix-mode batch to its bucketed shape (:func:`hashee.prefix.plan_prefix`);
    default: in ``graphs`` mode only.  ``cost_model``: ``"default"`` (one fitted to the device and
    mode), a :class:`~hashee.prefix.CostModel`, or None (never the dense form).
    """

    def __init__(self, bundle: Bundle, device: str | None = None, threads: int | None = None,
                 reference: str | Path | None = None, mode: str = "auto", max_graphs: int = 32,
                 cost_model: Any = "default", bucket: bool | None = None) -> None:
        super().__init__()
        if mode not in TORCH_MODES:
            raise BackendError(f"unknown torch mode {mode!r}; choose one of {', '.join(TORCH_MODES)}")
        missing = missing_modules(EXTRA_MODULES["torch"])
        if missing:
            raise BackendError(f"backend 'torch' runs the PyTorch reference model and needs {', '.join(missing)}, "
                               f"which this install lacks: {install_hint('torch')}")
        self.bundle, self.threads = bundle, threads
        self.folder = reference_folder(bundle, reference)
        self.device = device
        self.model: Any = None
        self.name = "torch"
        self.requested_mode, self.max_graphs, self.cost_model = mode, max_graphs, cost_model
        self.mode = "dense"
        self.graphs: Any = None
        self.bucket = bucket
        self.stats = PrefixStats()
        self._stats_lock = threading.Lock()

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    def _activate(self) -> None:
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r}: torch sees no CUDA GPU here; use device='cpu'")
        if self.threads:
            torch.set_num_threads(int(self.threads))  # process-wide in PyTorch
        hashee_model = json.loads((self.folder / "config.json").read_text()).get("model_type") == "hashee"
        if hashee_model != (self.bundle.kind == "hashee"):
            raise BundleError(f"the reference in {self.folder} is {'a HashEE' if hashee_model else 'a dense'} model "
                              f"but {self.bundle.path} is a {self.bundle.kind} bundle; pass the run it came from")
        if hashee_model:
            from hashee.modeling import HashEEForSequenceClassification as cls
        else:
            from transformers import AutoModelForSequenceClassification as cls
        model = cls.from_pretrained(str(self.folder), use_safetensors=True, trust_remote_code=False)
        self.model = model.to(device).eval()
        self.torch_device = torch.device(device)
        self.name = f"torch-{self.torch_device.type}"
        config = self.model.dense.config if hashee_model else self.model.config
        # as the ONNX graph: segment ids only where the backbone has more than one segment type
        uses_types = int(getattr(config, "type_vocab_size", 1) or 1) > 1 and config.model_type != "distilbert"
        self._inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_types else [])
        if hashee_model:
            self._inputs.append("exit_masks")
            self._setup_mode(torch)

    def _setup_mode(self, torch: Any) -> None:
        """The layout, CUDA-graph cache and cost model of a HashEE model (see the module doc)."""
        from hashee.flops import EncoderDims
        from hashee.prefix import CostModel

        mode = self.requested_mode
        if mode == "auto":
            mode = "graphs" if self.torch_device.type == "cuda" else "packed"
        if mode == "graphs" and self.torch_device.type != "cuda":
            raise BackendError("torch mode 'graphs' captures CUDA graphs and needs device='cuda'; use mode='prefix' "
                               "or 'packed' on CPU")
        self.mode = mode
        if self.bucket is None:
            self.bucket = mode == "graphs"
        if mode == "graphs":
            from hashee.modeling.prefix import prefix_encode
            from hashee.runtime.runners.cuda_graphs import GraphCache, cuda_capture

            model, layers = self.model, self.model.num_layers

            def forward(t: dict[str, Any]) -> Any:
                masks = [t[f"exit_mask_{i}"] for i in range(1, layers + 1)]
                return prefix_encode(model, t["input_ids"], t["attention_mask"], t["position_ids"], masks,
                                     t.get("token_type_ids"))[0]

            self.graphs = GraphCache(cuda_capture(forward, self.torch_device), self.max_graphs)
        if self.cost_model == "default" and mode != "packed":
            dims = EncoderDims.from_config(self.model.dense.config)
            launch = 1e-6 if mode == "graphs" else 8e-6  # a replayed kernel vs an eager launch on a GPU
            if self.torch_device.type == "cpu":
                launch = 2e-5
            self.cost_model = CostModel(dims.num_layers, dims.hidden_size, dims.intermediate_size,
                                        flops_per_second=50e12 if self.torch_device.type == "cuda" else 1e11,
                                        launch_seconds=launch)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.mode in ("prefix", "graphs"):
            return self._infer_prefix(feed)
        import torch

        tensors = {k: torch.as_tensor(v, device=self.torch_device) for k, v in feed.items() if k != "exit_masks"}
        if "exit_masks" in feed:
            exits = np.asarray(feed["exit_masks"]).sum(axis=0, dtype=np.int64)
            tensors["exit_layers"] = torch.as_tensor(exits, device=self.torch_device)
        with torch.inference_mode():
            logits = self.model(**tensors).logits
        return {"logits": logits.float().cpu().numpy()}

    def plan(self, feed: dict[str, np.ndarray]) -> Any:
        """The :class:`~hashee.prefix.PrefixBatch` this runner runs for a packed feed (prefix modes, active):
        sorted on the host, bucketed where :attr:`bucket` says, the dense form where the cost model
        says HashEE would not pay."""
        return self._plan(feed)[0]

    def _plan(self, feed: dict[str, np.ndarray]) -> tuple[Any, bool]:
        """:meth:`plan` and whether the cost model sent it to the dense form."""
        from hashee.prefix import layout_feed

        plan = layout_feed(feed, self._prefix_names(), self.model.num_layers, bucket=bool(self.bucket),
                           max_length=self.bundle.max_length, pad_id=self.pad_id)[1]
        if self.cost_model is not None and not self.cost_model.prefers_hashee(plan):
            return plan.dense(), True
        return plan, False

    def _prefix_names(self) -> list[str]:
        from hashee.prefix import mask_names

        return [n for n in self._inputs if n != "exit_masks"] + ["position_ids"] + mask_names(self.model.num_layers)

    def _infer_prefix(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The prefix layout: plan on the host, maybe the dense form (cost model), eager or a CUDA graph."""
        import torch

        from hashee.modeling.prefix import prefix_encode
        from hashee.prefix import mask_names

        plan, went_dense = self._plan(feed)
        prefix_feed = plan.feed(self._prefix_names())
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.dense_batches += int(went_dense)
            self.stats.last_shape = plan.shape
        if self.mode == "graphs":
            logits = self.graphs.run(plan.shape, prefix_feed)
        else:
            t = {k: torch.as_tensor(v, device=self.torch_device) for k, v in prefix_feed.items()}
            with torch.inference_mode():
                logits = prefix_encode(self.model, t["input_ids"], t["attention_mask"], t["position_ids"],
                                       [t[n] for n in mask_names(self.model.num_layers)],
                                       t.get("token_type_ids"))[0].float().cpu().numpy()
        return {"logits": plan.restore_rows(logits)}

    @property
    def pad_id(self) -> int:
        return int(getattr(self.model.dense.config, "pad_token_id", 0) or 0)

    def _deactivate(self) -> None:
        self.model = None
        self.graphs = None
