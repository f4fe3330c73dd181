"""GPU tier: TensorRT engines of the tiny model in fp32, fp16 and int8 against the references
(PyTorch and the fp32 graph on ONNX Runtime).  Skipped with a reason without a GPU or TensorRT."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

PROFILE = "1x2:16x32:64x64"  # the tiny tokenizer's max length is 64


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'hashee[tensorrt]')")
    from export_helpers import tiny_run

    from hashee.calibration.fp16 import add_fp16
    from hashee.calibration.int8 import calibrate_bundle
    from hashee.exporter import export
    from hashee.samples import SST2_TRAIN

    root = tmp_path_factory.mktemp("trt")
    run = tiny_run(root / "run", "bert", seed=4)
    export(run, root / "bundle", target="tensorrt", progress=False)
    add_fp16(root / "bundle")
    calibrate_bundle(root / "bundle", SST2_TRAIN, samples=64, progress=False)
    return root


def _references(root):
    """(feeds, PyTorch logits) over the 400 sentences of the bundled SST-2 dev sample, batches of 32."""
    import torch

    from hashee.calibration.feeds import BundleFeeder, read_texts
    from hashee.modeling import HashEEForSequenceClassification
    from hashee.samples import SST2_DEV

    feeder = BundleFeeder(root / "bundle")
    model = HashEEForSequenceClassification.from_pretrained(str(root / "run")).eval()
    feeds, logits = [], []
    for _, feed in feeder.batches(read_texts(SST2_DEV, feeder.meta), 32):
        with torch.no_grad():
            ids = {k: torch.as_tensor(v) for k, v in feed.items() if k != "exit_masks"}
            logits.append(model(**ids).logits.numpy())
        feeds.append(feed)
    return feeds, logits


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_and_matches_the_reference(bundle, precision, tmp_path):
    from hashee.exporter import read_bundle
    from hashee.exporter.tensorrt_engine import TensorRTEngine, build_engine

    cache = tmp_path / "timing.cache"
    result = build_engine(bundle / "bundle", precision=precision, profiles=[PROFILE, "1x2:1x8:1x16"],
                          timing_cache=cache, progress=False)
    meta = read_bundle(bundle / "bundle")  # the plan is listed with its sha256
    assert result.entry["file"] in meta["files"] and result.entry in meta["engines"]
    assert cache.stat().st_size > 0
    build_engine(bundle / "bundle", precision=precision, profiles=[PROFILE, "1x2:1x8:1x16"], timing_cache=cache,
                 progress=False)  # rebuilt from the timing cache, same file name, manifest still coherent
    read_bundle(bundle / "bundle")

    engine = TensorRTEngine(bundle / "bundle" / result.entry["file"])
    feeds, references = _references(bundle)
    outputs = [engine.infer(feed)["logits"] for feed in feeds]
    got, ref = np.concatenate(outputs), np.concatenate(references)
    agreement = float((got.argmax(-1) == ref.argmax(-1)).mean())
    if precision == "fp32":
        assert np.max(np.abs(got - ref)) <= 1e-3
    elif precision == "fp16":
        assert agreement >= 0.995
    else:
        assert agreement >= 0.95
    single = engine.infer({k: v[:1, :8] if k != "exit_masks" else v[:, :1, :8] for k, v in feeds[0].items()})
    assert single["logits"].shape == (1, 2)  # served by the second profile
