from modelrunner.v1 import models_pb2 as _models_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NanPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NAN_POLICY_UNSPECIFIED: _ClassVar[NanPolicy]
    NAN_POLICY_REJECT: _ClassVar[NanPolicy]
    NAN_POLICY_ALLOW: _ClassVar[NanPolicy]
NAN_POLICY_UNSPECIFIED: NanPolicy
NAN_POLICY_REJECT: NanPolicy
NAN_POLICY_ALLOW: NanPolicy

class PredictCommand(_message.Message):
    __slots__ = ("model_id", "weight_format", "device", "blocksize", "stream", "max_batch_size", "nan_policy", "skip_preprocessing", "skip_postprocessing", "report_progress", "session", "reference_path", "precision", "keep_shape", "block_of_sample", "input_padding")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BLOCKSIZE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NAN_POLICY_FIELD_NUMBER: _ClassVar[int]
    SKIP_PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    SKIP_POSTPROCESSING_FIELD_NUMBER: _ClassVar[int]
    REPORT_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PATH_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    KEEP_SHAPE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_OF_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    INPUT_PADDING_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    weight_format: str
    device: str
    blocksize: int
    stream: bool
    max_batch_size: int
    nan_policy: NanPolicy
    skip_preprocessing: bool
    skip_postprocessing: bool
    report_progress: bool
    session: bool
    reference_path: bool
    precision: str
    keep_shape: bool
    block_of_sample: SampleStatistics
    input_padding: str
    def __init__(self, model_id: _Optional[str] = ..., weight_format: _Optional[str] = ..., device: _Optional[str] = ..., blocksize: _Optional[int] = ..., stream: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., nan_policy: _Optional[_Union[NanPolicy, str]] = ..., skip_preprocessing: _Optional[bool] = ..., skip_postprocessing: _Optional[bool] = ..., report_progress: _Optional[bool] = ..., session: _Optional[bool] = ..., reference_path: _Optional[bool] = ..., precision: _Optional[str] = ..., keep_shape: _Optional[bool] = ..., block_of_sample: _Optional[_Union[SampleStatistics, _Mapping]] = ..., input_padding: _Optional[str] = ...) -> None: ...

class SampleStatistics(_message.Message):
    __slots__ = ("statistics",)
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    statistics: _containers.RepeatedCompositeFieldContainer[SampleStatistic]
    def __init__(self, statistics: _Optional[_Iterable[_Union[SampleStatistic, _Mapping]]] = ...) -> None: ...

class SampleStatistic(_message.Message):
    __slots__ = ("tensor_id", "name", "axes", "q", "dims", "shape", "values", "method")
    TENSOR_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AXES_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    tensor_id: str
    name: str
    axes: _containers.RepeatedScalarFieldContainer[str]
    q: float
    dims: _containers.RepeatedScalarFieldContainer[str]
    shape: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    method: str
    def __init__(self, tensor_id: _Optional[str] = ..., name: _Optional[str] = ..., axes: _Optional[_Iterable[str]] = ..., q: _Optional[float] = ..., dims: _Optional[_Iterable[str]] = ..., shape: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., method: _Optional[str] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("frame", "error", "progress", "weight_format", "device", "serving_path", "padding")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SERVING_PATH_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    frame: int
    error: _models_pb2.ErrorDetail
    progress: _models_pb2.Progress
    weight_format: str
    device: str
    serving_path: str
    padding: bytes
    def __init__(self, frame: _Optional[int] = ..., error: _Optional[_Union[_models_pb2.ErrorDetail, _Mapping]] = ..., progress: _Optional[_Union[_models_pb2.Progress, _Mapping]] = ..., weight_format: _Optional[str] = ..., device: _Optional[str] = ..., serving_path: _Optional[str] = ..., padding: _Optional[bytes] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model_id", "weight_format", "device")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    weight_format: str
    device: str
    def __init__(self, model_id: _Optional[str] = ..., weight_format: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model", "load_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: _models_pb2.LoadedModel
    load_seconds: float
    def __init__(self, model: _Optional[_Union[_models_pb2.LoadedModel, _Mapping]] = ..., load_seconds: _Optional[float] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model_id", "weight_format", "device", "removed")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    weight_format: str
    device: str
    removed: bool
    def __init__(self, model_id: _Optional[str] = ..., weight_format: _Optional[str] = ..., device: _Optional[str] = ..., removed: _Optional[bool] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("unloaded", "calls_in_flight")
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    CALLS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    unloaded: int
    calls_in_flight: int
    def __init__(self, unloaded: _Optional[int] = ..., calls_in_flight: _Optional[int] = ...) -> None: ...
