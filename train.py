#!/usr/bin/env python
"""Train (or evaluate) a multi-label recognition model from incomplete labels.

    python train.py --dataset demo
    python train.py --dataset coco2014 --data-root /data/coco --backbone-weights resnet50.pth --amp
"""
from scob_fast.config import parse_args
from scob_fast.engine.trainer import run


def main() -> None:
    run(parse_args())


if __name__ == "__main__":
    main()
