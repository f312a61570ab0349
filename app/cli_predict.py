"""``modelrunner predict``'s command line; the work is in :mod:`modelrunner.app.predict_files`,
imported when the command runs (it brings numpy and the image libraries)."""

from __future__ import annotations

import argparse
from typing import Any

from modelrunner.app.cli_help import DEVICE_HELP, WEIGHT_FORMAT_HELP, add_connection_flags
from modelrunner.app.server_address import DEFAULT_ADDRESS
from modelrunner.predict_request import INPUT_PADDINGS


def add_predict_command(sub: Any) -> None:
    predict = sub.add_parser(
        "predict",
        help="run a model on image files (TIFF/OME-TIFF, PNG, JPEG, OME-Zarr, .npy)",
        description=(
            "Run a model on image files: one output file per input file and model output. "
            "Uses the server at --server, else at localhost:50051 when one answers, else runs "
            "the model in this process."
        ),
    )
    predict.add_argument("model", help="model id, or a package path (added first)")
    predict.add_argument(
        "inputs",
        nargs="+",
        help="image files, folders or glob patterns ('data/*.tif'); for a model with several "
        "inputs, one file per input in input order",
    )
    predict.add_argument(
        "-o",
        "--output",
        required=True,
        help="a folder (ending in /, or existing): <input name>_<output id> in the input's "
        "format (OME-TIFF for PNG/JPEG); or one file (.ome.tif, .tif, .ome.zarr, .npy, .png). "
        "One input into one .ome.zarr runs block by block, for images of any size (--resume)",
    )
    predict.add_argument(
        "--axes",
        metavar="AXES",
        help="the files' axes, e.g. zyx, cyx, tyx, yxs (RGB samples are channels); default: "
        "from the file's metadata",
    )
    predict.add_argument(
        "--per-plane",
        action="store_true",
        help="run z planes and time points one by one even where the model has such an axis "
        "(planes run one by one anyway where it has none)",
    )
    predict.add_argument(
        "--channel", type=int, metavar="N", help="use only this channel, 0-based (default: all)"
    )
    predict.add_argument(
        "--keep-singletons",
        action="store_true",
        help="keep the model's size-1 channel axis in outputs (and batch axis in .npy)",
    )
    where = predict.add_mutually_exclusive_group()
    where.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="server address (default $MODELRUNNER_SERVER or $MODELRUNNER_ADDRESS; else "
        f"{DEFAULT_ADDRESS} when a server answers there); an error when it does not answer",
    )
    where.add_argument(
        "--embedded", action="store_true", help="run the model in this process, not on a server"
    )
    add_connection_flags(predict)
    predict.add_argument("--weight-format", metavar="FORMAT", help=WEIGHT_FORMAT_HELP)
    predict.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
    predict.add_argument(
        "--blocksize",
        type=int,
        metavar="N",
        help="tile with bioimageio.core's blocksize parameter N: tiles of min + N*step pixels "
        "per axis, plus the model's halo (default: the runtime tiles only where it must)",
    )
    predict.add_argument(
        "--reference-path",
        action="store_true",
        help="run bioimageio.core's own pipeline, not the runtime's checked fast path",
    )
    predict.add_argument(
        "--precision",
        choices=("float16", "bfloat16"),
        help="run the network in reduced precision (fast path, PyTorch/TorchScript weights; "
        "default: the model's own, float32)",
    )
    predict.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted block-wise run into the same -o .ome.zarr (only the "
        "missing blocks are predicted); see 'Large images' in the README",
    )
    predict.add_argument(
        "--level",
        type=int,
        default=0,
        metavar="N",
        help="the OME-Zarr pyramid level to read, block by block; default: 0 (full size)",
    )
    predict.add_argument(
        "--input-padding",
        choices=INPUT_PADDINGS,
        default="none",
        help="halo: pad each image by the outputs' halo and crop the outputs, as "
        "bioimageio.core.predict() does (the network must take the padded size); none "
        "(default): pad only to fit the model's sizes",
    )
    predict.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    predict.add_argument("--no-progress", action="store_true", help="no progress bars")
    predict.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from modelrunner.app.predict_files import run_predict

    return run_predict(args)
