"""One converter per message between protobuf (the wire) and :mod:`modelrunner.types`.

``to_pb_*`` builds a message from a domain object, ``from_pb_*`` does the reverse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from modelrunner import errors, types
from modelrunner.v1 import control_pb2, models_pb2, runtime_pb2


def to_pb_timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc))
    return ts


def from_pb_timestamp(msg: models_pb2.ModelInfo, field: str) -> datetime | None:
    if not msg.HasField(field):  # type: ignore[arg-type]
        return None
    ts: Timestamp = getattr(msg, field)
    return ts.ToDatetime(tzinfo=timezone.utc)


# -- axes and tensors ---------------------------------------------------------------------------


def to_pb_axis_size(size: types.AxisSize | None) -> models_pb2.AxisSize | None:
    if size is None:
        return None
    if isinstance(size, int):
        return models_pb2.AxisSize(fixed=size)
    if isinstance(size, types.ParameterizedSize):
        return models_pb2.AxisSize(
            parameterized=models_pb2.ParameterizedSize(min=size.min, step=size.step)
        )
    if isinstance(size, types.SizeReference):
        return models_pb2.AxisSize(
            reference=models_pb2.SizeReference(
                tensor_id=size.tensor_id, axis_id=size.axis_id, offset=size.offset
            )
        )
    return models_pb2.AxisSize(
        data_dependent=models_pb2.DataDependentSize(min=size.min, max=size.max or 0)
    )


def from_pb_axis_size(msg: models_pb2.AxisSize) -> types.AxisSize | None:
    kind = msg.WhichOneof("kind")
    if kind == "fixed":
        return msg.fixed
    if kind == "parameterized":
        return types.ParameterizedSize(min=msg.parameterized.min, step=msg.parameterized.step)
    if kind == "reference":
        r = msg.reference
        return types.SizeReference(tensor_id=r.tensor_id, axis_id=r.axis_id, offset=r.offset)
    if kind == "data_dependent":
        d = msg.data_dependent
        return types.DataDependentSize(min=d.min, max=d.max or None)
    return None


def to_pb_axis(axis: types.AxisSpec) -> models_pb2.AxisSpec:
    return models_pb2.AxisSpec(
        id=axis.id,
        type=axis.type,
        size=to_pb_axis_size(axis.size),
        halo=axis.halo,
        scale=axis.scale,
        unit=axis.unit,
        channel_names=list(axis.channel_names),
        concatenable=axis.concatenable,
    )


def from_pb_axis(msg: models_pb2.AxisSpec) -> types.AxisSpec:
    return types.AxisSpec(
        id=msg.id,
        type=msg.type,  # type: ignore[arg-type]
        size=from_pb_axis_size(msg.size) if msg.HasField("size") else None,
        halo=msg.halo,
        scale=msg.scale or 1.0,
        unit=msg.unit,
        channel_names=tuple(msg.channel_names),
        concatenable=msg.concatenable,
    )


def to_pb_processing(step: types.ProcessingStep) -> models_pb2.ProcessingStep:
    return models_pb2.ProcessingStep(id=step.id, kwargs_json=json.dumps(step.kwargs))


def from_pb_processing(msg: models_pb2.ProcessingStep) -> types.ProcessingStep:
    return types.ProcessingStep(id=msg.id, kwargs=json.loads(msg.kwargs_json or "{}"))


def to_pb_tensor(spec: types.TensorSpec) -> models_pb2.TensorSpec:
    return models_pb2.TensorSpec(
        id=spec.id,
        description=spec.description,
        axes=[to_pb_axis(a) for a in spec.axes],
        dtype=spec.dtype,
        preprocessing=[to_pb_processing(p) for p in spec.preprocessing],
        postprocessing=[to_pb_processing(p) for p in spec.postprocessing],
        optional=spec.optional,
        test_shape=list(spec.test_shape),
    )


def from_pb_tensor(msg: models_pb2.TensorSpec) -> types.TensorSpec:
    return types.TensorSpec(
        id=msg.id,
        description=msg.description,
        axes=tuple(from_pb_axis(a) for a in msg.axes),
        dtype=msg.dtype,
        preprocessing=tuple(from_pb_processing(p) for p in msg.preprocessing),
        postprocessing=tuple(from_pb_processing(p) for p in msg.postprocessing),
        optional=msg.optional,
        test_shape=tuple(msg.test_shape),
    )


# -- models -------------------------------------------------------------------------------------


def to_pb_model_info(info: types.ModelInfo) -> models_pb2.ModelInfo:
    return models_pb2.ModelInfo(
        id=info.id,
        name=info.name,
        description=info.description,
        authors=[models_pb2.Author(**a.model_dump()) for a in info.authors],
        tags=list(info.tags),
        license=info.license,
        format_version=info.format_version,
        bioimageio_id=info.bioimageio_id,
        version=info.version,
        weight_formats=list(info.weight_formats),
        inputs=[to_pb_tensor(t) for t in info.inputs],
        outputs=[to_pb_tensor(t) for t in info.outputs],
        source=info.source,
        size_bytes=info.size_bytes,
        added_at=to_pb_timestamp(info.added_at),
        last_used_at=to_pb_timestamp(info.last_used_at),
        rdf_json="" if info.rdf is None else json.dumps(info.rdf),
        loaded=[to_pb_loaded_model(m) for m in info.loaded],
        workspaces=list(info.workspaces),
        published=info.published,
    )


def from_pb_model_info(msg: models_pb2.ModelInfo) -> types.ModelInfo:
    return types.ModelInfo(
        id=msg.id,
        name=msg.name,
        description=msg.description,
        authors=tuple(
            types.Author(
                name=a.name,
                affiliation=a.affiliation,
                email=a.email,
                github_user=a.github_user,
                orcid=a.orcid,
            )
            for a in msg.authors
        ),
        tags=tuple(msg.tags),
        license=msg.license,
        format_version=msg.format_version,
        bioimageio_id=msg.bioimageio_id,
        version=msg.version,
        weight_formats=tuple(msg.weight_formats),
        inputs=tuple(from_pb_tensor(t) for t in msg.inputs),
        outputs=tuple(from_pb_tensor(t) for t in msg.outputs),
        source=msg.source,
        size_bytes=msg.size_bytes,
        added_at=from_pb_timestamp(msg, "added_at"),
        last_used_at=from_pb_timestamp(msg, "last_used_at"),
        rdf=json.loads(msg.rdf_json) if msg.rdf_json else None,
        loaded=tuple(from_pb_loaded_model(m) for m in msg.loaded),
        workspaces=tuple(msg.workspaces),
        published=msg.published,
    )


# -- validation reports -------------------------------------------------------------------------


def _to_pb_entry(entry: types.ValidationEntry) -> models_pb2.ValidationEntry:
    return models_pb2.ValidationEntry(
        loc=list(entry.loc),
        msg=entry.msg,
        type=entry.type,
        severity=entry.severity,
        traceback=entry.traceback,
    )


def _from_pb_entry(msg: models_pb2.ValidationEntry) -> types.ValidationEntry:
    return types.ValidationEntry(
        loc=tuple(msg.loc),
        msg=msg.msg,
        type=msg.type,
        severity=msg.severity,
        traceback=msg.traceback,
    )


def to_pb_report(report: types.ValidationReport) -> models_pb2.ValidationReport:
    return models_pb2.ValidationReport(
        status=report.status,
        name=report.name,
        source=report.source,
        type=report.type,
        format_version=report.format_version,
        id=report.id,
        details=[
            models_pb2.ValidationDetail(
                name=d.name,
                status=d.status,
                loc=list(d.loc),
                errors=[_to_pb_entry(e) for e in d.errors],
                warnings=[_to_pb_entry(w) for w in d.warnings],
            )
            for d in report.details
        ],
        env=report.env,
        markdown=report.markdown,
    )


def from_pb_report(msg: models_pb2.ValidationReport) -> types.ValidationReport:
    return types.ValidationReport(
        status=msg.status,  # type: ignore[arg-type]
        name=msg.name,
        source=msg.source,
        type=msg.type,
        format_version=msg.format_version,
        id=msg.id,
        details=tuple(
            types.ValidationDetail(
                name=d.name,
                status=d.status,  # type: ignore[arg-type]
                loc=tuple(d.loc),
                errors=tuple(_from_pb_entry(e) for e in d.errors),
                warnings=tuple(_from_pb_entry(w) for w in d.warnings),
            )
            for d in msg.details
        ),
        env=dict(msg.env),
        markdown=msg.markdown,
    )


# -- runtimes and server info -------------------------------------------------------------------


def to_pb_device(device: types.DeviceInfo) -> models_pb2.DeviceInfo:
    return models_pb2.DeviceInfo(**device.model_dump())


def from_pb_device(msg: models_pb2.DeviceInfo) -> types.DeviceInfo:
    return types.DeviceInfo(
        name=msg.name,
        description=msg.description,
        memory_total_bytes=msg.memory_total_bytes,
        memory_free_bytes=msg.memory_free_bytes,
    )


def to_pb_loaded_model(model: types.LoadedModel) -> models_pb2.LoadedModel:
    return models_pb2.LoadedModel(
        model_id=model.model_id,
        weight_format=model.weight_format,
        device=model.device,
        memory_bytes=model.memory_bytes,
        last_used_at=to_pb_timestamp(model.last_used_at),
        requests=model.requests,
        serving_path=model.serving_path,
        serving_path_reason=model.serving_path_reason,
        precision_max_abs_error=model.precision_max_abs_error,
    )


def from_pb_loaded_model(msg: models_pb2.LoadedModel) -> types.LoadedModel:
    return types.LoadedModel(
        model_id=msg.model_id,
        weight_format=msg.weight_format,
        device=msg.device,
        memory_bytes=msg.memory_bytes,
        last_used_at=from_pb_timestamp(msg, "last_used_at"),  # type: ignore[arg-type]
        requests=msg.requests,
        serving_path=msg.serving_path,
        serving_path_reason=msg.serving_path_reason,
        precision_max_abs_error=dict(msg.precision_max_abs_error),
    )


def to_pb_runtime(info: types.RuntimeInfo) -> models_pb2.RuntimeInfo:
    return models_pb2.RuntimeInfo(
        runtime_id=info.runtime_id,
        flight_uri=info.flight_uri,
        devices=[to_pb_device(d) for d in info.devices],
        loaded_models=[to_pb_loaded_model(m) for m in info.loaded_models],
        package_versions=info.package_versions,
        weight_formats=list(info.weight_formats),
        available=info.available,
        unavailable_reason=info.unavailable_reason,
        last_seen_at=to_pb_timestamp(info.last_seen_at),
        memory_budget_bytes=info.memory_budget_bytes,
        queue_depth=info.queue_depth,
        metrics_uri=info.metrics_uri,
    )


def from_pb_runtime(msg: models_pb2.RuntimeInfo) -> types.RuntimeInfo:
    return types.RuntimeInfo(
        runtime_id=msg.runtime_id,
        flight_uri=msg.flight_uri,
        devices=tuple(from_pb_device(d) for d in msg.devices),
        loaded_models=tuple(from_pb_loaded_model(m) for m in msg.loaded_models),
        package_versions=dict(msg.package_versions),
        weight_formats=tuple(msg.weight_formats),
        available=msg.available,
        unavailable_reason=msg.unavailable_reason,
        last_seen_at=from_pb_timestamp(msg, "last_seen_at"),  # type: ignore[arg-type]
        memory_budget_bytes=msg.memory_budget_bytes,
        queue_depth=msg.queue_depth,
        metrics_uri=msg.metrics_uri,
    )


def to_pb_server_info(info: types.ServerInfo) -> control_pb2.GetServerInfoResponse:
    return control_pb2.GetServerInfoResponse(
        modelrunner_version=info.modelrunner_version,
        package_versions=info.package_versions,
        python_version=info.python_version,
        platform=info.platform,
        cache=None if info.cache is None else control_pb2.CacheInfo(**info.cache.model_dump()),
        runtimes=[to_pb_runtime(r) for r in info.runtimes],
        metrics_uri=info.metrics_uri,
    )


def from_pb_server_info(msg: control_pb2.GetServerInfoResponse) -> types.ServerInfo:
    cache = None
    if msg.HasField("cache"):
        cache = types.CacheInfo(
            directory=msg.cache.directory,
            used_bytes=msg.cache.used_bytes,
            budget_bytes=msg.cache.budget_bytes,
            models=msg.cache.models,
        )
    return types.ServerInfo(
        modelrunner_version=msg.modelrunner_version,
        package_versions=dict(msg.package_versions),
        python_version=msg.python_version,
        platform=msg.platform,
        cache=cache,
        runtimes=tuple(from_pb_runtime(r) for r in msg.runtimes),
        metrics_uri=msg.metrics_uri,
    )


def to_pb_progress(progress: types.Progress) -> models_pb2.Progress:
    # bytes_done is the client's own (volume predictions): not on the wire
    return models_pb2.Progress(**progress.model_dump(exclude={"bytes_done"}))


def from_pb_progress(msg: models_pb2.Progress) -> types.Progress:
    return types.Progress(stage=msg.stage, done=msg.done, total=msg.total, unit=msg.unit)


def to_pb_source(source: types.ModelSourceSpec) -> models_pb2.ModelSource:
    return models_pb2.ModelSource(**{source.kind: source.value})


def from_pb_source(msg: models_pb2.ModelSource) -> types.ModelSourceSpec:
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise errors.InvalidSourceError(
            "no model source given: set one of path, url, bioimageio_id or upload_id"
        )
    return types.ModelSourceSpec(kind=kind, value=getattr(msg, kind))  # type: ignore[arg-type]


# -- errors -------------------------------------------------------------------------------------


def to_pb_error(exc: errors.ModelRunnerError) -> models_pb2.ErrorDetail:
    return models_pb2.ErrorDetail(
        code=exc.code.name, type=type(exc).__name__, message=exc.message, details=exc.details
    )


def from_pb_error(msg: models_pb2.ErrorDetail) -> errors.ModelRunnerError:
    import grpc

    code = getattr(grpc.StatusCode, msg.code, grpc.StatusCode.UNKNOWN)
    cls = errors.error_class_for(code, msg.type)
    return cls(msg.message, details=dict(msg.details))


def to_pb_sample_statistics(
    statistics: Sequence[types.SampleStatistic],
) -> runtime_pb2.SampleStatistics:
    return runtime_pb2.SampleStatistics(
        statistics=[
            runtime_pb2.SampleStatistic(
                tensor_id=s.tensor_id,
                name=s.name,
                axes=s.axes,
                q=s.q,
                dims=s.dims,
                shape=s.shape,
                values=s.values,
                method="" if s.method == "linear" else s.method,
            )
            for s in statistics
        ]
    )


def from_pb_sample_statistics(
    msg: runtime_pb2.SampleStatistics,
) -> tuple[types.SampleStatistic, ...]:
    """Malformed statistics (an unknown name, values that do not fill the shape) are refused."""
    out = []
    for s in msg.statistics:
        if s.name not in ("mean", "var", "std", "quantile"):
            raise errors.InvalidArgumentError(
                f"unknown sample statistic {errors.clip(s.name)!r}: one of mean, var, std, "
                "quantile",
                details={"statistic": errors.clip(s.name)},
            )
        if s.method not in ("", "linear", "inverted_cdf"):
            raise errors.InvalidArgumentError(
                f"unknown quantile method {errors.clip(s.method)!r}: linear or inverted_cdf",
                details={"method": errors.clip(s.method)},
            )
        if (
            len(s.dims) != len(s.shape)
            or any(n < 0 for n in s.shape)
            or math.prod(s.shape) != len(s.values)
        ):
            raise errors.InvalidArgumentError(
                f"sample statistic {s.name} of {errors.clip(s.tensor_id)!r}: {len(s.values)} "
                f"values for dims {errors.clip(list(s.dims))} of shape {errors.clip(list(s.shape))}",
                details={"tensor": errors.clip(s.tensor_id), "statistic": s.name},
            )
        out.append(
            types.SampleStatistic(
                tensor_id=s.tensor_id,
                name=s.name,  # type: ignore[arg-type]
                axes=tuple(s.axes),
                q=s.q,
                method=s.method or "linear",  # type: ignore[arg-type]
                dims=tuple(s.dims),
                shape=tuple(s.shape),
                values=tuple(s.values),
            )
        )
    return tuple(out)
