"""Tensors and parameters of the Open Inference Protocol (KServe V2) to and from modelrunner's:
the converters of :mod:`.open_inference`.

Inputs are read from ``raw_input_contents`` (one entry per input, C order, little endian) as
numpy views of the bytes protobuf hands out (its one copy of them); from the typed ``contents``
lists when a request carries no raw contents. Outputs always go out as ``raw_output_contents``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelrunner import errors, types
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.predict_request import PredictRequest
from modelrunner.value_ranges import check_fits

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""The protocol's datatypes modelrunner takes (BYTES and BF16 have no numpy type a model reads)."""
_DATATYPE_OF = {dtype.str: name for name, dtype in DATATYPES.items()}
_BY_DESCRIPTION_DTYPE = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}

# Where each datatype's values sit in InferTensorContents (FP16 has no typed list: raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

_FIELD_DTYPES = {
    "bool_contents": np.dtype(np.bool_),
    "uint_contents": np.dtype("<u4"),
    "uint64_contents": np.dtype("<u8"),
    "int_contents": np.dtype("<i4"),
    "int64_contents": np.dtype("<i8"),
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}
"""The type of each typed contents field (protobuf's uint32, int32, ...)."""

# Request parameters: modelrunner's, and other clients' that are accepted and ignored (tritonclient
# sends "priority"; KServe and MLServer codecs send "content_type" and "headers").
_IGNORED_PARAMETERS = frozenset({"priority", "content_type", "headers"})
REQUEST_PARAMETERS = (
    "weight_format",
    "device",
    "blocksize",
    "nan_policy",
    "reference_path",
    "precision",
    "input_padding",
    "timeout",
)
_TENSOR_PARAMETERS = ("dim_names",)
_NO_DEADLINE_S = 365 * 24 * 3600.0
MAX_DIMS = 32
"""More axes than any model has (numpy's own limit is 64)."""
MAX_TENSOR_BYTES = 64 * 1024**2
"""The most an input may decode to: one request's size limit, also for typed contents, whose
varints of zeros would otherwise grow eightfold into int64 arrays."""
_INT64_MAX = 2**63 - 1
_IGNORED_TENSOR_PARAMETERS = frozenset({"content_type", "binary_data", "binary_data_size"})


def datatype_of(dtype: np.dtype) -> str:
    name = _DATATYPE_OF.get(dtype.newbyteorder("<").str)
    if name is None:
        raise errors.InternalError(f"an output of dtype {dtype} has no Open Inference datatype")
    return name


def declared_datatype(description_dtype: str) -> str:
    """A description's dtype as the protocol names it (FP32 when the description names none)."""
    return _BY_DESCRIPTION_DTYPE.get(description_dtype, "FP32")


def metadata_shape(tensor: types.TensorSpec) -> list[int]:
    """The tensor's shape in its axis order, -1 for an axis of any size (a batch axis, a
    parameterized, referenced or data-dependent size)."""
    return [a.size if isinstance(a.size, int) else -1 for a in tensor.axes]


# -- requests ----------------------------------------------------------------------------------


