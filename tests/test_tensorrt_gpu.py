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


# ------------------------------------------------------------------------ the runtime's TensorRT runner
SESSION_PROFILES = ["1x2:8x32:16x64"]  # max batch 16: the Session's batches of 32 run as chunks of 16


@pytest.fixture(scope="module")
def engines(bundle, tmp_path_factory):
    """A copy of the bundle holding exactly one fp32 and one fp16 engine (built here, max batch 16)."""
    import shutil

    from hashee.bundle import read_bundle, update_bundle
    from hashee.exporter.tensorrt_engine import build_engine

    folder = tmp_path_factory.mktemp("trt-session") / "bundle"
    shutil.copytree(bundle / "bundle", folder)
    listed = [e["file"] for e in read_bundle(folder).get("engines", [])]  # engines the tests above built
    update_bundle(folder, {}, {"engines": None}, remove=tuple(listed))
    for precision in ("fp32", "fp16"):
        build_engine(folder, precision=precision, profiles=SESSION_PROFILES, progress=False)
    return folder


def _texts(folder):
    from hashee.calibration.feeds import read_texts
    from hashee.exporter import read_bundle
    from hashee.samples import SST2_DEV

    return read_texts(SST2_DEV, read_bundle(folder)).texts


def test_session_tensorrt_fp32_matches_pytorch(bundle, engines):
    from hashee.runtime import Session

    feeds, references = _references(bundle)
    with Session.load(engines, backend="tensorrt", precision="fp32") as session:
        assert session.backend == "tensorrt" and session.runner.precision == "fp32"
        got = np.concatenate([session.run(**feed)["logits"] for feed in feeds])  # batches of 32: two chunks each
        assert np.max(np.abs(got - np.concatenate(references))) <= 1e-3
        texts = _texts(engines)
        trt_logits = session.predict_logits(texts, batch_size=32)
    with Session.load(engines, backend="onnxruntime", device="cpu") as reference:
        ort_logits = reference.predict_logits(texts, batch_size=32)
    assert np.max(np.abs(trt_logits - ort_logits)) <= 1e-3


def test_session_tensorrt_fp16_agrees_with_pytorch(bundle, engines):
    from hashee.runtime import Session

    feeds, references = _references(bundle)
    with Session.load(engines, backend="tensorrt", precision="fp16") as session:
        assert session.backend == "tensorrt" and session.runner.precision == "fp16"
        got = np.concatenate([session.run(**feed)["logits"] for feed in feeds])
    ref = np.concatenate(references)
    assert float((got.argmax(-1) == ref.argmax(-1)).mean()) >= 0.995


def test_session_chooses_fp32_by_default_and_auto_takes_tensorrt(engines):
    from hashee.runtime import Session

    with Session.load(engines, backend="tensorrt") as session:
        assert session.runner.precision == "fp32"
    with Session.load(engines) as session:
        assert session.backend == "tensorrt" and len(session.predict(["a fine film ."])) == 1


def test_session_tensorrt_serves_threads(bundle, engines):
    from concurrent.futures import ThreadPoolExecutor

    from hashee.runtime import Session

    feeds, _ = _references(bundle)
    with Session.load(engines, backend="tensorrt") as session:
        alone = [session.run(**feed)["logits"] for feed in feeds]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda feed: session.run(**feed)["logits"], feeds * 2))
    for index, logits in enumerate(together):
        assert np.allclose(logits, alone[index % len(feeds)], atol=1e-5)


def test_a_shape_outside_the_profiles_is_a_profile_error(bundle, engines):
    from hashee.errors import ProfileError
    from hashee.runtime import Session

    feeds, _ = _references(bundle)
    with Session.load(engines, backend="tensorrt") as session:
        ids = feeds[0]["input_ids"][:3, :1]  # one token: the profiles start at 2
        with pytest.raises(ProfileError, match=r"sequence length of 1 fits no optimisation profile .*--profile 1x1:"):
            session.run(ids, np.ones_like(ids))


def test_an_engine_listed_for_another_gpu_is_refused(engines, tmp_path):
    import shutil

    import torch

    from hashee.errors import BackendError
    from hashee.bundle import read_bundle, update_bundle
    from hashee.runtime import Session

    folder = tmp_path / "bundle"
    shutil.copytree(engines, folder)
    listed = read_bundle(folder)["engines"]
    update_bundle(folder, {}, {"engines": [{**e, "compute_capability": "1.0"} for e in listed]})
    major, minor = torch.cuda.get_device_capability()
    with pytest.raises(BackendError) as info:
        Session.load(folder, backend="tensorrt")
    text = str(info.value)
    assert f"built for compute capability 1.0, this GPU is {major}.{minor}" in text
    assert f"hashee build-engine {folder}" in text
    with Session.load(folder) as session:  # auto: ONNX Runtime instead
        assert session.backend.startswith("onnxruntime")
