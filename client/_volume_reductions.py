"""The exact reductions behind whole-sample statistics (:mod:`._volume_statistics`), merged slab
by slab: moments (mean and squared deviations, Chan et al.'s pairwise update) and the search
for values at given ranks (histograms that narrow in on each rank, then the distinct values
left in the narrowest bin), as numpy's ``quantile`` finds them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HISTOGRAM_BINS = 1 << 16
COLLECT_LIMIT = 1 << 20
"""A narrowed bin holding at most this many values is read out value by value."""
MAX_NARROWING = 8


class Moments:
    """Count, mean and sum of squared deviations per kept index, merged slab by slab (Chan et
    al.'s pairwise update: exact, and stable where the mean is large next to the spread)."""

    def __init__(self, size: int) -> None:
        self.n = np.zeros(size, np.int64)
        self.mean = np.zeros(size, np.float64)
        self.m2 = np.zeros(size, np.float64)

    @staticmethod
    def of(flat: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        values = flat.astype(np.float64)
        n = values.shape[1]
        mean = values.sum(axis=1) / n
        values -= mean[:, None]
        np.square(values, out=values)
        return n, mean, values.sum(axis=1)

    def merge(self, part: tuple[int, np.ndarray, np.ndarray], rows: np.ndarray) -> None:
        n_b, mean_b, m2_b = part
        if n_b == 0:
            return
        n_a = self.n[rows]
        total = n_a + n_b
        delta = mean_b - self.mean[rows]
        self.mean[rows] += delta * (n_b / total)
        self.m2[rows] += m2_b + delta**2 * (n_a * n_b / total)
        self.n[rows] = total


class RankSearch:
    """The values at given ranks, per kept index, of data that no histogram holds exactly
    (floats, wide integers): each pass histograms the interval known to hold a rank's value and
    keeps the bin it falls in, until a bin holds few enough values to read them out."""

    def __init__(self, ranks: Sequence[int], low: np.ndarray, high: np.ndarray) -> None:
        self.ranks = list(ranks)
        count = len(self.ranks)
        self.low = np.repeat(low[None].astype(np.float64), count, axis=0)
        self.high = np.repeat(high[None].astype(np.float64), count, axis=0)
        self.read_out = np.zeros(self.low.shape, bool)
        self.found: dict[tuple[int, int], float] = {}
        self.passes = 0

    @property
    def pending(self) -> bool:
        return len(self.found) < self.low.size

    def partial(self, flat: np.ndarray, rows: np.ndarray) -> Any:
        """What one slab (its kept indices ``rows``, values) tells about the pending ranks."""
        below = np.zeros(self.low.shape, np.int64)
        hist: dict[tuple[int, int], np.ndarray] = {}
        values: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for r in range(len(self.ranks)):
            for k, row in zip(rows.tolist(), flat, strict=True):
                if (r, k) in self.found:
                    continue
                lo, hi = self.low[r, k], self.high[r, k]
                below[r, k] = np.count_nonzero(row < lo)
                inside = row[(row >= lo) & (row <= hi)]
                if self.read_out[r, k]:
                    values[(r, k)] = np.unique(inside.astype(np.float64), return_counts=True)
                else:
                    hist[(r, k)] = np.histogram(inside, HISTOGRAM_BINS, (lo, hi))[0]
        return below, hist, values

    def merge(self, acc: Any, part: Any) -> Any:
        if acc is None:
            return part
        below, hist, values = acc
        for key, h in part[1].items():
            hist[key] = hist[key] + h if key in hist else h
        for key, (v, c) in part[2].items():
            if key not in values:
                values[key] = (v, c)
                continue
            old_v, old_c = values[key]
            unique, inverse = np.unique(np.concatenate([old_v, v]), return_inverse=True)
            counts = np.bincount(inverse, np.concatenate([old_c, c]).astype(np.float64))
            values[key] = (unique, counts.astype(np.int64))
        return below + part[0], hist, values

    def narrow(self, acc: Any) -> None:
        """After a pass: read out the values of bins that were read, narrow the others."""
        below, hist, values = acc
        self.passes += 1
        for (r, k), (v, c) in values.items():
            position = int(np.searchsorted(np.cumsum(c), self.ranks[r] - below[r, k], "right"))
            self.found[(r, k)] = float(v[min(position, len(v) - 1)])
        for (r, k), h in hist.items():
            lo, hi = self.low[r, k], self.high[r, k]
            target = self.ranks[r] - below[r, k]
            cumulative = np.cumsum(h)
            b = int(np.searchsorted(cumulative, target, "right"))
            b = min(b, len(h) - 1)
            edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
            new_lo, new_hi = float(edges[b]), float(edges[b + 1])
            if new_hi <= new_lo or lo == hi:
                self.found[(r, k)] = lo if lo == hi else new_lo
                continue
            self.low[r, k], self.high[r, k] = new_lo, new_hi
            self.read_out[r, k] = h[b] <= COLLECT_LIMIT or self.passes >= MAX_NARROWING

    def value(self, rank: int) -> np.ndarray:
        r = self.ranks.index(rank)
        return np.array([self.found[(r, k)] for k in range(self.low.shape[1])], np.float64)
