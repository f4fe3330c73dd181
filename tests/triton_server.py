"""Start a real tritonserver on a model repository (the slow ``triton`` tier), talk to it over HTTP/JSON.

The binary comes from ``HASHEE_TRITONSERVER``, ``PATH``, or the ``nvidia-pytriton`` wheel (which bundles
tritonserver with the Python backend; it needs numpy<2, so install it in a separate environment and
point ``HASHEE_TRITONSERVER`` at ``.../pytriton/tritonserver/bin/tritonserver``).  Only the standard
library talks to the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest


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


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, http: int, metrics: int) -> None:
        self.http, self.metrics_port = http, metrics

    def infer(self, model: str, texts: list[str]) -> dict[str, np.ndarray]:
        body = {"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}/v2/models/{model}/infer",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                out = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            pytest.fail(f"tritonserver answered {exc.code}: {exc.read().decode(errors='replace')[:2000]}")
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in out["outputs"]}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as response:
            return response.read().decode()


@contextlib.contextmanager
def running_server(repo: Path, models: list[str] | None = None, timeout: float = 120.0):
    binary = find_tritonserver()
    if binary is None:
        pytest.skip("no tritonserver found (set HASHEE_TRITONSERVER, put it on PATH, or install nvidia-pytriton)")
    http, grpc, metrics = _port(), _port(), _port()
    root = binary.parent.parent
    args = [str(binary), f"--model-repository={repo}", f"--http-port={http}", f"--grpc-port={grpc}",
            f"--metrics-port={metrics}", "--log-verbose=0", "--allow-gpu-metrics=false"]
    if (root / "backends").is_dir():
        args.append(f"--backend-directory={root / 'backends'}")
    if models:
        args += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(root / "lib"), env.get("LD_LIBRARY_PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"tritonserver exited with {process.returncode}:\n{process.stdout.read()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("tritonserver did not become ready in time")
            time.sleep(0.5)
        yield Server(http, metrics)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
