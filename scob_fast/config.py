"""The run's typed configuration and the command line generated from it.

Four option groups (data, model, optimisation, run) plus the chosen method's own dataclass
(`Method.config_class`). Flags, YAML keys (`--config`), args.yaml and checkpoints all use the same
flat names (`lr_linear`, `sst_threshold`, ...). Fields whose default is None take the dataset's
default (scob_fast.data.registry), then the generic one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from scob_fast.cli_options import add_options, flat_options, option, option_names, options_from
from scob_fast.data.images import DEFAULT_MAX_PIXELS
from scob_fast.data.labels import parse_regime
from scob_fast.data.protocols import PROTOCOL_NAMES
from scob_fast.data.registry import GENERIC_DEFAULTS, dataset_names, dataset_spec
from scob_fast.methods import METHODS, config_classes, method_class
from scob_fast.engine.metrics import AP_MODES, SELECTION_MODES
from scob_fast.methods.base import HeadOptions, LearningRates
from scob_fast.models.backbone import BN_MODES, SPECS, TRAIN_FROM_CHOICES
from scob_fast.reporting.options import ReportOptions


@dataclass
class DataOptions:
    dataset: str = option("demo", "dataset name", choices=tuple(dataset_names()))
    data_root: str | None = option(None, "dataset directory in its official layout (demo: generated cache)")
    labels: str | None = option(None, "label regime: full, single, partial:P (default: the method's own regime)")
    demo_images: int | None = option(None, "demo and demo-coco: generated train2014 images (val2014 gets 30%% as "
                                     "many); default 2000 (demo), 3000 (demo-coco)")
    label_seed: int | None = option(None, "seed of the observed-label draw (default: the protocol's own: cole 1200, "
                                    "scob 114514; partial:P 0)")
    protocol: str = option("cole", "evaluation protocol as its public code runs it: splits, row order and label "
                           "draw (cole: Cole et al.'s single-positive code; scob: Scob's code; sst: SST's code)",
                           choices=PROTOCOL_NAMES)
    image_size: int | None = option(None, "input resolution (default 448; demo 128)")
    loader: str = option("auto", "decode pipeline", choices=("auto", "dali", "pil"))
    workers: int | None = option(None, "loader worker threads/processes (default 2)")
    cache_features: bool = option(False, "precompute the frozen backbone's features (and their flips) once into "
                                  "--out (fp16 memmap); for methods without image-space augmentation")
    cache_dir: str | None = option(None, "where --cache-features keeps its files (default <out>/feature_cache); runs "
                                   "on the same data, backbone and resolution can share one (each split's key is "
                                   "checked)")
    max_bad_fraction: float | None = option(None, "stop when more than this fraction of an epoch's images cannot be "
                                            "read (default: SCOB_FAST_MAX_BAD_IMAGE_FRACTION or 0.01)")
    check_data: bool = option(False, "decode every image of every split, print the report of the bad ones and exit "
                              "(non-zero if any)")
    bad_images: str = option("stop", "what the quick header-level check of every split before training does with "
                             "missing, unreadable, truncated or oversized images: stop with the report, or skip "
                             "them (dropped from their split, listed in the log)", choices=("stop", "skip"))
    max_image_pixels: int = option(DEFAULT_MAX_PIXELS, "largest image (width x height) read; larger ones are "
                                   "refused as decompression bombs, by both loaders alike")


@dataclass
class ModelOptions:
    method: str = option("scob", "training method", choices=tuple(sorted(METHODS)))
    backbone: str | None = option(None, "backbone (default: resnet50 if --backbone-weights is given, else "
                                  "efficientnet_lite0)", choices=tuple(sorted(SPECS)))
    backbone_weights: str | None = option(None, "state-dict file of the backbone (torchvision's resnet50-*.pth and "
                                          "resnet101-*.pth load strictly)")
    train_backbone: str = option("none", "which backbone stages train: that stage and every later one (stages "
                                 "stem, layer1..layer4; 'all' from the stem on); 'none' keeps the whole backbone "
                                 "frozen, its BatchNorm folded", choices=TRAIN_FROM_CHOICES)
    bn_mode: str = option("frozen", "BatchNorm of the trainable stages: frozen (eval mode, weight and bias fixed, as "
                          "FrozenBatchNorm2d) or train (batch statistics, running statistics updated, weight and "
                          "bias learned)", choices=BN_MODES)
    init_from: str | None = option(None, "start from the model weights of another run's checkpoint (heads, label "
                                   "estimator, trained backbone stages), e.g. the best.pth of a linear stage (Cole "
                                   "et al.'s linear_init); optimiser, schedule and epochs start fresh")
    dim: int | None = option(None, "head width d (two levels of d/2); default 1024, demo 256")
    ffn: int | None = option(None, "transformer FFN width; default 2048, demo 512")
    dropout: float = option(0.1, "dropout in the heads")


@dataclass
class OptimOptions:
    epochs: int | None = option(None, "training epochs (default 20; demo 3)")
    batch_size: int | None = option(None, "batch size (default 8; demo 16)")
    lr_linear: float = option(1e-3, "learning rate of input projections and position embeddings")
    lr_transformer: float = option(4e-5, "learning rate of the transformer layers")
    lr_projector: float = option(1e-2, "learning rate of the contrastive projector")
    lr_classifier: float = option(1e-3, "learning rate of the classifier")
    lr_estimator: float = option(1e-2, "learning rate of the label estimator (ROLE/Scob)")
    lr_backbone: float = option(1e-5, "learning rate of the trainable backbone stages (--train-backbone), their "
                                "own optimiser group")
    lr_step: int | None = option(None, "StepLR step in epochs (x0.1; default 16)")
    weight_decay: float = option(0.0, "Adam weight decay (L2, as torch.optim.Adam applies it) of every group "
                                 "that does not set its own")
    expected_positives: float | None = option(None, "expected positives per image k (EPR/ROLE/Scob; default per "
                                              "dataset)")
    seed: int = option(0, "seed of initialisation, order and augmentation")
    amp: bool = option(False, "bfloat16 autocast on CPU; float16+GradScaler on CUDA")
    amp_cuda_dtype: str = option("float16", "autocast dtype on CUDA", choices=("float16", "bfloat16"))
    compile: bool = option(False, "torch.compile the trainable heads in place (first steps are slow while it "
                           "compiles)")
    device: str | None = option(None, "cpu or cuda (default: cuda when available)")
    clip_grad_norm: float | None = option(None, "clip the gradients of each optimiser step to this global norm")


@dataclass
class RunOptions:
    out: str | None = option(None, "run directory (default runs/<dataset>-<method>-<date>-<time>); one that holds "
                             "another run is refused unless --resume continues it or --overwrite is given")
    overwrite: bool = option(False, "replace the run that --out holds")
    resume: str | None = option(None, "checkpoint to resume from (last.pth of a run); 'auto': --out's last.pth "
                                "if there is one, else start")
    checkpoint_every: int | None = option(None, "also write last.pth every N training steps (an interruption "
                                          "then loses at most N steps)")
    eval_only: bool = option(False, "evaluate --resume's weights on val and test, no training; writes "
                             "eval-<checkpoint>.json into --out and nothing else")
    max_nonfinite_steps: int = option(5, "stop the run after this many consecutive steps with a non-finite "
                                      "loss or gradient (each is skipped)")
    map_empty_class: str = option("exclude", "how a class without positives in the evaluated split enters mAP",
                                  choices=("exclude", "zero"))
    select: str = option("val", "which epoch's weights are the result: val (the best held-out val mAP, the honest "
                         "default) or test-best-epoch (the epoch with the best mAP on the test split itself, as the "
                         "public Scob, SST and SADCL codes report it; test is then evaluated every epoch)",
                         choices=SELECTION_MODES)
    ap: str = option("sklearn", "per-class average precision: sklearn (scikit-learn's average_precision_score) or "
                     "voc-interpolated (all-point interpolated AP, VOC 2010-2012 style, as SST's "
                     "utils/metrics.py Compute_mAP_VOC2012)", choices=AP_MODES)
    max_steps: int | None = option(None, "stop each epoch after this many steps (smoke tests)")
    quiet: bool = option(False, "no progress bar")
    debug: bool = option(False, "show the full traceback of an error instead of its one-line message")


GROUPS = (("data", DataOptions), ("model", ModelOptions), ("optimisation", OptimOptions), ("run", RunOptions),
          ("reporting", ReportOptions))


@dataclass
class TrainConfig:
    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    run: RunOptions = field(default_factory=RunOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    method: Any = None               # the chosen method's config dataclass

    def flat(self) -> dict:
        """Every option by its flag name (what args.yaml and checkpoints store)."""
        out = {}
        for part in (self.data, self.model, self.optim, self.run, self.report, self.method):
            if part is not None:
                out.update(flat_options(part))
        return out

    @property
    def heads(self) -> HeadOptions:
        return HeadOptions(dim=self.model.dim, ffn=self.model.ffn, dropout=self.model.dropout)

    @property
    def learning_rates(self) -> LearningRates:
        o = self.optim
        return LearningRates(linear=o.lr_linear, transformer=o.lr_transformer, projector=o.lr_projector,
                             classifier=o.lr_classifier, estimator=o.lr_estimator)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train multi-label recognition from incomplete labels.")
    p.add_argument("--config", help="YAML file whose keys (flag names, - or _) set defaults for any flag")
    for title, cls in GROUPS:
        add_options(p.add_argument_group(title), cls)
    for cls, names in config_classes().items():
        add_options(p.add_argument_group(f"method options ({', '.join(names)})"), cls)
    return p


def _config_value(action: argparse.Action, value, where: str, parser: argparse.ArgumentParser):
    """A YAML value checked by the flag's own type and choices (so `amp: "false"` or `epochs: 1.5`
    are refused exactly as on the command line)."""
    flag = action.option_strings[0]
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            parser.error(f"{where}: {flag} expects true or false, got {value!r}")
        return value
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        parser.error(f"{where}: {flag} expects a single value, got {value!r}")
    try:
        converted = action.type(str(value)) if action.type else str(value)
    except (TypeError, ValueError):
        kind = getattr(action.type, "__name__", "value")
        parser.error(f"{where}: {flag} expects {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {value!r}")
    if action.type is int and isinstance(value, float):
        parser.error(f"{where}: {flag} expects an int, got {value!r}")
    if action.choices is not None and converted not in action.choices:
        parser.error(f"{where}: {flag} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    known, _ = parser.parse_known_args(argv)
    if not known.config:
        return
    try:
        with open(known.config) as handle:
            values = yaml.safe_load(handle) or {}
    except OSError as exc:
        parser.error(f"--config {known.config}: {exc.strerror or exc}")
    except yaml.YAMLError as exc:
        parser.error(f"--config {known.config}: not valid YAML ({str(exc).splitlines()[0]})")
    if not isinstance(values, dict):
        parser.error(f"--config {known.config}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions}
    normalised = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            parser.error(f"--config {known.config}: unknown key {key!r}")
        normalised[dest] = _config_value(actions[dest], value, f"--config {known.config}", parser)
    parser.set_defaults(**normalised)


def _check_ranges(config: "TrainConfig", parser: argparse.ArgumentParser) -> None:
    """Values that parse but cannot train, refused before any data or model is built."""
    d, m, o, r = config.data, config.model, config.optim, config.run
    problems = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(o.epochs >= 1, f"--epochs must be >= 1, got {o.epochs}")
    need(o.batch_size >= 1, f"--batch-size must be >= 1, got {o.batch_size}")
    need(o.lr_step >= 1, f"--lr-step must be >= 1, got {o.lr_step}")
    for name in ("lr_linear", "lr_transformer", "lr_projector", "lr_classifier", "lr_estimator", "lr_backbone"):
        value = getattr(o, name)
        need(value >= 0 and value == value and value != float("inf"),
             f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    need(o.weight_decay >= 0, f"--weight-decay must be >= 0, got {o.weight_decay}")
    need(o.expected_positives > 0, f"--expected-positives must be > 0, got {o.expected_positives}")
    need(32 <= d.image_size <= 4096 and d.image_size % 32 == 0,
         f"--image-size must be a multiple of 32 in [32, 4096] (the backbone's stride), got {d.image_size}")
    need(d.workers >= 0, f"--workers must be >= 0, got {d.workers}")
    need(d.max_image_pixels >= 1, f"--max-image-pixels must be >= 1, got {d.max_image_pixels}")
    need(d.demo_images is None or d.demo_images >= 10, f"--demo-images must be >= 10, got {d.demo_images}")
    need(m.dim >= 16 and m.dim % 16 == 0, f"--dim must be a positive multiple of 16 (two levels x 8 heads), "
         f"got {m.dim}")
    need(m.ffn >= 1, f"--ffn must be >= 1, got {m.ffn}")
    need(0.0 <= m.dropout < 1.0, f"--dropout must be in [0, 1), got {m.dropout}")
    if d.max_bad_fraction is not None:
        need(0.0 <= d.max_bad_fraction <= 1.0, f"--max-bad-fraction must be in [0, 1], got {d.max_bad_fraction}")
    if r.max_steps is not None:
        need(r.max_steps >= 1, f"--max-steps must be >= 1, got {r.max_steps}")
    try:
        parse_regime(d.labels)
    except ValueError as exc:
        problems.append(f"--labels: {exc}")
    if o.device is not None:
        import torch
        kind = o.device.split(":")[0]
        if kind not in ("cpu", "cuda"):
            problems.append(f"--device must be cpu or cuda, got {o.device!r}")
        elif kind == "cuda" and not torch.cuda.is_available():
            problems.append(f"--device {o.device}: this torch sees no CUDA GPU (torch {torch.__version__}, CUDA "
                            f"build: {torch.version.cuda or 'no, CPU-only'}); use --device cpu")
    if r.checkpoint_every is not None:
        need(r.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {r.checkpoint_every}")
    need(r.max_nonfinite_steps >= 1, f"--max-nonfinite-steps must be >= 1, got {r.max_nonfinite_steps}")
    if o.clip_grad_norm is not None:
        need(o.clip_grad_norm > 0, f"--clip-grad-norm must be > 0, got {o.clip_grad_norm}")
    if d.cache_features and m.train_backbone != "none":
        problems.append(f"--cache-features: the backbone trains (--train-backbone {m.train_backbone}), so its features "
                        "change every step and cannot be cached; drop one of the two")
    if m.bn_mode == "train" and m.train_backbone == "none":
        problems.append("--bn-mode train needs trainable stages (--train-backbone layer4, layer3, layer2 or all); a "
                        "frozen backbone's BatchNorm is folded into its convolutions")
    if m.init_from is not None and not os.path.isfile(m.init_from):
        problems.append(f"--init-from {m.init_from}: no such checkpoint file")
    if r.eval_only and not r.resume:
        problems.append("--eval-only needs --resume PATH (the weights to evaluate)")
    if r.resume == "auto" and r.eval_only:
        problems.append("--eval-only needs --resume PATH, not auto")
    if problems:
        parser.error("; ".join(problems))


def _fill_defaults(values: dict) -> None:
    """None = not set: the dataset's default, then the generic one."""
    spec = dataset_spec(values["dataset"])
    defaults = {**GENERIC_DEFAULTS, "expected_positives": spec.expected_positives, **spec.defaults}
    # A method's own published k on this dataset (Scob's main.py: 3.9 on COCO) replaces the dataset's.
    method_k = getattr(method_class(values["method"]), "published_expected_positives", {}).get(spec.name)
    if method_k is not None:
        defaults["expected_positives"] = method_k
    for key, value in defaults.items():
        if key in values and values[key] is None:
            values[key] = value
    if values["backbone"] is None:
        values["backbone"] = "resnet50" if values["backbone_weights"] else "efficientnet_lite0"
    if values["labels"] is None:
        values["labels"] = method_class(values["method"]).label_regimes[0]
    if values["out"] is None and values.get("resume") == "auto":
        raise SystemExit("train.py: error: --resume auto needs --out (the run directory to continue)")
    if values["out"] is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        values["out"] = f"runs/{values['dataset']}-{values['method']}-{stamp}"


def config_from_values(values: dict) -> TrainConfig:
    """A TrainConfig from flat option values (defaults filled in for what is missing or None)."""
    parser = build_parser()
    full = {a.dest: a.default for a in parser._actions if a.dest not in ("help", "config")}
    full.update(values)
    _fill_defaults(full)
    method_config = method_class(full["method"]).config_class
    return TrainConfig(data=options_from(DataOptions, full), model=options_from(ModelOptions, full),
                       optim=options_from(OptimOptions, full), run=options_from(RunOptions, full),
                       report=options_from(ReportOptions, full),
                       method=options_from(method_config, full) if method_config else None)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    _apply_config(parser, argv)
    values = vars(parser.parse_args(argv))
    values.pop("config", None)
    config = config_from_values(values)
    _check_ranges(config, parser)
    return config


__all__ = ["TrainConfig", "DataOptions", "ModelOptions", "OptimOptions", "RunOptions", "build_parser",
           "parse_args", "config_from_values", "option_names"]
