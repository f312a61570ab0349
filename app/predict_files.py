"""``modelrunner predict``'s work: image files in, image files out.

It uses the server at ``--server`` (or ``$MODELRUNNER_SERVER``/``$MODELRUNNER_ADDRESS``) and
fails when that does not answer; without one, the server at ``localhost:50051`` when one answers
there, and otherwise an embedded runner started for this command alone (``--embedded`` forces
it). Which one is said on stderr. Output paths and formats are checked before any work starts;
each file is read plane by plane where planes run one by one (:mod:`modelrunner.images.axes`),
under one progress bar.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelrunner.app.server_address import (
    COMMAND_RETRY_S,
    DEFAULT_ADDRESS,
    address_from_environment,
    start_hint,
)
from modelrunner.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    InvalidTensorError,
    ModelRunnerError,
    UnavailableError,
)
from modelrunner.images.axes import (
    InputPlan,
    canonical_id,
    letters,
    output_axes,
    parse_axes,
    plan_input,
)
from modelrunner.images.files import DEFAULT_OUTPUT_SUFFIX, ImageFile, find_inputs, open_image, stem
from modelrunner.images.outputs import (
    OUTPUT_SUFFIXES,
    Format,
    atomic_path,
    check_writable,
    full_suffix,
    output_format,
    write_image,
)
from modelrunner.tls_hints import untrusted_certificate

if TYPE_CHECKING:
    from modelrunner.client import ModelRunnerClient
    from modelrunner.types import ModelInfo, TensorSpec

HEALTH_TIMEOUT_S = 2.0


@dataclass
class _Job:
    """One model call's worth of files (one file for a single-input model) and its outputs."""

    images: list[ImageFile]
    plans: list[InputPlan]
    targets: dict[str, tuple[Path, Format]]


@dataclass(frozen=True)
class _Named:
    """An array with axis names, as the client takes labelled arrays (``dims``, ``values``)."""

    values: np.ndarray
    dims: tuple[str, ...]


def run_predict(args: argparse.Namespace) -> int:
    # Everything that can be refused without the model is refused before connecting.
    axes = parse_axes(args.axes) if args.axes else None
    output = Path(args.output)
    # an existing .ome.zarr is an image (a folder on disk), not a folder to write into
    image_folder = full_suffix(output) in (".ome.zarr", ".zarr")
    to_folder = (
        args.output.endswith(("/", os.sep))
        or (output.is_dir() and not image_folder)
        or not full_suffix(output)
    )
    fixed = None if to_folder else output_format(output)
    check_writable(output / "x" if to_folder else output)
    files = find_inputs(args.inputs)
    blockwise = len(files) == 1 and fixed == "zarr"
    if (args.resume or args.level) and not blockwise:
        raise InvalidArgumentError(
            f"{'--resume' if args.resume else '--level'} is for one input written block by "
            "block into one .ome.zarr (-o result.ome.zarr)"
        )
    images = [] if blockwise else [open_image(path, axes, args.channel) for path in files]

    with ExitStack() as stack:
        client, embedded = _connect(args, stack)
        model_id = args.model
        if Path(model_id).exists():
            # this process reads the package in place: nothing to show
            progress = not (args.no_progress or embedded)
            model_id = client.add_model(model_id, progress=progress).id
        if blockwise:
            from modelrunner.app.predict_volume_files import predict_volume_file

            predict_volume_file(client, model_id, files[0], output, args)
            return 0
        info = client.describe(model_id)
        jobs = _jobs(info, images, output, fixed, args)
        total = sum(job.plans[0].planes(job.images[0].shape) for job in jobs)
        from tqdm import tqdm

        with tqdm(
            total=total,
            desc="predict",
            unit="plane",
            disable=True if args.no_progress or total == 1 else None,
            file=sys.stderr,
        ) as bar:
            for job in jobs:
                _run_job(client, info, job, args, bar, tile_progress=total == 1)
    return 0


def _connect(args: argparse.Namespace, stack: ExitStack) -> tuple[ModelRunnerClient, bool]:
    """The client, and whether it talks to a runner embedded in this process."""
    from modelrunner.client import ModelRunnerClient

    if not args.embedded:
        named = args.server or address_from_environment()
        address = named or DEFAULT_ADDRESS
        client = ModelRunnerClient(
            address,
            timeout=None,
            token=args.token,
            tls=args.tls_ca or args.tls,
            retry_s=COMMAND_RETRY_S,
        )
        if _answers(client):
            print(f"using the server at {address}", file=sys.stderr)
            return stack.enter_context(client), False
        client.close()
        if named:
            raise UnavailableError(
                f"{start_hint(address)}; or run the model in this process with --embedded"
            )
        print(
            f"no server at {address}: running the model in this process (start one with "
            "`modelrunner serve`)",
            file=sys.stderr,
        )
    else:
        print("running the model in this process (--embedded)", file=sys.stderr)
    from modelrunner.serving import start_embedded
    from modelrunner.settings import Settings

    # An embedded runner of this command alone: loopback, free ports, no tokens, with the
    # usual cache so models are reused; it reads a package path in place (no upload to itself).
    model = Path(args.model)
    private = Settings(
        host="127.0.0.1",
        flight_host=None,
        port=0,
        flight_port=0,
        auth=False,
        tls_cert_file=None,
        path_source_roots=[model.resolve().parent] if model.exists() else [],
    )
    running = stack.enter_context(start_embedded(private))
    return stack.enter_context(ModelRunnerClient(running.address, timeout=None)), True


