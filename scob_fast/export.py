"""Export a trained run as one self-contained model that predicts without this repository.

    python -m scob_fast.export --run runs/demo-scob --format torchscript        # runs/demo-scob/export/model.pt
    python -m scob_fast.export --run runs/demo-scob --format exported-program   # .../model.pt2
    python -m scob_fast.export --run runs/demo-scob --format onnx --output scob.onnx

The model is backbone + heads of the checkpoint (default best.pth) in eval mode: input a float32
batch [B, 3, S, S] (RGB, NCHW) resized to the run's image size S and normalised with the backbone's
mean/std, output the sigmoid score of every class [B, C]. The batch size is free, S is fixed. A
sidecar JSON beside the model (`<output>.json`) gives the preprocessing (size, mean, std, resize),
the class names, the run's threshold and, where the run has them, its per-class val-F1 thresholds.

The graph holds only standard PyTorch (ONNX) operators: the masked attention runs its
scaled_dot_product_attention backend while exporting (never the scob_fast custom ops), and the
export is checked for any scob_fast operator. Tensors the prediction does not use (label estimator,
momentum heads, prototype bank, projector) are left out. Each exported file is loaded back and its
scores compared with the eager model's (--atol, default 1e-4); ONNX is checked with onnx.checker and,
when onnxruntime is installed, run.

Running the exported files (only torch, or onnxruntime, needed):
    torch.jit.load("model.pt")(x)
    torch.export.load("model.pt2").module()(x)
    onnxruntime.InferenceSession("model.onnx").run(None, {"images": x.numpy()})[0]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger("scob_fast.export")

FORMATS = {"torchscript": ".pt", "exported-program": ".pt2", "onnx": ".onnx"}
INPUT_NAME, OUTPUT_NAME = "images", "scores"
CUSTOM_NAMESPACE = "scob_fast"


class ExportError(RuntimeError):
    pass


class ScorePredictor(nn.Module):
    """images [B, 3, S, S] (normalised) -> sigmoid scores [B, C]: the method's own prediction path."""

    def __init__(self, method):
        super().__init__()
        import inspect
        self.method = method
        self._predict = inspect.unwrap(type(method).predict_from_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f_low, f_high = self.method.backbone(images)
        return torch.sigmoid(self._predict(self.method, f_low, f_high).float())


def use_pure_pytorch_attention(module: nn.Module, backend: str = "sdpa") -> int:
    """Every masked-attention encoder in `module` runs the pure-PyTorch `backend`; returns how many."""
    from scob_fast.models.masked_encoder import MaskedMultiheadAttention, MaskedTransformerEncoder
    count = 0
    for sub in module.modules():
        if isinstance(sub, (MaskedTransformerEncoder, MaskedMultiheadAttention)):
            sub.backend = backend
            count += 1
    return count


def _tensor_leaves(value, out: list) -> list:
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensor_leaves(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _tensor_leaves(item, out)
    return out


class _TensorsSeen(torch.overrides.TorchFunctionMode):
    """Records every tensor handed to a torch function (parameters and buffers included)."""

    def __init__(self):
        super().__init__()
        self.ids: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ids.update(id(t) for t in _tensor_leaves((args, kwargs), []))
        return func(*args, **kwargs)


def prune_unused_tensors(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Drop the parameters and buffers that the forward never hands to a torch function (the label
    estimator, momentum heads, bank, projector of a method's prediction path); returns their names.
    If the pruned model does not reproduce the output exactly, nothing is dropped."""
    seen = _TensorsSeen()
    with torch.no_grad():
        with seen:
            expected = model(example)
    unused = []
    for owner_name, owner in model.named_modules():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in list(table.items()):
                if tensor is not None and id(tensor) not in seen.ids:
                    unused.append((f"{owner_name}.{name}" if owner_name else name, table, name, tensor))
    for _, table, name, _ in unused:
        table[name] = None
    try:
        with torch.no_grad():
            same = torch.equal(model(example), expected)
    except Exception:  # a tensor reached outside a torch function: keep everything
        same = False
    if not same:
        for _, table, name, tensor in unused:
            table[name] = tensor
        return []
    return [entry[0] for entry in unused]


def _custom_ops_in(text: str) -> list[str]:
    import re
    return sorted(set(re.findall(rf"{CUSTOM_NAMESPACE}::\w+|ops\.{CUSTOM_NAMESPACE}\.\w+", text)))


def _check_no_custom_ops(found: list[str], fmt: str) -> None:
    if found:
        raise ExportError(f"{fmt} export still holds scob_fast custom ops {found}: it would not run without this "
                          "repository")


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in recent torch (it still traces, saves and loads)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, (example,), check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        _check_no_custom_ops(_custom_ops_in(str(frozen.inlined_graph)), "torchscript")
        torch.jit.save(frozen, str(path))


def export_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # channels_last weights are stored as partial views by torch.export.save (with a warning); plain
    # layout stores each weight whole
    model.to(memory_format=torch.contiguous_format)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    _check_no_custom_ops(_custom_ops_in("\n".join(targets)), "exported-program")
    torch.export.save(program, str(path))


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> str:
    """ONNX through torch's TorchScript-based exporter (fast), else its dynamo exporter; returns which."""
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            exporter = "torchscript"
        except Exception as first:  # the legacy exporter may be gone in a later torch
            log.info("torch.onnx TorchScript exporter failed (%s); trying the dynamo exporter", first)
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},))
            exporter = "dynamo"
    import onnx
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    found = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node
                    if CUSTOM_NAMESPACE in n.domain or CUSTOM_NAMESPACE in n.op_type})
    _check_no_custom_ops(found, "onnx")
    return exporter


