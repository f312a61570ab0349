import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AxisSize(_message.Message):
    __slots__ = ("fixed", "parameterized", "reference", "data_dependent")
    FIXED_FIELD_NUMBER: _ClassVar[int]
    PARAMETERIZED_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DATA_DEPENDENT_FIELD_NUMBER: _ClassVar[int]
    fixed: int
    parameterized: ParameterizedSize
    reference: SizeReference
    data_dependent: DataDependentSize
    def __init__(self, fixed: _Optional[int] = ..., parameterized: _Optional[_Union[ParameterizedSize, _Mapping]] = ..., reference: _Optional[_Union[SizeReference, _Mapping]] = ..., data_dependent: _Optional[_Union[DataDependentSize, _Mapping]] = ...) -> None: ...

class ParameterizedSize(_message.Message):
    __slots__ = ("min", "step")
    MIN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    min: int
    step: int
    def __init__(self, min: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class SizeReference(_message.Message):
    __slots__ = ("tensor_id", "axis_id", "offset")
    TENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    AXIS_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    tensor_id: str
    axis_id: str
    offset: int
    def __init__(self, tensor_id: _Optional[str] = ..., axis_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class DataDependentSize(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: int
    max: int
    def __init__(self, min: _Optional[int] = ..., max: _Optional[int] = ...) -> None: ...

class AxisSpec(_message.Message):
    __slots__ = ("id", "type", "size", "halo", "scale", "unit", "channel_names", "concatenable")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HALO_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    CONCATENABLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    size: AxisSize
    halo: int
    scale: float
    unit: str
    channel_names: _containers.RepeatedScalarFieldContainer[str]
    concatenable: bool
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., size: _Optional[_Union[AxisSize, _Mapping]] = ..., halo: _Optional[int] = ..., scale: _Optional[float] = ..., unit: _Optional[str] = ..., channel_names: _Optional[_Iterable[str]] = ..., concatenable: _Optional[bool] = ...) -> None: ...

class ProcessingStep(_message.Message):
    __slots__ = ("id", "kwargs_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    kwargs_json: str
    def __init__(self, id: _Optional[str] = ..., kwargs_json: _Optional[str] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("id", "description", "axes", "dtype", "preprocessing", "postprocessing", "optional", "test_shape")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    AXES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESSING_FIELD_NUMBER: _ClassVar[int]
    OPTIONAL_FIELD_NUMBER: _ClassVar[int]
    TEST_SHAPE_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    axes: _containers.RepeatedCompositeFieldContainer[AxisSpec]
    dtype: str
    preprocessing: _containers.RepeatedCompositeFieldContainer[ProcessingStep]
    postprocessing: _containers.RepeatedCompositeFieldContainer[ProcessingStep]
    optional: bool
    test_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ..., axes: _Optional[_Iterable[_Union[AxisSpec, _Mapping]]] = ..., dtype: _Optional[str] = ..., preprocessing: _Optional[_Iterable[_Union[ProcessingStep, _Mapping]]] = ..., postprocessing: _Optional[_Iterable[_Union[ProcessingStep, _Mapping]]] = ..., optional: _Optional[bool] = ..., test_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Author(_message.Message):
    __slots__ = ("name", "affiliation", "email", "github_user", "orcid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFFILIATION_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    GITHUB_USER_FIELD_NUMBER: _ClassVar[int]
    ORCID_FIELD_NUMBER: _ClassVar[int]
    name: str
    affiliation: str
    email: str
    github_user: str
    orcid: str
    def __init__(self, name: _Optional[str] = ..., affiliation: _Optional[str] = ..., email: _Optional[str] = ..., github_user: _Optional[str] = ..., orcid: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("id", "name", "description", "authors", "tags", "license", "format_version", "bioimageio_id", "weight_formats", "inputs", "outputs", "source", "size_bytes", "added_at", "last_used_at", "rdf_json", "version", "loaded", "workspaces", "published")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    AUTHORS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BIOIMAGEIO_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ADDED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    RDF_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    WORKSPACES_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    authors: _containers.RepeatedCompositeFieldContainer[Author]
    tags: _containers.RepeatedScalarFieldContainer[str]
    license: str
    format_version: str
    bioimageio_id: str
    weight_formats: _containers.RepeatedScalarFieldContainer[str]
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    source: str
    size_bytes: int
    added_at: _timestamp_pb2.Timestamp
    last_used_at: _timestamp_pb2.Timestamp
    rdf_json: str
    version: str
    loaded: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    workspaces: _containers.RepeatedScalarFieldContainer[str]
    published: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., authors: _Optional[_Iterable[_Union[Author, _Mapping]]] = ..., tags: _Optional[_Iterable[str]] = ..., license: _Optional[str] = ..., format_version: _Optional[str] = ..., bioimageio_id: _Optional[str] = ..., weight_formats: _Optional[_Iterable[str]] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., source: _Optional[str] = ..., size_bytes: _Optional[int] = ..., added_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rdf_json: _Optional[str] = ..., version: _Optional[str] = ..., loaded: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., workspaces: _Optional[_Iterable[str]] = ..., published: _Optional[bool] = ...) -> None: ...

class ModelSource(_message.Message):
    __slots__ = ("path", "url", "bioimageio_id", "upload_id")
    PATH_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    BIOIMAGEIO_ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    path: str
    url: str
    bioimageio_id: str
    upload_id: str
    def __init__(self, path: _Optional[str] = ..., url: _Optional[str] = ..., bioimageio_id: _Optional[str] = ..., upload_id: _Optional[str] = ...) -> None: ...

class ValidationEntry(_message.Message):
    __slots__ = ("loc", "msg", "type", "severity", "traceback")
    LOC_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    loc: _containers.RepeatedScalarFieldContainer[str]
    msg: str
    type: str
    severity: int
    traceback: str
    def __init__(self, loc: _Optional[_Iterable[str]] = ..., msg: _Optional[str] = ..., type: _Optional[str] = ..., severity: _Optional[int] = ..., traceback: _Optional[str] = ...) -> None: ...

class ValidationDetail(_message.Message):
    __slots__ = ("name", "status", "loc", "errors", "warnings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOC_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: str
    loc: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.RepeatedCompositeFieldContainer[ValidationEntry]
    warnings: _containers.RepeatedCompositeFieldContainer[ValidationEntry]
    def __init__(self, name: _Optional[str] = ..., status: _Optional[str] = ..., loc: _Optional[_Iterable[str]] = ..., errors: _Optional[_Iterable[_Union[ValidationEntry, _Mapping]]] = ..., warnings: _Optional[_Iterable[_Union[ValidationEntry, _Mapping]]] = ...) -> None: ...

class ValidationReport(_message.Message):
    __slots__ = ("status", "name", "source", "type", "format_version", "id", "details", "env", "markdown")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    status: str
    name: str
    source: str
    type: str
    format_version: str
    id: str
    details: _containers.RepeatedCompositeFieldContainer[ValidationDetail]
    env: _containers.ScalarMap[str, str]
    markdown: str
    def __init__(self, status: _Optional[str] = ..., name: _Optional[str] = ..., source: _Optional[str] = ..., type: _Optional[str] = ..., format_version: _Optional[str] = ..., id: _Optional[str] = ..., details: _Optional[_Iterable[_Union[ValidationDetail, _Mapping]]] = ..., env: _Optional[_Mapping[str, str]] = ..., markdown: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("code", "type", "message", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: str
    type: str
    message: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[str] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RpcStatus(_message.Message):
    __slots__ = ("code", "message", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    details: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("name", "description", "memory_total_bytes", "memory_free_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    memory_total_bytes: int
    memory_free_bytes: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ...) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("model_id", "weight_format", "device", "memory_bytes", "last_used_at", "requests", "serving_path", "serving_path_reason", "precision_max_abs_error")
    class PrecisionMaxAbsErrorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SERVING_PATH_FIELD_NUMBER: _ClassVar[int]
    SERVING_PATH_REASON_FIELD_NUMBER: _ClassVar[int]
    PRECISION_MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    weight_format: str
    device: str
    memory_bytes: int
    last_used_at: _timestamp_pb2.Timestamp
    requests: int
    serving_path: str
    serving_path_reason: str
    precision_max_abs_error: _containers.ScalarMap[str, float]
    def __init__(self, model_id: _Optional[str] = ..., weight_format: _Optional[str] = ..., device: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requests: _Optional[int] = ..., serving_path: _Optional[str] = ..., serving_path_reason: _Optional[str] = ..., precision_max_abs_error: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RuntimeInfo(_message.Message):
    __slots__ = ("runtime_id", "flight_uri", "devices", "loaded_models", "package_versions", "weight_formats", "available", "unavailable_reason", "last_seen_at", "memory_budget_bytes", "queue_depth", "metrics_uri")
    class PackageVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    FLIGHT_URI_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    METRICS_URI_FIELD_NUMBER: _ClassVar[int]
    runtime_id: str
    flight_uri: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    loaded_models: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    package_versions: _containers.ScalarMap[str, str]
    weight_formats: _containers.RepeatedScalarFieldContainer[str]
    available: bool
    unavailable_reason: str
    last_seen_at: _timestamp_pb2.Timestamp
    memory_budget_bytes: int
    queue_depth: int
    metrics_uri: str
    def __init__(self, runtime_id: _Optional[str] = ..., flight_uri: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ..., loaded_models: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., package_versions: _Optional[_Mapping[str, str]] = ..., weight_formats: _Optional[_Iterable[str]] = ..., available: _Optional[bool] = ..., unavailable_reason: _Optional[str] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., memory_budget_bytes: _Optional[int] = ..., queue_depth: _Optional[int] = ..., metrics_uri: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "done", "total", "unit")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    unit: str
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., unit: _Optional[str] = ...) -> None: ...