def _answers(client: ModelRunnerClient) -> bool:
    """A server listens there (its liveness; a server still starting counts: calls wait)."""
    try:
        client.health("liveness", timeout=HEALTH_TIMEOUT_S)
    except UnavailableError as e:
        # one that closed the connection (it speaks TLS) or whose certificate this client
        # refused is there: the real call fails, with modelrunner.app.cli's hint
        return "Socket closed" in e.message or untrusted_certificate(e.message)
    except DeadlineExceededError:
        return False
    except ModelRunnerError:  # it answered, and refused: the real call will tell
        return True
    return True


def _jobs(
    info: ModelInfo,
    images: list[ImageFile],
    output: Path,
    fixed: Format | None,
    args: argparse.Namespace,
) -> list[_Job]:
    specs = info.inputs
    if len(specs) > 1:
        if len(images) != len(specs):
            raise InvalidArgumentError(
                f"model {info.name!r} takes {len(specs)} inputs {[t.id for t in specs]}, "
                f"got {len(images)} files"
            )
        groups = [images]
    else:
        groups = [[image] for image in images]
        if fixed is not None and len(groups) > 1:
            raise InvalidArgumentError(
                f"-o {output}: {len(groups)} input files need an output folder (end it in /)"
            )
    jobs: list[_Job] = []
    seen: dict[Path, Path] = {}
    inputs = {image.path.resolve() for image in images}
    for group in groups:
        plans = [
            plan_input(
                image.name,
                image.shape,
                image.axes,
                spec,
                info.name,
                per_plane=args.per_plane,
                rgb=image.rgb,
            )
            for image, spec in zip(group, specs, strict=True)
        ]
        if len(group) > 1 and any(p.loop for p in plans):
            raise InvalidArgumentError(
                f"model {info.name!r} has several inputs: planes cannot run one by one; give "
                "files with the model's axes"
            )
        targets = _targets(group[0], [t.id for t in info.outputs], output, fixed)
        for path, _ in targets.values():
            resolved = path.resolve()
            if resolved in inputs:
                raise InvalidArgumentError(f"-o {output}: would overwrite the input {path}")
            if resolved in seen:
                raise InvalidArgumentError(
                    f"{group[0].name} and {seen[resolved].name} would both write {path}; "
                    "rename one or run them separately"
                )
            seen[resolved] = group[0].path
        jobs.append(_Job(group, plans, targets))
    for job in jobs:
        for plan in job.plans:
            if plan.note:
                print(f"note: {plan.note}", file=sys.stderr)
    return jobs


_SAFE_OUTPUT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _targets(
    image: ImageFile, output_ids: list[str], output: Path, fixed: Format | None
) -> dict[str, tuple[Path, Format]]:
    for oid in output_ids:
        # output ids come from the server; a file name made of one must stay in the folder asked
        # for (bioimageio.spec's ids are of this shape; a hostile --server's need not be)
        if not _SAFE_OUTPUT_ID.fullmatch(oid) or ".." in oid:
            raise InvalidArgumentError(
                f"the model's output id {oid[:64]!r} cannot name a file: refusing to write it"
            )
    if fixed is None:
        suffix = DEFAULT_OUTPUT_SUFFIX.get(image.kind, ".ome.tif")
        return {
            oid: (output / f"{stem(image.path)}_{oid}{suffix}", OUTPUT_SUFFIXES[suffix])
            for oid in output_ids
        }
    if len(output_ids) == 1:
        return {output_ids[0]: (output, fixed)}
    suffix = full_suffix(output)
    return {oid: (output.with_name(f"{stem(output)}_{oid}{suffix}"), fixed) for oid in output_ids}


def _run_job(
    client: ModelRunnerClient,
    info: ModelInfo,
    job: _Job,
    args: argparse.Namespace,
    bar: Any,
    *,
    tile_progress: bool,
) -> None:
    first, plan = job.images[0], job.plans[0]
    with ExitStack() as stack:
        for image in job.images:
            stack.callback(image.close)
        outputs = {
            oid: _Output(path, fmt, first, plan, info.output(oid), args.keep_singletons, stack)
            for oid, (path, fmt) in job.targets.items()
        }
        for index in itertools.product(*(range(first.shape[i]) for i in plan.loop)):
            inputs = {
                spec.id: _plane(image, p, index)
                for image, p, spec in zip(job.images, job.plans, info.inputs, strict=True)
            }
            try:
                results = client.predict(
                    info.id,
                    inputs,
                    weight_format=args.weight_format,
                    device=args.device,
                    blocksize=args.blocksize,
                    reference_path=args.reference_path,
                    precision=args.precision,
                    input_padding=args.input_padding,
                    progress=tile_progress and not args.no_progress,
                )
            except InvalidTensorError as e:
                unnamed = [
                    i.name
                    for i, p in zip(job.images, job.plans, strict=True)
                    if p.sent_dims is None
                ]
                if not unnamed:
                    raise
                raise InvalidTensorError(
                    f"{e.message}; {', '.join(unnamed)} has no axis names: give them with "
                    "--axes (e.g. zyx --per-plane for z planes, cyx for channels)",
                    details=e.details,
                ) from e
            for oid, target in outputs.items():
                target.put(index, results[oid])
            bar.update(1)
        for target in outputs.values():
            target.finish()
    for oid, target in outputs.items():
        bar.write(
            f"{first.name} -> {target.path} ({oid}: {list(target.shape)}, axes "
            f"{letters(target.axes) if target.axes else 'as the model'})",
            file=sys.stderr,
        )


