"""Predict labels of new images with a trained run.

    python -m scob_fast.predict --run runs/demo-scob photos/ extra.jpg            # CSV to stdout
    python -m scob_fast.predict --run runs/demo-scob photos/ --output preds.json --top-k 3
    python -m scob_fast.predict --run runs/demo-scob photos/ --threshold val-f1   # per-class thresholds
    python -m scob_fast.predict --checkpoint runs/demo-scob/last.pth photos/ --explain explain/

The run's own configuration (RUN_DIR/args.yaml, else the checkpoint's stored arguments), backbone,
preprocessing and loaders are used (scob_fast.data.build_loader over the given files, eval mode:
decode, resize to the run's size, normalise with the backbone's mean/std). Folders are searched
recursively for image files. A file that cannot be read is skipped and reported on stderr (one line
each, then the count); progress and the measured images/s go to stderr too.

CSV columns: file, labels (the classes at or above the threshold, ';'-separated), top1, top1_score,
..., topK, topK_score (and score_<class> for every class with --all-scores). JSON: {"run", "checkpoint",
"threshold", "classes", "predictions": [{"file", "labels", "top": [{"class", "score"}], "scores"}],
"skipped": [{"file", "reason"}], "images_per_s"}.

`--threshold val-f1`: per class the threshold that maximises F1 on the run's validation split,
stored in RUN_DIR/thresholds_val_f1.json for the checkpoint it was chosen on (training writes it
for best.pth; otherwise it is computed here once, on the run's val split, and stored).
`--explain OUTDIR`: one PNG per image with the Grad-CAM++ map of its predicted classes (at most
--explain-classes) and, for Scob, the tokens its masked attention keeps at both levels.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

log = logging.getLogger("scob_fast.predict")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm", ".jp2", ".j2k"})


@dataclass
class LoadedRun:
    config: object
    method: object
    class_names: list
    run_dir: Path
    checkpoint: Path
    checkpoint_epoch: int | None
    device: torch.device
    amp: object

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    @property
    def mean(self):
        return tuple(self.method.backbone.spec.mean)

    @property
    def std(self):
        return tuple(self.method.backbone.spec.std)


class PredictError(ValueError):
    """A run, checkpoint or input that predict cannot use; the message says what to do."""


def load_run(run: str | Path | None = None, checkpoint: str | Path | None = None, device: str | None = None,
             amp: bool = False) -> LoadedRun:
    """The run's method with the checkpoint's weights, in eval mode, on `device`."""
    from scob_fast.config import config_from_values
    from scob_fast.data import load_observed
    from scob_fast.engine import checkpoint as checkpoints
    from scob_fast.engine.amp import AmpPolicy
    from scob_fast.training import build_method, build_run_backbone

    if run is None and checkpoint is None:
        raise PredictError("give --run RUN_DIR or --checkpoint FILE")
    run_dir = Path(run) if run is not None else Path(checkpoint).parent
    if run is not None and not run_dir.is_dir():
        raise PredictError(f"--run {run_dir}: not a directory")
    ckpt = Path(checkpoint) if checkpoint is not None else run_dir / "best.pth"
    if not ckpt.is_file():
        others = sorted(p.name for p in run_dir.glob("*.pth"))
        raise PredictError(f"checkpoint {ckpt} not found" + (f"; the run has {', '.join(others)} (pass "
                                                               f"--checkpoint)" if others else ""))
    saved = checkpoints.load(ckpt)
    args_file = run_dir / "args.yaml"
    if args_file.exists():
        values = yaml.safe_load(args_file.read_text()) or {}
    elif saved.get("args"):
        values = dict(saved["args"])
    else:
        raise PredictError(f"{run_dir} has no args.yaml and {ckpt} stores no arguments: cannot rebuild the run")
    values = {**values, "resume": None, "eval_only": False}
    config = config_from_values(values)
    if device is not None:
        config.optim.device = device
    try:
        observed, meta = load_observed(run_dir, with_meta=True)
    except (ValueError, FileNotFoundError) as exc:
        raise PredictError(f"{run_dir}: the run's observed_labels.npz is needed to rebuild its method ({exc})") \
            from None
    class_names = list(meta.get("class_names") or [])
    if len(class_names) != observed.shape[1]:
        from scob_fast.training import build_splits
        class_names = list(build_splits(config)[0].class_names)
    target = torch.device(config.optim.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    m, o = config.model, config.optim
    backbone = build_run_backbone(config, target)
    policy = AmpPolicy(target, amp, o.amp_cuda_dtype)
    method = build_method(config, backbone, len(class_names), observed, target, policy)
    method.load_checkpoint_state(saved["model"])
    method.eval()
    epoch = saved.get("epoch")
    return LoadedRun(config=config, method=method, class_names=class_names, run_dir=run_dir, checkpoint=ckpt,
                     checkpoint_epoch=None if epoch is None else int(epoch) + 1, device=target, amp=policy)


def collect_files(inputs: list[str]) -> list[str]:
    """Files as given, folders searched recursively for image files (sorted); a path that does not
    exist is kept, so that it is reported with the unreadable files."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                log.warning("%s: no image files found", path)
            files += [str(p) for p in found]
        else:
            files.append(str(path))
    return files


