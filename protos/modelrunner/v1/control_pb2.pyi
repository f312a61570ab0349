from modelrunner.v1 import models_pb2 as _models_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddModelRequest(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: _models_pb2.ModelSource
    def __init__(self, source: _Optional[_Union[_models_pb2.ModelSource, _Mapping]] = ...) -> None: ...

class AddModelResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _models_pb2.Progress
    result: AddModelResult
    def __init__(self, progress: _Optional[_Union[_models_pb2.Progress, _Mapping]] = ..., result: _Optional[_Union[AddModelResult, _Mapping]] = ...) -> None: ...

class AddModelResult(_message.Message):
    __slots__ = ("model", "created")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    model: _models_pb2.ModelInfo
    created: bool
    def __init__(self, model: _Optional[_Union[_models_pb2.ModelInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class UploadPackageRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("filename", "size_bytes", "sha256")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    filename: str
    size_bytes: int
    sha256: str
    def __init__(self, filename: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadPackageResponse(_message.Message):
    __slots__ = ("upload_id", "size_bytes", "sha256")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    size_bytes: int
    sha256: str
    def __init__(self, upload_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_models_pb2.ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[_models_pb2.ModelInfo, _Mapping]]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DescribeModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _models_pb2.ModelInfo
    def __init__(self, model: _Optional[_Union[_models_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class ValidateModelRequest(_message.Message):
    __slots__ = ("source", "perform_io_checks")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PERFORM_IO_CHECKS_FIELD_NUMBER: _ClassVar[int]
    source: _models_pb2.ModelSource
    perform_io_checks: bool
    def __init__(self, source: _Optional[_Union[_models_pb2.ModelSource, _Mapping]] = ..., perform_io_checks: _Optional[bool] = ...) -> None: ...

class ValidateModelResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: _models_pb2.ValidationReport
    def __init__(self, report: _Optional[_Union[_models_pb2.ValidationReport, _Mapping]] = ...) -> None: ...

class RemoveModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class RemoveModelResponse(_message.Message):
    __slots__ = ("model_id", "freed_bytes", "calls_in_flight")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CALLS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    freed_bytes: int
    calls_in_flight: int
    def __init__(self, model_id: _Optional[str] = ..., freed_bytes: _Optional[int] = ..., calls_in_flight: _Optional[int] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CacheInfo(_message.Message):
    __slots__ = ("directory", "used_bytes", "budget_bytes", "models")
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    directory: str
    used_bytes: int
    budget_bytes: int
    models: int
    def __init__(self, directory: _Optional[str] = ..., used_bytes: _Optional[int] = ..., budget_bytes: _Optional[int] = ..., models: _Optional[int] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("modelrunner_version", "package_versions", "python_version", "platform", "cache", "runtimes", "metrics_uri")
    class PackageVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODELRUNNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    METRICS_URI_FIELD_NUMBER: _ClassVar[int]
    modelrunner_version: str
    package_versions: _containers.ScalarMap[str, str]
    python_version: str
    platform: str
    cache: CacheInfo
    runtimes: _containers.RepeatedCompositeFieldContainer[_models_pb2.RuntimeInfo]
    metrics_uri: str
    def __init__(self, modelrunner_version: _Optional[str] = ..., package_versions: _Optional[_Mapping[str, str]] = ..., python_version: _Optional[str] = ..., platform: _Optional[str] = ..., cache: _Optional[_Union[CacheInfo, _Mapping]] = ..., runtimes: _Optional[_Iterable[_Union[_models_pb2.RuntimeInfo, _Mapping]]] = ..., metrics_uri: _Optional[str] = ...) -> None: ...

class TestModelRequest(_message.Message):
    __slots__ = ("model_id", "weight_format", "device")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    weight_format: str
    device: str
    def __init__(self, model_id: _Optional[str] = ..., weight_format: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class TestModelResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: _models_pb2.ValidationReport
    def __init__(self, report: _Optional[_Union[_models_pb2.ValidationReport, _Mapping]] = ...) -> None: ...

class GetModelRouteRequest(_message.Message):
    __slots__ = ("model_id", "weight_format", "device")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    weight_format: str
    device: str
    def __init__(self, model_id: _Optional[str] = ..., weight_format: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class GetModelRouteResponse(_message.Message):
    __slots__ = ("model_id", "flight_uris", "runtime_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FLIGHT_URIS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    flight_uris: _containers.RepeatedScalarFieldContainer[str]
    runtime_id: str
    def __init__(self, model_id: _Optional[str] = ..., flight_uris: _Optional[_Iterable[str]] = ..., runtime_id: _Optional[str] = ...) -> None: ...

class RegisterRuntimeRequest(_message.Message):
    __slots__ = ("runtime", "cache_dir")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CACHE_DIR_FIELD_NUMBER: _ClassVar[int]
    runtime: _models_pb2.RuntimeInfo
    cache_dir: str
    def __init__(self, runtime: _Optional[_Union[_models_pb2.RuntimeInfo, _Mapping]] = ..., cache_dir: _Optional[str] = ...) -> None: ...

class RegisterRuntimeResponse(_message.Message):
    __slots__ = ("heartbeat_interval_s", "shared_cache_dir")
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    SHARED_CACHE_DIR_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_s: float
    shared_cache_dir: str
    def __init__(self, heartbeat_interval_s: _Optional[float] = ..., shared_cache_dir: _Optional[str] = ...) -> None: ...

class FetchModelPackageRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class FetchModelPackageResponse(_message.Message):
    __slots__ = ("size_bytes", "sha256", "chunk")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    sha256: str
    chunk: bytes
    def __init__(self, size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PublishModelRequest(_message.Message):
    __slots__ = ("model_id", "published")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    published: bool
    def __init__(self, model_id: _Optional[str] = ..., published: _Optional[bool] = ...) -> None: ...

class PublishModelResponse(_message.Message):
    __slots__ = ("model_id", "published")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    published: bool
    def __init__(self, model_id: _Optional[str] = ..., published: _Optional[bool] = ...) -> None: ...

class CheckCallerRequest(_message.Message):
    __slots__ = ("token", "model_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    model_id: str
    def __init__(self, token: _Optional[str] = ..., model_id: _Optional[str] = ...) -> None: ...

class CheckCallerResponse(_message.Message):
    __slots__ = ("name", "role", "workspace", "model_id", "audience")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    workspace: str
    model_id: str
    audience: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., workspace: _Optional[str] = ..., model_id: _Optional[str] = ..., audience: _Optional[str] = ...) -> None: ...
