"""A command whose extra is not installed exits 1 with the ``pip install 'hashee[...]'`` that fixes it."""

from __future__ import annotations

import sys

import pytest

from hashee.cli import main
from hashee.extras import COMMANDS, missing_modules, require_extra
from hashee.errors import MissingDependencyError


@pytest.mark.parametrize("command,argv,extra,module", [
    ("convert", ["convert", "no-such-bundle"], "export", "onnxconverter_common"),
    ("export", ["export", "no-such-run", "-o", "out"], "export", "optimum"),
    ("train", ["train", "--train", "a.tsv", "-o", "out"], "train", "sklearn"),
    ("bench", ["bench", "no-such-bundle", "--data", "sst2-dev", "-o", "out"], "bench", "matplotlib"),
    ("validate-triton", ["validate-triton", "repo"], "serve", "tritonclient"),
])
def test_a_missing_extra_exits_1_naming_the_install(monkeypatch, capsys, command, argv, extra, module):
    monkeypatch.setitem(sys.modules, module, None)  # what `import module` sees when it is not installed
    assert missing_modules([module]) == [module]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"hashee {command}: error:") and f"pip install 'hashee[{extra}]'" in err and module in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_installed_modules_are_not_reported_missing():
    assert missing_modules(["json", "numpy"]) == []
    require_extra("train", ["numpy"], "nothing")  # no error
    with pytest.raises(MissingDependencyError, match=r"pip install 'hashee\[serve\]'"):
        require_extra("serve", ["no_such_module_hashee"], "it")


def test_the_base_install_commands_need_no_extra():
    assert "predict" not in COMMANDS and "infer" not in COMMANDS
