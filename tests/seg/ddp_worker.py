"""Worker for test_ddp.py, run as `torchrun --nproc_per_node 2 ddp_worker.py DATASET OUT` (gloo, CPU)."""

from __future__ import annotations

import dataclasses
import gc
import sys
from pathlib import Path

import torch

from styleseg.seg.train import SegTrainConfig, train_segmentation

if __name__ == "__main__":
    torch.set_num_threads(1)
    cfg = dataclasses.replace(SegTrainConfig.preset("quick"), base_channels=4, depth=2, crop=24, batch_size=4,
                              epochs=2, steps_per_epoch=3, lr=1e-2, val_fraction=0.25)
    train_segmentation([Path(sys.argv[1])], Path(sys.argv[2]), cfg, progress=False)
    # free the DDP wrapper (its reducer holds gloo work) and leave together before the teardown: a rank that
    # tore down gloo while objects holding its work were still alive was seen to abort ("terminate called
    # without an active exception"), about one run in 20 on a loaded machine
    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
