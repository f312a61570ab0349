"""The ceiling: a bare ``pyarrow.flight`` ``do_exchange`` echo server, no model, no extra work.

Run it as its own process: ``python -m benchmarks.echo_server --port PORT``. Every record batch a
client writes on an exchange comes straight back on the same exchange, as soon as it arrives, so
lockstep calls (a frame written, its echo read, then the next, on one open exchange) and frame
streams (many frames in flight on one exchange) both work. Frames travel the
way modelrunner moves them (one ``arrow.fixed_shape_tensor`` column, one row per frame); the
server never looks into them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

import pyarrow.flight as flight

logger = logging.getLogger(__name__)


class EchoServer(flight.FlightServerBase):  # type: ignore[misc]
    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        started = False
        while not context.is_cancelled():
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            if chunk.data is None:
                continue
            if not started:
                writer.begin(chunk.data.schema)
                started = True
            writer.write_batch(chunk.data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bare Arrow Flight do_exchange echo server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = EchoServer(f"grpc://{args.host}:{args.port}")

    def stop(*_: Any) -> None:
        # shutdown() waits for calls in progress, so it must not run in the signal handler
        # of the thread that serve() blocks.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    logger.info("echo server listening on %s:%d", args.host, server.port)
    server.serve()
    logger.info("echo server stopped")


if __name__ == "__main__":
    main()
