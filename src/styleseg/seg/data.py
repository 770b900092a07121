"""Training data of the U-Net: labelled cases in memory, the patient split, and deterministic batches.

- :func:`load_cases`: every labelled (``labelsTr``) case of one or several datasets (e.g. source +
  augmented), int16 HU + uint8 labels in canonical orientation; ``labelsRef`` labels are never used.
- :func:`patient_split`: whole patients (:attr:`styleseg.io.dataset.CaseRecord.patient`) go to one side,
  so the generated copies of a source case, or the re-imaged versions of one patient, never sit on both
  sides of the train/validation split. :func:`split_cases` applies it to loaded cases: validation patients are
  drawn among patients with a real annotated case, and only those real cases are validated on, never their
  restyled, re-imaged or pseudo-labelled versions (which are then dropped from training too).
- :class:`Batcher`: one seeded generator draws slice indices and per-sample seeds, so every DDP rank sees
  the same draw and its state resumes exactly; crops are augmented at native spacing. By default every slice of
  every case is equally likely (the paper's m x (n+1) set, where generated slices outnumber the real ones n to
  1); ``real_share`` fixes the share of samples drawn from the real cases instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.errors import ConfigError, InputError
from styleseg.seg.inputs import InputSpec, body_frame, canonical_flips, position_maps, to_canonical


@dataclass
class TrainCase:
    """One labelled case in memory."""

    key: str
    patient: str
    image: np.ndarray  # (z, H, W) int16 HU (float32 if downsampled), canonical orientation
    label: np.ndarray  # (z, H, W) uint8
    annotated: np.ndarray  # (num_classes,) bool
    spacing: tuple[float, float]
    origin: str = ""  # the source case a generated case was made from (itself for an original)
    generated: bool = False  # a restyled or re-imaged version of ``origin``, same geometry and labels
    pseudo: bool = False  # labels predicted by a model (cyclic training), not drawn by an annotator

    @property
    def real(self) -> bool:
        """An acquired image with annotator labels: what validation measures a model on."""
        return not (self.generated or self.pseudo)


def load_cases(datasets: Sequence[Path], downsample: int = 1) -> tuple[list[TrainCase], Any]:
    """The labelled cases of ``datasets`` (all with the same label schema) and that schema."""
    import torch

    from styleseg.io.dataset import Dataset
    from styleseg.seg.inputs import downsample_hu, downsample_label

    cases: list[TrainCase] = []
    schema = None
    multi = len(datasets) > 1
    for root in datasets:
        ds = Dataset(root)
        if schema is None:
            schema = ds.schema
        elif ds.schema.to_labels_dict() != schema.to_labels_dict():
            raise InputError(Path(root) / "dataset.json", f"label schema {ds.schema.to_labels_dict()} differs "
                             f"from the first dataset's {schema.to_labels_dict()}",
                             "train only on datasets with the same labels")
        for rec in ds.labelled_cases("labelsTr"):
            img = ds.load_image(rec.case_id)
            lab = ds.load_label(rec.case_id, image=img)
            assert lab is not None
            flips = canonical_flips(img.direction, ds.image_path(rec.case_id))
            arr = to_canonical(np.asarray(img.array, np.int16), flips)
            lab_arr = to_canonical(lab.array, flips)
            if downsample > 1:
                arr = downsample_hu(torch.from_numpy(arr.astype(np.float32))[:, None], downsample)[:, 0].numpy()
                lab_arr = downsample_label(torch.from_numpy(lab_arr)[:, None], downsample)[:, 0].numpy()
            ann = np.zeros(ds.schema.num_classes, bool)
            ann[0] = True
            for n in rec.annotated:
                if n in ds.schema.names:
                    ann[ds.schema.value(n)] = True
            key = f"{ds.name}/{rec.case_id}" if multi else rec.case_id
            prov = rec.extras.get("provenance") if isinstance(rec.extras.get("provenance"), dict) else {}
            made_from = prov.get("source_case") or rec.reimaged_from or rec.case_id
            origin = f"{ds.name}/{made_from}" if multi else str(made_from)
            generated = prov.get("style") is not None or rec.reimaged_from is not None
            cases.append(TrainCase(key, rec.patient, arr, lab_arr, ann, (img.spacing[0], img.spacing[1]), origin,
                                   generated, rec.extras.get("pseudo_label") is not None))
    if not cases:
        raise InputError(datasets[0] if datasets else None, "no case with training labels (labelsTr)",
                         "train on an annotated dataset (import one with `styleseg import`)")
    return cases, schema


def patient_split(patients: Sequence[str], val_fraction: float, seed: int,
                  val_cases: Sequence[str] | None = None, keys: Sequence[str] | None = None) -> list[bool]:
    """Per case: True if validation. Whole patients go to one side; explicit ``val_cases`` (case keys or
    patient ids) win over the seeded random split."""
    keys = list(keys or patients)
    if val_cases is not None:
        chosen = set(val_cases)
        unknown = chosen - set(keys) - set(patients)
        if unknown:
            raise ConfigError(f"val_cases {sorted(unknown)} are not training cases ({sorted(set(keys))})")
        vp = {p for k, p in zip(keys, patients, strict=True) if k in chosen or p in chosen}
        return [p in vp for p in patients]
    uniq = sorted(set(patients))
    n_val = int(round(val_fraction * len(uniq))) if val_fraction > 0 and len(uniq) >= 2 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(uniq) >= 2 else 0), len(uniq) - 1)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    vp = {uniq[i] for i in perm[:n_val]}
    return [p in vp for p in patients]


def split_cases(cases: Sequence[TrainCase], val_fraction: float, seed: int,
                val_cases: Sequence[str] | None = None) -> tuple[list[TrainCase], list[TrainCase]]:
    """(training, validation) cases. Validation patients are drawn (:func:`patient_split`) among the patients
    with a real case (:attr:`TrainCase.real`), and only their real cases are validated on: a validation Dice
    on restyled slices measures the generators as much as the U-Net, on re-imaged ones (the oracle's and
    physics randomisation's copies) the simulator's textures; neither is comparable between arms, and each
    costs one more pass per version. The generated and pseudo-labelled versions of a validation patient are
    left out of training as well, so no version of its anatomy is learned from."""
    pool = list(cases) if val_cases is not None else [c for c in cases if c.real]  # explicit: any case names one
    is_val = patient_split([c.patient for c in pool], val_fraction, seed, val_cases, [c.key for c in pool])
    val_patients = {c.patient for c, v in zip(pool, is_val, strict=True) if v}
    train = [c for c in cases if c.patient not in val_patients]
    val = [c for c in cases if c.patient in val_patients and c.real]
    return train, val


class Batcher:
    """Deterministic global batches of augmented crops (see the module docstring).

    ``augment(hu, label, rng, return_coords=...)`` is the geometric augmentation
    (:class:`styleseg.data.transforms.TrainAugment`); ``extra_transform(hu, rng) -> hu`` an intensity
    transform of a comparison arm, drawn once per sample (the same draw for every slice of a 2.5D stack)."""

    def __init__(self, cases: list[TrainCase], augment: Any, spec: InputSpec, seed: int,
                 extra_transform: Callable | None = None, real_share: float | None = None):
        self.cases = cases
        self.spec = spec
        # per case, per slice body frame of the position channels (found on the whole slice, as at inference)
        self.frames = [body_frame(c.image, spec.position_smooth_px) for c in cases] if spec.position else None
        self.index = np.array([(ci, z) for ci, c in enumerate(cases) for z in range(c.image.shape[0])], int)
        self.augment = augment
        self.extra = extra_transform
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._fg: dict[tuple[int, int], list] = {}
        # rows of ``index`` from real cases and from the others (generated, pseudo-labelled); with real_share
        # set and both present, a sample comes from the real rows with that probability
        self.real_share = real_share
        real = np.array([cases[ci].real for ci in self.index[:, 0]], bool) if len(self.index) else np.zeros(0, bool)
        self._pools = (np.flatnonzero(real), np.flatnonzero(~real))

    def _pick(self, n: int) -> np.ndarray:
        """``n`` rows of ``index``: uniform over all slices, or ``real_share`` of them (in expectation) from the
        real cases, each pool uniform over its slices."""
        real, other = self._pools
        if self.real_share is None or not len(real) or not len(other):
            return self.rng.integers(len(self.index), size=n)
        from_real = self.rng.random(size=n) < self.real_share
        return np.where(from_real, real[self.rng.integers(len(real), size=n)],
                        other[self.rng.integers(len(other), size=n)])

    def sample(self, ci: int, z: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """One augmented sample: (C, crop, crop) float32 input channels (HU, then positions) and its labels."""
        case = self.cases[ci]
        k = self.spec.context
        srng = np.random.default_rng(seed)
        stack = case.image[np.clip(np.arange(z - k, z + k + 1), 0, case.image.shape[0] - 1)] if k else case.image[z]
        coords = None
        fg = self._fg.get((ci, z))
        if fg is None and hasattr(self.augment, "fg"):  # organ pixels of the slice, found once
            from styleseg.data.transforms import ForegroundIndex

            fg = self._fg[(ci, z)] = ForegroundIndex(case.label[z], self.augment.fg)
        if self.frames is not None:
            hu, lab, coords = self.augment(stack, case.label[z], srng, return_coords=True, fg=fg)
        else:
            hu, lab = self.augment(stack, case.label[z], srng, fg=fg)
        if k:
            if self.extra is not None:  # the same random draw for every slice of the stack
                state = srng.bit_generator.state
                hu = np.stack([np.asarray(self.extra(c, _rng_at(state)), np.float32) for c in hu])
        else:
            if self.extra is not None:
                hu = np.asarray(self.extra(hu, srng), np.float32)
            hu = hu[None]
        if coords is not None:
            hu = np.concatenate([hu, position_maps(self.frames[ci][z], coords[0], coords[1])])
        return hu, lab

    def next(self, batch_size: int, rank: int = 0, world: int = 1):
        """The rank's share of the next global batch: (x, labels, annotated) tensors."""
        import torch

        pick = self._pick(batch_size)
        seeds = self.rng.integers(2**63 - 1, size=batch_size)
        imgs, labs, anns = [], [], []
        for j in range(rank, batch_size, world):
            ci, z = self.index[pick[j]]
            hu, lab = self.sample(int(ci), int(z), int(seeds[j]))
            imgs.append(hu)
            labs.append(lab)
            anns.append(self.cases[ci].annotated)
        return (torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(labs).astype(np.int64)),
                torch.from_numpy(np.stack(anns)))


