"""Start a real tritonserver on a model repository (the slow ``triton`` tier), talk to it over HTTP/JSON.

The binary comes from ``HASHEE_TRITONSERVER``, ``PATH``, or the ``nvidia-pytriton`` wheel (which bundles
tritonserver with the Python backend and one Python-backend stub per Python version).  Only the standard
library talks to the server.

The Python backend runs ``model.py`` in a *stub* process: a C++ program embedding the libpython it was
built against, which ignores ``PYTHONPATH`` and finds its packages through the environment that
``EXECUTION_ENV_PATH`` names (activated before the stub starts).  That environment needs numpy and
tokenizers for our tokenizer, for the stub's Python version, and - for the stub of tritonserver 2.51
(nvidia-pytriton 0.7.0) - numpy < 2: under numpy 2 the stub misreads every string input tensor and
dies on the first request (``terminate called after throwing an instance of
'pybind11::error_already_set' ... unpack_from requires a buffer of at least 185273103 bytes ...
(actual buffer size is 15)`` in ``triton_python_backend_utils.deserialize_bytes_tensor``), which the
server reports as ``Stub process '<model>_0_0' is not healthy``.  ``HASHEE_TRITON_PYTHON_ENV`` names such
an environment (a venv or conda folder with ``bin/activate``); without it the running interpreter's own
environment is used when it qualifies, and the tier is skipped with the reason when nothing does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

NUMPY2_EVIDENCE = ("tritonserver 2.51's Python-backend stub misreads string inputs under numpy 2 (first request: "
                   "'unpack_from requires a buffer of at least 185273103 bytes ... (actual buffer size is 15)', then "
                   "\"Stub process ... is not healthy\")")
ENV_HINT = ("set HASHEE_TRITON_PYTHON_ENV to a venv made with the stub's Python (e.g. /usr/bin/python3.11 -m venv "
            "ENV && ENV/bin/pip install 'numpy<2' tokenizers)")


def find_tritonserver() -> Path | None:
    explicit = os.environ.get("HASHEE_TRITONSERVER")
    if explicit and Path(explicit).is_file():
        return Path(explicit)
    found = shutil.which("tritonserver")
    if found:
        return Path(found)
    try:
        import pytriton  # noqa: F401

        candidate = Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
        return candidate if candidate.is_file() else None
    except ImportError:
        return None


def has_backend(name: str) -> bool:
    binary = find_tritonserver()
    return binary is not None and (binary.parent.parent / "backends" / name).is_dir()


def _stub_python(stub: Path) -> str | None:
    """``"3.11"`` for a stub linked against ``libpython3.11.so`` (read from its dynamic section's strings)."""
    found = re.search(rb"libpython(3\.\d+)\.so", stub.read_bytes())
    return found.group(1).decode() if found else None


@dataclass
class PythonEnv:
    """The environment ``EXECUTION_ENV_PATH`` names, and the stub that goes with its Python version."""

    path: Path
    python: str  # "3.11"
    stub: Path


def _describe(env: Path) -> dict | str:
    """Python version, numpy and tokenizers versions of ``env`` (or why they could not be read)."""
    python = env / "bin" / "python"
    if not (env / "bin" / "activate").is_file() or not python.exists():
        return f"{env} has no bin/activate and bin/python (a venv or conda environment folder is needed)"
    probe = ("import json, sys\nout = {'python': '%d.%d' % sys.version_info[:2]}\n"
             "for name in ('numpy', 'tokenizers'):\n"
             "    try:\n        out[name] = __import__(name).__version__\n"
             "    except Exception as exc:\n        out[name] = None; out[name + '_error'] = repr(exc)\n"
             "print(json.dumps(out))")
    try:
        done = subprocess.run([str(python), "-c", probe], check=False, capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} did not run: {exc}"
    if done.returncode != 0:
        return f"{python} failed: {done.stderr.strip()[-500:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def python_env(binary: Path) -> PythonEnv:
    """The stub's environment for ``binary``'s Python backend, or ``pytest.skip`` with the exact reason."""
    backend = binary.parent.parent / "backends" / "python"
    if not backend.is_dir():
        pytest.skip(f"{binary} has no Python backend ({backend} is missing)")
    explicit = os.environ.get("HASHEE_TRITON_PYTHON_ENV")
    env = Path(explicit) if explicit else Path(sys.prefix)
    where = "HASHEE_TRITON_PYTHON_ENV" if explicit else "the running interpreter's environment"
    info = _describe(env)
    if isinstance(info, str):
        pytest.skip(f"{where}: {info}; {ENV_HINT}")
    for name in ("numpy", "tokenizers"):
        if info[name] is None:
            pytest.skip(f"{where} ({env}) cannot import {name} ({info[name + '_error']}); {ENV_HINT}")
    if int(info["numpy"].split(".")[0]) >= 2:
        pytest.skip(f"{where} ({env}) has numpy {info['numpy']}, but {NUMPY2_EVIDENCE}; {ENV_HINT}")
    stubs = binary.parent.parent / "python_backend_stubs"  # the nvidia-pytriton layout: one stub per version
    stub = stubs / info["python"] / "triton_python_backend_stub"
    if not stub.is_file():
        stub = backend / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.skip(f"no Python-backend stub for Python {info['python']} next to {binary}")
    built_for = _stub_python(stub)
    if built_for is not None and built_for != info["python"]:
        pytest.skip(f"the Python-backend stub {stub} embeds Python {built_for}, but {where} ({env}) is Python "
                    f"{info['python']}; {ENV_HINT}")
    return PythonEnv(env, info["python"], stub)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, http: int, metrics: int, log: Path) -> None:
        self.http, self.metrics_port, self.log = http, metrics, log

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def infer(self, model: str, texts: list[str]) -> dict[str, np.ndarray]:
        body = {"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}/v2/models/{model}/infer",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                out = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            pytest.fail(f"tritonserver answered {exc.code}: {exc.read().decode(errors='replace')[:2000]}\n"
                        f"server log (end):\n{self.log_tail()}")
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in out["outputs"]}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as response:
            return response.read().decode()


