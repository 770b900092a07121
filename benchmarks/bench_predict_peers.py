"""Issue 17 item 5: styleseg's Predictor beside MONAI's SlidingWindowInferer and nnU-Net's predictor, one run.

    .venv/bin/python benchmarks/bench_predict_peers.py [--threads 2] [--slices 16] [--base 32] [--case LUNG1-001]

Needs the ``nnunet`` and ``test`` extras (``make install-nnunet``: nnU-Net v2 and MONAI).

The same network and the same weights in every tool: a styleseg U-Net (base ``--base``, depth 4, one soft-tissue
window channel; randomly initialised with non-trivial batch-norm statistics: weights do not change the cost)
applied to the same ``--slices`` whole 512 x 512 slices of a real NSCLC volume (../shared/data/nsclc), from HU
in memory to a label per pixel. Each tool does what a user of it would have it do:

* **styleseg**: ``Predictor.predict_array`` (HU window, batch 8, argmax): bf16 + channels-last with the crop to
  the body box (its ``segment`` default), the same on whole slices, and fp32 on whole slices. It folds batch norm
  into the convolutions when it loads a model.
* **MONAI**: ``SlidingWindowInferer(roi_size=(512, 512))`` on the trained ``nn.Module`` after
  ``ScaleIntensityRange`` with the same window, then argmax: its defaults (fp32, ``sw_batch_size`` 8), and the
  same bf16 autocast + channels-last set by hand around the call (MONAI leaves precision to the caller) at
  ``sw_batch_size`` 8 and 1, with the labels taken by ``max(1).indices`` as the Predictor does (``argmax(1)`` in
  the defaults row).
* **nnU-Net**: ``nnUNetPredictor.manual_initialization`` with the same network and weights and the plan that
  nnU-Net's own planner makes for this case (its fingerprint and ``plan_experiment`` are run first; the 2d
  patch is the whole 512 x 512 slice, so one tile per slice), then ``predict_single_npy_array`` on the
  volume as nnU-Net's SimpleITK reader gives it (its CT normalisation, cropping, tile loop, export): without
  mirroring, and with its default mirroring (4 passes per slice in 2D). nnU-Net runs fp32 on a CPU (it
  enables autocast only on CUDA); its input normalisation differs from the window, so its labels differ.

Every tool runs in this one process under the glibc allocator settings the Predictor sets
(``styleseg.trainer.tune_allocator``, called first). Each configuration: one warm-up call, then the best of
``--reps`` timed calls (slices/s). The labels of every whole-slice run are compared with styleseg fp32's (share of
pixels equal) as a check that the same network ran. This random network labels air as structures, so the crop's
labels differ from the whole slice's in the air; ``bench_predict_crop.py`` compares the two on a trained model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nnunet import DATA, import_nsclc, nnunet_cli, to_nnunet_raw  # noqa: E402


def random_unet(folder: Path, base: int, num_classes: int, spacing: float, calibrate: np.ndarray | None = None):
    """A styleseg model folder: UNet(base, depth 4) with seeded weights and batch-norm statistics away from 0/1;
    ``calibrate``: a HU slice (H, W) on which every class wins somewhere."""
    import torch

    from styleseg.labels import LabelSchema
    from styleseg.runs import write_model_folder
    from styleseg.seg.unet import UNet, UNetSpec

    torch.manual_seed(0)
    spec = UNetSpec(1, num_classes, base, 4)
    net = UNet(spec)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    if calibrate is not None:
        # a random head lets one class win almost everywhere; a bias that centres each class's logit on this
        # slice makes the label vary over it, so the comparison of labels between tools checks something
        from styleseg.seg.inputs import window_channels

        net.eval()
        with torch.no_grad():
            logits = net(window_channels(torch.from_numpy(calibrate)[None, None], ["soft_tissue"]))
            net.head.bias.data -= logits.flatten(2).median(2).values[0]
    schema = LabelSchema.default()
    write_model_folder(folder, "segmentation", {"architecture": spec.to_json(), "windows": ["soft_tissue"],
                                                "downsample": 1, "labels": schema.to_labels_dict(),
                                                "train_spacing_mm": spacing}, net.eval().state_dict())
    return folder, spec


def timed(fn: Callable[[], np.ndarray], n: int, reps: int) -> tuple[float, np.ndarray]:
    fn()  # warm-up: oneDNN primitive creation, allocator
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return n / best, out


def nnunet_plan(work: Path, case: str) -> tuple[Path, Path]:
    """nnU-Net's fingerprint and 2d plan of one imported NSCLC case; returns (plans.json, raw dataset)."""
    env = dict(os.environ)
    raw, _ = to_nnunet_raw(import_nsclc([case], work / "source"), work / "nnUNet_raw", 991, "peers", "as-is")
    log = work / "nnunet.log"
    nnunet_cli("extract_fingerprint_entry", ["-d", "991", "-np", "1"], env, log)
    nnunet_cli("plan_experiment_entry", ["-d", "991"], env, log)
    plans = work / "nnUNet_preprocessed" / raw.name / "nnUNetPlans.json"
    js = json.loads(plans.read_text())
    print(f"nnU-Net planned 2d: patch {js['configurations']['2d']['patch_size']}, "
          f"spacing {js['configurations']['2d']['spacing']}; patch set to the whole slice [512, 512]")
    js["configurations"]["2d"]["patch_size"] = [512, 512]
    plans.write_text(json.dumps(js, indent=1))
    return plans, raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--base", type=int, default=32, help="U-Net base width (32: the peers' usual size)")
    ap.add_argument("--case", default="LUNG1-001", help="the ../shared/data/nsclc case whose middle slices are used")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--mirror-reps", type=int, default=1, help="timed calls of nnU-Net with mirroring (4x slower)")
    args = ap.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / var).mkdir()
        os.environ[var] = str(work / var)  # before nnunetv2.paths is imported
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import ScaleIntensityRange
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from styleseg.io.volume import read_nifti
    from styleseg.seg.inputs import WINDOWS
    from styleseg.seg.predict import Predictor
    from styleseg.seg.unet import UNet
    from styleseg.trainer import tune_allocator

    torch.set_num_threads(args.threads)
    tuned = tune_allocator()  # once per process: every tool below runs under the same glibc settings
    load0 = os.getloadavg()[0]
    plans_path, raw = nnunet_plan(work, args.case)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    n_classes = len(dataset_json["labels"])

    vol = read_nifti(DATA / f"{args.case}_ct.nii.gz")
    z0 = vol.shape[0] // 2 - args.slices // 2
    z = slice(z0, z0 + args.slices)
    model, spec = random_unet(work / "unet", args.base, n_classes, float(vol.spacing[0]),
                              np.asarray(vol.array[z0 + args.slices // 2], np.float32))
    # the network as trained (batch norm unfolded): what a MONAI or nnU-Net user holds
    net = UNet(spec)
    net.load_state_dict(torch.load(model / "weights.pt", weights_only=True))
    net.eval()
    hu = np.asarray(vol.array[z], np.float32)  # (N, 512, 512), styleseg's canonical (LPS) order
    n = hu.shape[0]
    rows: list[tuple[str, float, np.ndarray | None]] = []

    for dtype, cl, crop, label in (
            ("bfloat16", True, True, "styleseg Predictor, bf16 + channels-last, body crop (default of segment)"),
            ("bfloat16", True, False, "styleseg Predictor, bf16 + channels-last, whole slice"),
            ("float32", False, False, "styleseg Predictor, fp32, whole slice")):
        p = Predictor(model, device="cpu", batch_size=8, dtype=dtype, channels_last=cl, crop=crop)
        rows.append((label, *timed(lambda p=p: p.predict_array(hu, spacing=vol.spacing[:2]), n, args.reps)))
        print(f"{rows[-1][0]}: {rows[-1][1]:.2f} slices/s", flush=True)
    n_ours = len(rows)

    centre, width = WINDOWS["soft_tissue"]
    scale = ScaleIntensityRange(a_min=centre - width / 2, a_max=centre + width / 2, b_min=0.0, b_max=1.0, clip=True)

    def monai_run(network: torch.nn.Module, bf16: bool, sw_batch: int) -> np.ndarray:
        inferer = SlidingWindowInferer(roi_size=(512, 512), sw_batch_size=sw_batch)
        x = torch.as_tensor(scale(torch.from_numpy(hu)[:, None]))
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = inferer(x, network)
        # by hand, also the faster reduction the Predictor uses (argmax over NCHW channels is ~15x slower)
        return (logits.float().max(1).indices if bf16 else logits.argmax(1)).to(torch.uint8).numpy()

    net_cl = UNet(spec)
    net_cl.load_state_dict(net.state_dict())
    net_cl.eval().to(memory_format=torch.channels_last)
    for network, bf16, sw_batch, label in (
            (net, False, 8, "MONAI SlidingWindowInferer, defaults (fp32, sw_batch_size 8)"),
            (net_cl, True, 8, "MONAI SlidingWindowInferer, bf16 autocast + channels-last by hand, sw_batch_size 8"),
            (net_cl, True, 1, "MONAI SlidingWindowInferer, bf16 autocast + channels-last by hand, sw_batch_size 1")):
        rows.append((label, *timed(lambda network=network, bf16=bf16, sw_batch=sw_batch:
                                   monai_run(network, bf16, sw_batch), n, args.reps)))
        print(f"{rows[-1][0]}: {rows[-1][1]:.2f} slices/s", flush=True)

    pm = PlansManager(str(plans_path))
    cm = pm.get_configuration("2d")
    img, props = SimpleITKIO().read_images([str(raw / "imagesTr" / f"{args.case}_0000.nii.gz")])
    img = np.ascontiguousarray(img[:, z])  # nnU-Net's (c, z, y, x) order, the same slices
    for mirror, reps in ((False, args.reps), (True, args.mirror_reps)):
        pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                               perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
        pred.manual_initialization(net, pm, cm, [net.state_dict()], dataset_json, "styleseg UNet", (0, 1))

        def nn_run(pred=pred) -> np.ndarray:
            return pred.predict_single_npy_array(img, {"spacing": props["spacing"]})

        label = f"nnU-Net nnUNetPredictor, {'mirroring (its default)' if mirror else 'no mirroring'}, fp32"
        sps, lab = timed(nn_run, n, reps)
        rows.append((label, sps, None))  # other normalisation and axis order: labels not comparable
        print(f"{label}: {sps:.2f} slices/s", flush=True)
        torch.set_num_threads(args.threads)  # nnU-Net resets the thread count after each call

    ref = rows[n_ours - 1][2]
    best_peer = max(r[1] for r in rows[n_ours:])
    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads; load average "
          f"{load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; {n} slices of {args.case} "
          f"({hu.shape[1]} x {hu.shape[2]}), U-Net base {args.base}, depth 4; glibc allocator tuned for all: {tuned}")
    print("\n| tool and settings | slices/s | styleseg / this | labels equal to styleseg fp32 whole slice |")
    print("|---|---:|---:|---:|")
    for name, sps, lab in rows:
        eq = f"{(lab == ref).mean():.4f}" if lab is not None else "- (own normalisation)"
        print(f"| {name} | {sps:.2f} | {rows[0][1] / sps:.2f} | {eq} |")
    print(f"\nlabels of styleseg fp32 (share of pixels per label value): "
          f"{np.round(np.bincount(ref.ravel(), minlength=n_classes) / ref.size, 3).tolist()}")
    print(f"styleseg (its default) / best peer: {rows[0][1] / best_peer:.2f}x; "
          f"on whole slices: {rows[1][1] / best_peer:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