class PairBatcher(Batcher):
    """Batches of (source slice, one of its restyled versions) pairs with the same crop and augmentation, for
    the paired consistency term (F-Consistency, Shimovolos et al. 2022): the first half of a batch are source
    crops, the second half the same crops of a random generated version of the same slice. Generated cases
    share their source's geometry (``styleseg augment`` keeps it), so one seed draws the same crop for both."""

    def __init__(self, cases: list[TrainCase], augment: Any, spec: InputSpec, seed: int,
                 extra_transform: Callable | None = None):
        super().__init__(cases, augment, spec, seed, extra_transform)
        by_key = {c.key: i for i, c in enumerate(cases)}
        versions: dict[int, list[int]] = {}
        for i, c in enumerate(cases):
            if c.generated and c.origin in by_key:
                versions.setdefault(by_key[c.origin], []).append(i)
        self.versions = versions
        originals = sorted(versions)
        if not originals:
            raise ConfigError("the consistency term needs generated versions of the training cases (train on an "
                              "augmented dataset from `styleseg augment`)")
        self.index = np.array([(ci, z) for ci in originals for z in range(cases[ci].image.shape[0])], int)

    def next(self, batch_size: int, rank: int = 0, world: int = 1):
        import torch

        if batch_size % 2 or world > 1:
            raise ConfigError("paired consistency batches need an even batch size and one process")
        half = batch_size // 2
        pick = self.rng.integers(len(self.index), size=half)
        seeds = self.rng.integers(2**63 - 1, size=half)
        alt = self.rng.random(size=half)
        first, second, labs, anns = [], [], [], []
        for j in range(half):
            ci, z = (int(v) for v in self.index[pick[j]])
            gi = self.versions[ci][int(alt[j] * len(self.versions[ci]))]
            a, lab = self.sample(ci, z, int(seeds[j]))
            b, lab_b = self.sample(gi, z, int(seeds[j]))
            first.append(a)
            second.append(b)
            labs += [lab, lab_b]
            anns += [self.cases[ci].annotated, self.cases[gi].annotated]
        x = np.stack(first + second)
        lab_arr = np.stack(labs[0::2] + labs[1::2]).astype(np.int64)
        ann_arr = np.stack(anns[0::2] + anns[1::2])
        return torch.from_numpy(x), torch.from_numpy(lab_arr), torch.from_numpy(ann_arr)


def _rng_at(state: dict[str, Any]) -> np.random.Generator:
    g = np.random.default_rng()
    g.bit_generator.state = state
    return g
