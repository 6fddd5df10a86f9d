"""python -m scob_fast.predict on a tiny trained Scob run: CSV/JSON output, thresholds (val-F1 stored
and reproduced), unreadable files, progress lines, and --explain PNGs with the kept-token masks."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from scob_fast.config import parse_args
from scob_fast.predict import load_run, main, predict_files
from scob_fast.training import build_splits, run

SMALL = ["--dataset", "demo", "--demo-images", "300", "--image-size", "64", "--dim", "64", "--ffn", "128",
         "--batch-size", "16", "--quiet", "--loader", "pil", "--workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "scob_fast_demo_cache"     # shared by this session's modules
    cache.mkdir(exist_ok=True)
    old = os.environ.get("SCOB_FAST_CACHE_DIR")
    os.environ["SCOB_FAST_CACHE_DIR"] = str(cache)
    out = tmp_path_factory.mktemp("runs") / "scob"
    try:
        config = parse_args(SMALL + ["--method", "scob", "--epochs", "1", "--max-steps", "2", "--out", str(out),
                                     "--no-tensorboard", "--no-plots"])
        run(config)
        test_set = build_splits(config)[2]
        yield out, list(test_set.image_paths[:20]), test_set.class_names
    finally:
        if old is None:
            os.environ.pop("SCOB_FAST_CACHE_DIR", None)
        else:
            os.environ["SCOB_FAST_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def loaded(trained):
    return load_run(trained[0], device="cpu")


COMMON = ["--loader", "pil", "--workers", "0", "--batch-size", "8"]


def test_csv_output_with_unreadable_files(trained, loaded, tmp_path, capsys):
    out, images, class_names = trained
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in images[:3]:
        (folder / os.path.basename(path)).write_bytes(open(path, "rb").read())
    (folder / "notes.txt").write_text("ignored: not an image extension")
    result = tmp_path / "predictions.csv"
    code = main(["--run", str(out), *images[3:8], str(bad), str(tmp_path / "missing.png"), str(folder),
                 "--top-k", "3", "--output", str(result), "--progress", "lines", *COMMON])
    assert code == 0
    rows = list(csv.DictReader(open(result)))
    assert list(rows[0]) == ["file", "labels", "top1", "top1_score", "top2", "top2_score", "top3", "top3_score"]
    assert len(rows) == 8
    assert [r["file"] for r in rows[:5]] == images[3:8]
    err = capsys.readouterr().err
    assert f"skipped {bad}:" in err and f"skipped {tmp_path / 'missing.png'}:" in err
    assert "8 image(s) predicted" in err and "2 skipped" in err and "images/s" in err
    assert "\r" not in err and "predict: 1/2 (50%)" in err
    # the scores are predict_files' (the run's loader and model) and the top-k is sorted
    direct = predict_files(loaded, images[3:8], batch_size=8, loader="pil", workers=0, progress=False)
    for row, scores in zip(rows, direct.scores):
        top = np.argsort(-scores)[:3]
        assert [row[f"top{i + 1}"] for i in range(3)] == [class_names[c] for c in top]
        assert float(row["top1_score"]) == pytest.approx(scores[top[0]], abs=1e-6)
        labels = row["labels"].split(";") if row["labels"] else []
        assert labels == [class_names[c] for c in np.argsort(-scores) if scores[c] >= 0.5]


def test_json_output_and_thresholds(trained, tmp_path, capsys):
    out, images, class_names = trained
    assert main(["--run", str(out), *images[:4], "--format", "json", "--threshold", "0.3", "--all-scores",
                 "--quiet", *COMMON]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["classes"] == list(class_names) and document["threshold"] == 0.3
    assert len(document["predictions"]) == 4 and document["skipped"] == []
    for record in document["predictions"]:
        assert record["labels"] == [c for c in sorted(record["scores"], key=lambda c: -record["scores"][c])
                                    if record["scores"][c] >= 0.3]
        assert len(record["top"]) == 5 and record["top"][0]["score"] >= record["top"][-1]["score"]


def test_val_f1_thresholds_are_stored_and_reproduced(trained, loaded, tmp_path, capsys):
    from scob_fast.predict import val_f1_thresholds
    out, images, _ = trained
    stored_file = out / "thresholds_val_f1.json"
    from_training = json.loads(stored_file.read_text())          # written by the run for best.pth
    assert main(["--run", str(out), *images[:4], "--threshold", "val-f1", "--output", str(tmp_path / "a.json"),
                 "--quiet", *COMMON]) == 0
    used = json.loads((tmp_path / "a.json").read_text())["threshold"]["val-f1"]
    np.testing.assert_allclose(used, from_training["thresholds"])
    stored_file.unlink()                                           # chosen again on the val split, and stored
    chosen = val_f1_thresholds(loaded, batch_size=16, loader="pil", workers=0, progress=False)
    again = json.loads(stored_file.read_text())
    np.testing.assert_allclose(chosen, from_training["thresholds"], atol=1e-5)
    np.testing.assert_allclose(again["thresholds"], chosen)
    assert again["checkpoint_sha256"] == from_training["checkpoint_sha256"]


def test_explain_writes_overlays_with_kept_tokens(trained, loaded, tmp_path, capsys):
    from scob_fast.reporting.explain import explain
    out, images, _ = trained
    outdir = tmp_path / "explain"
    assert main(["--run", str(out), *images[:3], "--explain", str(outdir), "--quiet", *COMMON]) == 0
    pngs = sorted(outdir.glob("*.png"))
    assert [p.name.split("_", 1)[0] for p in pngs] == ["000000", "000001", "000002"]
    for path in pngs:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] >= 4 * 160      # input, CAM, two mask levels
    batch = torch.randn(2, 3, 64, 64)
    maps = explain(loaded.method, batch, torch.tensor([[0, 1], [2, 3]]))
    assert set(maps) == {"cam", "keep_low", "keep_high"}
    assert maps["cam"].shape == (2, 2, 2, 2) and maps["keep_low"].shape == (2, 2, 4, 4)
    assert maps["keep_low"].dtype == torch.bool and 0 <= float(maps["cam"].min()) <= float(maps["cam"].max()) <= 1


def test_errors_are_clear(trained, tmp_path, capsys):
    out, images, _ = trained
    assert main(["--run", str(tmp_path / "nothing"), images[0]]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "none.pth"), images[0]]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--run", str(out), images[0], "--threshold", "high"])
    assert main(["--run", str(out), str(tmp_path / "a.jpg"), "--quiet", *COMMON]) == 0     # all skipped: empty CSV
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("file,labels,top1") and "1 skipped" in captured.err
