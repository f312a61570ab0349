"""Generated protobuf and gRPC code for the ``modelrunner.v1`` proto package.

Regenerate with ``python protos/generate.py``; never edit the ``*_pb2*`` files by hand.
"""