def run_exported(path: str | Path, fmt: str, images: torch.Tensor) -> np.ndarray | None:
    """Scores of the exported file on `images` (None for ONNX without onnxruntime)."""
    if fmt == "torchscript":
        import warnings
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")(images).numpy()
    if fmt == "exported-program":
        with torch.no_grad():
            return torch.export.load(str(path)).module()(images).numpy()
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: images.numpy()})[0]


def sidecar(loaded, fmt: str, model_path: Path, pruned: list[str]) -> dict:
    from scob_fast.reporting.thresholds import THRESHOLDS_FILE, file_digest, load_thresholds
    size = loaded.image_size
    thresholds = load_thresholds(loaded.run_dir, loaded.checkpoint, loaded.class_names)
    how = {"torchscript": "torch.jit.load(path)(images)",
           "exported-program": "torch.export.load(path).module()(images)",
           "onnx": f"onnxruntime.InferenceSession(path).run(None, {{'{INPUT_NAME}': images_numpy}})[0]"}[fmt]
    return {
        "format": fmt, "file": model_path.name, "run": str(loaded.run_dir), "checkpoint": loaded.checkpoint.name,
        "checkpoint_sha256": file_digest(loaded.checkpoint), "checkpoint_epoch": loaded.checkpoint_epoch,
        "method": loaded.config.model.method, "backbone": loaded.config.model.backbone,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB",
                  "image_size": size, "mean": list(loaded.mean), "std": list(loaded.std),
                  "preprocessing": f"decode to RGB (EXIF orientation applied), resize to {size}x{size} with "
                                   "Pillow's Image.resize(BILINEAR) (antialiased; the aspect ratio is not kept), "
                                   "x = (pixel / 255 - mean) / std per channel, channels first"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(loaded.class_names)], "dtype": "float32",
                   "meaning": "sigmoid probability of each class, in class_names order"},
        "class_names": list(loaded.class_names),
        "threshold": float(getattr(loaded.config.report, "threshold", 0.5)),
        "val_f1_thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "val_f1_thresholds_source": THRESHOLDS_FILE if thresholds is not None else None,
        "run_it": how, "torch_version": torch.__version__, "left_out_tensors": len(pruned),
    }


def export_run(run=None, checkpoint=None, fmt: str = "torchscript", output=None, *, device: str = "cpu",
               atol: float = 1e-4, example_batch: int = 2, verify: bool = True) -> dict:
    """Export a run; returns {"model": path, "sidecar": path, "max_abs_diff": float | None, ...}.
    `verify`: load the written file back and compare its scores with the eager model's (`atol`)."""
    from scob_fast.predict import load_run
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    loaded = load_run(run, checkpoint, device=device)
    path = Path(output) if output else loaded.run_dir / "export" / f"model{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    method = loaded.method
    method.eval()
    use_pure_pytorch_attention(method, "sdpa")
    model = ScorePredictor(method).eval()
    size = loaded.image_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(max(int(example_batch), 2), 3, size, size, generator=generator).to(loaded.device)
    pruned = prune_unused_tensors(model, example)
    log.info("exporting %s (%s) as %s: %d unused tensors left out", loaded.checkpoint, loaded.config.model.method,
             fmt, len(pruned))
    extra = {}
    if fmt == "torchscript":
        export_torchscript(model, example, path)
    elif fmt == "exported-program":
        export_program(model, example, path)
    else:
        extra["onnx_exporter"] = export_onnx(model, example, path)
    info = sidecar(loaded, fmt, path, pruned)
    info.update(extra)
    check = torch.randn(3, 3, size, size, generator=generator)
    with torch.no_grad():
        expected = model(check.to(loaded.device)).float().cpu().numpy()
    got = run_exported(path, fmt, check) if verify and loaded.device.type == "cpu" else None
    diff = None if got is None else float(np.abs(got - expected).max())
    info["check"] = {"max_abs_diff_vs_eager": diff, "atol": atol,
                     "note": None if got is not None else "not run (no onnxruntime, not a CPU export, or not asked)"}
    side = path.with_name(path.name + ".json")
    side.write_text(json.dumps(info, indent=2) + "\n")
    if diff is not None and diff > atol:
        raise ExportError(f"{path}: exported scores differ from the eager model by {diff:.3g} > {atol}")
    return {"model": path, "sidecar": side, "max_abs_diff": diff, "pruned": pruned, **extra}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m scob_fast.export", description="Export a trained run as one "
                                "self-contained model (backbone + heads) with a sidecar JSON.")
    p.add_argument("--run", help="run directory (train.py --out)")
    p.add_argument("--checkpoint", help="checkpoint (default RUN_DIR/best.pth; without --run its folder is the run)")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="torchscript (.pt), exported-program "
                   "(.pt2, torch.export), onnx (.onnx)")
    p.add_argument("--output", "-o", help="model file (default RUN_DIR/export/model.{pt,pt2,onnx}); the sidecar is "
                                          "<output>.json")
    p.add_argument("--device", default="cpu", help="device the model is traced on (default cpu)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed score difference of the exported file "
                                                            "vs the eager model (default 1e-4)")
    args = p.parse_args(argv)
    if args.run is None and args.checkpoint is None:
        p.error("give --run RUN_DIR or --checkpoint FILE")
    from scob_fast.predict import PredictError
    try:
        result = export_run(args.run, args.checkpoint, args.format, args.output, device=args.device, atol=args.atol)
    except (ExportError, PredictError, FileNotFoundError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    diff = result["max_abs_diff"]
    print(f"wrote {result['model']} and {result['sidecar']}"
          + (f"; max |exported - eager| = {diff:.2e}" if diff is not None else ""), file=sys.stderr)
    print(result["model"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
