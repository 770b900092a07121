"""The anatomy of one phantom slice: a patient's shapes painted in HU, back to front, and their label map.

Used by :func:`styleseg.sim.phantom.make_phantom`, which draws a patient and calls :func:`render_slice` for
each slice level. Shapes are perturbed ellipses in millimetres on a pixel grid (:class:`Grid`); tissue
values are the :data:`HU` table. Coordinates: x (columns) towards the patient's left, y (rows) towards
posterior (DICOM/LPS with an identity direction).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from styleseg.labels import LabelSchema
from styleseg.sim.shapes import HU, Grid, Mediastinum, Patient, Spine, Torso, bump, smoothstep


def render_slice(g: Grid, p: Patient, t: float, z: float, fields: list[np.ndarray], table: bool,
                 schema: LabelSchema) -> tuple[np.ndarray, np.ndarray]:
    """One axial slice at level ``t`` (``z`` mm below the lung apex): (HU image float32, label map uint8).

    The anatomy is painted back to front: body wall and ribs, spine, lungs and diaphragm domes, mediastinal
    content, sternum and scapulae, table; then a slight blur and the labels at the slice centre.
    """
    s = p.s
    f1, f2, tex = fields
    tor = _torso(g, p, t)
    img = _body_wall(g, p, tor, z, tex)
    img, spine = _spine(g, p, tor, z, tex, img)
    lungs = _lung_shapes(g, p, t, tor)
    m = _mediastinum(g, p, t, tor, spine.vb_y, img)
    around_canal = g.soft(g.rho(tor.cx, spine.canal_y, 30 * s, 16 * s), 16 * s)
    excl = np.clip(m.med + spine.zone + m.eso + spine.para + around_canal, 0, 1)  # kept out of the lungs
    dome, organ_hu = _diaphragm(g, p, t, tor, img)
    img, lungs = _lungs_and_domes(g, p, tor, lungs, excl, dome, organ_hu, (f1, f2, tex), img)
    img = _mediastinal_content(g, p, m, tex, img)
    img = _sternum_and_scapulae(g, p, t, tor, img)
    if table:
        img = _table(g, tor, img)
    img = ndi.gaussian_filter(img, 0.45)
    return img.astype(np.float32), _labels(schema, tor, lungs, m, spine, img.shape)


def _torso(g: Grid, p: Patient, t: float) -> Torso:
    """Trunk outline at level ``t``: the body (narrower towards the apex), the muscle layer inside the
    subcutaneous fat, and the thoracic cavity inside the anterior and (thicker) posterior chest wall."""
    s = p.s
    wmul = 0.9 + 0.1 * smoothstep(0.0, 0.5, t)
    A, B = p.A * wmul, p.B * (0.94 + 0.06 * smoothstep(0.0, 0.5, t))
    cx, cy = p.cx, p.cy
    # flatter back: use a superellipse-like harmonic on the posterior side
    body_rho = g.rho(cx, cy, A, B, 0.0, p.body_harm)
    body = g.soft(body_rho, min(A, B))
    inner_rho = g.rho(cx, cy + 0.1 * p.fat, A - p.fat, B - 0.8 * p.fat, 0.0, p.body_harm)
    inner = g.soft(inner_rho, min(A, B) - p.fat)
    ant_wall = 0.8 * p.fat + 0.7 * p.muscle + 8 * s
    post_wall = 0.8 * p.fat + 0.6 * p.muscle + 12 * s
    ca = A - p.fat - p.muscle - 7 * s
    cb = B - (ant_wall + post_wall) / 2
    ccy = cy + (ant_wall - post_wall) / 2
    cav_rho = g.rho(cx, ccy, ca, cb, 0.0, p.body_harm[:1])
    cav = g.soft(cav_rho, min(ca, cb))
    return Torso(A=A, B=B, cx=cx, cy=cy, ca=ca, cb=cb, ccy=ccy, body_rho=body_rho, body=body, inner=inner,
                  cav_rho=cav_rho, cav=cav)


def _body_wall(g: Grid, p: Patient, tor: Torso, z: float, tex: np.ndarray) -> np.ndarray:
    """Body wall on an air background: subcutaneous fat, skin, muscle; the ribs (costal cartilage anteriorly)
    around the thoracic cavity; and the cavity filled with mediastinal fat (the organs come later)."""
    s = p.s
    A, B, cx = tor.A, tor.B, tor.cx
    ca, cb, ccy = tor.ca, tor.cb, tor.ccy
    body_rho, body, inner, cav_rho, cav = tor.body_rho, tor.body, tor.inner, tor.cav_rho, tor.cav
    img = np.full(g.x.shape, HU["air"], np.float32)
    img = img + body * (HU["fat"] - HU["air"] + 6.0 * tex)
    skin = body * (1.0 - g.soft(body_rho * (min(A, B) / (min(A, B) - 2.0)), min(A, B)))
    img += skin * (HU["skin"] - HU["fat"])
    img += inner * (HU["muscle"] - HU["fat"] + p.tex_amp * tex - body * 0)
    # ribs: a band just outside the cavity, broken into ribs whose phase advances with z
    band = (cav_rho > 1.0 + 1.0 / min(ca, cb)) & (cav_rho < 1.0 + 6.5 * s / min(ca, cb))
    th = np.arctan2((g.y - ccy) / cb, (g.x - cx) / ca)
    ribs = band & (np.cos(9 * th + p.rib_phase + 2 * np.pi * z / (34.0 * s)) > 0.7)
    ribs &= np.abs(np.sin(th) - 1.0) > 0.02  # none straight behind the spine
    ant = np.sin(th) < -0.8
    rib_f = ndi.gaussian_filter(ribs.astype(np.float32), 0.6 / g.sp * 1.5)
    img = np.where(ant, img + rib_f * (HU["cartilage"] - img), img + rib_f * (HU["rib"] - img))
    # thoracic cavity content starts as mediastinal fat
    img = img + cav * (HU["fat"] - 10 + 5 * tex - img)
    return img


def _spine(g: Grid, p: Patient, tor: Torso, z: float, tex: np.ndarray,
           img: np.ndarray) -> tuple[np.ndarray, Spine]:
    """Spine behind the cavity: paraspinal muscles, the vertebral body (an intervertebral disc at some
    levels, else cortical shell, cancellous core and the posterior arch: lamina, spinous and transverse
    processes), the spinal canal (CSF) and the cord."""
    s = p.s
    cx, cb, ccy, inner = tor.cx, tor.cb, tor.ccy, tor.inner
    canal_y = ccy + cb - 14 * s
    vb_y = canal_y - 9 * s - p.spine_r
    period = 26.0 * s
    phase = ((z / period) + p.vert_phase) % 1.0
    disc = phase < 0.18
    vb_rho = g.rho(cx, vb_y, p.spine_r * 1.1, p.spine_r)
    vb = g.soft(vb_rho, p.spine_r)
    vb_in = g.soft(g.rho(cx, vb_y, p.spine_r * 1.1 - 2.0, p.spine_r - 2.0), p.spine_r - 2)
    para = sum(g.soft(g.rho(cx + sgn * 25 * s, canal_y + 12 * s, 20 * s, 15 * s, sgn * 0.25), 15 * s)
               for sgn in (-1, 1))
    para = np.clip(para, 0, 1) * inner
    img += para * (HU["muscle"] + 4 * tex - img)
    if disc:
        img += vb * (HU["disc"] - img)
    else:
        img += vb * (HU["cortical"] - img)
        img += vb_in * (HU["cancellous"] + 25 * tex - img)
        post = g.soft(g.rho(cx, canal_y, 15 * s, 14 * s), 14 * s) * (g.y > canal_y - 2 * s)
        spin = g.soft(g.rho(cx, canal_y + 24 * s, 4 * s, 16 * s), 4 * s)
        trans = sum(g.soft(g.rho(cx + sgn * 24 * s, canal_y - 3 * s, 12 * s, 4.5 * s, sgn * 0.35), 4.5 * s)
                    for sgn in (-1, 1))
        bone = np.clip(post + spin + trans, 0, 1)
        img += bone * (HU["cancellous"] + 150 - img)
    canal = g.soft(g.rho(cx, canal_y, 9 * s, 7.5 * s), 7.5 * s)
    img += canal * (HU["csf"] - img)
    cord_rho = g.rho(cx, canal_y - 0.5 * s, 5.2 * s, 4.2 * s)
    cord = g.soft(cord_rho, 4.2 * s)
    img += cord * (HU["cord"] - img)
    spine_zone = np.maximum(vb, canal)
    return img, Spine(canal_y=canal_y, vb_y=vb_y, para=para, cord=cord, zone=spine_zone)


def _lung_shapes(g: Grid, p: Patient, t: float, tor: Torso) -> dict[str, np.ndarray]:
    """Right and left lung outlines within the cavity (small at the apex, growing towards the base), before
    the mediastinum, spine and diaphragm domes are cut out of them."""
    cx, ca, cb, ccy, cav = tor.cx, tor.ca, tor.cb, tor.ccy, tor.cav
    grow = 0.5 + 0.5 * smoothstep(0.0, 0.4, t)
    lungs: dict[str, np.ndarray] = {}
    for name, sgn in (("lung_right", -1), ("lung_left", 1)):
        la = 0.56 * ca * p.lung_w * grow * (0.95 if sgn > 0 else 1.0)
        lb = 1.05 * cb * p.lung_h * (0.6 + 0.4 * grow)
        lx = cx + sgn * (ca - la * 0.97)
        ly = ccy + 0.04 * cb + (1 - grow) * 0.3 * cb
        r = g.rho(lx, ly, la, lb, sgn * 0.08, ((0.03, sgn * 1.0), (0.02, 0.5)))
        occ = g.soft(r, min(la, lb), 0.8) * cav
        lungs[name] = occ
    return lungs


def _mediastinum(g: Grid, p: Patient, t: float, tor: Torso, vb_y: float, like: np.ndarray) -> Mediastinum:
    """Mediastinal shapes: a central strip widening into the heart levels, the heart with its pericardium
    (pushing the left lung aside), the great vessels, the oesophagus in front of the spine, and the trachea
    or main bronchi. ``like`` gives the empty maps' shape and dtype."""
    s = p.s
    cx, ca, cb, ccy = tor.cx, tor.ca, tor.cb, tor.ccy
    hp = bump(0.40, 1.08, t)
    med_w = (20 + 14 * smoothstep(0.1, 0.5, t)) * s
    med = g.soft(g.rho(cx + 4 * s, ccy - 0.1 * cb, med_w, cb * 1.2), med_w, 1.5)
    ha, hb = 0.4 * ca * p.heart_size * (0.6 + 0.4 * hp), 0.58 * cb * p.heart_size * (0.6 + 0.4 * hp)
    hx, hy = cx + p.heart_x * ca, ccy - 0.25 * cb
    heart = np.zeros_like(like)
    if hp > 0:
        h_rho = g.rho(hx, hy, ha, hb, p.heart_angle, ((0.04, 0.3),))
        heart = g.soft(h_rho, min(ha, hb))
        peri = g.soft(h_rho / (1 + 5 * s / min(ha, hb)), min(ha, hb) + 5 * s)
        med = np.maximum(med, peri)
    gv = _great_vessels(g, s, t, tor, vb_y, like)
    med = np.maximum(med, gv)
    eso_y = vb_y - p.spine_r - 9 * s
    eso_x = cx + p.eso_x + 6 * s * t
    eso_rho = g.rho(eso_x, eso_y, 8 * s, 6 * s, 0.3)
    eso = g.soft(eso_rho, 6 * s)
    airways, med = _airways(g, s, t, cx, eso_y, med, like)
    return Mediastinum(med=med, hp=hp, hx=hx, hy=hy, ha=ha, hb=hb, heart=heart, gv=gv, eso_x=eso_x, eso_y=eso_y,
                        eso=eso, airways=airways)


