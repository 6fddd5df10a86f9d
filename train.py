#!/usr/bin/env python
"""Train (or evaluate) a multi-label recognition model from incomplete labels.

    python train.py --dataset demo
    python train.py --dataset coco2014 --data-root /data/coco --backbone-weights resnet50.pth --amp
    torchrun --nproc_per_node 4 train.py ...     # data-parallel; --batch-size is the global batch
"""
import os
import sys

# Before torch loads its OpenMP runtime: idle intra-op threads sleep instead of spinning. With the
# default (spin) policy, two threads on a 2-core machine that other jobs share ran the demo backbone
# at 8-19 images/s against 43-79 with this setting and 30-40 with one thread (README, "Demo").
# An explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from scob_fast.config import parse_args  # noqa: E402
from scob_fast.engine.trainer import TrainingInterrupted  # noqa: E402
from scob_fast.training import run  # noqa: E402


def main() -> int:
    config = parse_args()
    # Under torchrun the other ranks say which they are; an interruption is told once, by rank 0.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    who = f" (rank {rank} of {world})" if rank else ""
    try:
        result = run(config)
    except TrainingInterrupted as exc:
        if not rank:
            sys.stderr.write(f"train.py: {exc}\n")     # one write: under torchrun the ranks share stderr
        return 1
    except Exception as exc:  # one line for the user; --debug shows the traceback
        if config.run.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"train.py: error{who}: {message}\n")
        return 1
    if "check_data" in result:
        return 1 if result["check_data"]["bad_images"] else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
