"""Help texts several commands share: what an argument takes and its default, said once; and the
connection flags every command that talks to a server takes."""

import argparse
import os

SOURCE_HELP = (
    "a package folder, its rdf.yaml/bioimageio.yaml, a .zip, an http(s) URL of one, or a "
    "bioimage.io id such as affable-shark (URLs and ids: the server downloads them)"
)
WEIGHT_FORMAT_HELP = (
    "pytorch_state_dict, torchscript, onnx, tensorflow_saved_model_bundle, keras_v3 or "
    "keras_hdf5 (default: every format the model has for a test; for a prediction the first "
    "the runtime can run: on a CPU onnx, torchscript, pytorch_state_dict, then TensorFlow/Keras)"
)
DEVICE_HELP = "cpu, cuda or cuda:N (default: the runtime's device)"


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    """``--token``, ``--tls-ca`` and ``--tls``: how a command reaches a server, the same for
    every command that talks to one (``predict`` included)."""
    p.add_argument(
        "--token",
        metavar="TOKEN",
        default=os.environ.get("MODELRUNNER_TOKEN"),
        help="access token of a server with --auth (default $MODELRUNNER_TOKEN)",
    )
    p.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=os.environ.get("MODELRUNNER_TLS_CA"),
        help="connect with TLS, trusting the CA certificate in this file (default "
        "$MODELRUNNER_TLS_CA; without it and --tls: plaintext)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, trusting the system's roots (default: plaintext)",
    )
