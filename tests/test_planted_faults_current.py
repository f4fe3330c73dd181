"""tests/planted_faults.py stays runnable: each fault's source text still occurs in the package and each
test it names still exists (the script itself takes minutes and is run by hand, not by pytest)."""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

import planted_faults

PACKAGE = "".join(p.read_text(encoding="utf-8") for p in sorted((REPO_ROOT / "hashee").rglob("*.py")))


@pytest.mark.parametrize("fault", planted_faults.FAULTS, ids=lambda f: f.name)
def test_each_fault_still_plants_and_names_existing_tests(fault):
    versions = [fault.edits, *fault.alternatives]
    assert any(all(old in PACKAGE for old, _ in edits) for edits in versions), \
        f"{fault.name}: its source text occurs nowhere in hashee/; update the fault to the current source"
    for test in fault.tests:
        if test.startswith("-") or "::" not in test:
            continue
        path, name = test.split("::", 1)
        function = name.split("[", 1)[0]
        assert f"def {function}(" in (REPO_ROOT / path).read_text(encoding="utf-8"), f"{fault.name}: no test {test}"
