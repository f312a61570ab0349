"""modelrunner's benchmark suite: ``python -m benchmarks.run`` (see ``benchmarks/README.md``).

Light on imports on purpose: the echo server runs as ``python -m benchmarks.echo_server``.
"""
