"""NIfTI volumes read and written a chunk of slices at a time, with bounded memory.

The voxel data of a NIfTI file is stored x fastest, then y, then z, so a (z, y, x) chunk of slices is a
contiguous run of bytes: :class:`NiftiSliceReader` reads it from the (gzip) stream, and
:func:`write_label_stream` appends the label chunks computed from it to an output stream in the same order.
The output header copies the input's geometry (qform/sform, zooms, units), so the labels lie exactly on the
input grid; nothing appears at the destination unless the whole volume was written (temp file + rename).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.errors import InputError
from styleseg.io.atomic import atomic_path

NIFTI1_HEADER_BYTES = 352  # 348-byte header + 4-byte extension flag


class NiftiSliceReader:
    """Header, geometry and slice chunks of one NIfTI-1/2 CT file (HU after the header's scaling)."""

    def __init__(self, path: str | Path):
        import nibabel as nib
        import SimpleITK as sitk

        self.path = Path(path)
        try:
            img = nib.load(str(self.path))
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
            raise InputError(self.path, f"cannot read NIfTI header ({type(e).__name__}: {e})",
                             "the file is empty, truncated or not NIfTI; re-export it") from e
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise InputError(self.path, "not a NIfTI-1/2 image")
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(self.path, f"image shape {img.shape} is not a 3D volume", "pass a single 3D CT volume")
        self.nx, self.ny, self.nz = (int(v) for v in shape)
        self.header = img.header
        try:
            r = sitk.ImageFileReader()
            r.SetFileName(str(self.path))
            r.ReadImageInformation()
            direction = r.GetDirection()
            if len(direction) == 4:
                direction = (direction[0], direction[1], 0.0, direction[2], direction[3], 0.0, 0.0, 0.0, 1.0)
            self.direction: tuple[float, ...] = tuple(direction)
            self.spacing: tuple[float, ...] = tuple(r.GetSpacing())
            self.origin: tuple[float, ...] = tuple(r.GetOrigin())
        except RuntimeError as e:
            raise InputError(self.path, f"cannot read the image geometry: {str(e).strip().splitlines()[-1]}") from e
        self.dtype = self.header.get_data_dtype()
        slope, inter = self.header.get_slope_inter()
        self.slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
        self.inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
        self.offset = int(img.dataobj.offset)  # the header field may be 0 for single files (then 352)

    def chunks(self, chunk_slices: int) -> Iterator[np.ndarray]:
        """(n, ny, nx) float32 HU chunks of consecutive slices in file order; a short file is an InputError."""
        per_slice = self.nx * self.ny * self.dtype.itemsize
        opener: Any = gzip.open if str(self.path).lower().endswith(".gz") else open
        with opener(self.path, "rb") as fin:
            fin.seek(self.offset)
            for z0 in range(0, self.nz, chunk_slices):
                n = min(chunk_slices, self.nz - z0)
                try:
                    buf = fin.read(per_slice * n)
                except (EOFError, OSError, gzip.BadGzipFile) as e:
                    raise InputError(self.path, f"cannot read slice data after slice {z0} ({e})",
                                     "re-export or re-download the file") from e
                if len(buf) != per_slice * n:
                    raise InputError(self.path, f"file is truncated: slice data ends at slice "
                                     f"{z0 + len(buf) // per_slice} of {self.nz}", "re-export or re-download the file")
                hu = np.frombuffer(buf, self.dtype).reshape(n, self.ny, self.nx).astype(np.float32)
                if self.slope != 1.0 or self.inter != 0.0:
                    hu = hu * self.slope + self.inter
                yield hu

    def label_header(self) -> Any:
        """A uint8 NIfTI-1 header on this file's grid."""
        import nibabel as nib

        hdr = self.header
        out = nib.Nifti1Header()
        out.set_data_shape((self.nx, self.ny, self.nz))
        out.set_data_dtype(np.uint8)
        out.set_xyzt_units(*hdr.get_xyzt_units())
        aff_q, code_q = hdr.get_qform(coded=True)
        aff_s, code_s = hdr.get_sform(coded=True)
        if aff_q is not None:
            out.set_qform(aff_q, int(code_q))
        if aff_s is not None:
            out.set_sform(aff_s, int(code_s))
        out.set_zooms(hdr.get_zooms()[:3])
        out["vox_offset"] = NIFTI1_HEADER_BYTES
        return out


def write_label_stream(reader: NiftiSliceReader, dest: str | Path, label_chunks: Iterable[np.ndarray]) -> int:
    """Write uint8 label chunks (n, ny, nx), in slice order, as a gzipped NIfTI on ``reader``'s grid at ``dest``
    (atomically); returns the number of slices written. Fewer slices than the grid has is an error."""
    written = 0
    with atomic_path(dest) as tmp:
        # no name and mtime 0 in the gzip header: the same labels give the same bytes (a resumed segmentation
        # equals an uninterrupted one, byte for byte)
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=raw,
                                                   mtime=0) as fout:
            head = io.BytesIO()
            reader.label_header().write_to(head)
            fout.write(head.getvalue().ljust(NIFTI1_HEADER_BYTES, b"\x00"))
            for lab in label_chunks:
                fout.write(np.ascontiguousarray(lab, np.uint8).tobytes())
                written += int(lab.shape[0])
        if written != reader.nz:
            raise InputError(reader.path, f"wrote {written} of {reader.nz} label slices")
    return written
