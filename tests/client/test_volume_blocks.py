"""The block grid and the whole-sample statistics of volume predictions, against
bioimageio.core's own: its blocks (inner and outer regions, padding of the block's data), the
region each block's output ends up in after its blockwise prediction writes them in order, and
its sample statistics (mean, std, linear and inverted-cdf quantiles) on integer and float data.
No server."""

from __future__ import annotations

import numpy as np
import pytest
from bioimageio.core import Sample, Tensor
from bioimageio.core.block_meta import split_shape_into_blocks
from bioimageio.core.common import MemberId
from bioimageio.core.stat_calculators import MeanVarStdCalculator, SampleQuantilesCalculator
from bioimageio.spec.model.v0_5 import AxisId

from modelrunner import errors
from modelrunner.client._volume_blocks import AxisGrid, BlockGrid, PadMode
from modelrunner.client._volume_statistics import RequiredMeasure, SampleStatistics, _slabs

RAW = MemberId("raw")


@pytest.mark.parametrize(
    ("size", "block", "halo"),
    [(100, 32, 4), (96, 32, 4), (33, 32, 8), (24, 32, 4), (10, 64, 20), (1000, 512, 32)],
)
@pytest.mark.parametrize("mode", ["symmetric", "reflect", "edge", "constant"])
def test_each_block_reads_what_bioimageio_core_gives_it(
    size: int, block: int, halo: int, mode: str
) -> None:
    """Along one axis, on the volume padded at its end to one block as the runtime pads it:
    the same inner regions, and each block's pixels the same values after padding."""
    grid = AxisGrid("x", size, block, halo)
    pad = PadMode(mode, -7.0)
    data = np.arange(size, dtype=np.float64) * 3 + 1
    kwargs = {"constant_values": pad.value} if mode == "constant" else {}
    padded = np.pad(data, (0, grid.padded - size), mode=mode, **kwargs)  # type: ignore[call-overload]
    n, metas = split_shape_into_blocks(
        {AxisId("x"): grid.padded}, {AxisId("x"): block}, {AxisId("x"): halo}
    )
    metas = list(metas)
    assert n == len(grid.starts())
    for index, meta in enumerate(metas):
        assert meta.inner_slice[AxisId("x")].start == grid.starts()[index]
        outer = meta.outer_slice[AxisId("x")]
        padding = meta.padding[AxisId("x")]
        expected = np.pad(  # type: ignore[call-overload]
            padded[outer.start : outer.stop], (padding.left, padding.right), mode=mode, **kwargs
        )
        indices = grid.read_indices(index, pad)
        got = np.where(indices >= 0, data[np.maximum(indices, 0)], pad.value)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("size", "block", "halo"), [(100, 32, 4), (96, 32, 4), (33, 32, 8)])
def test_each_output_pixel_has_the_block_bioimageio_core_writes_last(
    size: int, block: int, halo: int
) -> None:
    """bioimageio.core sets each block's inner region in order, so a later block overwrites an
    earlier one where inner regions overlap (at the end): the owned ranges are exactly the
    pixels each block has the last word on, and they cover the volume once."""
    grid = AxisGrid("y", size, block, halo)
    last = np.full(size, -1)
    for index, start in enumerate(grid.starts()):
        last[start : min(start + grid.inner, size)] = index
    owner = np.full(size, -1)
    for index in range(len(grid.starts())):
        start, stop = grid.owned(index)
        assert (owner[start:stop] == -1).all()  # no pixel owned twice
        owner[start:stop] = index
    np.testing.assert_array_equal(owner, last)


def test_blocks_wholly_in_the_padding_write_nothing() -> None:
    grid = BlockGrid((AxisGrid("x", 10, 64, 20),), (), PadMode())
    empty = [grid.is_empty(b) for b in grid.blocks()]
    assert empty == [False, True, True]


def test_a_pad_mode_it_does_not_know_is_refused() -> None:
    with pytest.raises(errors.FailedPreconditionError) as raised:
        PadMode.from_description({"mode": "wrap"})
    assert raised.value.message == (
        "the model pads its input with mode 'wrap', which block-wise prediction does not know "
        "(it knows symmetric, reflect, edge, constant)"
    )
    assert PadMode.from_description(None) == PadMode("symmetric")
    assert PadMode.from_description({}) == PadMode("constant", 0.0)


