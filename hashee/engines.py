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
        """(min, opt, max) shapes of input ``name`` ([B, S], or [L, B, S] for ``exit_masks``)."""
        lead = (num_layers,) if name == "exit_masks" else ()
        return tuple(lead + (b, s) for b, s in zip(self.batch, self.sequence))

    def to_meta(self) -> dict[str, list[int]]:
        return {"batch": list(self.batch), "sequence": list(self.sequence)}


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
                     profiles: list[Profile]) -> str:
    """``engines/model.<precision>.sm<cc>.trt<version>.<profiles>.plan`` (a plan runs on that GPU and TensorRT only)."""
    major, minor = compute_capability
    tags = "+".join(p.tag for p in profiles)
    return f"{ENGINES_DIR}/model.{precision}.sm{major}{minor}.trt{tensorrt_version}.{tags}.plan"