def _great_vessels(g: Grid, s: float, t: float, tor: Torso, vb_y: float, like: np.ndarray) -> np.ndarray:
    """Great vessels (labelled body) present at level ``t``: descending aorta beside the spine, ascending
    aorta, superior vena cava, pulmonary trunk, and the aortic arch joining the two aortas."""
    cx, cb, ccy = tor.cx, tor.cb, tor.ccy
    desc = (cx + 24 * s, vb_y - 6 * s, 11 * s)
    vessels = [desc] if t > 0.17 else []
    if 0.2 < t < 0.52:
        vessels.append((cx - 14 * s, ccy - 0.32 * cb, 14 * s))  # ascending aorta
    if 0.12 < t < 0.45:
        vessels.append((cx - 34 * s, ccy - 0.2 * cb, 9 * s))  # superior vena cava
    if 0.32 < t < 0.46:
        vessels.append((cx + 16 * s, ccy - 0.36 * cb, 13 * s))  # pulmonary trunk
    gv = np.zeros_like(like)
    for vx, vy, vr in vessels:
        gv = np.maximum(gv, g.soft(g.rho(vx, vy, vr, vr), vr))
    if 0.15 < t <= 0.2:  # aortic arch
        arch = g.soft(g.rho(cx + 5 * s, ccy - 0.1 * cb, 30 * s, 10 * s, -0.9), 10 * s)
        gv = np.maximum(gv, arch)
    return gv


