"""Reading the JSON files hashee writes (manifests, exit-table metadata), with one typed error (core, stdlib only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path, error: type[Exception], fix: str) -> Any:
    """``json.loads`` of ``path``; a malformed or non-UTF-8 file raises ``error`` saying ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc}); {fix}") from exc
