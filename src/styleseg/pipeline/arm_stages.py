"""The stages of one comparison arm and one training seed: train, predict, evaluate (and cyclic rounds).

What an arm does is data (:mod:`styleseg.pipeline.arms`); these stages read its entry and never name an arm.
With several training seeds (``seeds = [0, 1, 2]``) every trained arm runs once per seed; the first seed keeps
the single-seed layout (``RUN/arms/<arm>/model``, ``pred``, ``metrics.json``), every other seed ``s`` lives in
``RUN/arms/<arm>/seed<s>/`` and its stages are named ``<stage>@<s>``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.config import hash_view, to_dict
from styleseg.io.atomic import write_json
from styleseg.pipeline import data as pdata
from styleseg.pipeline.arms import TEST_TIME, Arm

log = logging.getLogger("styleseg.pipeline")


def train_job(datasets: list[Path], out: Path, scfg: Any, transform: Any, threads: int | None,
              init_from: Path | None = None) -> float:
    """One U-Net training (in the caller's process, or a worker's with ``threads`` torch threads; from the
    weights of the model ``init_from`` if given); resumes an interrupted run of the same config, starts over
    after one of another. Returns its wall time."""
    import time

    from styleseg.errors import CheckpointMismatch
    from styleseg.seg.train import train_segmentation

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    progress = threads is None
    try:
        train_segmentation(datasets, out, scfg, resume=(out / "checkpoint.pt").exists(), extra_transform=transform,
                           progress=progress, init_from=init_from)
    except CheckpointMismatch:  # interrupted under another config: nothing of it can be reused
        log.info("%s: the checkpoint there is from another configuration; training from scratch", out)
        pdata._clear(out)
        train_segmentation(datasets, out, scfg, resume=False, extra_transform=transform, progress=progress,
                           init_from=init_from)
    return time.perf_counter() - t0


def die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux, ask the kernel to send this process SIGTERM when its parent dies, so a
    ``styleseg run`` killed by any signal (a scheduler's SIGKILL included) leaves no training running on and
    writing into the run folder; its checkpoints let the next run resume. A parent that died while this worker
    was starting (before the request) is caught by the parent pid check. No-op elsewhere."""
    import ctypes
    import os
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except OSError:
            return
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def training_pool(jobs: int) -> Any:
    """``jobs`` spawned worker processes for U-Net trainings (spawn: no forked torch thread pools)."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))


def stop_pool(pool: Any, wait: bool) -> None:
    """Shut ``pool`` down: after its jobs (``wait``), or at once, its workers terminated, when the run stops on
    an error or an interrupt (waiting would hold Ctrl-C until the running trainings end)."""
    if not wait:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
    pool.shutdown(wait=wait, cancel_futures=True)


class ArmStages:
    """Mixed into :class:`styleseg.pipeline.experiment.Experiment`: the per-arm, per-seed stages."""

    run: Path
    data_dir: Path
    cfg: Any
    seeds: tuple[int, ...]
    datasets: dict[tuple[str, int], Path]
    hashes: dict[str, str]
    stages: Any
    pool: Any = None  # a process pool when trainings run in parallel (cfg.jobs > 1)
    pending: list[tuple[str, Any, list[str], list[Path], Any]]
    submitted: set[tuple[str, int]]  # (arm, seed) U-Nets queued or trained by submit_trainings
    skipped_arms: dict[str, str]
    worker_threads: int = 1
    _own_threads: int = 0  # this process's torch threads outside threads_beside_workers (0: not inside it)

    # -- naming ----------------------------------------------------------------------------------
    def arm_dir(self, name: str, seed: int) -> Path:
        base = self.run / "arms" / name
        return base if seed == self.seeds[0] else base / f"seed{seed}"

    def stage_name(self, base: str, seed: int) -> str:
        return base if seed == self.seeds[0] else f"{base}@{seed}"

    def _stage(self, name: str, cfg: Any, upstream: list[str], outputs: list[Path], build: Any) -> None:
        raise NotImplementedError

    def predict_options(self) -> dict[str, Any]:
        """Channels-last inference, in bf16 (oneDNN/AMX on CPU, tensor cores on GPU) for models trained with
        autocast where this device computes bf16 natively, else in float32 (Predictor's ``dtype="auto"``)."""
        amp = self.cfg.seg_config().amp != "none"
        return {"dtype": "auto" if amp else "float32", "channels_last": amp}

    # -- training ------------------------------------------------------------------------------
    def _train(self, arm: Arm, seed: int, out: Path, datasets: list[Path], stage: str, upstream: list[str],
               extra_hash: dict[str, Any] | None = None) -> None:
        """Train one U-Net as a stage: here, or (``cfg.jobs`` > 1) in a worker process, its stage recorded when
        :meth:`collect_trainings` has its result."""
        scfg = arm.budgeted(self.cfg.seg_config(seed=seed, **arm.seg_changes))
        cfg = {"seg": hash_view(scfg), "arm": arm.name, **(extra_hash or {})}
        init = self.arm_dir(arm.starts_from, seed) / "model" if arm.starts_from else None
        outputs = [out / "model.json"]
        hashes = [self.hashes[u] for u in upstream]
        if self.pool is not None and not self.stages.up_to_date(stage, cfg, hashes, outputs):
            if self.stages.marker(stage).exists():  # finished under another config: start over
                pdata._clear(out)
            job = self.pool.submit(train_job, datasets, out, scfg, arm.build_transform(self), self.worker_threads,
                                   init)
            self.pending.append((stage, cfg, upstream, outputs, job))
            self.stages.on_event(stage, "queued for a worker")
            return

        def build(stale: bool) -> None:
            if stale:
                pdata._clear(out)
            train_job(datasets, out, scfg, arm.build_transform(self), None, init)
        self._stage(stage, cfg, upstream, outputs, build)

    def collect_trainings(self, then: Callable[[], None] | None = None) -> None:
        """Wait for the trainings running in worker processes and record their stages, in submission order;
        ``then()`` after each (it may queue more, which are waited for too)."""
        while self.pending:
            stage, cfg, upstream, outputs, job = self.pending.pop(0)
            self._stage(stage, cfg, upstream, outputs, lambda stale, job=job: job.result())
            if then is not None:
                then()

    def stage_train_arm(self, arm: Arm, seed: int) -> Path:
        """Train the arm's U-Net for one seed (an arm with cyclic rounds: see :meth:`stage_cyclic_round`)."""
        out = self.arm_dir(arm.name, seed) / "model"
        self._train(arm, seed, out, self._arm_datasets(arm, seed), self.stage_name(f"train_{arm.name}", seed),
                    self._arm_upstream(arm, seed))
        return out

    def _arm_datasets(self, arm: Arm, seed: int) -> list[Path]:
        return [self.datasets[(d, seed)] for d in arm.train_on]

    def _arm_upstream(self, arm: Arm, seed: int) -> list[str]:
        first = [self.stage_name(f"train_{arm.starts_from}", seed)] if arm.starts_from else []
        return ["data", "split"] + [self.stage_name(s, seed) for s in arm.upstream()[2:]] + first

    def stage_cyclic_round(self, arm: Arm, seed: int, r: int) -> None:
        """Round ``r`` of the paper's cyclic training (its future work): the previous round's model (round 1:
        the ``rounds_from`` arm's) pseudo-labels the target's style pool, and the arm retrains on its training data
        plus the confident pseudo-labelled slices: from scratch, or (an arm with ``starts_from``) as a fine-tuning
        of that arm's model, each round with the same budget. Each round's model, pseudo-labels and record are
        kept; the last round's model is the arm's."""
        assert arm.rounds_from is not None
        base = self.arm_dir(arm.name, seed)
        prev_stage = self.stage_name(f"train_{arm.rounds_from}" if r == 1 else f"train_{arm.name}_r{r - 1}", seed)
        prev_model = self.arm_dir(arm.rounds_from, seed) / "model" if r == 1 else base / f"round{r - 1}" / "model"
        rdir, last = base / f"round{r}", r == arm.rounds
        pseudo = rdir / "pseudo_labels"
        pstage = self.stage_name(f"pseudo_{arm.name}_r{r}", seed)

        def build(stale: bool) -> None:
            record = pdata.build_pseudo_labels(prev_model, self.data_dir / "target_pool", pseudo,
                                               self.predict_options())
            write_json(rdir / "round.json", {"from_model": str(prev_model.relative_to(self.run)), **record})
        self._stage(pstage, {"round": r, "keep": pdata.PSEUDO_KEEP}, ["split", prev_stage], [pseudo], build)
        out = base / "model" if last else rdir / "model"
        tstage = self.stage_name(f"train_{arm.name}" + ("" if last else f"_r{r}"), seed)
        self._train(arm, seed, out, [*self._arm_datasets(arm, seed), pseudo], tstage,
                    [*self._arm_upstream(arm, seed), pstage], {"round": r})

    def open_pool(self) -> None:
        """With ``cfg.jobs`` > 1: that many worker processes for the trainings, one thread each when the jobs fill
        the CPUs; else trainings run here, one after another."""
        jobs = self.cfg.jobs
        if jobs > 1 and self.pool is None:
            self.worker_threads = max(1, usable_cpus() // jobs)
            self.pool = training_pool(jobs)

    def close_pool(self, ok: bool) -> None:
        """Let the workers finish (``ok``), or stop them at once when the run stops on an error."""
        if self.pool is not None:
            stop_pool(self.pool, wait=ok)
            self.pool = None

    def submit_trainings(self, arms: list, seeds: Sequence[int] | None = None, after: bool = False) -> None:
        """The U-Net of each of ``arms`` (cyclic rounds excepted) for every seed of ``seeds`` (default: all):
        queued to the workers, or trained here. An arm and seed already submitted is not submitted again. Arms
        that fine-tune another arm's model only with ``after``, once the model they start from is done."""
        for seed in self.seeds if seeds is None else seeds:
            for arm in arms:
                if (arm.trains and not arm.rounds and bool(arm.starts_from) == after
                        and (not after or self.stage_name(f"train_{arm.starts_from}", seed) in self.hashes)
                        and (arm.name, seed) not in self.submitted):
                    self.submitted.add((arm.name, seed))
                    self.stage_train_arm(arm, seed)
        self.share_cpus()

    def submit_ready(self, arms: list, seed: int | None = None) -> None:
        """With workers: queue the arms whose training data for ``seed`` (default: every seed) is built, and the
        fine-tunings among them whose starting model is done already (a continued run whose reference is finished
        need not wait for every seed's data)."""
        if self.pool is None:
            return
        for s in self.seeds if seed is None else (seed,):
            ready = [a for a in arms if a.name not in self.skipped_arms and all((d, s) in self.datasets
                                                                               for d in a.train_on)]
            self.submit_trainings(ready, [s])
            self.submit_trainings(ready, [s], after=True)

    def finish_trainings(self, ready: list) -> None:
        """Wait for the queued trainings; queue each fine-tuning as soon as the model it starts from is done; then
        the cyclic rounds after the arms they start from."""
        def follow() -> None:
            self.submit_trainings(ready, after=True)
        follow()  # those whose model is done already: without workers, or in a continued run
        self.collect_trainings(follow)
        for r in range(1, max((a.rounds for a in ready), default=0) + 1):
            for seed in self.seeds:
                for arm in ready:
                    if arm.rounds >= r:
                        self.stage_cyclic_round(arm, seed, r)
            self.collect_trainings()

    @contextmanager
    def threads_beside_workers(self) -> Iterator[None]:
        """While workers train, this process's own work (generators, augmentation, re-imaging) uses the CPUs the
        busy workers leave, at least one thread: more would only contend with them. :meth:`share_cpus` sets it
        again whenever trainings are queued."""
        import torch

        self._own_threads = torch.get_num_threads()
        self.share_cpus()
        try:
            yield
        finally:
            torch.set_num_threads(self._own_threads)
            self._own_threads = 0

    def share_cpus(self) -> None:
        """Inside :meth:`threads_beside_workers`: this process's torch threads for the workers now busy."""
        if not self._own_threads:
            return
        import torch

        busy = min(self.cfg.jobs, sum(not job.done() for *_, job in self.pending)) if self.pool is not None else 0
        left = usable_cpus() - busy * self.worker_threads
        torch.set_num_threads(self._own_threads if not busy else max(1, min(self._own_threads, left)))

    # -- prediction and evaluation ------------------------------------------------------------------
    def stage_predict_arm(self, arm: Arm, seed: int) -> None:
        pred = self.arm_dir(arm.name, seed) / "pred"
        model = self.arm_dir(arm.model_arm, seed) / "model"

        def build(stale: bool) -> None:
            import hashlib

            from styleseg.seg.segment import segment

            # `--continue` may only reuse outputs of THIS model (an interrupted prediction): outputs of an
            # earlier model (the arm was retrained) are removed first. The model is identified by its weights.
            ident = hashlib.sha1((model / "weights.pt").read_bytes()).hexdigest()
            stamp = pred / ".model_sha1"
            if pred.exists() and (not stamp.exists() or stamp.read_text().strip() != ident):
                pdata._clear(pred)
            pred.mkdir(parents=True, exist_ok=True)
            stamp.write_text(ident + "\n")
            inputs = self._test_time_inputs(arm) if arm.test_time else self.data_dir / "target_test"
            segment([inputs], model, pred, continue_=True, **self.predict_options())
        self._stage(self.stage_name(f"predict_{arm.name}", seed), {"arm": arm.name},
                    [self.stage_name(f"train_{arm.model_arm}", seed)], [pred], build)

    def _test_time_inputs(self, arm: Arm) -> Path:
        """The test set after the arm's test-time step (e.g. denoised to the source's noise level)."""
        from styleseg.io.dataset import Dataset, DatasetWriter

        assert arm.test_time is not None
        out = self.data_dir / f"target_test_{arm.test_time}"
        if out.exists():
            return out
        step = TEST_TIME[arm.test_time](self)
        ds = Dataset(self.data_dir / "target_test")
        record = {k: getattr(step, k) for k in ("method", "strength", "reference_std") if hasattr(step, k)}
        with DatasetWriter(out, f"target test set, {arm.test_time}", ds.schema, meta={arm.test_time: record}) as w:
            for rec in ds:
                img = ds.load_image(rec.case_id)
                w.add_case(rec.case_id, img.with_array(np.stack([step(s.astype(np.float32)) for s in img.array])),
                           None, **rec.extras)
        write_json(self.run / "arms" / arm.name / f"{arm.test_time}.json", record)
        return out

    def stage_evaluate_arm(self, arm: Arm, seed: int) -> None:
        out = self.arm_dir(arm.name, seed) / "metrics.json"
        ev = self.cfg.evaluate
        ref = self.cfg.reference_arm  # the arm every other is compared against, case by case

        def build(stale: bool) -> None:
            from styleseg.eval.evaluate import evaluate

            evaluate(self.arm_dir(arm.name, seed) / "pred", self.data_dir / "target_test", out=out,
                     compare=None if arm.name == ref else self.arm_dir(ref, seed) / "pred", n_boot=ev.n_boot,
                     seed=ev.seed, with_hd95=ev.hd95)
        upstream = [self.stage_name(f"predict_{arm.name}", seed)]
        if arm.name != ref:
            upstream.append(self.stage_name(f"predict_{ref}", seed))
        changed = {k: v for k, v in to_dict(ev).items() if to_dict(type(ev)())[k] != v}
        # scoring 2: voxels predicted as a structure the case does not annotate are left out (metrics.case_metrics)
        self._stage(self.stage_name(f"evaluate_{arm.name}", seed), {"arm": arm.name, "scoring": 2, **changed},
                    upstream, [out], build)
