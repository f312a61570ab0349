"""The cost of the value-range check (``modelrunner.value_ranges.check_fits``) per frame, next
to the cast it guards, on the common cases: float64 frames (numpy's default, which the Python
client sends as it is) to a float32 model, int64 and float64 to uint8, at 512x512 and
2048x2048. Not part of ``benchmarks.run``: a check of one function, in seconds.

    python -m benchmarks.value_ranges
    git show <rev>:common/value_ranges.py > /tmp/before.py
    python -m benchmarks.value_ranges --before /tmp/before.py   # before/after, one sitting
"""

from __future__ import annotations

import argparse
import importlib.util
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np

from modelrunner import value_ranges


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("value_ranges_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ms(call: Callable[[], object], size: int) -> float:
    """Best of five, in ms per call."""
    number = 20 if size > 10**6 else 200
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another copy of value_ranges.py to time")
    args = parser.parse_args()
    before = _module(args.before) if args.before else None
    rng = np.random.default_rng(0)
    print(f"{'case':28s} {'before ms':>10s} {'after ms':>9s} {'ratio':>6s} {'cast ms':>8s}")
    for n in (512, 2048):
        floats = rng.random((1, 1, n, n)) * 1000
        cases = [
            ("float64 -> float32", floats, np.dtype("float32")),
            ("int64 -> uint8", rng.integers(0, 256, (1, 1, n, n)), np.dtype("uint8")),
            ("float64 -> uint8", np.floor(floats % 256), np.dtype("uint8")),
        ]
        for name, a, target in cases:
            after = _ms(partial(value_ranges.check_fits, "x", a, target, "t"), a.size)
            cast = _ms(partial(a.astype, target), a.size)
            if before is None:
                then, ratio = "", ""
            else:
                t = _ms(partial(before.check_fits, "x", a, target, "t"), a.size)
                then, ratio = f"{t:.3f}", f"{t / after:.1f}"
            label = f"{name} {n}x{n}"
            print(f"{label:28s} {then:>10s} {after:9.3f} {ratio:>6s} {cast:8.3f}")


if __name__ == "__main__":
    main()