def _loader_for(loaded: LoadedRun, dataset, *, batch_size: int, loader: str, workers: int):
    from scob_fast.data import build_loader
    observed = np.zeros(dataset.labels.shape, dtype=np.int8)
    device = "cuda" if loaded.device.type == "cuda" else "cpu"
    return build_loader(dataset, observed, batch_size=batch_size, image_size=loaded.image_size, mean=loaded.mean,
                        std=loaded.std, train=False, hard_view=False, loader=loader, workers=workers,
                        seed=0, max_bad_fraction=1.0, device=device if loader != "pil" else None)


def _resolved_loader(name: str) -> str:
    if name != "auto":
        return name
    from scob_fast.data import dali_available
    return "dali" if dali_available() is None else "pil"


@dataclass
class Prediction:
    files: list          # the files that were read, in input order
    scores: np.ndarray   # [N, C] sigmoid scores
    skipped: list        # (file, reason)
    images_per_s: float
    seconds: float


def predict_files(loaded: LoadedRun, files: list[str], *, batch_size: int = 32, loader: str = "auto",
                  workers: int = 2, progress: bool = True, progress_mode: str | None = None,
                  explain_dir: str | Path | None = None, explain_classes: int = 3, thresholds=None,
                  labels: np.ndarray | None = None) -> Prediction:
    """Scores of `files` (the unreadable ones skipped). With `explain_dir`, one PNG per image
    (classes at or above `thresholds`, at most `explain_classes`, at least the top one)."""
    from scob_fast.data import MultiLabelDataset
    from scob_fast.engine.progress import Progress
    from scob_fast.engine.trainer import to_device

    if not files:
        raise PredictError("no input files")
    method, names = loaded.method, loaded.class_names
    targets = np.zeros((len(files), len(names)), dtype=np.uint8) if labels is None else labels
    dataset = MultiLabelDataset("predict", names, files, targets, split="predict")
    batches = _loader_for(loaded, dataset, batch_size=batch_size, loader=_resolved_loader(loader), workers=workers)
    thresholds = np.broadcast_to(np.asarray(0.5 if thresholds is None else thresholds, dtype=np.float64),
                                 (len(names),))
    bar = Progress(len(batches), "predict", enabled=progress, mode=progress_mode)
    scores, indices = [], []
    explain_seconds = 0.0
    method.eval()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # skipped files are reported below instead
        for step, batch in enumerate(batches):
            batch = to_device(batch, loaded.device)
            with torch.no_grad(), loaded.amp.autocast():
                logits = method.predict_batch(batch)
            probabilities = torch.sigmoid(logits.float()).cpu()
            index = batch["index"].cpu()
            scores.append(probabilities)
            indices.append(index)
            if explain_dir is not None:
                tick = time.perf_counter()
                _explain_batch(loaded, batch["image"], probabilities, index, files, explain_dir, explain_classes,
                               thresholds)
                explain_seconds += time.perf_counter() - tick
            bar.update(step, int(index.numel()), {})
    bar.close()
    seconds = time.perf_counter() - start - explain_seconds
    order = torch.cat(indices).numpy() if indices else np.zeros(0, dtype=np.int64)
    all_scores = torch.cat(scores).numpy().astype(np.float64) if scores else np.zeros((0, len(names)))
    skipped = [(path, reason) for path, reason in getattr(batches, "skipped_files", [])]
    return Prediction(files=[files[i] for i in order], scores=all_scores, skipped=skipped,
                      images_per_s=len(order) / max(seconds, 1e-9), seconds=seconds)


