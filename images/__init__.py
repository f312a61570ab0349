"""Image files: which axes a file has and how they meet a model's inputs (``axes``), reading
TIFF, PNG, JPEG, ``.npy`` and OME-Zarr (``files``, ``ome_zarr``) and writing outputs
(``outputs``).

Below the client (its ``predict_volume`` reads and writes OME-Zarr) and the command line's
``predict`` on files; above the common modules only."""
