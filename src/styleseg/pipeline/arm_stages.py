"""The stages of one comparison arm and one training seed: train, predict, evaluate (and cyclic rounds).

What an arm does is data (:mod:`styleseg.pipeline.arms`); these stages read its entry and never name an arm.
With several training seeds (``seeds = [0, 1, 2]``) every trained arm runs once per seed; the first seed keeps
the single-seed layout (``RUN/arms/<arm>/model``, ``pred``, ``metrics.json``), every other seed ``s`` lives in
``RUN/arms/<arm>/seed<s>/`` and its stages are named ``<stage>@<s>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from styleseg.config import hash_view, to_dict
from styleseg.io.atomic import write_json
from styleseg.pipeline import data as pdata
from styleseg.pipeline.arms import TEST_TIME, Arm

log = logging.getLogger("styleseg.pipeline")


class ArmStages:
    """Mixed into :class:`styleseg.pipeline.experiment.Experiment`: the per-arm, per-seed stages."""

    run: Path
    data_dir: Path
    cfg: Any
    seeds: tuple[int, ...]
    datasets: dict[tuple[str, int], Path]

    # -- naming ----------------------------------------------------------------------------------
    def arm_dir(self, name: str, seed: int) -> Path:
        base = self.run / "arms" / name
        return base if seed == self.seeds[0] else base / f"seed{seed}"

    def stage_name(self, base: str, seed: int) -> str:
        return base if seed == self.seeds[0] else f"{base}@{seed}"

    def _stage(self, name: str, cfg: Any, upstream: list[str], outputs: list[Path], build: Any) -> None:
        raise NotImplementedError

    def predict_options(self) -> dict[str, Any]:
        """bf16 + channels-last inference (oneDNN/AMX on CPU, tensor cores on GPU) for bf16-trained models."""
        bf16 = self.cfg.seg_config().amp == "bf16"
        return {"dtype": "bfloat16" if bf16 else "float32", "channels_last": bf16}

    # -- training ------------------------------------------------------------------------------
    def _train(self, arm: Arm, seed: int, out: Path, datasets: list[Path], stage: str, upstream: list[str],
               extra_hash: dict[str, Any] | None = None) -> None:
        scfg = self.cfg.seg_config(seed=seed, **arm.seg_changes)

        def build(stale: bool) -> None:
            from styleseg.errors import CheckpointMismatch
            from styleseg.seg.train import train_segmentation

            if stale:
                pdata._clear(out)
            extra = arm.build_transform(self)
            try:
                train_segmentation(datasets, out, scfg, resume=(out / "checkpoint.pt").exists(), extra_transform=extra)
            except CheckpointMismatch:  # interrupted under another config: nothing of it can be reused
                log.info("%s: the checkpoint there is from another configuration; training from scratch", out)
                pdata._clear(out)
                train_segmentation(datasets, out, scfg, resume=False, extra_transform=extra)
        self._stage(stage, {"seg": hash_view(scfg), "arm": arm.name, **(extra_hash or {})}, upstream,
                    [out / "model.json"], build)

    def stage_train_arm(self, arm: Arm, seed: int) -> Path:
        """Train the arm's U-Net for one seed (its cyclic rounds after it, if it has them)."""
        out = self.arm_dir(arm.name, seed) / "model"
        datasets = [self.datasets[(d, seed)] for d in arm.train_on]
        upstream = ["data", "split"] + [self.stage_name(s, seed) for s in arm.upstream()[2:]]
        if not arm.rounds:
            self._train(arm, seed, out, datasets, self.stage_name(f"train_{arm.name}", seed), upstream)
            return out
        return self._cyclic(arm, seed, datasets, upstream)

    def _cyclic(self, arm: Arm, seed: int, datasets: list[Path], upstream: list[str]) -> Path:
        """The paper's cyclic training (its future work), ``arm.rounds`` rounds: the previous round's model (first
        the ``rounds_from`` arm's) pseudo-labels the target's style pool, and the arm retrains from scratch on its
        training data plus the confident pseudo-labelled slices. Each round's model, pseudo-labels and record
        are kept; the last round is the arm's model."""
        assert arm.rounds_from is not None
        prev_stage = self.stage_name(f"train_{arm.rounds_from}", seed)
        prev_model = self.arm_dir(arm.rounds_from, seed) / "model"
        for r in range(1, arm.rounds + 1):
            rdir = self.arm_dir(arm.name, seed) / f"round{r}"
            pseudo = rdir / "pseudo_labels"
            last = r == arm.rounds
            out = self.arm_dir(arm.name, seed) / "model" if last else rdir / "model"
            pstage = self.stage_name(f"pseudo_{arm.name}_r{r}", seed)

            def build(stale: bool, model: Path = prev_model, pseudo: Path = pseudo, rdir: Path = rdir) -> None:
                record = pdata.build_pseudo_labels(model, self.data_dir / "target_pool", pseudo,
                                                   self.predict_options())
                write_json(rdir / "round.json", {"from_model": str(model.relative_to(self.run)), **record})
            self._stage(pstage, {"round": r, "keep": pdata.PSEUDO_KEEP}, ["split", prev_stage], [pseudo], build)
            tstage = self.stage_name(f"train_{arm.name}" + ("" if last else f"_r{r}"), seed)
            self._train(arm, seed, out, [*datasets, pseudo], tstage, [*upstream, pstage], {"round": r})
            prev_stage, prev_model = tstage, out
        return prev_model

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
        baseline = self.arm_dir("baseline", seed) / "pred"

        def build(stale: bool) -> None:
            from styleseg.eval.evaluate import evaluate

            evaluate(self.arm_dir(arm.name, seed) / "pred", self.data_dir / "target_test", out=out,
                     compare=None if arm.name == "baseline" else baseline, n_boot=ev.n_boot, seed=ev.seed,
                     with_hd95=ev.hd95)
        upstream = [self.stage_name(f"predict_{arm.name}", seed)]
        if arm.name != "baseline":
            upstream.append(self.stage_name("predict_baseline", seed))
        changed = {k: v for k, v in to_dict(ev).items() if to_dict(type(ev)())[k] != v}
        self._stage(self.stage_name(f"evaluate_{arm.name}", seed), {"arm": arm.name, **changed}, upstream, [out],
                    build)
