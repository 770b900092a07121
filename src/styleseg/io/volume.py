"""Volume: a CT or label array with its physical geometry, and NIfTI read/write.

Conventions (the same as SimpleITK/ITK, and so as DICOM):
- ``array`` is indexed (z, y, x): slice, row, column.
- ``spacing``, ``origin`` are (x, y, z) in mm; ``direction`` is the 3x3 direction-cosine matrix,
  row-major, in the LPS patient frame (DICOM's). Origin is the centre of voxel (0, 0, 0).
- NIfTI files store RAS; SimpleITK converts LPS <-> RAS on read and write, which is what 3D Slicer
  and nibabel expect, so a label written here overlays its image in Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.errors import InputError
from styleseg.io.atomic import atomic_path
from styleseg.io.integrity import check_nifti_file, check_nifti_written

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Volume:
    """An image (HU, float or int16) or label (uint8) volume with geometry and metadata tags."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    tags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim == 2:
            self.array = self.array[None]
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 2D or 3D array, got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(s) for s in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(s) for s in self.direction)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry and tags, another array of the same shape (e.g. a label map)."""
        if tuple(array.shape) != self.shape and not (array.ndim == 2 and self.shape[0] == 1):
            raise ValueError(f"array shape {array.shape} != volume shape {self.shape}")
        return replace(self, array=array, tags=dict(self.tags))

    def slice_z_positions(self) -> np.ndarray:
        """Physical position (mm, along the slice normal in LPS) of each slice's origin."""
        d = np.asarray(self.direction).reshape(3, 3)
        o = np.asarray(self.origin)
        k = np.arange(self.shape[0])
        pts = o[None, :] + (k[:, None] * self.spacing[2]) * d[:, 2][None, :]
        return pts[:, 2]

    def index_to_physical(self, zyx: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices in (z, y, x) order -> (N, 3) LPS points in mm."""
        zyx = np.atleast_2d(np.asarray(zyx, float))
        xyz = zyx[:, ::-1] * np.asarray(self.spacing)[None]
        d = np.asarray(self.direction).reshape(3, 3)
        return np.asarray(self.origin)[None] + xyz @ d.T

    def physical_to_index(self, pts: np.ndarray) -> np.ndarray:
        """(N, 3) LPS points in mm -> continuous (N, 3) voxel indices in (z, y, x) order."""
        pts = np.atleast_2d(np.asarray(pts, float))
        d = np.asarray(self.direction).reshape(3, 3)
        xyz = (pts - np.asarray(self.origin)[None]) @ d / np.asarray(self.spacing)[None]
        return xyz[:, ::-1]

    def same_grid(self, other: Volume, tol: float = 1e-3) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=max(tol, 1e-2))
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def grid_description(self) -> str:
        return (f"shape (z,y,x)={self.shape}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
                f"origin={tuple(round(o, 2) for o in self.origin)}")

    # --- SimpleITK bridge ----------------------------------------------------------------------
    def to_sitk(self):  # -> SimpleITK.Image
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, img, tags: dict[str, Any] | None = None) -> Volume:
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(img)
        if arr.ndim == 2:
            arr = arr[None]
            sp, org, dr = img.GetSpacing(), img.GetOrigin(), img.GetDirection()
            return cls(arr, (sp[0], sp[1], 1.0), (org[0], org[1], 0.0),
                       (dr[0], dr[1], 0.0, dr[2], dr[3], 0.0, 0.0, 0.0, 1.0), dict(tags or {}))
        return cls(arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection(), dict(tags or {}))


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path, require_3d: bool = False) -> Volume:
    """Read a NIfTI file into a Volume (LPS geometry). Errors name the file and the problem.

    The file is checked to be complete (a truncated file would read with zero-filled slices) and a float
    image to hold no NaN/Inf. ``require_3d``: refuse a 2D image where a CT volume is expected (a 3D image
    with one slice is fine).
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist", "check the path")
    if not is_nifti(path):
        raise InputError(path, "not a NIfTI file (expected .nii or .nii.gz)")
    try:
        check_nifti_file(path)
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(path, f"cannot read NIfTI: {str(e).strip().splitlines()[-1]}",
                         "the file may be truncated or corrupt; re-export it") from e
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}", "check the file and its permissions") from e
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "expected a scalar CT or label volume")
    if img.GetDimension() not in (2, 3):
        raise InputError(path, f"has {img.GetDimension()} dimensions; expected 2 or 3")
    if require_3d and img.GetDimension() == 2:
        raise InputError(path, f"is a 2D image ({'x'.join(map(str, img.GetSize()))}); a CT volume or its label "
                         "must be 3D", "stack the slices into one 3D NIfTI, or import the DICOM series")
    return Volume.from_sitk(img, tags={"source": str(path)})


def write_nifti(vol: Volume, path: str | Path, dtype: np.dtype | type | None = None) -> Path:
    """Write a Volume as NIfTI, atomically (temporary name, then rename).

    The written file is checked before the rename: on a full disk the NIfTI writer reports the error only
    on stderr and leaves a cut-off file, which must not appear as the output.
    """
    import SimpleITK as sitk

    path = Path(path)
    v = vol if dtype is None else vol.with_array(vol.array.astype(dtype))
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(v.to_sitk(), str(tmp), useCompression=str(path).endswith(".gz"))
        except RuntimeError as e:
            raise InputError(path, f"cannot write NIfTI: {str(e).strip().splitlines()[-1]}",
                             "check that the output folder is writable and has free space, or choose another "
                             "--out") from e
        check_nifti_written(tmp, path)
    return path


def check_same_grid(image: Volume, label: Volume, label_path: str | Path | None = None) -> None:
    """Raise InputError naming the label file if it is not on exactly the image's grid."""
    if not image.same_grid(label):
        raise InputError(
            label_path,
            f"label grid does not match its image: label {label.grid_description()} vs image "
            f"{image.grid_description()}",
            "resample the label onto the image grid (nearest neighbour) or pair it with the right image",
        )