def _backends(binary: Path, stub: Path, folder: Path) -> Path:
    """A backend directory whose Python backend runs ``stub`` (the wheel ships one stub per Python version)."""
    source = binary.parent.parent / "backends"
    if (source / "python" / "triton_python_backend_stub").is_file() and \
            (source / "python" / "triton_python_backend_stub").read_bytes() == stub.read_bytes():
        return source
    target = folder / "backends"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "triton_python_backend_stub"))
    shutil.copy2(stub, target / "python" / "triton_python_backend_stub")
    return target


@contextlib.contextmanager
def running_server(repo: Path, env: PythonEnv, models: list[str] | None = None, timeout: float = 120.0):
    binary = find_tritonserver()
    if binary is None:
        pytest.skip("no tritonserver found (set HASHEE_TRITONSERVER, put it on PATH, or install nvidia-pytriton)")
    http, grpc, metrics = _port(), _port(), _port()
    root = binary.parent.parent
    with tempfile.TemporaryDirectory(prefix="hashee-triton-") as scratch:
        log = Path(scratch) / "tritonserver.log"
        args = [str(binary), f"--model-repository={repo}", f"--http-port={http}", f"--grpc-port={grpc}",
                f"--metrics-port={metrics}", "--log-verbose=1", "--allow-gpu-metrics=false", "--exit-timeout-secs=5",
                f"--backend-directory={_backends(binary, env.stub, Path(scratch))}"]
        if models:
            args += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)]
        server_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the stub ignores it anyway
        # the wheel's libraries sit beside the package (found through RPATHs relative to the binaries, which a
        # copied backend directory no longer has)
        libs = [p for p in (root / "lib", root.parent.parent / "nvidia_pytriton.libs") if p.is_dir()]
        server_env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*map(str, libs),
                                                                      server_env.get("LD_LIBRARY_PATH")]))
        with open(log, "w") as sink:
            process = subprocess.Popen(args, env=server_env, stdout=sink, stderr=subprocess.STDOUT)
        server = Server(http, metrics, log)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    pytest.fail(f"tritonserver exited with {process.returncode}:\n{server.log_tail(4000)}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"tritonserver did not become ready in {timeout:.0f} s:\n{server.log_tail()}")
                time.sleep(0.5)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
