"""The typed Python client of modelrunner.

>>> from modelrunner.client import ModelRunnerClient
>>> with ModelRunnerClient("localhost:50051") as client:
...     model = client.add_model("affable-shark")
...     outputs = client.predict(model.id, image)

Exceptions (all from :mod:`modelrunner.errors`; callers never see ``grpc.RpcError`` or
``pyarrow.flight.FlightError``)::

    ModelRunnerError
    ├── NotFoundError (ModelNotFoundError, SourceNotFoundError)
    ├── InvalidArgumentError (InvalidSourceError, InvalidPackageError, InvalidTensorError)
    ├── FailedPreconditionError (ModelInUseError, CorruptModelError, DeviceNotAvailableError)
    ├── ResourceExhaustedError
    ├── UnavailableError (.frames_answered when it ends a stream)
    │   └── ServerShuttingDownError
    ├── DeadlineExceededError
    ├── CancelledError
    ├── InternalError
    └── FrameError (one failed frame of a stream; carries .frame and .cause)
"""

from modelrunner.errors import (
    CancelledError,
    CorruptModelError,
    DeadlineExceededError,
    DeviceNotAvailableError,
    FailedPreconditionError,
    FrameError,
    InternalError,
    InvalidArgumentError,
    InvalidPackageError,
    InvalidSourceError,
    InvalidTensorError,
    ModelInUseError,
    ModelNotFoundError,
    ModelRunnerError,
    NotFoundError,
    ResourceExhaustedError,
    ServerShuttingDownError,
    SourceNotFoundError,
    UnavailableError,
)
from modelrunner.predict_request import PredictRequest
from modelrunner.types import (
    AxisSpec,
    DataDependentSize,
    LoadInfo,
    ModelInfo,
    ParameterizedSize,
    Progress,
    RemovedModel,
    RuntimeInfo,
    ServerInfo,
    SizeReference,
    TensorSpec,
    ValidationReport,
)

from ._async import AsyncFrameStream, AsyncModelRunnerClient
from ._stream import FrameStream
from ._sync import ModelRunnerClient
from ._timeouts import USE_CLIENT_DEFAULT
from ._volume_result import VolumeResult
from .core_pipeline import create_prediction_pipeline

__all__ = [
    "USE_CLIENT_DEFAULT",
    "AsyncFrameStream",
    "AsyncModelRunnerClient",
    "AxisSpec",
    "CancelledError",
    "CorruptModelError",
    "DataDependentSize",
    "DeadlineExceededError",
    "DeviceNotAvailableError",
    "FailedPreconditionError",
    "FrameError",
    "FrameStream",
    "InternalError",
    "InvalidArgumentError",
    "InvalidPackageError",
    "InvalidSourceError",
    "InvalidTensorError",
    "LoadInfo",
    "ModelInUseError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelRunnerClient",
    "ModelRunnerError",
    "NotFoundError",
    "ParameterizedSize",
    "PredictRequest",
    "Progress",
    "RemovedModel",
    "ResourceExhaustedError",
    "RuntimeInfo",
    "ServerInfo",
    "ServerShuttingDownError",
    "SizeReference",
    "SourceNotFoundError",
    "TensorSpec",
    "UnavailableError",
    "ValidationReport",
    "VolumeResult",
    "create_prediction_pipeline",
]