def _explain_batch(loaded: LoadedRun, images, probabilities, index, files, outdir, count: int, thresholds) -> None:
    from scob_fast.reporting.explain import explain
    from scob_fast.reporting.overlay import denormalise, write_explanation

    k = max(1, min(int(count), probabilities.shape[1]))
    top = torch.argsort(probabilities, dim=1, descending=True)[:, :k]
    maps = explain(loaded.method, images.float(), top.to(images.device))
    maps = {key: value.detach().cpu().numpy() for key, value in maps.items()}
    kind = "Grad-CAM++ and kept tokens" if "keep_low" in maps else "Grad-CAM++ on the last feature level"
    for row, i in enumerate(index.tolist()):
        chosen = [j for j in range(k) if probabilities[row, top[row, j]] >= thresholds[int(top[row, j])]] or [0]
        classes = [int(top[row, j]) for j in chosen]
        image_maps = {key: value[row][chosen] for key, value in maps.items()}
        rgb = denormalise(images[row], loaded.mean, loaded.std)
        name = f"{i:06d}_{Path(files[i]).stem}.png"
        write_explanation(Path(outdir) / name, rgb, image_maps, loaded.class_names, classes,
                          [float(probabilities[row, c]) for c in classes],
                          header=f"{Path(files[i]).name}: {loaded.config.model.method}, {kind}")


# -- thresholds ----------------------------------------------------------------------------------

def val_f1_thresholds(loaded: LoadedRun, *, batch_size: int, loader: str, workers: int,
                      progress: bool = True) -> np.ndarray:
    """The stored val-F1 thresholds of this checkpoint, else chosen now on the run's val split and stored."""
    from scob_fast.reporting.per_class import f1_thresholds
    from scob_fast.reporting.thresholds import THRESHOLDS_FILE, load_thresholds, save_thresholds
    from scob_fast.training import build_splits

    stored = load_thresholds(loaded.run_dir, loaded.checkpoint, loaded.class_names)
    if stored is not None:
        return stored
    log.info("choosing per-class thresholds on the run's val split (checkpoint %s)", loaded.checkpoint.name)
    val = build_splits(loaded.config)[1]
    if list(val.class_names) != list(loaded.class_names):
        raise PredictError("the run's val split has other classes than its checkpoint")
    result = predict_files(loaded, list(val.image_paths), batch_size=batch_size, loader=loader, workers=workers,
                           progress=progress, labels=val.labels)
    position = {p: i for i, p in enumerate(val.image_paths)}
    targets = val.labels[[position[f] for f in result.files]]
    thresholds, f1 = f1_thresholds(result.scores, targets)
    try:
        save_thresholds(loaded.run_dir, loaded.checkpoint, loaded.class_names, thresholds, f1,
                        epoch=loaded.checkpoint_epoch)
    except OSError as exc:
        log.warning("could not store %s in %s: %s", THRESHOLDS_FILE, loaded.run_dir, exc)
    return thresholds


# -- output --------------------------------------------------------------------------------------

def prediction_records(prediction: Prediction, class_names: list[str], thresholds, top_k: int) -> list[dict]:
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(class_names),))
    k = max(1, min(int(top_k), len(class_names)))
    records = []
    for path, row in zip(prediction.files, prediction.scores):
        order = np.argsort(-row, kind="stable")
        records.append({
            "file": path,
            "labels": [class_names[c] for c in order if row[c] >= thresholds[c]],
            "top": [{"class": class_names[c], "score": float(row[c])} for c in order[:k]],
            "scores": {name: float(v) for name, v in zip(class_names, row)},
        })
    return records


def to_csv(records: list[dict], class_names: list[str], top_k: int, all_scores: bool = False) -> str:
    k = max(1, min(int(top_k), len(class_names)))
    header = ["file", "labels"] + [f"top{i}{suffix}" for i in range(1, k + 1) for suffix in ("", "_score")]
    if all_scores:
        header += [f"score_{name}" for name in class_names]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        line = [record["file"], ";".join(record["labels"])]
        for entry in record["top"]:
            line += [entry["class"], f"{entry['score']:.6f}"]
        if all_scores:
            line += [f"{record['scores'][name]:.6f}" for name in class_names]
        writer.writerow(line)
    return buffer.getvalue()


