"""TensorRT engine entries of the bundle format: optimisation profiles and plan file names (core, stdlib only).

The builder (:mod:`hashee.exporter.tensorrt_engine`) writes them, the runtime's TensorRT runner
(:mod:`hashee.runtime.runners.tensorrt`) reads them back from ``hashee.json``; both check profiles here
before TensorRT sees them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hashee.bundle import ENGINES_DIR
from hashee.errors import ProfileError

_DIMS = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: (min, opt, max) of the batch and of the sequence length."""

    batch: tuple[int, int, int]
    sequence: tuple[int, int, int]

    @property
    def tag(self) -> str:
        return f"b{'-'.join(map(str, self.batch))}_s{'-'.join(map(str, self.sequence))}"

    def shapes(self, name: str, num_layers: int) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) shapes of input ``name`` ([B, S], or [L, B, S] for ``exit_masks``, or
        [B, W_l] for the prefix layout's ``exit_mask_l``: see :meth:`width_range`)."""
        layer = mask_layer(name)
        if layer is not None:
            return tuple((b, w) for b, w in zip(self.batch, self.width_range(layer, num_layers)))
        lead = (num_layers,) if name == "exit_masks" else ()
        return tuple(lead + (b, s) for b, s in zip(self.batch, self.sequence))

    def width_range(self, layer: int, num_layers: int) -> tuple[int, int, int]:
        """(min, opt, max) of ``W_l``, the width of ``exit_mask_l`` (prefix layout), from the sequence range.

        ``W_1`` is the sequence length.  Deeper layers hold 1 .. the longest sequence; the optimum
        assumes the active share falls linearly with depth (``ceil(opt * (L - l + 1) / L)``).
        """
        low, opt, high = self.sequence
        if layer == 1:
            return (low, opt, high)
        return (1, max(1, -(-opt * (num_layers - layer + 1) // num_layers)), high)

    def prefix_problem(self, shapes: dict[str, tuple[int, ...]], num_layers: int) -> str | None:
        """Why the prefix-layout input ``shapes`` do not fit this profile (None: they do)."""
        for name, shape in shapes.items():
            layer = mask_layer(name)
            if layer is None:
                continue
            low, _, high = self.width_range(layer, num_layers)
            width, sequence = shape[-1], shapes.get("input_ids", shape)[-1]
            if not low <= width <= min(high, sequence) or (layer == 1 and width != sequence):
                return (f"{name} has width {width}, outside {low}..{min(high, sequence)} (the profile's range for "
                        f"W_{layer} at sequence {sequence}" + ("; W_1 must equal the sequence length)" if layer == 1
                                                               else ")"))
        return None

    def to_meta(self) -> dict[str, list[int]]:
        return {"batch": list(self.batch), "sequence": list(self.sequence)}


def mask_layer(name: str) -> int | None:
    """``l`` for the prefix layout's input ``exit_mask_l``, else None."""
    head, _, tail = str(name).rpartition("_")
    return int(tail) if head == "exit_mask" and tail.isdigit() and int(tail) >= 1 else None


def bundle_layout(meta: dict) -> str:
    """``packed`` or ``prefix``: the compute layout of a bundle's graph (``onnx.layout``; older bundles: packed)."""
    return str((meta.get("onnx") or {}).get("layout") or "packed")


def parse_profile(text: str) -> Profile:
    """``"1x8:32x64:128x128"`` (BATCHxSEQ for min:opt:max) -> :class:`Profile`; :class:`ProfileError` if malformed."""
    parts = str(text).split(":")
    if len(parts) != 3:
        raise ProfileError(f"profile {text!r} must be MIN:OPT:MAX, each BATCHxSEQ (e.g. 1x8:32x64:128x128)")
    dims = []
    for part in parts:
        match = _DIMS.match(part)
        if not match:
            raise ProfileError(f"profile {text!r}: {part!r} is not BATCHxSEQ with positive integers (e.g. 32x64)")
        dims.append((int(match.group(1)), int(match.group(2))))
    return Profile(tuple(d[0] for d in dims), tuple(d[1] for d in dims))  # type: ignore[arg-type]


def validate_profiles(profiles: list[Profile], max_length: int) -> list[Profile]:
    """Check every profile against the bundle before TensorRT sees it; returns them unchanged."""
    if not profiles:
        raise ProfileError("at least one optimisation profile is needed")
    for profile in profiles:
        where = f"profile {':'.join(f'{b}x{s}' for b, s in zip(profile.batch, profile.sequence))}"
        for axis, (low, opt, high) in (("batch", profile.batch), ("sequence", profile.sequence)):
            if low < 1:
                raise ProfileError(f"{where}: the minimum {axis} must be at least 1, got {low}")
            if not low <= opt <= high:
                raise ProfileError(f"{where}: {axis} must satisfy min <= opt <= max, got {low}, {opt}, {high}")
        if profile.sequence[2] > max_length:
            raise ProfileError(f"{where}: the maximum sequence length {profile.sequence[2]} exceeds the bundle's "
                               f"max length {max_length}; use at most {max_length} (or re-export with --max-length)")
    if len(set(profiles)) != len(profiles):
        raise ProfileError("the same profile is given twice")
    return profiles


def default_profiles(max_length: int) -> list[Profile]:
    """One profile: batch 1..128 (opt 32), sequence 2..max length (opt half of it)."""
    return [Profile((1, 32, 128), (min(2, max_length), max(2, max_length // 2), max_length))]


def engine_file_name(precision: str, compute_capability: tuple[int, int], tensorrt_version: str,
                     profiles: list[Profile], layout: str = "packed") -> str:
    """``engines/model.<precision>[.prefix].sm<cc>.trt<version>.<profiles>.plan`` (a plan runs on that GPU
    and TensorRT only)."""
    major, minor = compute_capability
    tags = "+".join(p.tag for p in profiles)
    kind = f"{precision}.prefix" if layout == "prefix" else precision
    return f"{ENGINES_DIR}/model.{kind}.sm{major}{minor}.trt{tensorrt_version}.{tags}.plan"
