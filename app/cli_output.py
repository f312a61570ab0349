"""Text the CLI prints for people: tables and summaries (``--json`` prints data instead)."""

from __future__ import annotations

from collections.abc import Sequence

from modelrunner import types


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def model_table(models: Sequence[types.ModelInfo]) -> str:
    if not models:
        return "no models (add one with: modelrunner add PATH|URL|ID)"
    rows = [["ID", "NAME", "WEIGHTS", "SIZE", "SOURCE"]]
    rows += [
        [m.id[:12], m.name, ",".join(m.weight_formats), _size(m.size_bytes), m.source]
        for m in models
    ]
    return _table(rows)


def _axes(spec: types.TensorSpec) -> str:
    parts = []
    for a in spec.axes:
        size = a.size
        if size is None:
            text = "*"
        elif isinstance(size, int):
            text = str(size)
        elif isinstance(size, types.ParameterizedSize):
            text = f"{size.min}+n*{size.step}"
        elif isinstance(size, types.SizeReference):
            text = f"={size.tensor_id}.{size.axis_id}" + (
                f"{size.offset:+d}" if size.offset else ""
            )
        else:
            text = "?"
        halo = f" halo {a.halo}" if a.halo else ""
        parts.append(f"{a.id}:{text}{halo}")
    return ", ".join(parts)


def model_summary(info: types.ModelInfo) -> str:
    return f"{info.id}  {info.name}  ({', '.join(info.weight_formats)})"


def model_details(info: types.ModelInfo) -> str:
    lines = [
        f"id:             {info.id}",
        f"name:           {info.name}",
        f"description:    {info.description}",
        f"authors:        {', '.join(a.name for a in info.authors)}",
        f"format version: {info.format_version}",
        f"weight formats: {', '.join(info.weight_formats)}",
        f"source:         {info.source}",
        f"size:           {_size(info.size_bytes)}",
    ]
    if info.bioimageio_id:
        lines.append(f"bioimage.io id: {info.bioimageio_id}")
    for kind, specs in (("input", info.inputs), ("output", info.outputs)):
        for s in specs:
            steps = s.preprocessing if kind == "input" else s.postprocessing
            proc = f"  [{', '.join(p.id for p in steps)}]" if steps else ""
            lines.append(f"{kind} {s.id}: {s.dtype} ({_axes(s)}){proc}")
    return "\n".join(lines)


def server_info_text(info: types.ServerInfo) -> str:
    lines = [
        f"modelrunner {info.modelrunner_version} (python {info.python_version}, {info.platform})"
    ]
    for name, version in sorted(info.package_versions.items()):
        lines.append(f"  {name} {version}")
    if info.cache is not None:
        c = info.cache
        lines.append(
            f"cache: {c.directory}: {c.models} models, {_size(c.used_bytes)} of {_size(c.budget_bytes)}"
        )
    if not info.runtimes:
        lines.append("runtimes: none registered")
    for r in info.runtimes:
        state = "available" if r.available else f"unavailable ({r.unavailable_reason})"
        devices = ", ".join(
            d.name + (f" ({d.description})" if d.description else "") for d in r.devices
        )
        lines.append(f"runtime {r.runtime_id} at {r.flight_uri}: {state}; devices: {devices}")
        for m in r.loaded_models:
            lines.append(f"  warm: {m.model_id[:12]} {m.weight_format} on {m.device}")
    return "\n".join(lines)
