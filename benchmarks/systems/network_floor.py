"""The floor for ``unet2d_nuclei_broad``: its TorchScript network in plain torch, on the run's
device, with cudnn autotuning, and nothing else.

* network alone: the input already on the device, one forward, synchronised;
* numpy to numpy: a numpy frame copied to the device, the forward, the output copied back into a
  numpy array (what any server must do at least, without pre- or postprocessing).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ..context import BenchContext
from ..rounds import NETWORK_ALONE, NUMPY_TO_NUMPY, RAW_TORCH, UNET2D, Case
from .unet2d import ZOO_MODEL


def floor_cases(ctx: BenchContext) -> list[Case]:
    import torch

    device = torch.device(ctx.settings.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what the zoo ships
        network = torch.jit.load(str(ZOO_MODEL / "weights.pt"), map_location=device).eval()
    frame = np.load(ZOO_MODEL / "test_input.npy")
    on_device = torch.from_numpy(frame).to(device)
    size = "x".join(str(s) for s in frame.shape[-2:])

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def alone(n: int) -> float:
        with torch.inference_mode():
            synchronise()
            start = time.perf_counter()
            for _ in range(n):
                network(on_device)
            synchronise()
            return time.perf_counter() - start

    def numpy_to_numpy(n: int) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(n):
                network(torch.from_numpy(frame).to(device)).cpu().numpy()
            return time.perf_counter() - start

    return [
        Case(
            RAW_TORCH,
            mode,
            UNET2D,
            size,
            frame.nbytes,
            call=call,
            run=run,
            min_frames=ctx.settings.unet2d_min_frames,
            max_frames=None if device.type == "cuda" else ctx.settings.unet2d_max_frames,
        )
        for mode, call, run in (
            (NETWORK_ALONE, "network(x) on the device", alone),
            (NUMPY_TO_NUMPY, "network(from_numpy(x).to(device)).cpu().numpy()", numpy_to_numpy),
        )
    ]
