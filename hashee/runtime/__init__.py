"""Bundle reader, Session API and backend runners (issues #4 and #5).

::

    from hashee.runtime import Session
    session = Session.load("bundles/sst2", backend="auto")
    print(session.backend, session.predict(["a fine film ."]))

Only numpy and the standard library load with this package; onnxruntime, tokenizers, torch and
tensorrt load inside the runner or encoder that needs them.
"""

from hashee.bundle import Bundle, open_bundle
from hashee.runtime.inputs import TruncationWarning
from hashee.runtime.runners import BACKENDS
from hashee.runtime.session import Session

__all__ = ["BACKENDS", "Bundle", "Session", "TruncationWarning", "open_bundle"]
