"""Integrity checks for NIfTI files and CT values: what SimpleITK would otherwise accept silently.

- A truncated ``.nii.gz`` or ``.nii`` reads without error in SimpleITK (the missing slices come back as
  zeros), so :func:`check_nifti_file` reads the whole gzip stream (which also checks its CRC-32) and
  compares the decompressed length with what the header promises (``vox_offset`` + voxels x bitpix/8);
  a plain ``.nii`` is compared by file size.
- SimpleITK's NIfTI reader also turns NaN/Inf voxels into 0; :func:`check_nifti_file` counts them in
  the raw float data while it streams by.
- On a full disk the NIfTI writer prints an error and returns normally, leaving a cut-off file, so
  :func:`check_nifti_written` checks a freshly written file (gzip trailer length or file size).
- NaN/Inf voxels in an array would silently become 0 HU when a float image is stored as int16:
  :func:`check_finite`.
- CT stored without its rescale (0..4095, air near 0 instead of -1000 HU) looks like a body full of
  soft tissue to every later stage: :func:`check_hounsfield` (air must be in the field of view).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from styleseg.errors import InputError

_CHUNK = 1 << 20
REEXPORT = "re-export or re-download the file"
#: CT checked for HU only if its field of view is at least this wide (mm): a narrower crop may hold no air
HU_CHECK_MIN_FOV_MM = 150.0
HU_MAX_MINIMUM = -200.0  # a CT whose darkest voxel is brighter than this shows no air at all
HU_MAX_P1 = -500.0  # ... or whose 1st percentile is brighter than this has almost none


@dataclass(frozen=True)
class NiftiLayout:
    """Where a NIfTI file's voxels are: byte offset, byte count, shape (NIfTI order, x first), dtype."""

    vox_offset: int
    nbytes: int
    dims: tuple[int, ...]
    dtype: np.dtype | None  # None: a type these checks do not interpret (not a real float type)


#: NIfTI datatype codes of the real float types, the ones that can hold NaN/Inf
_FLOAT_CODES = {16: "f4", 64: "f8"}


