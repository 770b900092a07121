"""Building blocks of the phantom anatomy: the HU table, the pixel grid of soft-edged shapes, a patient's drawn
parameters and the shapes passed between the painters of :mod:`styleseg.sim.anatomy`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HU = {
    "air": -1000.0, "fat": -100.0, "muscle": 45.0, "skin": 25.0, "lung": -860.0, "csf": 8.0, "cord": 35.0,
    "cancellous": 230.0, "cortical": 850.0, "rib": 420.0, "cartilage": 140.0, "liver": 58.0, "spleen": 48.0,
    "disc": 85.0, "myocardium": 50.0, "oesophagus": 40.0, "table_shell": 250.0, "table_foam": -950.0,
}


def smoothstep(a: float, b: float, t: float) -> float:
    u = min(max((t - a) / (b - a), 0.0), 1.0)
    return u * u * (3 - 2 * u)


def bump(a: float, b: float, t: float) -> float:
    """0 outside (a, b), a smooth hump (peak 1) inside."""
    if t <= a or t >= b:
        return 0.0
    return math.sin(math.pi * (t - a) / (b - a))


class Grid:
    def __init__(self, size: int, spacing: float):
        c = (np.arange(size) - size // 2) * spacing
        self.y, self.x = np.meshgrid(c, c, indexing="ij")
        self.y = self.y.astype(np.float32)
        self.x = self.x.astype(np.float32)
        self.sp = spacing

    def rho(self, cx: float, cy: float, ax: float, by: float, angle: float = 0.0,
            harm: tuple[tuple[float, float], ...] = ()) -> np.ndarray:
        """Normalised radius of a perturbed ellipse (< 1 inside): r(theta) = 1 + sum a_k cos(k theta + p_k)."""
        dx, dy = self.x - cx, self.y - cy
        if angle:
            ca, sa = math.cos(angle), math.sin(angle)
            dx, dy = ca * dx + sa * dy, -sa * dx + ca * dy
        r = np.sqrt((dx / max(ax, 1e-3)) ** 2 + (dy / max(by, 1e-3)) ** 2)
        if harm:
            th = np.arctan2(dy / max(by, 1e-3), dx / max(ax, 1e-3))
            mod = 1.0 + sum(a * np.cos((k + 2) * th + p) for k, (a, p) in enumerate(harm))
            r = r / mod
        return r

    def soft(self, rho: np.ndarray, size_mm: float, edge_mm: float = 0.6) -> np.ndarray:
        """Partial-volume occupancy in [0, 1] of a shape with normalised radius ``rho`` and size ``size_mm``."""
        return np.clip(0.5 + (1.0 - rho) * size_mm / (2 * edge_mm), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Patient:
    spacing: float
    s: float  # body scale (1 = adult)
    A: float
    B: float
    cx: float
    cy: float
    body_harm: tuple[tuple[float, float], ...]
    fat: float
    muscle: float
    lung_height: float
    lung_w: float
    lung_h: float
    lung_hu: float
    heart_size: float
    heart_angle: float
    heart_x: float
    blood_hu: float
    spine_r: float
    vert_phase: float
    rib_phase: float
    eso_air: bool
    eso_x: float
    dome_r: float
    tex_amp: float


@dataclass(frozen=True)
class Torso:
    """One slice's trunk geometry (mm): the body outline (semi-axes ``A``, ``B`` about ``cx``, ``cy``), the
    muscle layer inside the fat (``inner``) and the thoracic cavity (semi-axes ``ca``, ``cb`` about ``cx``,
    ``ccy``), with their normalised radii and partial-volume occupancies."""

    A: float
    B: float
    cx: float
    cy: float
    ca: float
    cb: float
    ccy: float
    body_rho: np.ndarray
    body: np.ndarray
    inner: np.ndarray
    cav_rho: np.ndarray
    cav: np.ndarray


@dataclass(frozen=True)
class Spine:
    """One slice's spine: spinal canal and vertebral body centre rows (mm), the paraspinal muscles, the cord
    (labelled) and the vertebral body/canal zone that the lungs must not enter."""

    canal_y: float
    vb_y: float
    para: np.ndarray
    cord: np.ndarray
    zone: np.ndarray


@dataclass(frozen=True)
class Mediastinum:
    """One slice's mediastinal shapes: the mediastinum as a whole (``med``, cut out of the lungs), the heart
    (``hp`` its presence at this level, centre ``hx``, ``hy``, semi-axes ``ha``, ``hb``), the great vessels,
    the oesophagus (centre ``eso_x``, ``eso_y``) and the airway lumen."""

    med: np.ndarray
    hp: float
    hx: float
    hy: float
    ha: float
    hb: float
    heart: np.ndarray
    gv: np.ndarray
    eso_x: float
    eso_y: float
    eso: np.ndarray
    airways: np.ndarray