def input_arrays(
    request: v2.ModelInferRequest,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
    """The request's arrays by input name, and the axis names of those that state them."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise errors.InvalidTensorError(
            f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents: "
            "send one raw entry per input, in the order of inputs",
            details={"expected": len(request.inputs), "got": len(raw)},
        )
    if not request.inputs:
        raise errors.InvalidTensorError("the request has no inputs")
    arrays: dict[str, np.ndarray] = {}
    dims: dict[str, tuple[str, ...]] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise errors.InvalidTensorError(
                f"input {tensor.name!r} is given twice", details={"tensor": tensor.name}
            )
        arrays[tensor.name] = _input_array(tensor, raw[i] if raw else None)
        names = _tensor_dim_names(tensor, arrays[tensor.name].ndim)
        if names:
            dims[tensor.name] = names
    return arrays, dims


def _input_array(tensor: v2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    name = tensor.name
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise errors.InvalidTensorError(
            f"input {name!r}: datatype {tensor.datatype!r} is not one modelrunner takes; use one "
            f"of {', '.join(DATATYPES)}",
            details={"tensor": name, "expected": list(DATATYPES), "got": tensor.datatype},
        )
    shape = tuple(tensor.shape)
    if any(s < 0 for s in shape):
        raise errors.InvalidTensorError(
            f"input {name!r}: shape {list(shape)} has a negative size",
            details={"tensor": name, "got": list(shape)},
        )
    if len(shape) > MAX_DIMS:
        raise errors.InvalidTensorError(
            f"input {name!r}: shape has {len(shape)} axes, at most {MAX_DIMS} are taken",
            details={"tensor": name, "expected": MAX_DIMS, "got": len(shape)},
        )
    # sizes without the zeros: an empty array of 2**62 * 2**62 "values" is still refused
    if math.prod(s for s in shape if s) * dtype.itemsize > MAX_TENSOR_BYTES:
        raise errors.InvalidTensorError(
            f"input {name!r}: shape {list(shape)} of {tensor.datatype} is more than "
            f"{MAX_TENSOR_BYTES // 1024**2} MiB, the most one request carries; send larger "
            "images over Arrow Flight",
            details={"tensor": name, "got": list(shape)},
        )
    count = math.prod(shape)
    if raw is not None:
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise errors.InvalidTensorError(
                f"input {name!r}: shape {list(shape)} of {tensor.datatype} is {expected} bytes, "
                f"but its raw_input_contents hold {len(raw)}",
                details={"tensor": name, "expected": expected, "got": len(raw)},
            )
        if tensor.datatype == "BOOL":
            return _booleans(name, np.frombuffer(raw, dtype=np.uint8)).reshape(shape)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise errors.InvalidTensorError(
            f"input {name!r}: {tensor.datatype} values travel in raw_input_contents only",
            details={"tensor": name},
        )
    values: Sequence[object] = getattr(tensor.contents, field)
    if len(values) != count:
        raise errors.InvalidTensorError(
            f"input {name!r}: shape {list(shape)} holds {count} values, but contents.{field} "
            f"has {len(values)}",
            details={"tensor": name, "expected": count, "got": len(values)},
        )
    # read in the field's own type, which every value it holds fits, then checked against the
    # datatype's range: numpy would wrap UINT8 300 to 44
    received = np.asarray(values, dtype=_FIELD_DTYPES[field])
    check_fits(name, received, dtype, tensor.datatype)
    return received.astype(dtype, copy=False).reshape(shape)


def _booleans(name: str, values: np.ndarray) -> np.ndarray:
    """BOOL bytes as booleans; a byte other than 0 or 1 is no boolean numpy can hold."""
    if values.size and values.max() > 1:
        raise errors.InvalidTensorError(
            f"input {name!r}: BOOL values must be the bytes 0 or 1",
            details={"tensor": name},
        )
    return values.view(np.bool_)


def _tensor_dim_names(tensor: v2.ModelInferRequest.InferInputTensor, ndim: int) -> tuple[str, ...]:
    for key in tensor.parameters:
        if key not in _TENSOR_PARAMETERS and key not in _IGNORED_TENSOR_PARAMETERS:
            raise errors.InvalidArgumentError(
                f"input {tensor.name!r}: unknown parameter {key!r}; inputs take "
                f"{', '.join(_TENSOR_PARAMETERS)}",
                details={"tensor": tensor.name, "parameter": key},
            )
    if "dim_names" not in tensor.parameters:
        return ()
    text = _string(tensor.parameters["dim_names"], "dim_names")
    names = tuple(n.strip() for n in text.split(",")) if text.strip() else ()
    if len(names) != ndim:
        raise errors.InvalidTensorError(
            f"input {tensor.name!r}: dim_names {text!r} names {len(names)} axes, the shape has "
            f"{ndim}",
            details={"tensor": tensor.name, "expected": ndim, "got": len(names)},
        )
    return names


def predict_request(
    model_ref: str, parameters: Mapping[str, v2.InferParameter], deadline_s: float | None
) -> PredictRequest:
    """The request a V2 request's parameters ask for (its inputs come with
    :meth:`~modelrunner.predict_request.PredictRequest.with_inputs`); ``deadline_s`` is the
    call's time left (grpc reports a call without a deadline as centuries left: no timeout)."""
    if deadline_s is not None and deadline_s > _NO_DEADLINE_S:
        deadline_s = None
    options: dict[str, Any] = {"timeout_s": deadline_s}
    for key, value in parameters.items():
        if key in _IGNORED_PARAMETERS:
            continue
        if key in ("weight_format", "device", "precision", "nan_policy", "input_padding"):
            options[key] = _string(value, key)
        elif key == "blocksize":
            options[key] = _integer(value, key)
        elif key == "reference_path":
            options[key] = _boolean(value, key)
        elif key == "timeout":
            # Triton's per-request timeout, in microseconds; the call's deadline still applies
            timeout_s = _integer(value, key) / 1e6
            if timeout_s > 0:
                options["timeout_s"] = min(timeout_s, deadline_s or math.inf) or None
        else:
            raise errors.InvalidArgumentError(
                f"unknown parameter {key!r}; modelrunner takes {', '.join(REQUEST_PARAMETERS)}",
                details={"parameter": key, "expected": list(REQUEST_PARAMETERS)},
            )
    if options.get("input_padding") == "":
        options["input_padding"] = "none"
    return PredictRequest(model_id=model_ref, **options)


