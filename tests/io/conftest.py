"""Fixtures for io tests (builders live in io_builders.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from io_builders import box, write_ct_series, write_rtstruct


@pytest.fixture
def tiny_ct(tmp_path: Path) -> tuple[Path, dict, np.ndarray]:
    """A 4 x 12 x 10 CT series (pixel (r, c) of slice k stores 1000 + 100k + r) with an RTSTRUCT.

    Geometry: origin (-10, -20, 30) mm, PixelSpacing (row 0.5, col 0.8) -> x spacing 0.8, y spacing 0.5,
    slices every 2 mm. ROI 'Lung_L' is a box covering columns 2..5, rows 3..8 of slice 1 (x = -10 + 0.8 c,
    y = -20 + 0.5 r; edges half a pixel outside those centres); 'GTV-1' is not in the schema.
    """
    nz, ny, nx = 4, 12, 10
    stored = (1000 + 100 * np.arange(nz)[:, None, None] + np.arange(ny)[None, :, None]
              + np.zeros((1, 1, nx))).astype(np.int16)
    root = tmp_path / "patient"
    ct = write_ct_series(root / "ct", stored, Manufacturer="ACME", ConvolutionKernel="B30f", KVP=120,
                         XRayTubeCurrent=200, ExposureTime=500)
    x0, x1 = -10 + 0.8 * 1.5, -10 + 0.8 * 5.5
    y0, y1 = -20 + 0.5 * 2.5, -20 + 0.5 * 8.5
    write_rtstruct(root / "rt" / "rs.dcm", ct, {"Lung_L": [(1, box(x0, x1, y0, y1))],
                                                "GTV-1": [(2, box(x0, x1, y0, y1))]})
    return root, ct, stored
