"""Generated protobuf and gRPC code for the Open Inference Protocol (proto package ``inference``,
KServe V2 with Triton's ModelStreamInfer), which the control service serves.

Regenerate with ``python protos/generate.py``; never edit the ``*_pb2*`` files by hand.
"""