def nifti_layout(head: bytes) -> NiftiLayout | None:
    """The layout from the first 540 bytes of a NIfTI-1 or NIfTI-2 file; None if the header is not one
    (SimpleITK then gives its own error)."""
    for e in "<>":
        if len(head) >= 348 and struct.unpack(e + "i", head[:4])[0] == 348:  # NIfTI-1
            dim = struct.unpack(e + "8h", head[40:56])
            code, bitpix = struct.unpack(e + "2h", head[70:74])
            vox, min_vox = int(struct.unpack(e + "f", head[108:112])[0]), 352
        elif len(head) >= 540 and struct.unpack(e + "i", head[:4])[0] == 540:  # NIfTI-2
            code, bitpix = struct.unpack(e + "2h", head[12:16])
            dim = struct.unpack(e + "8q", head[16:80])
            vox, min_vox = int(struct.unpack(e + "q", head[168:176])[0]), 544
        else:
            continue
        n = dim[0]
        if not 1 <= n <= 7 or bitpix <= 0 or any(d < 0 for d in dim[1:n + 1]):
            return None
        dims = tuple(int(d) for d in dim[1:n + 1])
        voxels = int(np.prod(dims, dtype=np.float64))
        dtype = np.dtype(e + _FLOAT_CODES[code]) if code in _FLOAT_CODES else None
        return NiftiLayout(max(vox, min_vox), (voxels * bitpix + 7) // 8, dims, dtype)
    return None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _chunks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of a .nii.gz (every gzip member, CRC-32 and length checked) or the bytes of
    a plain .nii; raises EOFError where a gzip stream stops before its end."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            f.seek(0)
            while raw := f.read(_CHUNK):
                yield raw
            return
        f.seek(0)
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while raw := f.read(_CHUNK):
            while raw:
                yield d.decompress(raw)
                raw = b""
                if d.eof:  # a member ended: another may follow (bgzip, pigz --independent)
                    raw = d.unused_data
                    if not raw.strip(b"\0"):
                        break  # trailing zero padding is allowed, as gzip itself allows it
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        if not d.eof:
            raise EOFError("the gzip stream ends before its end marker")


def check_nifti_file(path: Path) -> None:
    """Raise InputError if a NIfTI file holds less data than its header promises, has a corrupt gzip
    stream, or (float images) holds NaN/Inf voxels. Reads the whole file once; a plain integer ``.nii``
    is checked by its size alone."""
    if not _is_gzip(path):
        with open(path, "rb") as f:
            layout = nifti_layout(f.read(540))
        if layout is None or layout.dtype is None:
            _compare(path, layout, path.stat().st_size)
            return
    layout, head, have = None, b"", 0
    nonfinite = _NonFinite()
    try:
        for chunk in _chunks(path):
            if layout is None and len(head) < 540:
                head += chunk[: 540 - len(head)]
                layout = nifti_layout(head)
            if layout is not None and layout.dtype is not None:
                nonfinite.feed(chunk, have, layout)
            have += len(chunk)
    except EOFError as e:  # the stream stops before its end marker
        _compare(path, layout, have, e)
    except zlib.error as e:
        raise InputError(path, f"corrupt gzip stream ({e})", REEXPORT) from e
    _compare(path, layout, have)
    if layout is not None:
        nonfinite.check(path, layout)


def _compare(path: Path, layout: NiftiLayout | None, have: int, cause: BaseException | None = None) -> None:
    if layout is None:
        if cause is not None:
            raise InputError(path, f"truncated: the gzip stream ends after {have} bytes, inside the header",
                             REEXPORT) from cause
        return
    need = layout.vox_offset + layout.nbytes
    if have < need or cause is not None:
        raise InputError(path, f"truncated: {have} of the {need} bytes its header promises "
                         f"({100 * have / max(need, 1):.0f}%); the missing voxels would read as 0",
                         REEXPORT) from cause


class _NonFinite:
    """Counts NaN/Inf voxels of a float NIfTI as its bytes stream by (SimpleITK's NIfTI reader turns them
    into 0 without a word)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None  # flat index (x fastest) of the first one
        self._seen = 0  # voxels looked at
        self._rest = b""  # bytes of a voxel split between two chunks

    def feed(self, chunk: bytes, at: int, layout: NiftiLayout) -> None:
        """Look at ``chunk``, the bytes from offset ``at`` of the (decompressed) file."""
        assert layout.dtype is not None
        if at + len(chunk) <= layout.vox_offset:
            return
        data = self._rest + chunk[max(layout.vox_offset - at, 0):]
        size = layout.dtype.itemsize
        n = min(len(data) // size, int(np.prod(layout.dims)) - self._seen)
        if n <= 0:
            return
        self._rest = data[n * size:]
        bad = ~np.isfinite(np.frombuffer(data[: n * size], layout.dtype))
        if bad.any():
            if self.first is None:
                self.first = self._seen + int(np.flatnonzero(bad)[0])
            self.count += int(bad.sum())
        self._seen += n

    def check(self, path: Path, layout: NiftiLayout) -> None:
        if not self.count or self.first is None:
            return
        where = tuple(int(i) for i in np.unravel_index(self.first, layout.dims[::-1]))
        axes = ", ".join("tzyx"[-len(where):]) if len(where) <= 4 else "index"
        n = self.count
        raise InputError(path, f"{n} voxel{'s are' if n > 1 else ' is'} NaN or infinite (first at ({axes}) = "
                         f"{where}); styleseg will not guess a value for them",
                         "replace them in the source (e.g. with -1024 HU, air, outside the field of view) and "
                         "re-export")


def check_nifti_written(tmp: Path, target: Path) -> None:
    """Raise InputError (naming ``target``) if the file just written at ``tmp`` is cut short: the gzip
    trailer's length (single member, as the NIfTI writer makes them) or the size of a plain file."""
    size = tmp.stat().st_size
    gz = str(target).endswith(".gz")
    ok = False
    try:
        if gz and size >= 18:
            with gzip.open(tmp, "rb") as f:
                layout = nifti_layout(f.read(540))
            with open(tmp, "rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", f.read(4))[0]
            ok = layout is not None and isize == (layout.vox_offset + layout.nbytes) % 2**32
        elif not gz:
            with open(tmp, "rb") as f:
                layout = nifti_layout(f.read(540))
            ok = layout is not None and size >= layout.vox_offset + layout.nbytes
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError):
        ok = False
    if not ok:
        free = shutil.disk_usage(tmp.parent).free
        raise InputError(target, f"cannot write: the file came out incomplete ({size} bytes; {free} bytes free "
                         "on its disk)", "free disk space or choose another --out")


def check_finite(arr: np.ndarray, path: Path | str | None) -> None:
    """Refuse NaN/Inf voxels: stored as int16 they would silently become 0 HU."""
    if not np.issubdtype(arr.dtype, np.floating):
        return
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if n:
        first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape))
        raise InputError(path, f"{n} voxel{'s are' if n > 1 else ' is'} NaN or infinite (first at (z, y, x) = "
                         f"{first}); styleseg will not guess a value for them",
                         "replace them in the source (e.g. with -1024 HU, air, outside the field of view) and "
                         "re-export")


def check_hounsfield(arr: np.ndarray, spacing_xy: tuple[float, float], path: Path | str | None,
                     what: str = "values") -> None:
    """Refuse a CT that is almost certainly not in HU: no air (minimum >= -200 HU) or almost none
    (1st percentile > -500 HU) in a field of view wide enough to hold some. ``what`` says where the
    values came from, for the message."""
    fov = min(arr.shape[-1] * spacing_xy[0], arr.shape[-2] * spacing_xy[1])
    if arr.size == 0 or fov < HU_CHECK_MIN_FOV_MM:
        return
    flat = arr.reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)]
    lo = float(flat.min())
    p1 = float(np.percentile(sample, 1))
    if lo >= HU_MAX_MINIMUM or p1 > HU_MAX_P1:
        raise InputError(path, f"does not look like CT in Hounsfield units: minimum {lo:.0f}, 1st percentile "
                         f"{p1:.0f} (air should be near -1000 HU); the {what}",
                         "export the CT in HU (HU = stored x RescaleSlope + RescaleIntercept), or pass "
                         "--allow-unusual-hu if these really are HU (e.g. a field of view with no air)")
