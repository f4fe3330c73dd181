"""torch -> ONNX export, validation, the bundle writer (issue #3) and the TensorRT engine builder (#5).

Public API::

    from hashee.exporter import export, validate_bundle, read_bundle
    result = export("runs/sst2-hashee", "bundles/sst2", target="onnxruntime")
    print(validate_bundle("bundles/sst2", "dev.tsv").format())
    # reduced precision lives in hashee.calibration (fp16.add_fp16, int8.calibrate_bundle); engines:
    from hashee.exporter.tensorrt_engine import build_engine, TensorRTEngine   # needs tensorrt + a GPU

Heavy libraries (onnx, onnxruntime, optimum, torch) are imported inside the functions that use them.
"""

from hashee.bundle import FORMAT_VERSION, read_bundle  # the format lives in the core; kept here for callers
from hashee.exporter.export import ExportResult, export
from hashee.exporter.targets import TARGETS, tensorrt_violations
from hashee.exporter.validate import BundleValidation, validate_bundle

__all__ = ["FORMAT_VERSION", "TARGETS", "BundleValidation", "ExportResult", "export", "read_bundle",
           "tensorrt_violations", "validate_bundle"]
