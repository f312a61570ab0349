"""Byte units, named once for every module that sizes buffers, limits and batches."""

MiB = 1024**2
GiB = 1024**3
