"""torch -> ONNX export, validation, the bundle writer and the TensorRT builder (issues #3 and #5)."""