def _airways(g: Grid, s: float, t: float, cx: float, eso_y: float, med: np.ndarray,
             like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Airways in front of the oesophagus: the trachea above the carina, the two main bronchi diverging
    below it (none further down). Returns (air lumen, ``med`` grown by the airway walls)."""
    airways = np.zeros_like(like)
    if t < 0.38:
        tr = g.soft(g.rho(cx + 1 * s, eso_y - 16 * s, 9 * s, 8 * s), 8 * s)
        airways = g.soft(g.rho(cx + 1 * s, eso_y - 16 * s, 7 * s, 6 * s), 6 * s)
        med = np.maximum(med, tr)
    elif t < 0.52:
        off = (t - 0.38) / 0.14 * 40 * s
        for sgn in (-1, 1):
            br = g.soft(g.rho(cx + sgn * (8 * s + off), eso_y - 14 * s, 6 * s, 6 * s), 6 * s)
            airways = np.maximum(airways, g.soft(g.rho(cx + sgn * (8 * s + off), eso_y - 14 * s, 4.5 * s, 4.5 * s),
                                                 4.5 * s))
            med = np.maximum(med, br)
    return airways, med


def _diaphragm(g: Grid, p: Patient, t: float, tor: Torso,
               like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Diaphragm domes rising into the lung bases: liver (right, higher) and spleen/stomach (left).
    Returns (dome occupancy within the cavity, organ HU where a dome is more than half present, else 0)."""
    s = p.s
    cx, ca, cb, ccy, cav = tor.cx, tor.ca, tor.cb, tor.ccy, tor.cav
    dome = np.zeros_like(like)
    organ_hu = np.zeros_like(like)
    for sgn, start, ohu in ((-1, 0.78, HU["liver"]), (1, 0.85, HU["spleen"])):
        rr = smoothstep(start, 1.08, t) * p.dome_r * 0.85
        if rr > 0:
            d = g.soft(g.rho(cx + sgn * 0.4 * ca, ccy - 0.35 * cb, 0.7 * ca * rr, 0.9 * cb * rr), 30 * s)
            dome = np.maximum(dome, d * cav)
            organ_hu = np.where(d > 0.5, ohu, organ_hu)
    return dome, organ_hu


def _lungs_and_domes(g: Grid, p: Patient, tor: Torso, lungs: dict[str, np.ndarray], excl: np.ndarray,
                     dome: np.ndarray, organ_hu: np.ndarray, fields: tuple[np.ndarray, np.ndarray, np.ndarray],
                     img: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Lungs and the organs below the diaphragm: the lungs minus mediastinum, spine and domes, painted as
    parenchyma (dependent gradient, texture, vessels thicker near the hilum), then the liver/spleen domes.
    Returns (image, final lung occupancies)."""
    cx, ca, cb, ccy = tor.cx, tor.ca, tor.cb, tor.ccy
    f1, f2, tex = fields
    lung_occ = np.zeros_like(img)
    lungs = dict(lungs)
    for name in lungs:
        lungs[name] = np.clip(lungs[name] - excl - dome, 0, 1)
        lung_occ = lung_occ + lungs[name]
    lung_occ = np.clip(lung_occ, 0, 1)
    # lung parenchyma: dependent gradient + texture + vessels thicker near the hilum
    grad = 45.0 * np.clip((g.y - (ccy - cb)) / (2 * cb), 0, 1)
    hil = np.exp(-(((g.x - cx) / (0.55 * ca)) ** 2 + ((g.y - ccy) / (0.7 * cb)) ** 2))
    tau = 0.13 + 0.2 * hil
    vess = np.exp(-(f1**2 + f2**2) / (2 * tau**2))
    lung_val = p.lung_hu + grad + 15 * tex + vess * (40 - p.lung_hu)
    img += lung_occ * (lung_val - img)
    img += dome * (np.where(organ_hu != 0, organ_hu, HU["liver"]) + 5 * tex - img)
    return img, lungs


def _mediastinal_content(g: Grid, p: Patient, m: Mediastinum, tex: np.ndarray, img: np.ndarray) -> np.ndarray:
    """Mediastinal content over the lungs: contrast-filled great vessels, the heart (myocardium with
    blood-filled chambers split by the septum), the oesophagus (sometimes with air) and the airway lumen."""
    s = p.s
    img += m.gv * (p.blood_hu + 4 * tex - img)
    if m.hp > 0:
        img += m.heart * (HU["myocardium"] + 4 * tex - img)
        chamber_rho = g.rho(m.hx, m.hy, m.ha - 9 * s, m.hb - 8 * s, p.heart_angle)
        ch = g.soft(chamber_rho, min(m.ha, m.hb) - 8 * s)
        dxr = (g.x - m.hx) * math.cos(p.heart_angle) + (g.y - m.hy) * math.sin(p.heart_angle)
        septum = np.clip(1.0 - np.abs(dxr + 0.12 * m.ha) / (4.5 * s), 0, 1)
        ch = ch * (1 - septum)
        img += ch * (p.blood_hu + 4 * tex - img)
    img += m.eso * (HU["oesophagus"] + 3 * tex - img)
    if p.eso_air:
        img += g.soft(g.rho(m.eso_x, m.eso_y, 2.2 * s, 1.5 * s), 1.5 * s) * (-800 - img)
    img += m.airways * (-990.0 - img)
    return img


def _sternum_and_scapulae(g: Grid, p: Patient, t: float, tor: Torso, img: np.ndarray) -> np.ndarray:
    """Sternum in the anterior chest wall (most levels) and the scapulae in the posterior muscle (upper
    levels)."""
    s = p.s
    A, B, cx, cy, inner = tor.A, tor.B, tor.cx, tor.cy, tor.inner
    if 0.06 < t < 0.88:
        st_y = cy - B + p.fat + 0.6 * p.muscle + 5 * s
        st = g.soft(g.rho(cx, st_y, 13 * s, 6 * s), 6 * s)
        st_in = g.soft(g.rho(cx, st_y, 11 * s, 4 * s), 4 * s)
        img += st * (HU["cortical"] - 150 - img) + st_in * (HU["cancellous"] - HU["cortical"] + 150)
    if t < 0.4:
        for sgn in (-1, 1):
            sc_ = g.soft(g.rho(cx + sgn * 0.7 * A, cy + 0.45 * B, 38 * s, 4 * s, sgn * -0.55), 4 * s)
            img += sc_ * inner * (HU["rib"] - 50 - img)
    return img


def _table(g: Grid, tor: Torso, img: np.ndarray) -> np.ndarray:
    """Patient table under the back (shell, foam core, shell), outside the body and its label."""
    A, B, cy, body = tor.A, tor.B, tor.cy, tor.body
    ty = cy + B * 1.0 + 8.0
    tshape = ty + 0.0006 * g.x**2
    top = np.abs(g.y - tshape - 1.5) < 1.5
    bottom = np.abs(g.y - tshape - 33.0) < 1.5
    foam = (g.y > tshape + 3) & (g.y < tshape + 31.5)
    inside = np.abs(g.x) < 0.95 * A + 20
    tab = np.where(top | bottom, HU["table_shell"], np.where(foam, HU["table_foam"], HU["air"]))
    return np.where(inside & (body < 0.01) & (top | bottom | foam), tab, img).astype(np.float32)


def _labels(schema: LabelSchema, tor: Torso, lungs: dict[str, np.ndarray], m: Mediastinum, spine: Spine,
            shape: tuple[int, ...]) -> np.ndarray:
    """Final label map at the slice centre: body, both lungs, heart, oesophagus and cord where more than half
    occupied, restricted to the structures in ``schema``."""
    masks = {
        "body": tor.body > 0.5,
        "lung_right": lungs["lung_right"] > 0.5,
        "lung_left": lungs["lung_left"] > 0.5,
        "heart": m.heart > 0.5,
        "esophagus": m.eso > 0.5,
        "spinal_cord": spine.cord > 0.5,
    }
    masks = {k: v for k, v in masks.items() if k in schema.names}
    return schema.compose(masks, shape)
