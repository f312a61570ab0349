"""Training the example models' U-Net (``modelrunner.example_networks``) on synthetic nuclei
(``modelrunner.synthetic_nuclei``): seconds on a CPU, seeded, with no data to download.

The inputs are normalised as the package's preprocessing normalises them (zero mean, unit
variance over each image), and the loss is binary cross-entropy plus soft Dice on the
foreground, so the network's sigmoid is the probability of nucleus.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from modelrunner.example_kinds import TrainingPlan
from modelrunner.synthetic_nuclei import draw_nuclei

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Trained:
    network: torch.nn.Module
    """In eval mode, on the CPU."""
    final_loss: float
    """The loss averaged over the last tenth of the steps."""


StepCallback = Callable[[int, float], None]
"""Called after each step with the number of steps done and that step's loss."""


def normalized(image: np.ndarray) -> np.ndarray:
    """What the package's ``zero_mean_unit_variance`` preprocessing makes of an image."""
    return ((image - image.mean()) / (image.std() + 1e-6)).astype(np.float32)


def train(plan: TrainingPlan, seed: int, on_step: StepCallback | None = None) -> Trained:
    """Train a fresh ``UNet`` by ``plan``. The same seed gives the same weights on the same
    machine and torch build; torch's global random state is left as it was."""
    import torch

    from modelrunner.example_networks import UNet

    rng = np.random.default_rng(seed)
    drawn = [draw_nuclei(plan.patch, rng) for _ in range(plan.patches)]
    images = torch.from_numpy(np.stack([normalized(d.image) for d in drawn])[:, None])
    masks = torch.from_numpy(np.stack([(d.labels > 0).astype(np.float32) for d in drawn])[:, None])
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = UNet(**plan.network_kwargs)
        optimizer = torch.optim.Adam(network.parameters(), lr=plan.learning_rate)
        for step in range(plan.steps):
            chosen = torch.from_numpy(rng.choice(plan.patches, plan.batch, replace=False))
            x, y = images[chosen], masks[chosen]
            for axis in (-1, -2):
                if rng.random() < 0.5:
                    x, y = x.flip(axis), y.flip(axis)
            logits = network(x)
            loss = _loss(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step + 1, losses[-1])
    tail = losses[-max(1, math.ceil(len(losses) / 10)) :]
    return Trained(network.eval(), sum(tail) / len(tail))


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch

    probability = torch.sigmoid(logits)
    overlap = (probability * target).sum()
    dice = 1 - (2 * overlap + 1) / (probability.sum() + target.sum() + 1)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + dice