def _plane(image: ImageFile, plan: InputPlan, index: tuple[int, ...]) -> Any:
    if plan.sent_dims is None:
        return image.read(tuple(slice(None) for _ in image.shape))
    at = dict(zip(plan.loop, index, strict=True))
    region = tuple(
        at[i] if i in at else 0 if i in plan.drop else slice(None) for i in range(len(image.shape))
    )
    return _Named(np.ascontiguousarray(image.read(region)), plan.sent_dims)


IN_MEMORY_BYTES = 256 * 1024**2
"""A TIFF or PNG output larger than this is gathered in a file-backed buffer next to it (the
page cache, not the process, holds it) before it is written."""


class _Output:
    """One output file, filled plane by plane: straight into the (temporary) OME-Zarr or
    ``.npy`` (memory-mapped); TIFF and PNG gathered in memory, or in a file-backed buffer when
    large, and written when complete."""

    def __init__(
        self,
        path: Path,
        fmt: Format,
        image: ImageFile,
        plan: InputPlan,
        spec: TensorSpec,
        keep_singletons: bool,
        stack: ExitStack,
    ) -> None:
        self.path, self.fmt, self.image, self.plan, self.spec = path, fmt, image, plan, spec
        self.keep = keep_singletons
        self.temporary = stack.enter_context(atomic_path(path))
        self._stack = stack
        self.axes: tuple[str, ...] = ()
        self.shape: tuple[int, ...] = ()
        self._squeeze: tuple[int, ...] = ()
        self._order: list[int] = []
        self._data: Any = None

    def _open(self, plane: np.ndarray) -> None:
        # OME-TIFF and OME-Zarr have no batch axis: a singleton one is kept in .npy only
        keep = ("channel", "batch") if self.fmt == "npy" else ("channel",)
        self.axes, self._squeeze = output_axes(
            self.plan, self.spec, plane.shape, keep if self.keep else ()
        )
        loop_axes = [self.plan.file_axes[i] for i in self.plan.loop]
        plane_axes = [
            canonical_id(a) for i, a in enumerate(self.spec.axes) if i not in self._squeeze
        ]
        sizes = {a: self.image.shape[i] for a, i in zip(loop_axes, self.plan.loop, strict=True)}
        kept = [s for i, s in enumerate(plane.shape) if i not in self._squeeze]
        sizes.update(zip(plane_axes, kept, strict=True))
        self.shape = tuple(sizes[a] for a in self.axes)
        # the plane's axes in the order they take in the output
        self._order = [plane_axes.index(a) for a in self.axes if a in plane_axes]
        self._loop_positions = [self.axes.index(a) for a in loop_axes]
        if self.fmt == "zarr":
            from modelrunner.images.ome_zarr import create_ome_zarr

            self._data = create_ome_zarr(
                self.temporary,
                self.shape,
                plane.dtype,
                self.axes,
                self.image.pixel_sizes,
                name=stem(self.path),
                version=self.image.zarr_version,
            )
        elif self.fmt == "npy":
            self._data = np.lib.format.open_memmap(
                self.temporary, mode="w+", dtype=plane.dtype, shape=self.shape
            )
        elif math.prod(self.shape) * plane.dtype.itemsize > IN_MEMORY_BYTES:
            buffer = self.temporary.with_name(self.temporary.name + ".buffer")
            self._stack.callback(buffer.unlink, missing_ok=True)
            self._data = np.lib.format.open_memmap(
                buffer, mode="w+", dtype=plane.dtype, shape=self.shape
            )
        else:
            self._data = np.empty(self.shape, plane.dtype)

    def put(self, index: tuple[int, ...], plane: np.ndarray) -> None:
        if self._data is None:
            self._open(plane)
        plane = np.squeeze(plane, axis=self._squeeze).transpose(self._order)
        region: list[int | slice] = [slice(None)] * len(self.axes)
        for position, value in zip(self._loop_positions, index, strict=True):
            region[position] = value
        self._data[tuple(region)] = plane

    def finish(self) -> None:
        if isinstance(self._data, np.memmap):
            self._data.flush()
        if self.fmt not in ("zarr", "npy"):
            write_image(
                self.temporary,
                self.fmt,
                self._data,
                self.axes,
                self.image.pixel_sizes,
                name=self.path.name,
            )
