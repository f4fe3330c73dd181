"""Which optional extra a feature needs, checked without importing it (core, standard library only).

``pip install hashee`` is the serving install (numpy, onnxruntime, tokenizers, tqdm): it runs
``hashee predict`` and ``hashee infer --engine local`` on ONNX Runtime.  Everything else comes with an
extra; a command whose extra is missing exits 1 with the ``pip install`` line that fixes it.
"""

from __future__ import annotations

import importlib.util

from hashee.errors import MissingDependencyError

#: the modules each extra brings that hashee imports (a subset: enough to tell whether it is installed)
EXTRA_MODULES = {
    "torch": ("torch", "transformers", "safetensors"),
    "train": ("torch", "transformers", "accelerate", "scipy", "sklearn"),
    "export": ("torch", "transformers", "onnx", "optimum", "onnxconverter_common"),
    "bench": ("matplotlib",),
    "serve": ("ray", "pyarrow", "tritonclient"),
}

#: what each command needs beyond the base install: (extras, modules)
COMMANDS = {
    "hash": ("train", ("transformers",)),
    "train": ("train", EXTRA_MODULES["train"]),
    "eval": ("train", ("torch", "transformers", "scipy")),
    "export": ("export", ("torch", "transformers", "onnx", "optimum", "safetensors")),
    "validate": ("export", ("torch", "transformers", "safetensors")),
    "convert": ("export", ("onnx", "onnxconverter_common")),
    "calibrate": ("export", ("onnx",)),
    "export-triton": ("export,serve", ("onnx", "tritonclient")),
    "validate-triton": ("serve", ("tritonclient",)),
    "bench": ("bench", ("matplotlib",)),
    "demo": ("all", EXTRA_MODULES["train"] + EXTRA_MODULES["export"] + EXTRA_MODULES["bench"]),
}


def missing_modules(modules: tuple[str, ...] | list[str]) -> list[str]:
    """The top-level modules of ``modules`` that cannot be imported here (found without importing them)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found and name not in missing:
            missing.append(name)
    return missing


def install_hint(extra: str) -> str:
    return f"pip install 'hashee[{extra}]'"


def require_extra(extra: str, modules: tuple[str, ...] | list[str], what: str) -> None:
    """Raise :class:`MissingDependencyError` naming the fix when any of ``modules`` is not installed."""
    missing = missing_modules(modules)
    if missing:
        raise MissingDependencyError(f"{what} needs {', '.join(missing)}, which this install lacks: "
                                     f"{install_hint(extra)}")


def require_command(command: str) -> None:
    """Check the extra of a CLI subcommand (no-op for the commands the base install runs)."""
    if command in COMMANDS:
        extra, modules = COMMANDS[command]
        require_extra(extra, modules, f"hashee {command}")