def _kind(value: v2.InferParameter) -> str:
    return value.WhichOneof("parameter_choice") or "nothing"


def _string(value: v2.InferParameter, key: str) -> str:
    if _kind(value) != "string_param":
        raise errors.InvalidArgumentError(
            f"parameter {key!r} takes a string_param, got {_kind(value)}",
            details={"parameter": key},
        )
    return value.string_param


def _integer(value: v2.InferParameter, key: str) -> int:
    kind = _kind(value)
    if kind == "int64_param":
        return value.int64_param
    if kind == "uint64_param":
        if value.uint64_param > _INT64_MAX:
            raise errors.InvalidArgumentError(
                f"parameter {key!r} is {value.uint64_param}, more than an int64 holds",
                details={"parameter": key},
            )
        return value.uint64_param
    raise errors.InvalidArgumentError(
        f"parameter {key!r} takes an int64_param, got {kind}", details={"parameter": key}
    )


def _boolean(value: v2.InferParameter, key: str) -> bool:
    if _kind(value) != "bool_param":
        raise errors.InvalidArgumentError(
            f"parameter {key!r} takes a bool_param, got {_kind(value)}",
            details={"parameter": key},
        )
    return value.bool_param


def requested_outputs(request: v2.ModelInferRequest, model: types.ModelInfo) -> list[str]:
    """The output ids to return, in the order asked for (every output when none is named)."""
    known = [t.id for t in model.outputs]
    if not request.outputs:
        return known
    names = []
    for output in request.outputs:
        if output.name not in known:
            raise errors.InvalidArgumentError(
                f"model {model.name!r} has no output {output.name!r}; it has {', '.join(known)}",
                details={"tensor": output.name, "expected": known},
            )
        for key in output.parameters:
            if key not in _IGNORED_TENSOR_PARAMETERS:
                raise errors.InvalidArgumentError(
                    f"output {output.name!r}: modelrunner takes no parameter {key!r}",
                    details={"tensor": output.name, "parameter": key},
                )
        names.append(output.name)
    return names


# -- responses ---------------------------------------------------------------------------------


def infer_response(
    request: v2.ModelInferRequest,
    model: types.ModelInfo,
    outputs: Mapping[str, np.ndarray],
    names: Sequence[str],
) -> v2.ModelInferResponse:
    response = v2.ModelInferResponse(
        model_name=model.id, model_version=request.model_version, id=request.id
    )
    for name in names:
        array = outputs[name]
        tensor = response.outputs.add(
            name=name, datatype=datatype_of(array.dtype), shape=list(array.shape)
        )
        axis_ids = model.output(name).axis_ids
        if len(axis_ids) == array.ndim:
            tensor.parameters["dim_names"].string_param = ",".join(axis_ids)
        # protobuf holds bytes: this is the one copy of the outputs the protocol costs
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response
