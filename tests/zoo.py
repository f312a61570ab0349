"""The real bioimage.io packages every checkout and CI have at ``../shared/zoo`` (read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1].parent / "shared" / "zoo"
NUCLEI = ZOO / "unet2d_nuclei_broad"
MULTI = ZOO / "unet2d_multi_tensor"
CAREAMICS_ZIP = ZOO / "careamics_n2v_tiny.zip"

needs_zoo = pytest.mark.skipif(not NUCLEI.is_dir(), reason=f"no model zoo at {ZOO}")
