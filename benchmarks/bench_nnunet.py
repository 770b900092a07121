"""nnU-Net v2 on a styleseg dataset, end to end on the CPU: plan, preprocess, train 2d briefly, predict, Dice.

Checks the README's claim that a styleseg dataset (an augmented one included) can be handed straight to
nnU-Net, and times every stage. Needs the ``nnunet`` extra (``make install-nnunet``).

    .venv/bin/python benchmarks/bench_nnunet.py DATASET [--test DATASET] [--epochs 1 --iters 10 --batch 2]
    .venv/bin/python benchmarks/bench_nnunet.py --nsclc LUNG1-002,LUNG1-008 --augment --test-nsclc LUNG1-006

Stages, each timed:
  * with ``--nsclc``: ``styleseg import`` of those ../shared/data/nsclc cases; with ``--augment`` also a small
    style generator (the quick preset, ``--gen-steps`` steps) whose style slice is a source slice re-imaged with
    the simulator's low-dose-sharp protocol, and ``styleseg augment`` (m x 2 cases);
  * the dataset into ``nnUNet_raw/DatasetNNN_Name`` (a link; or a converted copy, see "partial annotation");
  * ``nnUNetv2_extract_fingerprint --verify_dataset_integrity``, ``nnUNetv2_plan_experiment``,
    ``nnUNetv2_preprocess -c 2d`` (nnU-Net's own entry points, as subprocesses);
  * 2d training on the CPU, fold "all", with nnU-Net's trainer made as ``nnUNetv2_train`` makes it
    (``nnUNetTrainerCosAnneal``: see TRAINER below), ``--epochs`` epochs of ``--iters`` iterations (nnU-Net
    runs 1000 x 250); the plan's 2d batch size is set to ``--batch`` (nnU-Net sizes it for a GPU);
  * ``nnUNetPredictor`` (no mirroring) on ``--predict`` cases of ``--test`` (default: of the training set,
    which only checks the plumbing), then Dice per annotated structure with ``styleseg.eval.metrics.dice``.

Partial annotation: a structure that a case does not annotate is unknown there, not background (styleseg
keeps ``annotated`` per case); nnU-Net has no such list but has an ignore label. ``--partial ignore`` (the
default) gives nnU-Net a converted copy (images linked, labels rewritten) in which each partially annotated
case has the ignore label where an unannotated structure can hide: its ``body`` voxels (the torso minus the
drawn structures), or its background where no body was drawn or derived. ``--partial as-is`` links the dataset
unchanged, and nnU-Net then learns an unannotated heart as body.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nsclc"
# nnU-Net 2.5.2's default nnUNetTrainer does not start on torch 2.13: its PolyLRScheduler passes the `verbose`
# argument that torch's LRScheduler no longer takes. Its nnUNetTrainerCosAnneal variant uses torch's own
# CosineAnnealingLR and is otherwise the same trainer.
TRAINER = "nnUNetTrainerCosAnneal"


class Stages:
    """Wall-clock seconds of each stage, in order."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []

    def run(self, name: str, fn: Callable[[], Any], note: str = "") -> Any:
        print(f"-- {name}", flush=True)
        t = time.perf_counter()
        out = fn()
        self.rows.append((name, time.perf_counter() - t, note))
        return out


def import_nsclc(cases: list[str], out: Path) -> Path:
    """``styleseg import`` of ../shared/data/nsclc cases (with cases.json: partial annotation kept)."""
    from styleseg.io.importer import import_sources

    pairs = [(DATA / f"{c}_ct.nii.gz", DATA / f"{c}_labels.nii.gz") for c in cases]
    import_sources(pairs, out, cases_json=DATA / "cases.json")
    return out


