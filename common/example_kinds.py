"""The kinds of example model (``modelrunner.example_models``): what each network is, how it is
trained and what its package takes. Data only, so that the command line lists the kinds without
importing numpy or torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingPlan:
    """What one kind of example network is and how it is trained."""

    dims: int
    """2 (YX images) or 3 (ZYX volumes)."""
    patch: tuple[int, ...]
    """The shape of each training image."""
    patches: int
    """Training images drawn once, then sampled (and flipped) in batches."""
    batch: int
    steps: int
    base: int
    """The U-Net's features at full resolution."""
    depth: int = 2
    learning_rate: float = 3e-3

    @property
    def network_kwargs(self) -> dict[str, int]:
        """The ``UNet`` arguments (the package's architecture ``kwargs``)."""
        return {"dims": self.dims, "base": self.base, "depth": self.depth}


@dataclass(frozen=True)
class ExampleKind:
    name: str
    title: str
    """The model's name in its description."""
    summary: str
    plan: TrainingPlan
    test_shape: tuple[int, ...]
    """The test input's spatial shape (YX or ZYX)."""
    halo: int = 8
    """The output's halo on y and x: what tiled prediction cuts from each tile's border."""

    @property
    def axes(self) -> tuple[str, ...]:
        return ("z", "y", "x") if self.plan.dims == 3 else ("y", "x")


KINDS: dict[str, ExampleKind] = {
    "nuclei": ExampleKind(
        "nuclei",
        "Example nuclei U-Net 2D",
        "2-D nuclei segmentation (YX images), 10-30 s to train on 2 CPU cores",
        TrainingPlan(dims=2, patch=(64, 64), patches=64, batch=8, steps=200, base=8),
        test_shape=(256, 256),
    ),
    "nuclei3d": ExampleKind(
        "nuclei3d",
        "Example nuclei U-Net 3D",
        "3-D nuclei segmentation (ZYX stacks), 15-40 s to train on 2 CPU cores",
        TrainingPlan(dims=3, patch=(8, 48, 48), patches=32, batch=4, steps=150, base=4),
        test_shape=(16, 128, 128),
    ),
}
"""Every example kind by name."""
