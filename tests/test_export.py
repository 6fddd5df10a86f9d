"""python -m scob_fast.export on a tiny trained AN run: each format predicts in a subprocess where
scob_fast cannot be imported, with the scores of scob_fast.predict (atol 1e-4); and --explain for
a method without CAM masks (Grad-CAM++ only)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from scob_fast.config import parse_args
from scob_fast.export import export_run, main as export_main
from scob_fast.predict import load_run, main as predict_main, predict_files
from scob_fast.training import build_splits, run

SMALL = ["--dataset", "demo", "--demo-images", "300", "--image-size", "64", "--dim", "64", "--ffn", "128",
         "--batch-size", "16", "--quiet", "--loader", "pil", "--workers", "0"]

# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site, not the cwd) with every sys.path entry
# that holds scob_fast removed: only torch / onnxruntime, numpy and Pillow are available.
STANDALONE = r"""
import json, os, sys
sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "scob_fast"))]
import importlib.util
assert importlib.util.find_spec("scob_fast") is None, "scob_fast must not be importable here"
import numpy as np
from PIL import Image, ImageOps

jobs = json.loads(sys.argv[1])
images = jobs["images"]
out = {}
for fmt, model_path in jobs["models"].items():
    side = json.load(open(model_path + ".json"))
    size, mean, std = side["input"]["image_size"], side["input"]["mean"], side["input"]["std"]
    batch = []
    for path in images:
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB").resize((size, size), Image.BILINEAR)
        x = np.asarray(image, dtype=np.float32) / 255.0
        batch.append(((x - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1))
    batch = np.ascontiguousarray(np.stack(batch), dtype=np.float32)
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        scores = session.run(None, {side["input"]["name"]: batch})[0]
    else:
        import torch
        x = torch.from_numpy(batch)
        with torch.no_grad():
            model = torch.jit.load(model_path) if fmt == "torchscript" else torch.export.load(model_path).module()
            scores = model(x).numpy()
    out[fmt] = {"scores": scores.tolist(), "classes": side["class_names"]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "scob_fast_demo_cache"     # shared by this session's modules
    cache.mkdir(exist_ok=True)
    old = os.environ.get("SCOB_FAST_CACHE_DIR")
    os.environ["SCOB_FAST_CACHE_DIR"] = str(cache)
    out = tmp_path_factory.mktemp("runs") / "an"
    try:
        config = parse_args(SMALL + ["--method", "an", "--epochs", "1", "--max-steps", "2", "--out", str(out),
                                     "--no-tensorboard", "--no-plots"])
        run(config)
        yield out, list(build_splits(config)[2].image_paths[:5])
    finally:
        if old is None:
            os.environ.pop("SCOB_FAST_CACHE_DIR", None)
        else:
            os.environ["SCOB_FAST_CACHE_DIR"] = old


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_exported_models_predict_without_the_repo(trained, tmp_path, capsys):
    out, images = trained
    loaded = load_run(out, device="cpu")
    expected = predict_files(loaded, images, batch_size=8, loader="pil", workers=0, progress=False)
    assert expected.files == images
    # the command line, with its own check of the file against the eager model
    assert export_main(["--run", str(out), "--format", "torchscript"]) == 0
    assert "max |exported - eager|" in capsys.readouterr().err
    models = {"torchscript": str(out / "export" / "model.pt")}
    for fmt, name in (("exported-program", "m.pt2"), ("onnx", "m.onnx")):
        result = export_run(out, None, fmt, tmp_path / name, verify=False)
        assert any("estimator" in p or "momentum" in p or "projector" in p for p in result["pruned"])
        if fmt != "onnx" or _onnxruntime_available():
            models[fmt] = str(tmp_path / name)
    for model in (out / "export" / "model.pt", tmp_path / "m.pt2", tmp_path / "m.onnx"):
        side = json.loads(model.with_name(model.name + ".json").read_text())
        assert side["input"]["image_size"] == 64 and side["input"]["mean"] == [0.5, 0.5, 0.5]
        assert side["class_names"] == loaded.class_names and side["output"]["shape"][1] == len(loaded.class_names)
    import onnx
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    jobs = json.dumps({"images": images, "models": models})
    completed = subprocess.run([sys.executable, "-I", "-c", STANDALONE, jobs], cwd=elsewhere, env=env,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    got = json.loads(completed.stdout.strip().splitlines()[-1])
    assert set(got) == set(models)
    for fmt, value in got.items():
        assert value["classes"] == loaded.class_names
        np.testing.assert_allclose(np.array(value["scores"]), expected.scores, atol=1e-4, err_msg=fmt)
    assert export_main(["--run", str(out / "missing"), "--format", "onnx"]) == 2


def test_explain_for_a_method_without_cam_masks(trained, tmp_path):
    out, images = trained
    outdir = tmp_path / "explain"
    assert predict_main(["--run", str(out), *images[:2], "--explain", str(outdir), "--quiet", "--loader", "pil",
                         "--workers", "0"]) == 0
    pngs = sorted(outdir.glob("*.png"))
    assert len(pngs) == 2
    for path in pngs:
        with Image.open(path) as image:
            assert image.format == "PNG"
            width = image.size[0]
        assert 2 * 160 <= width < 3 * 160          # the input and its Grad-CAM++, no mask panels