def train_generator(source: Path, out: Path, steps: int) -> Path:
    """One quick-preset generator whose style is the middle slice of the first case, re-imaged low-dose-sharp."""
    import numpy as np

    from styleseg.io.dataset import Dataset
    from styleseg.sim.scanner import reimage
    from styleseg.style.train import GeneratorConfig, fit_generators

    ds = Dataset(source)
    cid = ds.labelled_cases()[0].case_id
    img = ds.load_image(cid)
    lab = ds.load_label(cid, img)
    k = img.shape[0] // 2
    style = reimage(img.array[k].astype(np.float32), float(img.spacing[0]), "low-dose-sharp", rng=0,
                    noise_free_input=False)
    vols = [(ds.load_image(c.case_id).array, ds.load_label(c.case_id).array) for c in ds.labelled_cases()]
    src_img = np.stack([im[len(im) // 2] for im, _ in vols])  # the middle slice of every case
    src_lab = np.stack([lb[len(lb) // 2] for _, lb in vols])
    cfg = GeneratorConfig.from_flat(steps=steps, device="cpu")
    rec = [{"index": 0, "case_id": cid, "slice": k, "tags": {"protocol": "low-dose-sharp (simulated)"}}]
    fit_generators(src_img, src_lab, [style], [lab.array[k]], rec, out, cfg, ds.schema, progress=False)
    return out


def to_nnunet_raw(dataset: Path, raw: Path, dataset_id: int, name: str, partial: str) -> tuple[Path, str]:
    """Put a styleseg dataset into nnUNet_raw as DatasetNNN_name: a link, or a copy with an ignore label."""
    import numpy as np

    from styleseg.io.dataset import Dataset
    from styleseg.io.volume import write_nifti

    ds = Dataset(dataset)
    target = raw / f"Dataset{dataset_id:03d}_{name}"
    train = ds.labelled_cases("labelsTr")
    partial_cases = {c.case_id for c in train if set(ds.schema.names) - set(c.annotated)}
    if partial == "as-is" or not partial_cases:
        target.symlink_to(dataset.resolve(), target_is_directory=True)
        return target, f"linked; {len(partial_cases)} partially annotated case(s) as they are"
    ignore = max(ds.schema.values) + 1
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    body = ds.schema.value("body") if "body" in ds.schema.names else None
    for c in train:
        (target / "imagesTr" / ds.image_path(c.case_id).name).symlink_to(ds.image_path(c.case_id).resolve())
        lab = ds.load_label(c.case_id)
        if c.case_id in partial_cases:
            hide = body if body is not None and "body" in c.annotated else 0
            arr = lab.array.copy()
            arr[lab.array == hide] = ignore
            lab = lab.with_array(arr.astype(np.uint8))
        write_nifti(lab, target / "labelsTr" / f"{c.case_id}{ds.file_ending}")
    js = {k: v for k, v in ds.json.items() if k not in ("styleseg", "dataset")}
    js["labels"] = {**ds.schema.to_labels_dict(), "ignore": ignore}
    js["numTraining"] = len(train)
    js["converted_from"] = str(dataset.resolve())
    (target / "dataset.json").write_text(json.dumps(js, indent=1))
    return target, f"copy: ignore label {ignore} in {len(partial_cases)} partially annotated case(s)"


def nnunet_cli(entry: str, args: list[str], env: dict[str, str], log: Path) -> None:
    """Run one of nnU-Net's console entry points (plan_and_preprocess_entrypoints.ENTRY) as a subprocess."""
    code = (f"import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import {entry}; "
            f"sys.exit({entry}())")
    with log.open("a") as f:
        r = subprocess.run([sys.executable, "-c", code, *args], env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"nnU-Net {entry} {' '.join(args)} failed (exit {r.returncode}); log: {log}")


def cpu_plan(plans_path: Path, batch: int) -> str:
    """Set the 2d batch size of nnU-Net's plan (sized for a GPU) to ``batch``; return what was planned."""
    plans = json.loads(plans_path.read_text())
    c = plans["configurations"]["2d"]
    note = f"planned 2d: patch {c['patch_size']}, batch {c['batch_size']}; used batch {batch}"
    c["batch_size"] = batch
    plans_path.write_text(json.dumps(plans, indent=1))
    return note


def train(dataset_id: int, trainer: str, epochs: int, iters: int, val_iters: int) -> tuple[Path, dict[str, Any]]:
    """nnU-Net 2d training on the CPU, fold "all": nnU-Net's own trainer class, made as ``nnUNetv2_train`` makes
    it, with ``epochs`` epochs of ``iters`` iterations (nnU-Net: 1000 x 250)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.training.dataloading.utils import unpack_dataset

    tr = get_trainer_from_args(str(dataset_id), "2d", "all", trainer, device=torch.device("cpu"))
    # nnU-Net 2.5.2 starts its data-loading workers before it unpacks the preprocessed .npz files, and a worker
    # that opens a half-written .npy dies ("mmap length is greater than file size"): unpack first
    unpack_dataset(tr.preprocessed_dataset_folder, unpack_segmentation=True, overwrite_existing=False,
                   num_processes=1, verify_npy=True)
    tr.num_epochs = epochs
    tr.num_iterations_per_epoch = iters
    tr.num_val_iterations_per_epoch = val_iters
    tr.run_training()
    log = tr.logger.my_fantastic_logging
    return Path(tr.output_folder_base), {"train_loss": log["train_losses"][-1], "val_loss": log["val_losses"][-1],
                                         "pseudo_dice": log["mean_fg_dice"][-1]}


def predict(model_dir: Path, images: list[Path], out: Path) -> list[Path]:
    """nnU-Net's predictor (fold "all", final checkpoint, no mirroring) on ``images``, one process."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                        perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(model_dir), use_folds=("all",), checkpoint_name="checkpoint_final.pth")
    out.mkdir(parents=True, exist_ok=True)
    names = [i.name.removesuffix("_0000.nii.gz") for i in images]
    p.predict_from_files_sequential([[str(i)] for i in images], [str(out / n) for n in names],
                                    save_probabilities=False, overwrite=True, folder_with_segs_from_prev_stage=None)
    return [out / f"{n}.nii.gz" for n in names]


def dice_rows(test: Path, cases: list[str], preds: list[Path]) -> tuple[list[str], list[list[str]]]:
    """Dice per case and annotated structure (``-``: not annotated in that case, so not scored)."""
    from styleseg.eval.metrics import dice
    from styleseg.io.dataset import Dataset
    from styleseg.io.volume import read_nifti

    ds = Dataset(test)
    rows = []
    for cid, pp in zip(cases, preds, strict=True):
        ref = ds.load_label(cid).array
        pred = read_nifti(pp).array
        ann = ds.annotated(cid)
        rows.append([cid] + [f"{dice(pred == v, ref == v):.3f}" if n in ann else "-" for n, v in ds.schema.structures])
    return list(ds.schema.names), rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", type=Path, help="a styleseg dataset folder (or use --nsclc)")
    ap.add_argument("--nsclc", default="", help="import these ../shared/data/nsclc cases as the dataset (comma list)")
    ap.add_argument("--augment", action="store_true", help="with --nsclc: train a generator and augment (m x 2)")
    ap.add_argument("--gen-steps", type=int, default=30, help="generator training steps (quick preset)")
    ap.add_argument("--test", type=Path, help="dataset whose labelled cases are predicted (default: the training set)")
    ap.add_argument("--test-nsclc", default="", help="import these nsclc cases as the --test dataset (comma list)")
    ap.add_argument("--predict", type=int, default=2, help="number of cases to predict")
    ap.add_argument("--id", type=int, default=990, help="nnU-Net dataset id")
    ap.add_argument("--name", default="styleseg", help="nnU-Net dataset name")
    ap.add_argument("--partial", choices=("ignore", "as-is"), default="ignore")
    ap.add_argument("--trainer", default=TRAINER, help="an nnU-Net trainer class (nnunetv2.training.nnUNetTrainer)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs (nnU-Net: 1000)")
    ap.add_argument("--iters", type=int, default=10, help="training iterations per epoch (nnU-Net: 250)")
    ap.add_argument("--val-iters", type=int, default=2, help="validation iterations per epoch (nnU-Net: 50)")
    ap.add_argument("--batch", type=int, default=2, help="2d batch size (nnU-Net plans one for a GPU)")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    args = ap.parse_args()
    if (args.nsclc or args.test_nsclc) and not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    if (args.dataset is None) == (not args.nsclc):
        ap.error("give a DATASET or --nsclc CASES (not both)")
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory()
        args.work = Path(tmp.name)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / var).mkdir(exist_ok=True)
        env[var] = os.environ[var] = str(work / var)  # before nnunetv2.paths is imported
    # one data-augmentation worker beside the training process (nnU-Net's planner needs at least 1)
    env.setdefault("nnUNet_n_proc_DA", "1")
    os.environ["nnUNet_n_proc_DA"] = env["nnUNet_n_proc_DA"]
    import torch

    threads = torch.get_num_threads()
    load0 = os.getloadavg()[0]
    st = Stages()
    dataset = args.dataset
    if args.nsclc:
        cases = args.nsclc.split(",")
        dataset = st.run("styleseg import", lambda: import_nsclc(cases, work / "source"), f"{len(cases)} NSCLC cases")
        if args.augment:
            from styleseg.style.augment import augment

            gens = st.run("train generator", lambda: train_generator(dataset, work / "gens", args.gen_steps),
                          f"quick preset, {args.gen_steps} steps")
            dataset = st.run("styleseg augment", lambda: augment(dataset, gens, work / "augmented", device="cpu",
                                                                 progress=False), "m x 2")
    test = args.test
    if args.test_nsclc:
        tc = args.test_nsclc.split(",")
        test = st.run("styleseg import (test)", lambda: import_nsclc(tc, work / "test"), f"{len(tc)} NSCLC cases")
    raw, note = st.run("into nnUNet_raw", lambda: to_nnunet_raw(dataset, work / "nnUNet_raw", args.id, args.name,
                                                               args.partial))
    st.rows[-1] = (st.rows[-1][0], st.rows[-1][1], note)
    from styleseg.io.dataset import Dataset

    n_train = json.loads((raw / "dataset.json").read_text())["numTraining"]
    log = work / "nnunet.log"
    d = ["-d", str(args.id)]
    st.run("fingerprint + integrity check", lambda: nnunet_cli("extract_fingerprint_entry",
                                                                [*d, "-np", "1", "--verify_dataset_integrity"],
                                                                env, log), f"{n_train} training cases")
    st.run("plan", lambda: nnunet_cli("plan_experiment_entry", d, env, log))
    pre = work / "nnUNet_preprocessed" / raw.name
    plan_note = cpu_plan(pre / "nnUNetPlans.json", args.batch)
    st.run("preprocess 2d", lambda: nnunet_cli("preprocess_entry", [*d, "-c", "2d", "-np", "1"], env, log))
    model_dir, fit = st.run("train 2d", lambda: train(args.id, args.trainer, args.epochs, args.iters, args.val_iters),
                            f"{args.trainer}, {args.epochs} epoch(s) x {args.iters} iterations, {plan_note}")
    test = test or dataset
    tds = Dataset(test)
    cases = [c.case_id for c in tds.labelled_cases(None)][: args.predict]
    images = [tds.image_path(c) for c in cases]
    preds = st.run("predict", lambda: predict(model_dir, images, work / "pred"),
                   f"{len(cases)} case(s), {sum(tds.load_image(c).shape[0] for c in cases)} slices")
    names, rows = dice_rows(test, cases, preds)

    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} with {threads} threads, "
          f"nnUNet_n_proc_DA={env['nnUNet_n_proc_DA']}, "
          f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    from importlib.metadata import version

    print(f"nnunetv2 {version('nnunetv2')}; dataset {dataset} -> {raw.name}; "
          f"test: {'the training set' if test == dataset else test}")
    print("\n| stage | seconds | note |\n|---|---:|---|")
    for name, secs, note in st.rows:
        print(f"| {name} | {secs:.1f} | {note} |")
    print(f"| total | {sum(r[1] for r in st.rows):.1f} | |")
    print(f"\nlast epoch: train loss {fit['train_loss']:.3f}, val loss {fit['val_loss']:.3f}, "
          f"nnU-Net pseudo Dice {fit['pseudo_dice']:.3f}")
    print("\nDice of nnU-Net's predictions against the labels:\n")
    print("| case | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
