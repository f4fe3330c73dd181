"""validate / convert / calibrate on a bundle exported with ``--embed-exit-table`` (issue 11): they used to
crash with "Invalid input name: exit_masks"; now each runs the graph through the runtime's Session."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export_helpers import tiny_run  # noqa: E402

from hashee.cli import main  # noqa: E402
from hashee.exporter import export  # noqa: E402
from hashee.runtime import Session  # noqa: E402
from hashee.samples import SST2_DEV, SST2_TRAIN, sample_texts  # noqa: E402


@pytest.fixture(scope="module", params=["bert", "roberta"])
def embedded(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"embedded-{request.param}")
    run = tiny_run(root / "run", request.param, seed=5)
    export(run, root / "bundle", progress=False, max_length=48, embed_exit_table=True, target="tensorrt")
    return root / "bundle"


def test_validate_convert_calibrate_succeed_on_an_embedded_table_bundle(embedded, capsys):
    assert main(["validate", str(embedded), "--data", str(SST2_DEV), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "label agreement with PyTorch: 100.00 %" in out and "(400 examples)" in out
    assert main(["convert", str(embedded)]) == 0
    assert main(["calibrate", str(embedded), "--data", str(SST2_TRAIN), "--samples", "32", "--quiet",
                 "--eval-samples", "32", "--eval-data", str(SST2_DEV)]) == 0
    meta = json.loads((embedded / "hashee.json").read_text())
    assert meta["onnx"]["exit_table"] == "embedded"
    assert set(meta["precisions"]) == {"fp16", "int8"}
    # the embedded graph fixes its own masks: only the table's cases were compared
    assert "every token exits at layer 1" not in meta["precisions"]["fp16"]["validation"]["cases"]
    assert meta["precisions"]["fp16"]["validation"]["label_agreement"] >= 0.99
    assert meta["precisions"]["int8"]["evaluation"]["num_examples"] == 32
    # each file the commands wrote serves through the Session and agrees with fp32 on labels
    texts = sample_texts(16)
    with Session.load(embedded, backend="onnxruntime", device="cpu") as fp32:
        reference = fp32.predict_logits(texts)
        view = fp32.bundle
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        with Session.for_model_file(view, embedded / name) as other:
            assert not other.takes_exit_masks
            logits = other.predict_logits(texts)
        assert logits.shape == reference.shape and np.isfinite(logits).all()
    with Session.for_model_file(view, embedded / "model.fp16.onnx") as fp16:
        assert (fp16.predict_logits(texts).argmax(-1) == reference.argmax(-1)).mean() >= 0.9
