#!/usr/bin/env python
"""Train (or evaluate) a multi-label recognition model from incomplete labels.

    python train.py --dataset demo
    python train.py --dataset coco2014 --data-root /data/coco --backbone-weights resnet50.pth --amp
"""
import sys

from scob_fast.config import parse_args
from scob_fast.engine.trainer import TrainingInterrupted
from scob_fast.training import run


def main() -> int:
    config = parse_args()
    try:
        result = run(config)
    except TrainingInterrupted as exc:
        print(f"train.py: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line for the user; --debug shows the traceback
        if config.run.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"train.py: error: {message}", file=sys.stderr)
        return 1
    if "check_data" in result:
        return 1 if result["check_data"]["bad_images"] else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
