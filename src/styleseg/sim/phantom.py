"""Procedural thorax phantoms: noise-free chest CT "patients" (HU) with exact label maps.

A patient is a set of smooth shapes in millimetres (perturbed ellipses: centre, semi-axes, rotation and
a few angular harmonics of the radius) whose positions and sizes vary smoothly along the body axis,
parameterised by ``t`` = 0 at the lung apex to 1 at the lung base. Tissue values follow typical chest CT
(Hounsfield units): air -1000, lung parenchyma about -860 (denser posteriorly, the dependent gradient)
with vessels, fat -100, muscle 45, contrast-enhanced blood pool 110-240, cortical bone 700-1000,
cancellous bone 200-300. Lung vessels are the intersection of the zero sets of two smooth 3D Gaussian
random fields (tubes in 3D, dots and short branches in a slice), thicker near the hilum. A smooth
low-frequency field adds anatomical texture; there is NO noise (the scanner adds it,
:mod:`styleseg.sim.scanner`). Everything is deterministic per seed.

Patients vary in size, body shape, fat and muscle thickness, position, lung/heart proportions, heart
orientation, contrast level and vertebral level. A smaller field of view (e.g. 256 x 256 for the quick
benchmark) holds a proportionally smaller (paediatric-sized) patient at the same native pixel spacing:
never a downsampled adult.

Coordinates: x (columns) towards the patient's left, y (rows) towards posterior, as in DICOM/LPS with
an identity direction: the patient's right lung is on the image's left (radiological display).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from styleseg.io.volume import Volume
from styleseg.labels import LabelSchema
from styleseg.sim.anatomy import Grid, Patient, render_slice

log = logging.getLogger("styleseg.sim.phantom")



@dataclass(frozen=True)
class PhantomConfig:
    """Phantom grid: ``size`` x ``size`` pixels at ``spacing_mm`` (None: drawn per patient in
    [0.80, 0.98] mm), ``n_slices`` slices of ``slice_mm`` thickness. ``z_spacing_mm`` None spreads the
    slices over the lungs (apex to base, ``z_range`` of the lung height); a number makes contiguous
    slices at that spacing around the middle of the lungs."""

    size: int = 512
    n_slices: int = 40
    spacing_mm: float | None = None
    slice_mm: float = 5.0
    z_spacing_mm: float | None = None
    z_range: tuple[float, float] = (0.08, 0.96)
    table: bool = True

    def __post_init__(self) -> None:
        if self.size < 64 or self.n_slices < 1 or not 0.3 <= (self.spacing_mm or 0.9) <= 2.0:
            raise ValueError(f"PhantomConfig: size >= 64, n_slices >= 1, spacing in [0.3, 2] mm ({self})")
        if not 0.0 <= self.z_range[0] < self.z_range[1] <= 1.0 or not 1.0 <= self.slice_mm <= 10.0:
            raise ValueError(f"PhantomConfig: z_range within [0, 1] and slice_mm in [1, 10] ({self})")


def _field(rng: np.random.Generator, nz: int, shape: tuple[int, int], grid_mm: float, corr_mm: float,
           z_step_mm: float) -> np.ndarray:
    """Smooth Gaussian random field (nz, h, w) with unit std, correlation ~corr_mm, on a coarse grid."""
    noise = rng.standard_normal((nz, *shape)).astype(np.float32)
    sz = corr_mm / max(z_step_mm, 1e-3)
    f = ndi.gaussian_filter(noise, (sz if nz > 1 else 0, corr_mm / grid_mm, corr_mm / grid_mm), mode="wrap")
    f /= f.std() + 1e-8
    return f


def _upsample(f: np.ndarray, size: int) -> np.ndarray:
    z = size / f.shape[0]
    return ndi.zoom(f, z, order=3, mode="grid-wrap", grid_mode=True)[:size, :size]


def _draw_patient(rng: np.random.Generator, cfg: PhantomConfig) -> Patient:
    sp = cfg.spacing_mm if cfg.spacing_mm is not None else float(rng.uniform(0.80, 0.98))
    A = float(rng.uniform(150, 185))
    B = A * float(rng.uniform(0.62, 0.76))
    fov_half = cfg.size * sp / 2
    s = min(1.0, (fov_half - 10.0) / (A * 1.04))
    u = rng.uniform
    return Patient(
        spacing=sp, s=s, A=A * s, B=B * s, cx=float(u(-6, 6)) * s, cy=float(u(-12, 2)) * s,
        body_harm=tuple((float(u(0, 0.035)), float(u(0, 2 * np.pi))) for _ in range(3)),
        fat=float(u(6, 30)) * s, muscle=float(u(9, 17)) * s, lung_height=float(u(230, 290)) * s,
        lung_w=float(u(0.88, 1.05)), lung_h=float(u(0.85, 1.0)), lung_hu=float(u(-880, -835)),
        heart_size=float(u(0.85, 1.15)), heart_angle=float(u(-0.75, -0.35)), heart_x=float(u(0.05, 0.2)),
        blood_hu=float(u(110, 240)), spine_r=float(u(15, 19)) * s, vert_phase=float(u(0, 1)),
        rib_phase=float(u(0, 2 * np.pi)), eso_air=bool(u() < 0.4), eso_x=float(u(0, 8)) * s,
        dome_r=float(u(0.75, 1.0)), tex_amp=float(u(4, 9)),
    )


def make_phantom(seed: int, config: PhantomConfig | None = None,
                 schema: LabelSchema | None = None) -> tuple[Volume, Volume]:
    """One procedural chest CT patient: (HU volume float32, label volume uint8), same grid.

    Labels follow ``LabelSchema.default()`` (lung_left 1, lung_right 2, heart 3, esophagus 4,
    spinal_cord 5, body 6 = the rest of the torso). Deterministic per ``seed``.
    """
    cfg = config or PhantomConfig()
    schema = schema or LabelSchema.default()
    rng = np.random.default_rng(seed)
    pat = _draw_patient(rng, cfg)
    n = cfg.n_slices
    t0, t1 = cfg.z_range
    if cfg.z_spacing_mm is None:
        dz = (t1 - t0) * pat.lung_height / max(n - 1, 1)
        dz = max(dz, cfg.slice_mm) if n > 1 else cfg.slice_mm
        z_start = t0 * pat.lung_height
    else:
        dz = cfg.z_spacing_mm
        z_start = 0.5 * pat.lung_height - dz * (n - 1) / 2
    zs = z_start + dz * np.arange(n)
    grid = Grid(cfg.size, pat.spacing)
    coarse_mm = 2.0
    cn = max(16, int(round(cfg.size * pat.spacing / coarse_mm)))
    cmm = cfg.size * pat.spacing / cn  # actual coarse grid spacing
    vess = [_field(rng, n, (cn, cn), cmm, 4.5 * pat.s ** 0.5, dz) for _ in range(2)]
    tex = _field(rng, n, (cn, cn), cmm, 14.0, dz)
    hu = np.empty((n, cfg.size, cfg.size), np.float32)
    lab = np.empty((n, cfg.size, cfg.size), np.uint8)
    for k, z in enumerate(zs):
        t = float(z / pat.lung_height)
        fields = [_upsample(v[k], cfg.size) for v in vess] + [_upsample(tex[k], cfg.size)]
        hu[k], lab[k] = render_slice(grid, pat, t, float(z), fields, cfg, schema)
    spacing = (pat.spacing, pat.spacing, float(dz))
    origin = (-(cfg.size // 2) * pat.spacing, -(cfg.size // 2) * pat.spacing, 0.0)
    tags = {"phantom_seed": int(seed), "slice_thickness_mm": cfg.slice_mm, "patient_scale": round(pat.s, 3),
            "phantom": True}
    # slice 0 is the apex and slices run towards the feet; LPS +z is superior, so the z axis points -z
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    img = Volume(hu, spacing, origin, direction, dict(tags))
    return img, img.with_array(lab)


