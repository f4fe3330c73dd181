"""PyTorch runner: the reference model (:mod:`hashee.modeling`), for parity checks.

Its weights come from the bundle's ``reference/`` folder (``hashee export --with-reference``:
config.json + model.safetensors) or from a run folder passed as ``reference=``.  Only safetensors are
loaded (``use_safetensors=True``), never a pickle, and no remote code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hashee.bundle import Bundle
from hashee.errors import BackendError, BundleError
from hashee.extras import EXTRA_MODULES, install_hint, missing_modules
from hashee.runtime.runners.base import Runner


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


class TorchRunner(Runner):
    """The PyTorch model of the bundle on CPU or CUDA; exit masks become per-token exit layers."""

    def __init__(self, bundle: Bundle, device: str | None = None, threads: int | None = None,
                 reference: str | Path | None = None) -> None:
        super().__init__()
        missing = missing_modules(EXTRA_MODULES["torch"])
        if missing:
            raise BackendError(f"backend 'torch' runs the PyTorch reference model and needs {', '.join(missing)}, "
                               f"which this install lacks: {install_hint('torch')}")
        self.bundle, self.threads = bundle, threads
        self.folder = reference_folder(bundle, reference)
        self.device = device
        self.model: Any = None
        self.name = "torch"

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

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = {k: torch.as_tensor(v, device=self.torch_device) for k, v in feed.items() if k != "exit_masks"}
        if "exit_masks" in feed:
            exits = np.asarray(feed["exit_masks"]).sum(axis=0, dtype=np.int64)
            tensors["exit_layers"] = torch.as_tensor(exits, device=self.torch_device)
        with torch.inference_mode():
            logits = self.model(**tensors).logits
        return {"logits": logits.float().cpu().numpy()}

    def _deactivate(self) -> None:
        self.model = None