def to_json(records: list[dict], prediction: Prediction, loaded: LoadedRun, threshold, all_scores: bool) -> str:
    if not all_scores:
        records = [{k: v for k, v in r.items() if k != "scores"} for r in records]
    document = {"run": str(loaded.run_dir), "checkpoint": str(loaded.checkpoint),
                "method": loaded.config.model.method, "classes": loaded.class_names, "threshold": threshold,
                "predictions": records,
                "skipped": [{"file": f, "reason": r} for f, r in prediction.skipped],
                "images_per_s": round(prediction.images_per_s, 2)}
    return json.dumps(document, indent=2) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scob_fast.predict",
                                description="Predict labels of images with a trained run.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders (recursive)")
    p.add_argument("--run", help="run directory (train.py --out): args.yaml, observed_labels.npz, best.pth")
    p.add_argument("--checkpoint", help="checkpoint file (default RUN_DIR/best.pth; without --run, its folder is "
                                        "the run directory)")
    p.add_argument("--output", "-o", default="-", help="output file: .json writes JSON, anything else CSV; - (default) "
                                                       "stdout")
    p.add_argument("--format", choices=("csv", "json"), help="output format (default: from --output's suffix, CSV)")
    p.add_argument("--top-k", type=int, default=5, help="top classes listed per image (default 5)")
    p.add_argument("--threshold", default=None,
                   help="label threshold: a number (default: the run's --threshold, 0.5), or val-f1 for per-class "
                        "thresholds maximising F1 on the run's val split")
    p.add_argument("--all-scores", action="store_true", help="also write every class's score")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--loader", choices=("auto", "dali", "pil"), default="auto", help="decode pipeline (default auto)")
    p.add_argument("--workers", type=int, default=2, help="loader workers (default 2)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="autocast as the run's --amp (bfloat16 on CPU)")
    p.add_argument("--explain", metavar="OUTDIR", help="write one explanation PNG per image into OUTDIR")
    p.add_argument("--explain-classes", type=int, default=3, help="at most this many predicted classes explained "
                                                                  "per image (default 3)")
    p.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="progress on stderr (default auto: a bar on a terminal, else lines)")
    p.add_argument("--quiet", action="store_true", help="no progress (the summary lines remain)")
    return p


def _threshold_value(text, loaded: LoadedRun, parser) -> tuple[object, object]:
    """(the threshold, or None for val-f1; what the JSON output records)."""
    if text is None:
        value = float(getattr(loaded.config.report, "threshold", 0.5))
        return value, value
    if text == "val-f1":
        return None, "val-f1"
    try:
        value = float(text)
    except ValueError:
        parser.error(f"--threshold must be a number or val-f1, got {text!r}")
    if not 0.0 <= value <= 1.0:
        parser.error(f"--threshold must be in [0, 1], got {value}")
    return value, value


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run is None and args.checkpoint is None:
        parser.error("give --run RUN_DIR or --checkpoint FILE")
    for name in ("top_k", "batch_size", "explain_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    try:
        loaded = load_run(args.run, args.checkpoint, device=args.device, amp=args.amp)
        threshold, threshold_text = _threshold_value(args.threshold, loaded, parser)
        show = not args.quiet and args.progress != "none"
        mode = None if args.progress == "auto" else args.progress
        if threshold is None:
            threshold = val_f1_thresholds(loaded, batch_size=args.batch_size, loader=args.loader,
                                          workers=args.workers, progress=show)
        files = collect_files(args.inputs)
        prediction = predict_files(loaded, files, batch_size=args.batch_size, loader=args.loader,
                                   workers=args.workers, progress=show, progress_mode=mode,
                                   explain_dir=args.explain, explain_classes=args.explain_classes,
                                   thresholds=threshold)
    except (PredictError, FileNotFoundError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    records = prediction_records(prediction, loaded.class_names, threshold, args.top_k)
    kind = args.format or ("json" if args.output.lower().endswith(".json") else "csv")
    text = (to_json(records, prediction, loaded, threshold_text if threshold_text != "val-f1" else
                    {"val-f1": [float(t) for t in np.asarray(threshold)]}, args.all_scores)
            if kind == "json" else to_csv(records, loaded.class_names, args.top_k, args.all_scores))
    if args.output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    for path, reason in prediction.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{len(prediction.files)} image(s) predicted in {prediction.seconds:.1f} s "
          f"({prediction.images_per_s:.1f} images/s), {len(prediction.skipped)} skipped"
          + (f"; explanations in {args.explain}" if args.explain else "")
          + (f"; written to {args.output}" if args.output != "-" else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
