"""Worker for test_ddp.py, run as `torchrun --nproc_per_node 2 ddp_worker.py DATASET OUT` (gloo, CPU)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from styleseg.seg.train import SegTrainConfig, train_segmentation

if __name__ == "__main__":
    torch.set_num_threads(1)
    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=4,
                              epochs=2, steps_per_epoch=3, lr=1e-2, val_fraction=0.25)
    train_segmentation([Path(sys.argv[1])], Path(sys.argv[2]), cfg, progress=False)
    torch.distributed.destroy_process_group()
