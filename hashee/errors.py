"""Typed errors.

Every error a user can cause derives from :class:`HasheeError`; the CLI turns one into a one-line
message and exit status 1.  Anything else is a bug in hashee and keeps its traceback.
"""


class HasheeError(Exception):
    """Base class of every user-facing error: the message says what is wrong and how to fix it."""


class ExitTableError(HasheeError, ValueError):
    """An exit table is malformed, or does not fit the tokenizer or model it is used with."""


class HashConfigError(HasheeError, ValueError):
    """Arguments for building or calibrating an exit table are inconsistent (kind, layers, buckets)."""


class ModelInputError(HasheeError, ValueError):
    """Tensors passed to a HashEE model have the wrong dtype, shape, rank or values."""


class BackboneError(HasheeError, ValueError):
    """The backbone model is of an unsupported family or cannot be loaded."""


class DataError(HasheeError, ValueError):
    """A data file cannot be read, or its columns cannot be matched to text and label fields."""


class TrainConfigError(HasheeError, ValueError):
    """Training or evaluation arguments are out of range (learning rate, batch size, epochs, ...)."""


class ExportError(HasheeError, ValueError):
    """A model cannot be exported as asked (run folder, target, opset, output folder, unsupported part)."""


class ValidationError(HasheeError):
    """An exported graph disagrees with the PyTorch reference beyond the tolerance."""


class BundleError(HasheeError, ValueError):
    """A bundle folder is missing files, fails its sha256 check, or has a newer format than this hashee reads."""


class InputError(HasheeError, ValueError):
    """Texts or arrays passed to a runtime session are of the wrong type, dtype, shape or values."""


class BackendError(HasheeError, RuntimeError):
    """A runtime backend is unknown, or cannot run here (no GPU, library or engine for it)."""


class PrecisionError(BackendError):
    """The bundle holds no model of the asked precision for this backend; the message names the command that adds it."""


class CalibrationError(HasheeError, ValueError):
    """INT8 calibration cannot run as asked (method, sample count, saved ranges that do not fit)."""


class EngineError(HasheeError):
    """A TensorRT engine cannot be built or run: TensorRT or a GPU is missing, the bundle does not fit."""


class ProfileError(EngineError, ValueError):
    """An optimisation profile is malformed or does not fit the bundle (min <= opt <= max, max length)."""


class MissingDependencyError(HasheeError, ImportError):
    """An optional extra (Ray, tritonclient, pyarrow) is needed for this command but not installed."""


class TritonRepositoryError(HasheeError, ValueError):
    """A Triton model repository fails its checks; ``problems`` lists every one of them."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])
