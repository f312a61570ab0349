"""The tensor wire format, shared by the client and the runtime (see ``docs/wire-format.md``).

A *sample* is a set of named tensors (one per model input or output). It travels as Arrow
record batches with one column per tensor, of type ``arrow.fixed_shape_tensor``:

* Small samples: one record batch, one row per sample, the column's shape is the tensor's shape
  and its dim names are the axis ids (when known). Several samples of the same shapes may share a
  batch, one row each.
* Large samples: ``n`` record batches of one row each. A tensor of shape ``(s0, ..., sd)`` is
  viewed in C order as ``L = s0*...*sk`` *lines* of shape ``(s(k+1), ..., sd)``; batch ``i`` holds
  lines ``[i*m, (i+1)*m)`` as a ``(m, s(k+1), ..., sd)`` tensor, the last one zero-padded. The
  field metadata ``modelrunner.shape`` (JSON list) gives the full shape and
  ``modelrunner.dim_names`` (JSON list) its axis ids.

Arrays are wrapped without copies when they are C-contiguous; received columns are read as numpy
views of the received buffers.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

from modelrunner.errors import InvalidArgumentError, InvalidTensorError, clip
from modelrunner.units import MiB

DEFAULT_BATCH_BYTES = 16 * MiB
"""Samples up to this size travel whole (zero copy on both sides); larger ones in chunks."""
END_NOTICE_FRAME = -1
"""``FrameResult.frame`` of a stream's end notice: a metadata-only message carrying the error the
call is about to end with (ServerShuttingDownError from a draining runtime, NOT_FOUND,
UNAUTHENTICATED or PERMISSION_DENIED from a refusal, ...). The client ends its side of the stream
(DoneWriting), and the runtime then ends the call with that error (docs/wire-format.md, 3)."""
CHUNK_BYTES = 4 * MiB
"""Larger samples travel in chunks of about this size (or ``batch_bytes``, when smaller). Flight
moves 4-16 MiB batches fastest; the low end keeps the receiver's memory down: gRPC buffers a few
batches in flight, and glibc keeps freed buffers of that size resident (a 256 MiB upload in
16 MiB batches leaves the receiving process some 50-80 MiB larger, in 4 MiB batches 5-20 MiB)."""
MAX_BATCH_BYTES = 1024 * MiB
"""Hard cap for one batch: Flight refuses batches over 2 GiB."""
MAX_MODEL_REF_CHARS = 256
"""Longest model reference (model id, prefix, bioimage.io id) a client may send, on either
plane; model ids are 64 hex digits, bioimage.io ids a few words."""
WRITE_OPTIONS = pa.ipc.IpcWriteOptions()
"""Pass to ``writer.begin``: without options pyarrow builds them from environment variables
on every call."""

SHAPE_KEY = b"modelrunner.shape"
DIM_NAMES_KEY = b"modelrunner.dim_names"
DTYPE_KEY = b"modelrunner.dtype"
"""Set to ``bool`` for boolean tensors, which travel as uint8 (Arrow packs booleans to bits)."""

_ARROW_TYPES: dict[str, pa.DataType] = {
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
}


def check_model_ref(ref: str, what: str = "model id") -> str:
    """``ref``, or InvalidArgumentError when it cannot be a model reference (too long, with
    control characters, or with whitespace around it), before anything looks it up. The one
    check of every plane (the control service, Open Inference, Flight), so that each accepts
    and refuses the same spellings."""
    if len(ref) > MAX_MODEL_REF_CHARS:
        raise InvalidArgumentError(
            f"{what} {clip(ref, 40)!r} has {len(ref)} characters; at most "
            f"{MAX_MODEL_REF_CHARS} are allowed",
            details={what.replace(" ", "_"): clip(ref, 40), "limit": MAX_MODEL_REF_CHARS},
        )
    if not ref.isprintable():
        raise InvalidArgumentError(
            f"{what} {clip(ref, 40)!r} contains control characters",
            details={what.replace(" ", "_"): clip(ref, 40)},
        )
    if ref != ref.strip():
        raise InvalidArgumentError(
            f"{what} {clip(ref, 40)!r} has whitespace around it",
            details={what.replace(" ", "_"): clip(ref, 40)},
        )
    return ref


def arrow_value_type(dtype: np.dtype) -> pa.DataType:
    """The Arrow value type that carries ``dtype`` (booleans travel as uint8)."""
    if dtype == np.bool_:
        return pa.uint8()
    try:
        return _ARROW_TYPES[dtype.name]
    except KeyError:
        raise InvalidTensorError(
            f"data type {dtype.name} cannot be sent; use one of bool, " + ", ".join(_ARROW_TYPES),
            details={"got": dtype.name},
        ) from None


@dataclass(frozen=True)
class ArraySpec:
    """A tensor's shape and dtype: what planning a layout needs of it."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class TensorLayout:
    """How one tensor of a sample travels."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    dim_names: tuple[str, ...]
    split_axis: int
    """Lines are the tensor viewed as ``(prod(shape[:split_axis+1]), *shape[split_axis+1:])``."""
    lines_per_chunk: int

    @property
    def lines(self) -> int:
        return math.prod(self.shape[: self.split_axis + 1])

    @property
    def line_shape(self) -> tuple[int, ...]:
        return self.shape[self.split_axis + 1 :]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class SampleLayout:
    """How a sample's tensors travel: whole (``chunks == 1``) or in ``chunks`` record batches."""

    tensors: tuple[TensorLayout, ...]
    chunks: int

    @property
    def chunked(self) -> bool:
        return self.chunks > 1

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def schema(self) -> pa.Schema:
        """The Arrow schema announcing this layout (built once per layout)."""
        return self._schema

    @cached_property
    def column_types(self) -> tuple[tuple[TensorLayout, pa.FixedShapeTensorType, int], ...]:
        """Each tensor with its column's type and elements per row (one row: one sample)."""
        schema = self._schema
        return tuple((t, schema.field(t.name).type, math.prod(t.shape)) for t in self.tensors)

    @cached_property
    def _schema(self) -> pa.Schema:
        fields = []
        for t in self.tensors:
            metadata: dict[bytes, bytes] = {}
            if t.dtype == np.bool_:
                metadata[DTYPE_KEY] = b"bool"
            if self.chunked:
                shape = (t.lines_per_chunk, *t.line_shape)
                dim_names: Sequence[str] | None = None
                metadata[SHAPE_KEY] = json.dumps(list(t.shape)).encode()
                metadata[DIM_NAMES_KEY] = json.dumps(list(t.dim_names)).encode()
            else:
                shape = t.shape
                dim_names = t.dim_names or None
            fields.append(
                pa.field(
                    t.name,
                    pa.fixed_shape_tensor(arrow_value_type(t.dtype), list(shape), dim_names),
                    nullable=False,
                    metadata=metadata or None,
                )
            )
        return pa.schema(fields)

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> SampleLayout:
        """The layout a peer announced with ``schema``."""
        # a peer sends the same schema call after call: its exact bytes find the layout again
        return _RECENT_LAYOUTS.get_or_make(
            ("schema", schema.serialize().to_pybytes()), lambda: cls._from_schema(schema)
        )

    @classmethod
    def _from_schema(cls, schema: pa.Schema) -> SampleLayout:
        tensors = []
        chunked = any(f.metadata and SHAPE_KEY in f.metadata for f in schema)
        for f in schema:
            if not isinstance(f.type, pa.FixedShapeTensorType):
                raise InvalidTensorError(
                    f"column {f.name!r} has type {f.type}; every column must be an "
                    "arrow.fixed_shape_tensor (see docs/wire-format.md)",
                    details={"tensor": f.name, "got": str(f.type)},
                )
            md = f.metadata or {}
            value_type: pa.DataType = f.type.value_type
            dtype = (
                np.dtype("bool")
                if md.get(DTYPE_KEY) == b"bool"
                else np.dtype(value_type.to_pandas_dtype())
            )
            col_shape = tuple(int(s) for s in f.type.shape)
            if chunked:
                if SHAPE_KEY not in md:
                    raise InvalidTensorError(
                        f"column {f.name!r} lacks {SHAPE_KEY.decode()} metadata while other "
                        "columns are chunked",
                        details={"tensor": f.name},
                    )
                shape = tuple(int(s) for s in json.loads(md[SHAPE_KEY]))
                dim_names = tuple(str(d) for d in json.loads(md.get(DIM_NAMES_KEY, b"[]")))
                split_axis = len(shape) - len(col_shape)
                if split_axis < 0 or tuple(shape[split_axis + 1 :]) != col_shape[1:]:
                    raise InvalidTensorError(
                        f"column {f.name!r}: chunk shape {list(col_shape)} does not fit the full "
                        f"shape {list(shape)}",
                        details={"tensor": f.name},
                    )
                lines_per_chunk = col_shape[0]
            else:
                shape = col_shape
                dim_names = tuple(f.type.dim_names or ())
                split_axis = len(shape) - 1
                lines_per_chunk = math.prod(shape[: split_axis + 1]) if shape else 1
            _check_extents(f.name, shape, dim_names)
            if lines_per_chunk < 1:
                raise InvalidTensorError(
                    f"column {clip(f.name)!r}: chunks of {lines_per_chunk} lines",
                    details={"tensor": clip(f.name)},
                )
            tensors.append(
                TensorLayout(f.name, dtype, shape, dim_names, split_axis, lines_per_chunk)
            )
        chunks = 1
        if chunked:
            chunks = max(math.ceil(t.lines / t.lines_per_chunk) for t in tensors)
        return cls(tuple(tensors), chunks)

    @classmethod
    def plan(
        cls,
        arrays: Mapping[str, np.ndarray],
        dim_names: Mapping[str, Sequence[str]] | None = None,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> SampleLayout:
        """Choose how ``arrays`` travel: whole when they fit ``batch_bytes``, else in chunks of
        about :data:`CHUNK_BYTES` (at most ``batch_bytes``)."""
        names = dim_names or {}
        key = (
            "plan",
            batch_bytes,
            tuple((n, a.shape, a.dtype, tuple(names.get(n, ()))) for n, a in arrays.items()),
        )
        return _RECENT_LAYOUTS.get_or_make(
            key,
            lambda: cls.plan_shapes(
                {n: ArraySpec(tuple(a.shape), a.dtype) for n, a in arrays.items()},
                dim_names,
                batch_bytes=batch_bytes,
            ),
        )

    @classmethod
    def plan_shapes(
        cls,
        tensors: Mapping[str, ArraySpec],
        dim_names: Mapping[str, Sequence[str]] | None = None,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> SampleLayout:
        """:meth:`plan` from shapes and dtypes alone, for tensors that do not exist yet (a tiled
        prediction announces its outputs before their first band is predicted)."""
        if not tensors:
            raise InvalidTensorError("no tensors given")
        dim_names = dim_names or {}
        for name, spec in tensors.items():
            if not spec.shape:
                raise InvalidTensorError(
                    f"tensor {name!r} is a scalar; send at least a 1-d array",
                    details={"tensor": name},
                )
            names = tuple(dim_names.get(name, ()))
            _check_extents(name, spec.shape, names)
            if names and len(names) != len(spec.shape):
                raise InvalidTensorError(
                    f"tensor {name!r} has {len(spec.shape)} axes but {len(names)} dim names "
                    f"{list(names)}",
                    details={"tensor": name},
                )
            arrow_value_type(spec.dtype)
        total = sum(s.nbytes for s in tensors.values())
        if total <= batch_bytes:
            return cls(
                tuple(
                    TensorLayout(
                        n,
                        s.dtype,
                        s.shape,
                        tuple(dim_names.get(n, ())),
                        len(s.shape) - 1,
                        math.prod(s.shape[:-1]),
                    )
                    for n, s in tensors.items()
                ),
                1,
            )
        # Every tensor is cut into the same number of chunks, so each record batch holds one
        # chunk of each tensor and the batches together stay near the chunk size.
        chunk_bytes = min(batch_bytes, CHUNK_BYTES)
        chunks = max(1, math.ceil(total / chunk_bytes))
        layouts = []
        for n, s in tensors.items():
            split_axis = _split_axis(s.shape, s.dtype.itemsize, chunks, chunk_bytes)
            lines = math.prod(s.shape[: split_axis + 1])
            line_bytes = math.prod(s.shape[split_axis + 1 :]) * s.dtype.itemsize
            if line_bytes > MAX_BATCH_BYTES:
                raise InvalidTensorError(
                    f"tensor {n!r} of shape {list(s.shape)} cannot be split into record batches "
                    f"under {MAX_BATCH_BYTES // MiB} MiB",
                    details={"tensor": n},
                )
            layouts.append(
                TensorLayout(
                    n,
                    s.dtype,
                    s.shape,
                    tuple(dim_names.get(n, ())),
                    split_axis,
                    max(1, math.ceil(lines / chunks)),
                )
            )
        chunks = max(math.ceil(t.lines / t.lines_per_chunk) for t in layouts)
        return cls(tuple(layouts), chunks)

    def matches(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Whether ``arrays`` can travel in this layout (same names, dtypes and shapes)."""
        if len(arrays) != len(self.tensors):
            return False
        for t in self.tensors:
            a = arrays.get(t.name)
            if a is None or a.dtype != t.dtype or tuple(a.shape) != t.shape:
                return False
        return True


class _RecentLayouts:
    """The last few layouts planned or received, by what made them: a client or a stream sends
    the same shapes over and over, and a layout (with its schema) is worth keeping."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._layouts: OrderedDict[Hashable, SampleLayout] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: Hashable, make: Callable[[], SampleLayout]) -> SampleLayout:
        with self._lock:
            layout = self._layouts.get(key)
            if layout is not None:
                self._layouts.move_to_end(key)
                return layout
        layout = make()  # raises for a bad layout: nothing is kept then
        with self._lock:
            self._layouts[key] = layout
            while len(self._layouts) > self._size:
                self._layouts.popitem(last=False)
        return layout


_RECENT_LAYOUTS = _RecentLayouts(64)


def _check_extents(name: str, shape: Sequence[int], dim_names: Sequence[str]) -> None:
    """Every axis at least 1 long: Arrow cannot carry empty tensors, and there is nothing to
    predict in one."""
    for i, size in enumerate(shape):
        if size < 1:
            axis = f"'{dim_names[i]}'" if i < len(dim_names) and dim_names[i] else str(i)
            what = "zero size" if size == 0 else f"the size {size}"
            subject = f"input {clip(name)!r}" if name else "the input"
            raise InvalidTensorError(
                f"{subject} has {what} on axis {axis} (shape {tuple(shape)}): "
                "there is nothing to predict",
                details={"tensor": clip(name), "axis": axis.strip("'"), "got": size},
            )


def _split_axis(shape: tuple[int, ...], itemsize: int, chunks: int, batch_bytes: int) -> int:
    """The first axis k where lines (axes after k) are small and there are enough lines."""
    per_chunk = max(itemsize, batch_bytes // max(chunks, 1))
    for k in range(len(shape)):
        line_bytes = math.prod(shape[k + 1 :]) * itemsize
        if line_bytes <= per_chunk and math.prod(shape[: k + 1]) >= chunks:
            return k
    return len(shape) - 1


def encode_sample(
    layout: SampleLayout, arrays: Mapping[str, np.ndarray]
) -> Iterator[pa.RecordBatch]:
    """Record batches carrying one sample. Zero-copy for C-contiguous arrays, except the padded
    last chunk of a chunked tensor."""
    schema = layout.schema()
    if not layout.chunked:
        columns = [
            pa.FixedShapeTensorArray.from_storage(
                ftype,
                pa.FixedSizeListArray.from_arrays(
                    pa.Array.from_buffers(
                        ftype.value_type,
                        size,
                        [None, pa.py_buffer(_as_wire_array(arrays[t.name], t))],
                    ),
                    list_size=size,
                ),
            )
            for t, ftype, size in layout.column_types
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)
        return
    prepared = {t.name: _as_wire_array(arrays[t.name], t) for t in layout.tensors}
    for i in range(layout.chunks):
        columns = []
        for t in layout.tensors:
            flat = prepared[t.name].reshape((t.lines, *t.line_shape))
            part = flat[i * t.lines_per_chunk : (i + 1) * t.lines_per_chunk]
            if part.shape[0] < t.lines_per_chunk:
                padded = np.zeros((t.lines_per_chunk, *t.line_shape), dtype=part.dtype)
                padded[: part.shape[0]] = part
                part = padded
            ftype = schema.field(t.name).type
            columns.append(
                pa.FixedShapeTensorArray.from_storage(
                    ftype, _storage(part.reshape((1, *part.shape)), ftype)
                )
            )
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def encode_rows(
    layout: SampleLayout, samples: Sequence[Mapping[str, np.ndarray]]
) -> pa.RecordBatch:
    """One record batch with one row per sample (unchunked layouts only); copies to stack."""
    if layout.chunked:
        raise ValueError("encode_rows needs an unchunked layout")
    schema = layout.schema()
    columns = []
    for t in layout.tensors:
        stacked = np.stack([_as_wire_array(s[t.name], t) for s in samples])
        ftype = schema.field(t.name).type
        columns.append(pa.FixedShapeTensorArray.from_storage(ftype, _storage(stacked, ftype)))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class BandEncoder:
    """Turns a sample that is produced piece by piece into its layout's record batches.

    A tiled prediction finishes its outputs in bands of lines (C order), first to last, and
    should send each band as soon as it is done instead of holding the whole output. Feed the
    bands in order with :meth:`add`; it returns every record batch whose chunk is complete. A
    chunk that lies wholly inside one band travels as a view of that band (no copy); only chunks
    that straddle bands are gathered in a pending buffer, so memory stays at about one chunk per
    tensor besides the bands themselves.
    """

    def __init__(self, layout: SampleLayout) -> None:
        self.layout = layout
        self._schema = layout.schema()
        self._tensors = {t.name: _BandChunks(t, layout) for t in layout.tensors}
        self._sent = 0

    @property
    def done(self) -> bool:
        """Whether every record batch of the sample has been returned."""
        return self._sent == self.layout.chunks

    def add(self, bands: Mapping[str, np.ndarray]) -> list[pa.RecordBatch]:
        """Add the next elements (in C order) of some tensors; returns the record batches that
        are now complete, in order. A band may have any shape: only its element order counts."""
        for name, band in bands.items():
            chunks = self._tensors.get(name)
            if chunks is None:
                raise ValueError(f"tensor {name!r} is not in the layout")
            chunks.add(band)
        batches = []
        while self._sent < self.layout.chunks and all(c.ready for c in self._tensors.values()):
            columns = []
            for t in self.layout.tensors:
                part = self._tensors[t.name].pop()
                ftype = self._schema.field(t.name).type
                columns.append(pa.FixedShapeTensorArray.from_storage(ftype, _storage(part, ftype)))
            batches.append(pa.RecordBatch.from_arrays(columns, schema=self._schema))
            self._sent += 1
        return batches


class _BandChunks:
    """One tensor's chunks as its bands arrive: complete chunks wait in ``_ready``."""

    def __init__(self, t: TensorLayout, layout: SampleLayout) -> None:
        self.t = t
        self._shape = (1, t.lines_per_chunk, *t.line_shape) if layout.chunked else (1, *t.shape)
        self._chunks = layout.chunks
        self._chunk_size = math.prod(self._shape)
        self._size = math.prod(t.shape)
        self._received = 0
        self._pending: np.ndarray | None = None
        self._pending_fill = 0
        self._ready: list[np.ndarray] = []
        self._popped = 0

    @property
    def ready(self) -> bool:
        return bool(self._ready) or (self._received == self._size and self._popped < self._chunks)

    def pop(self) -> np.ndarray:
        self._popped += 1
        if self._ready:
            return self._ready.pop(0)
        # a tensor with fewer lines than the sample has chunks sends zeros, as encode_sample does
        return np.zeros(self._shape, dtype=_wire_dtype(self.t))

    def add(self, band: np.ndarray) -> None:
        if band.dtype != self.t.dtype:
            raise ValueError(
                f"tensor {self.t.name!r}: a band of {band.dtype} for a tensor of {self.t.dtype}"
            )
        flat = _as_wire_array(band, self.t).reshape(-1)
        wire_dtype = flat.dtype
        if flat.size > self._size - self._received:
            raise ValueError(
                f"tensor {self.t.name!r}: {flat.size} more elements do not fit its shape "
                f"{list(self.t.shape)} ({self._size - self._received} left)"
            )
        pos = 0
        while pos < flat.size:
            chunk_start = self._received - self._pending_fill
            wanted = min(self._chunk_size, self._size - chunk_start)
            if self._pending_fill == 0 and flat.size - pos >= self._chunk_size:
                self._ready.append(flat[pos : pos + self._chunk_size].reshape(self._shape))
                pos += self._chunk_size
                self._received += self._chunk_size
                continue
            if self._pending is None:
                # zeroed: the last chunk is zero-padded up to the chunk's size
                self._pending = np.zeros(self._chunk_size, dtype=wire_dtype)
            take = min(wanted - self._pending_fill, flat.size - pos)
            self._pending[self._pending_fill : self._pending_fill + take] = flat[pos : pos + take]
            self._pending_fill += take
            self._received += take
            pos += take
            if self._pending_fill == wanted:
                self._ready.append(self._pending.reshape(self._shape))
                self._pending, self._pending_fill = None, 0


def _wire_dtype(t: TensorLayout) -> np.dtype:
    return np.dtype(np.uint8) if t.dtype == np.bool_ else t.dtype


def _as_wire_array(a: np.ndarray, t: TensorLayout) -> np.ndarray:
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    return np.ascontiguousarray(a)


def _storage(stacked: np.ndarray, ftype: pa.FixedShapeTensorType) -> pa.FixedSizeListArray:
    """Wrap a C-contiguous ``(rows, *shape)`` array as fixed-size-list storage without copying."""
    values = pa.Array.from_buffers(ftype.value_type, stacked.size, [None, pa.py_buffer(stacked)])
    return pa.FixedSizeListArray.from_arrays(values, list_size=math.prod(stacked.shape[1:]))


def column_view(column: pa.Array, row: int) -> np.ndarray:
    """A numpy view of one row of a fixed_shape_tensor column (no copy)."""
    shape, size, dtype = _row_type(column.type)
    values = column.storage.values
    start = (column.offset + row) * size
    buf = values.buffers()[1]
    arr = np.frombuffer(
        buf, dtype=dtype, count=size, offset=(values.offset + start) * dtype.itemsize
    )
    return arr.reshape(shape)


@functools.lru_cache(maxsize=256)
def _row_type(ftype: pa.FixedShapeTensorType) -> tuple[tuple[int, ...], int, np.dtype]:
    """A fixed_shape_tensor type's row: its shape, elements and numpy dtype."""
    shape = tuple(int(s) for s in ftype.shape)
    return shape, math.prod(shape), np.dtype(ftype.value_type.to_pandas_dtype())


class SampleDecoder:
    """Turns received record batches back into samples (dicts of numpy arrays).

    Unchunked layouts give numpy views of the received buffers (no copy). Chunked layouts fill
    one preallocated array per tensor, so memory stays at one sample plus one batch.
    """

    def __init__(self, layout: SampleLayout) -> None:
        self.layout = layout
        self._partial: dict[str, np.ndarray] | None = None
        self._chunk = 0

    @property
    def in_progress(self) -> bool:
        """Whether a chunked sample has started but not finished."""
        return self._partial is not None

    def feed(self, batch: pa.RecordBatch) -> list[dict[str, np.ndarray]]:
        """Add one received batch; returns the samples it completes (zero or more)."""
        if not self.layout.chunked:
            return [
                {
                    t.name: _from_wire(column_view(batch.column(i), row), t)
                    for i, t in enumerate(self.layout.tensors)
                }
                for row in range(batch.num_rows)
            ]
        done: list[dict[str, np.ndarray]] = []
        for row in range(batch.num_rows):
            if self._partial is None:
                self._partial = {
                    t.name: np.empty(t.shape, dtype=t.dtype) for t in self.layout.tensors
                }
                self._chunk = 0
            for i, t in enumerate(self.layout.tensors):
                start = self._chunk * t.lines_per_chunk
                stop = min(start + t.lines_per_chunk, t.lines)
                if start >= stop:
                    continue
                target = self._partial[t.name]
                flat = (target.view(np.uint8) if t.dtype == np.bool_ else target).reshape(
                    (t.lines, *t.line_shape)
                )
                flat[start:stop] = column_view(batch.column(i), row)[: stop - start]
            self._chunk += 1
            if self._chunk == self.layout.chunks:
                done.append(self._partial)
                self._partial = None
        return done


def _from_wire(a: np.ndarray, t: TensorLayout) -> np.ndarray:
    return a.view(np.bool_) if t.dtype == np.bool_ else a
