"""What grpcio itself costs to move a frame: a generic echo handler, one unary call per frame
against lockstep messages on one open stream (``python -m benchmarks.grpc_echo``).

The floor under the Open Inference endpoint's unary ``ModelInfer``: nothing of modelrunner runs.
"""

from __future__ import annotations

import argparse
import queue
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def measure(frame_bytes: int, calls: int, warmup: int) -> tuple[float, float]:
    """Milliseconds per round trip: (unary calls, lockstep on one stream)."""
    server = grpc.server(futures.ThreadPoolExecutor(4), options=_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
            "Stream": grpc.stream_stream_rpc_method_handler(
                lambda requests, context: (r for r in requests)
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    data = b"\0" * frame_bytes
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
            unary = channel.unary_unary("/echo.Echo/Unary")
            for _ in range(warmup):
                unary(data)
            start = time.perf_counter()
            for _ in range(calls):
                unary(data)
            unary_ms = (time.perf_counter() - start) / calls * 1e3

            sent: queue.Queue[bytes | None] = queue.Queue()

            def requests() -> Iterator[bytes]:
                while (item := sent.get()) is not None:
                    yield item

            answers = channel.stream_stream("/echo.Echo/Stream")(requests())
            for _ in range(warmup):
                sent.put(data)
                next(answers)
            start = time.perf_counter()
            for _ in range(calls):
                sent.put(data)
                next(answers)
            stream_ms = (time.perf_counter() - start) / calls * 1e3
            sent.put(None)
    finally:
        server.stop(0)
    return unary_ms, stream_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=512 * 512 * 4, help="frame size (1 MiB)")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for i in range(args.rounds):
        unary_ms, stream_ms = measure(args.bytes, args.calls, warmup=30)
        print(
            f"round {i + 1}: {args.bytes} bytes, unary {unary_ms:.2f} ms, "
            f"lockstep on one stream {stream_ms:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
