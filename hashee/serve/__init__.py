"""Scale-out on existing engines (issue #7): Triton Inference Server repositories and Ray Data inference.

::

    from hashee.serve import export_triton, validate_triton, run_infer
    export_triton("bundles/sst2", "triton_repo", backend="onnxruntime", buckets="32,64,128")
    validate_triton("triton_repo")                      # [] when every check passes
    run_infer("bundles/sst2", "in.jsonl", "out.jsonl", engine="ray", actors=2)

Ray, pyarrow and tritonclient are optional (``pip install 'hashee[serve]'``) and load only inside the
functions that need them.
"""

from hashee.serve.infer import run_infer
from hashee.serve.triton import export_triton, validate_triton

__all__ = ["export_triton", "run_infer", "validate_triton"]