def _volume(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    if dtype == "float32":
        data = (rng.standard_normal((2, 70, 90)) * 100).astype(np.float32)
        data[0, :5, :5] = 1e15  # an outlier: most values fall into one histogram bin
        data[1, :, :60] = 5.0  # many equal values
        return data
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max // 2, (2, 70, 90)).astype(dtype)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "float32"])
def test_statistics_slab_by_slab_are_bioimageio_cores(dtype: str) -> None:
    """Mean, std and quantiles per channel and over everything, merged from small slabs (which
    also cut the channel axis), equal bioimageio.core's calculators on the whole array."""
    data = _volume(dtype)
    tensor = Tensor(data, dims=("channel", "y", "x"))
    sample = Sample(members={RAW: tensor}, stat={}, id=None)
    yx = (AxisId("y"), AxisId("x"))
    measures = [
        RequiredMeasure("mean", ("y", "x")),
        RequiredMeasure("std", ("y", "x")),
        RequiredMeasure("quantile", ("y", "x"), 0.01),
        RequiredMeasure("quantile", ("y", "x"), 0.998),
        RequiredMeasure("quantile", ("y", "x"), 0.3, "inverted_cdf"),
        RequiredMeasure("mean", ()),
    ]
    stats = SampleStatistics(
        "raw", measures, ("channel", "y", "x"), data.shape, data.dtype, chunks=(1, 16, 16),
        slab_bytes=1000,
    )  # fmt: skip
    assert len(stats.regions) >= 10
    got = {
        (s.name, s.q, s.method, s.axes): np.asarray(s.values).reshape(s.shape)
        for s in stats.compute(lambda _, region: data[region], [()])[()]
    }
    reference = {
        **{
            (m.name, 0.0, "linear", ("y", "x")): m_value
            for m, m_value in MeanVarStdCalculator(RAW, yx).compute(sample).items()
        },
        **{
            (m.name, 0.0, "linear", ()): m_value
            for m, m_value in MeanVarStdCalculator(RAW, None).compute(sample).items()
            if m.name == "mean"
        },
        **{
            ("quantile", m.q, "linear", ("y", "x")): m_value
            for m, m_value in SampleQuantilesCalculator(RAW, yx, [0.01, 0.998])
            .compute(sample)
            .items()
        },
        **{
            ("quantile", m.q, "inverted_cdf", ("y", "x")): m_value
            for m, m_value in SampleQuantilesCalculator(RAW, yx, [0.3], method="inverted_cdf")
            .compute(sample)
            .items()
        },
    }
    # bioimageio.core sums float32 data in float32; here every sum is float64
    rtol = 1e-5 if dtype == "float32" else 1e-9
    for key, value in got.items():
        expected = np.asarray(reference[key].data, np.float64).reshape(value.shape)
        np.testing.assert_allclose(value, expected, rtol=rtol, err_msg=str(key))


def test_nan_in_a_float_volume_is_refused_before_any_prediction() -> None:
    data = np.zeros((40, 40), np.float32)
    data[30, 30] = np.nan
    stats = SampleStatistics(
        "raw", [RequiredMeasure("mean", ("y", "x"))], ("y", "x"), data.shape, "f4"
    )
    with pytest.raises(errors.InvalidTensorError) as raised:
        stats.compute(lambda _, region: data[region], [()])
    assert raised.value.message == (
        "input 'raw' holds NaN or infinite values: its statistics (and the model's output) "
        "would be NaN"
    )


def test_slabs_cover_the_volume_once_on_chunk_edges() -> None:
    shape, chunks = (3, 100, 70), (1, 16, 32)
    covered = np.zeros(shape, int)
    for region in _slabs(shape, 2, 3000, chunks):
        covered[region] += 1
        for r, c, s in zip(region, chunks, shape, strict=True):
            assert r.start % c == 0 and (r.stop % c == 0 or r.stop == s)
    assert (covered == 1).all()
