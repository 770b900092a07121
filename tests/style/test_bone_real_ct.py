"""Generated slices of real CT keep their bone (issue 19): ribs, vertebrae and the spinal canal around the cord.

A generator trained at the real-CT examples' budget (60 steps, image_input, the quick preset) turns a real
NSCLC-Radiomics slice into the texture of a low-dose sharp-kernel slice of another patient. The generated slice
must keep the source's bone: about as many pixels above 300 HU inside the body (within a factor 1.5), in the
same places (Dice >= 0.8), and a vertebral body at least as bright as the soft tissue around it (before the
fix its cancellous bone was drawn as body: a dark hole with a bright rim).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

NSCLC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "nsclc"

pytestmark = [pytest.mark.realdata, pytest.mark.slow,
              pytest.mark.skipif(not NSCLC.exists(), reason="../shared/data/nsclc is absent (a fresh clone)")]


def _case(case_id: str):
    from styleseg.io.volume import read_nifti
    from styleseg.labels import LabelSchema, add_body

    img = read_nifti(NSCLC / f"{case_id}_ct.nii.gz")
    lab = read_nifti(NSCLC / f"{case_id}_labels.nii.gz").array
    return img.array.astype(np.float32), add_body(lab, img.array, LabelSchema.default()), img.spacing[0]


def vertebral_body(src: np.ndarray, lab: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """The cancellous core of the vertebral body in front of the spinal cord, and the soft tissue around it:
    the source's (2-px smoothed) >= 150 HU component nearest to a point 20 mm anterior to the cord, eroded
    by 2 px; the body pixels of soft-tissue HU (-50..100) 4-12 mm outside that component."""
    cy, cx = np.argwhere(lab == 5).mean(0)
    smooth = ndi.gaussian_filter(src, 2.0)
    comp, n = ndi.label((smooth >= 150) & (lab == 6))
    target = np.array([cy - 20.0 / spacing, cx])
    centres = ndi.center_of_mass(np.ones_like(src), comp, range(1, n + 1))
    vb = comp == 1 + int(np.argmin([np.hypot(*(np.array(c) - target)) for c in centres]))
    core = ndi.binary_erosion(vb, iterations=2)
    ring = ndi.binary_dilation(vb, iterations=int(12 / spacing)) & ~ndi.binary_dilation(vb, iterations=int(4 / spacing))
    ring &= (lab == 6) & (smooth > -50) & (smooth < 100)
    return core, ring


def test_a_generated_real_slice_keeps_the_bone_of_its_source(tmp_path):
    import torch

    from styleseg.labels import LabelSchema
    from styleseg.sim.scanner import reimage
    from styleseg.style.augment import generate_volume
    from styleseg.style.generator import load_generator
    from styleseg.style.train import GeneratorConfig, fit_generators

    torch.set_num_threads(1)
    src_hu, src_lab, spacing = _case("LUNG1-002")
    mid = src_hu.shape[0] // 2
    sty_hu, sty_lab, sty_sp = _case("LUNG1-008")
    z = sty_hu.shape[0] // 2
    style = reimage(sty_hu[z], sty_sp, "low-dose-sharp", np.random.default_rng(0), noise_free_input=False)
    cfg = GeneratorConfig.from_flat(image_input=True, steps=60)  # the real-CT examples' generators
    train = slice(mid - 4, mid + 5)
    (folder,) = fit_generators(src_hu[train].astype(np.int16), src_lab[train], [style], [sty_lab[z]],
                               [{"index": 0, "case_id": "LUNG1-008", "slice": z, "tags": {}}], tmp_path / "g", cfg,
                               LabelSchema.default(), progress=False)
    model, _ = load_generator(folder)
    gen = generate_volume(model, src_lab[mid:mid + 1], src_hu[mid:mid + 1], 0, seed=0)[0].astype(np.float32)
    src, lab = src_hu[mid], src_lab[mid]
    body = lab > 0
    bone_src, bone_gen = (src > 300) & body, (gen > 300) & body
    ratio = bone_gen.sum() / bone_src.sum()
    dice = 2 * (bone_src & bone_gen).sum() / (bone_src.sum() + bone_gen.sum())
    core, ring = vertebral_body(src, lab, spacing)
    print(f"bone > 300 HU in the body: source {bone_src.sum()} px, generated {bone_gen.sum()} (ratio {ratio:.2f}), "
          f"Dice "
          f"{dice:.3f}; vertebral body {gen[core].mean():.0f} HU vs soft tissue around it {gen[ring].mean():.0f} HU "
          f"(source {src[core].mean():.0f} vs {src[ring].mean():.0f})")
    assert core.sum() > 50 and ring.sum() > 200  # the landmarks were found
    assert 1 / 1.5 <= ratio <= 1.5, f"voxels > 300 HU: generated/source = {ratio:.2f}"
    assert dice >= 0.8, f"bone Dice {dice:.3f}"
    assert gen[core].mean() >= gen[ring].mean(), (gen[core].mean(), gen[ring].mean())
