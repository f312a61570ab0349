"""``modelrunner predict``: image files in, image files out, against a server or an embedded
runner started for the one command."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

from modelrunner.errors import InvalidArgumentError
from modelrunner.image_io import output_paths, read_array, write_array


def run_predict(args: argparse.Namespace) -> int:
    from modelrunner.client import ModelRunnerClient

    with ExitStack() as stack:
        address = args.server
        if not address:
            from modelrunner.serving import start_embedded
            from modelrunner.settings import Settings

            # An embedded runner of this command alone: loopback, free ports, no tokens, with
            # the usual cache so models are reused.
            private = Settings(
                host="127.0.0.1",
                flight_host=None,
                port=0,
                flight_port=0,
                auth=False,
                tls_cert_file=None,
            )
            running = stack.enter_context(start_embedded(private))
            address = running.address
        client = stack.enter_context(
            ModelRunnerClient(
                address,
                timeout=None,
                token=args.token if args.server else None,
                tls=(args.tls_ca or args.tls) if args.server else False,
            )
        )
        model_id = args.model
        if Path(model_id).exists():
            model_id = client.add_model(model_id, progress=not args.no_progress).id
        info = client.describe(model_id)
        if len(args.inputs) != len(info.inputs):
            raise InvalidArgumentError(
                f"model {info.name!r} takes {len(info.inputs)} inputs "
                f"{[t.id for t in info.inputs]}, got {len(args.inputs)} files"
            )
        arrays = {
            spec.id: read_array(Path(p)) for spec, p in zip(info.inputs, args.inputs, strict=True)
        }
        outputs = client.predict(
            info.id,
            arrays,
            weight_format=args.weight_format,
            device=args.device,
            blocksize=args.blocksize,
            reference_path=args.reference_path,
            precision=args.precision,
            progress=not args.no_progress,
        )
        for output_id, path in output_paths(Path(args.output), list(outputs)).items():
            write_array(path, outputs[output_id])
            print(f"{output_id}: {list(outputs[output_id].shape)} -> {path}", file=sys.stderr)
    return 0
