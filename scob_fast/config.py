"""The command line: one parser with groups, per-dataset defaults, and a YAML config that can set any flag."""
from __future__ import annotations

import argparse
import sys

import yaml

from scob_fast.methods import METHODS, method_class

# Per-dataset defaults for flags left unset. Real datasets keep the published full-size setting
# (448 px, d = 1024, FFN 2048, 20 epochs, batch 8); the embedded demo is sized to finish in minutes
# on 2 CPU cores.
DATASET_DEFAULTS = {
    # k = 2.25: the measured mean number of classes per generated demo image.
    "demo": dict(image_size=128, dim=256, ffn=512, epochs=3, batch_size=16, expected_positives=2.25,
                 lr_step=16, workers=2),
    "coco2014": dict(expected_positives=3.9),
    "voc2007": dict(expected_positives=1.5),
    "voc2012": dict(expected_positives=1.5),
    "nuswide": dict(expected_positives=1.9),
    "cub": dict(expected_positives=31.4),
    "folder": dict(expected_positives=2.0),
}
GENERIC_DEFAULTS = dict(image_size=448, dim=1024, ffn=2048, epochs=20, batch_size=8, expected_positives=2.0,
                        lr_step=16, workers=2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train multi-label recognition from incomplete labels.")
    p.add_argument("--config", help="YAML file whose keys (flag names, - or _) set defaults for any flag")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="demo", choices=sorted(DATASET_DEFAULTS), help="dataset name")
    g.add_argument("--data-root", help="dataset directory in its official layout (demo: generated cache)")
    g.add_argument("--labels", default=None,
                   help="label regime: full, single, partial:P (default: the method's own regime)")
    g.add_argument("--demo-images", type=int, default=2000,
                   help="demo only: generated train2014 images (val2014 gets 30%% as many)")
    g.add_argument("--label-seed", type=int, default=1200, help="seed of the observed-label draw")
    g.add_argument("--image-size", type=int, help="input resolution (default 448; demo 128)")
    g.add_argument("--loader", choices=["auto", "dali", "pil"], default="auto", help="decode pipeline")
    g.add_argument("--workers", type=int, help="loader worker threads/processes")
    g.add_argument("--cache-features", action="store_true",
                   help="precompute the frozen backbone's features (and their flips) once into --out (fp16 memmap); "
                        "for methods without image-space augmentation")
    g.add_argument("--cache-dir", default=None,
                   help="where --cache-features keeps its files (default <out>/feature_cache); runs on the same "
                        "data, backbone and resolution can share one (each split's key is checked)")
    g.add_argument("--max-bad-fraction", type=float, default=None,
                   help="stop when more than this fraction of an epoch's images cannot be read "
                        "(default: SCOB_FAST_MAX_BAD_IMAGE_FRACTION or 0.01)")

    g = p.add_argument_group("model")
    g.add_argument("--method", default="scob", choices=sorted(METHODS))
    g.add_argument("--backbone", default=None, choices=["efficientnet_lite0", "resnet50"],
                   help="frozen backbone (default: resnet50 if --backbone-weights is given, else efficientnet_lite0)")
    g.add_argument("--backbone-weights", help="state-dict file of the backbone (torchvision's resnet50-*.pth works)")
    g.add_argument("--dim", type=int, help="head width d (two levels of d/2); default 1024, demo 256")
    g.add_argument("--ffn", type=int, help="transformer FFN width; default 2048, demo 512")
    g.add_argument("--dropout", type=float, default=0.1)

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr-linear", type=float, default=1e-3, help="input projections and position embeddings")
    g.add_argument("--lr-transformer", type=float, default=4e-5)
    g.add_argument("--lr-projector", type=float, default=1e-2)
    g.add_argument("--lr-classifier", type=float, default=1e-3)
    g.add_argument("--lr-estimator", type=float, default=1e-2, help="label estimator (ROLE/Scob)")
    g.add_argument("--lr-step", type=int, help="StepLR step in epochs (x0.1)")
    g.add_argument("--expected-positives", type=float, help="expected positives per image k (EPR/ROLE/Scob)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--amp", action="store_true", help="bfloat16 autocast on CPU; float16+GradScaler on CUDA")
    g.add_argument("--amp-cuda-dtype", choices=["float16", "bfloat16"], default="float16")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the trainable heads in place (first steps are slow while it compiles)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")

    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<method>)")
    g.add_argument("--resume", help="checkpoint to resume from (last.pth of a run)")
    g.add_argument("--eval-only", action="store_true", help="evaluate --resume's weights on val and test, no training")
    g.add_argument("--map-empty-class", choices=["exclude", "zero"], default="exclude",
                   help="how a class without positives in the evaluated split enters mAP")
    g.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (smoke tests)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    added = {}
    for name in sorted(METHODS):
        add = method_class(name).add_arguments
        if add in added:  # method families (the baselines) share one set of flags
            continue
        added[add] = name
        add(p.add_argument_group(f"method options ({add.__qualname__.split('.')[0]})"))
    return p


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    known, _ = parser.parse_known_args(argv)
    if not known.config:
        return
    try:
        with open(known.config) as handle:
            values = yaml.safe_load(handle) or {}
    except OSError as exc:
        parser.error(f"--config {known.config}: {exc}")
    if not isinstance(values, dict):
        parser.error(f"--config {known.config}: expected a mapping of flag names to values")
    dests = {a.dest for a in parser._actions}
    normalised = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in dests:
            parser.error(f"--config {known.config}: unknown key {key!r}")
        normalised[dest] = value
    parser.set_defaults(**normalised)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    _apply_config(parser, argv)
    args = parser.parse_args(argv)
    defaults = {**GENERIC_DEFAULTS, **DATASET_DEFAULTS.get(args.dataset, {})}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.backbone is None:
        args.backbone = "resnet50" if args.backbone_weights else "efficientnet_lite0"
    if args.labels is None:
        args.labels = method_class(args.method).label_regimes[0]
    if args.out is None:
        args.out = f"runs/{args.dataset}-{args.method}"
    if args.eval_only and not args.resume:
        parser.error("--eval-only needs --resume PATH (the weights to evaluate)")
    return args
