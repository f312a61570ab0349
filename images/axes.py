"""Which axes an image file has, and how they meet a model's input axes.

A file's axes are named with the canonical ids ``time``, ``channel``, ``z``, ``y``, ``x`` and
``batch`` (``?`` for an axis the file does not name, such as a plain TIFF stack's pages). They
come from the file's metadata (OME, ImageJ, tifffile's series axes, OME-Zarr axes) or from
``--axes`` letters. :func:`plan_input` decides, for one file and one model input, which axes are
sent to the model (named, so the runtime's own rules add singleton axes and transpose; see
docs/wire-format.md), which are run plane by plane (z and time axes the model lacks, or all of
them with ``--per-plane``), and otherwise says what the file has, what the model wants and which
``--axes`` would map it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelrunner.errors import InvalidArgumentError, InvalidTensorError
from modelrunner.types import AxisSpec, ParameterizedSize, TensorSpec

UNKNOWN = "?"
LETTERS = {"t": "time", "c": "channel", "s": "channel", "z": "z", "y": "y", "x": "x", "b": "batch"}
"""``--axes`` letters; ``s`` (an RGB image's samples) is a channel axis."""
_LETTER_OF = {"time": "t", "channel": "c", "z": "z", "y": "y", "x": "x", "batch": "b"}
_TIFF_LETTERS = {"T": "time", "C": "channel", "S": "channel", "Z": "z", "Y": "y", "X": "x"}
OUTPUT_ORDER = ("batch", "time", "channel", "z", "y", "x")
"""Axis order of written outputs: OME-Zarr's (t, c, z, y, x), which OME-TIFF also takes."""
LOOPABLE = ("time", "z", "batch")


def parse_axes(text: str) -> tuple[str, ...]:
    """``--axes zyx`` -> ``("z", "y", "x")``; unknown or repeated letters are refused."""
    letters = text.strip().lower()
    unknown = sorted({c for c in letters if c not in LETTERS})
    if not letters or unknown:
        raise InvalidArgumentError(
            f"--axes {text!r}: unknown letter(s) {', '.join(unknown) or '(none given)'}; use "
            "t (time), c or s (channel; s for an RGB image's samples), z, y, x, b (batch), "
            "e.g. --axes zyx, cyx, tyx or yxs"
        )
    names = tuple(LETTERS[c] for c in letters)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidArgumentError(
            f"--axes {text!r} names {', '.join(repeated)} more than once (c and s are both "
            "the channel axis)"
        )
    return names


def axes_from_tiff(letters: str) -> tuple[str, ...]:
    """tifffile's series axes (``TZCYXS``, ``Q``/``I`` for pages it cannot name)."""
    return tuple(_TIFF_LETTERS.get(c, UNKNOWN) for c in letters.upper())


def letters(axes: Sequence[str]) -> str:
    return "".join(_LETTER_OF.get(a, UNKNOWN) for a in axes)


def canonical_id(axis: AxisSpec) -> str:
    """A model axis by what it is: batch, channel and time by type, spatial axes by id."""
    if axis.type in ("batch", "channel", "time"):
        return axis.type
    return axis.id


def model_letters(spec: TensorSpec) -> str:
    return "".join(_LETTER_OF.get(canonical_id(a), "i") for a in spec.axes)


def channel_count(spec: TensorSpec) -> int | None:
    """The channels a model input takes, or None when any number is valid."""
    for axis in spec.axes:
        if axis.type == "channel":
            if isinstance(axis.size, int):
                return axis.size
            if isinstance(axis.size, ParameterizedSize):
                return None
            return len(axis.channel_names) or None
    return 1


@dataclass(frozen=True)
class InputPlan:
    """How one file's array becomes the model's input, plane by plane."""

    file_axes: tuple[str, ...]
    loop: tuple[int, ...]
    """Indices of the file axes run one index at a time (in file order)."""
    drop: tuple[int, ...]
    """Indices of size-1 file axes the model has no use for (indexed at 0)."""
    sent_dims: tuple[str, ...] | None
    """The model's axis ids of the axes sent, in file order; None: sent unnamed."""
    note: str = ""

    def planes(self, shape: Sequence[int]) -> int:
        n = 1
        for i in self.loop:
            n *= shape[i]
        return n


def plan_input(
    name: str,
    shape: Sequence[int],
    file_axes: tuple[str, ...] | None,
    spec: TensorSpec,
    model_name: str,
    *,
    per_plane: bool = False,
    rgb: bool = False,
) -> InputPlan:
    """How ``name`` (an array of ``shape`` with ``file_axes``) feeds model input ``spec``."""
    if file_axes is None:  # no axis names anywhere: the runtime's unnamed-array rules apply
        return InputPlan((), (), (), None)
    if len(file_axes) != len(shape):
        raise InvalidArgumentError(
            f"{name}: axes {letters(file_axes)!r} name {len(file_axes)} axes, but the image has "
            f"{len(shape)} (shape {tuple(shape)}); give its axes with --axes"
        )
    model_ids = {canonical_id(a): a.id for a in spec.axes}
    where = f"model {model_name!r} input {spec.id!r} (axes {model_letters(spec)})"
    loop: list[int] = []
    drop: list[int] = []
    sent: list[str] = []
    for i, (axis, size) in enumerate(zip(file_axes, shape, strict=True)):
        if axis == UNKNOWN:
            if size == 1:
                drop.append(i)
                continue
            raise InvalidArgumentError(
                _unnamed_axis_message(name, shape, file_axes, i, spec, where),
                details={"file": name, "axes": letters(file_axes)},
            )
        if axis in model_ids and not (per_plane and axis in ("z", "time")):
            sent.append(model_ids[axis])
        elif axis in LOOPABLE:
            loop.append(i)
        elif size == 1:
            drop.append(i)
        else:
            raise InvalidArgumentError(
                f"{name} has a {axis} axis of {size} (axes {letters(file_axes)}) that {where} "
                "does not have",
                details={"file": name, "axis": axis},
            )
    _check_channels(name, shape, file_axes, drop, spec, where, rgb=rgb)
    note = ""
    if loop:
        what = " x ".join(f"{shape[i]} {_plural(file_axes[i])}" for i in loop)
        why = "--per-plane" if per_plane else f"{where} has no {file_axes[loop[0]]} axis"
        note = f"{name}: running {what} one by one ({why})"
    return InputPlan(tuple(file_axes), tuple(loop), tuple(drop), tuple(sent), note)


def _plural(axis: str) -> str:
    return {"z": "z planes", "time": "time points", "batch": "images"}.get(axis, axis)


def _check_channels(
    name: str,
    shape: Sequence[int],
    file_axes: Sequence[str],
    drop: Sequence[int],
    spec: TensorSpec,
    where: str,
    *,
    rgb: bool,
) -> None:
    wanted = channel_count(spec)
    index = next((i for i, a in enumerate(file_axes) if a == "channel" and i not in drop), None)
    have = shape[index] if index is not None else 1
    if wanted is None or have == wanted:
        return
    kind = {3: "RGB", 4: "RGBA"}.get(have, "") if rgb else ""
    shown = letters(file_axes).replace("c", "s") if rgb else letters(file_axes)
    described = f"{name} has {have} channel{'s' if have != 1 else ''}"
    described += f" ({kind}, axes {shown})" if kind else f" (axes {shown})"
    fixes: list[str] = []
    if wanted == 1 and index is not None:
        fixes.append("pick one channel with --channel N (0-based)")
        if rgb:
            fixes.append("or convert it to grayscale first")
        else:
            axes = list(letters(file_axes))
            axes[index] = "z"
            fixes.append(
                f"or, if its {have} 'channels' are z planes, --axes {''.join(axes)} --per-plane"
            )
    else:
        fixes.append(f"give it an image with {wanted} channels")
    raise InvalidTensorError(
        f"{described}; {where} wants {wanted} channel{'s' if wanted != 1 else ''}: "
        + ", ".join(fixes),
        details={"file": name, "channels": have, "expected": wanted, "axis": "channel"},
    )


def _unnamed_axis_message(
    name: str,
    shape: Sequence[int],
    file_axes: Sequence[str],
    index: int,
    spec: TensorSpec,
    where: str,
) -> str:
    size = shape[index]
    as_z = list(letters(file_axes))
    as_c = list(as_z)
    as_z[index], as_c[index] = "z", "c"
    as_z_text = "".join(as_z).replace("?", "")
    as_c_text = "".join(as_c).replace("?", "")
    plane_first = channel_count(spec) != size
    z_hint = f"--axes {as_z_text} --per-plane (z planes; tyx for time points)"
    c_hint = f"--axes {as_c_text} (channels)"
    hints = f"{z_hint} or {c_hint}" if plane_first else f"{c_hint} or {z_hint}"
    return (
        f"{name} (shape {tuple(shape)}) looks like {size} planes, but its file does not say "
        f"what they are; {where}: say it with {hints}"
    )


def output_axes(
    plan: InputPlan, spec: TensorSpec, plane_shape: Sequence[int], keep: Sequence[str] = ()
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The axes of a written output, in :data:`OUTPUT_ORDER`, and the plane's axes to squeeze:
    the loop axes of the input and the model's output axes, less singleton batch and channel
    (those named in ``keep`` stay)."""
    plane_axes = [canonical_id(a) for a in spec.axes]
    squeeze = tuple(
        i
        for i, (axis, size) in enumerate(zip(plane_axes, plane_shape, strict=True))
        if size == 1 and axis in ("batch", "channel") and axis not in keep
    )
    kept = [a for i, a in enumerate(plane_axes) if i not in squeeze]
    names = [plan.file_axes[i] for i in plan.loop] + kept
    rank = {a: i for i, a in enumerate(OUTPUT_ORDER)}
    ordered = sorted(names, key=lambda a: rank.get(a, -1))
    if len(set(ordered)) != len(ordered):
        raise InvalidArgumentError(
            f"output {spec.id!r} has axes {plane_axes} and the input was run along "
            f"{[plan.file_axes[i] for i in plan.loop]}: pass --axes without those axes"
        )
    return tuple(ordered), squeeze
