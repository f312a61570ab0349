"""Synthetic fluorescence images of nuclei, drawn with numpy alone: the training data of the
example models (``modelrunner.example_models``) and the README's sample image files.

Each nucleus is an ellipse (an ellipsoid in 3-D) of its own size, orientation, brightness and
texture on a dim, uneven background; the image is blurred as a microscope's optics would and
gets shot and read noise. The true instance labels come with it, so an example can show how
close a model's segmentation gets. Nothing here imports more than numpy: the client install
draws sample images too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CAMERA_OFFSET = 100
"""A camera's dark level, in counts (``camera_counts``)."""
CAMERA_GAIN = 3000
"""Counts for an intensity of 1 (a bright nucleus) in ``camera_counts``."""


@dataclass(frozen=True)
class NucleiImage:
    """A drawn image and what it shows."""

    image: np.ndarray
    """float32, about 0.1 (background) to 1.2 (the brightest nuclei), with noise."""
    labels: np.ndarray
    """uint16, 0 for background and 1..n for the nuclei, the shape of ``image``."""

    @property
    def count(self) -> int:
        return int(self.labels.max())


def draw_nuclei(
    shape: tuple[int, ...],
    rng: np.random.Generator,
    *,
    radius: tuple[float, float] = (4.0, 9.0),
    coverage: float = 0.25,
    z_scale: float = 0.5,
) -> NucleiImage:
    """Nuclei of ``radius`` (min, max, in pixels along y and x) covering about ``coverage`` of a
    2-D (YX) or 3-D (ZYX) image of ``shape``. In 3-D a nucleus is ``z_scale`` as deep as it is
    wide, as z steps are larger than pixels. Nuclei never touch, so the true labels are the
    connected components of the foreground."""
    if len(shape) not in (2, 3):
        raise ValueError(f"shape {shape}: 2-D (y, x) or 3-D (z, y, x) only")
    labels = np.zeros(shape, np.uint16)
    signal = np.zeros(shape, np.float32)
    mean_r = sum(radius) / 2
    volume = math.pi * mean_r**2 if len(shape) == 2 else 4 / 3 * math.pi * mean_r**3 * z_scale
    wanted = max(1, round(coverage * math.prod(shape) / volume))
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(wanted * 20):
        if len(placed) == wanted:
            break
        r = rng.uniform(*radius)
        centre = rng.uniform(0, 1, len(shape)) * np.array(shape)
        scale = np.array([z_scale, 1.0, 1.0][-len(shape) :])
        # never touching: at least the two radii apart (z distances counted at z_scale)
        if any(np.linalg.norm((centre - c) / scale) < r + rc + 1.5 for c, rc in placed):
            continue
        placed.append((centre, r))
        _paint(signal, labels, len(placed), centre, r * scale, rng)
    background = _background(shape, rng)
    blurred = _blur(signal + background, sigma=1.0)
    photons = rng.poisson(np.clip(blurred, 0, None) * 200.0) / 200.0
    noisy = photons + rng.normal(0.0, 0.02, shape)
    return NucleiImage(noisy.astype(np.float32), labels)


def _paint(
    signal: np.ndarray,
    labels: np.ndarray,
    label: int,
    centre: np.ndarray,
    radii: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """One nucleus: an ellipse (ellipsoid) with elongated, rotated y/x radii and a brighter rim
    than middle, as stained chromatin often looks."""
    elongation = rng.uniform(0.75, 1.25)
    radii = radii * np.array([1.0] * (len(radii) - 2) + [elongation, 1 / elongation])
    reach = np.ceil(radii.max()) + 1
    low = np.maximum(np.floor(centre - reach), 0).astype(int)
    high = np.minimum(np.ceil(centre + reach) + 1, signal.shape).astype(int)
    if np.any(high <= low):
        return
    grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high, strict=True)), indexing="ij")
    offsets = [g - c for g, c in zip(grid, centre, strict=True)]
    angle = rng.uniform(0, math.pi)
    y, x = offsets[-2], offsets[-1]
    along = y * math.cos(angle) + x * math.sin(angle)
    across = -y * math.sin(angle) + x * math.cos(angle)
    rotated = [*offsets[:-2], along, across]
    distance = np.sqrt(sum((o / r) ** 2 for o, r in zip(rotated, radii, strict=True)))
    inside = distance <= 1.0
    brightness = rng.uniform(0.45, 1.0)
    texture = 1.0 + 0.15 * rng.standard_normal(distance.shape)
    value = brightness * (0.8 + 0.2 * distance) * texture
    region = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    signal[region] = np.where(inside, value, signal[region])
    labels[region] = np.where(inside, label, labels[region])


def _background(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A dim, uneven background: a level plus a gentle gradient across y and x."""
    level = rng.uniform(0.05, 0.15)
    slope = rng.uniform(-0.05, 0.05, 2)
    y = np.linspace(-0.5, 0.5, shape[-2])[:, None]
    x = np.linspace(-0.5, 0.5, shape[-1])[None, :]
    plane = level + slope[0] * y + slope[1] * x
    return np.broadcast_to(plane, shape).astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur along y and x (the optics' point spread in the focal plane), edges
    continued."""
    half = math.ceil(3 * sigma)
    offsets = np.arange(-half, half + 1)
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    weights /= weights.sum()
    out = image
    for axis in (-2, -1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (half, half)
        padded = np.pad(out, pad, mode="edge")
        length = out.shape[axis]
        out = sum(
            w * np.take(padded, np.arange(i, i + length), axis=axis) for i, w in enumerate(weights)
        )
    return np.asarray(out, np.float32)


def camera_counts(image: np.ndarray) -> np.ndarray:
    """The image as a 16-bit camera would record it: ``CAMERA_OFFSET`` plus ``CAMERA_GAIN``
    counts per unit of intensity."""
    counts = np.clip(image, 0, None) * CAMERA_GAIN + CAMERA_OFFSET
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)
