"""Images/s of the DALI pipeline vs the PIL DataLoader doing the same work on the same images.

Work per image: decode a 640x480 JPEG, resize to 448x448, random flip, hard view (colour twist,
grayscale, blur), normalise both views to float CHW; batches of 16; train mode. Each loader is
timed over whole epochs (after one warm-up epoch that also fills the page cache); the figure is the
median epoch. peak_mem_mb: peak resident memory of the loader's processes (main + DataLoader
workers) above the level before the first timed epoch, sampled every 20 ms.

    .venv/bin/python bench/pipeline.py [--images 192] [--epochs 3] [--workers 1 2]

--device cuda (scripts/gpu_check.sh) gives DALI the GPU: "mixed" decode (nvJPEG), resize and colour
operators on the GPU, CUDA tensors out; the PIL peer is the same CPU DataLoader. --out-dir DIR
writes the JSON into DIR instead of bench/results/.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (add_device_arguments, device_name, print_table, resolve_device,  # noqa: E402
                           synchronized, write_results)
from scob_fast.data import MultiLabelDataset, build_loader, observe_labels  # noqa: E402
from scob_fast.models.backbone import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def make_images(directory: Path, count: int, width: int = 640, height: int = 480) -> list[str]:
    """Photo-like JPEGs (smooth colour fields + fine noise, quality 90), generated once."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"img_{i:05d}.jpg"
        if not path.is_file():
            rng = np.random.default_rng(i)
            coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
            pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 10, (height, width, 1)).astype(np.float32)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _family(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        pids.extend(_family(int(child)))
    return pids


class PeakRss:
    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_rss_bytes(p) for p in _family(os.getpid())))
            time.sleep(0.02)

    def __enter__(self):
        self.base = sum(_rss_bytes(p) for p in _family(os.getpid()))
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def time_loader(loader, epochs: int, device=torch.device("cpu")) -> tuple[list[float], int, float]:
    count_epoch = synchronized(lambda: sum(batch["index"].numel() for batch in loader), device)
    loader.set_epoch(0)
    for _ in loader:  # warm-up: worker start, pipeline build, page cache
        pass
    times, images = [], 0
    with PeakRss() as rss:
        for epoch in range(1, epochs + 1):
            loader.set_epoch(epoch)
            start = time.perf_counter()
            images = count_epoch()
            times.append(time.perf_counter() - start)
    return times, images, max(0, rss.peak - rss.base)


def _per_image_ms(fn, count: int, repeats: int = 3) -> float:
    fn()
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(best) / count


def stage_breakdown(paths: list[str], size: int, batch: int = 16) -> list[dict]:
    """Single-thread ms/image of each stage, to explain the ratio: PIL stage by stage; DALI as
    cumulative pipelines (decode; + resize; + both normalisations) whose differences are the stages.
    Both loaders make the hard view with the same torch function (augment.hard_view_from_uint8), so
    its figure is that function's, in both columns."""
    from nvidia.dali import fn, pipeline_def, types

    from scob_fast.data.augment import hard_view_from_uint8, normalise, sample_hard_params
    from scob_fast.data.images import decode_pil

    import torch

    torch.set_num_threads(1)
    paths = paths[:batch]
    encoded = [np.fromfile(p, dtype=np.uint8) for p in paths]
    decoded = [decode_pil(e) for e in encoded]
    resized = [im.resize((size, size), Image.BILINEAR) for im in decoded]
    params = sample_hard_params(np.random.default_rng(0), batch)
    u8 = torch.from_numpy(np.stack([np.asarray(r) for r in resized])).permute(0, 3, 1, 2)
    hard_ms = _per_image_ms(lambda: hard_view_from_uint8(u8, params, (0.5,) * 3, (0.5,) * 3, torch.float32), batch)

    def pil_norm():
        for _ in range(2):
            normalise(torch.from_numpy(np.stack([np.asarray(r) for r in resized])).permute(0, 3, 1, 2),
                      (0.5,) * 3, (0.5,) * 3, torch.float32)

    pil = {
        "decode": _per_image_ms(lambda: [decode_pil(e) for e in encoded], batch),
        "resize": _per_image_ms(lambda: [im.resize((size, size), Image.BILINEAR) for im in decoded], batch),
        "hard view": hard_ms,
        "normalise x2": _per_image_ms(pil_norm, batch),
    }

    def dali_ms(stage: int) -> float:
        @pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=1)
        def pipe():
            x = fn.external_source(source=lambda: encoded, batch=True, dtype=types.UINT8)
            x = fn.decoders.image(x, device="cpu", output_type=types.RGB)
            if stage == 0:
                return x
            x = fn.resize(x, resize_x=size, resize_y=size)
            if stage == 1:
                return x
            norm = dict(dtype=types.FLOAT, output_layout="CHW", mean=[128.0] * 3, std=[64.0] * 3)
            return fn.crop_mirror_normalize(x, **norm), fn.crop_mirror_normalize(x, **norm)

        p = pipe()
        p.build()
        return _per_image_ms(p.run, batch)

    d = [dali_ms(k) for k in range(3)]
    dali = {"decode": d[0], "resize": d[1] - d[0], "normalise x2": d[2] - d[1], "hard view": hard_ms}
    return [{"stage": k, "pil_ms_per_image": pil[k], "dali_ms_per_image": dali[k]} for k in pil]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--image-dir", default=None, help="where the generated JPEGs are kept (default: cache)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the single-thread stage timings")
    add_device_arguments(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        print("bench/pipeline.py: nvidia-dali is not installed (pip install nvidia-dali-cuda120)", file=sys.stderr)
        raise SystemExit(2)

    from scob_fast.env import cache_dir
    image_dir = Path(args.image_dir) if args.image_dir else cache_dir() / "bench_pipeline_640x480"
    paths = make_images(image_dir, args.images)
    rng = np.random.default_rng(0)
    labels = (rng.random((len(paths), 20)) < 0.1).astype(np.uint8)
    labels[np.arange(len(paths)), rng.integers(0, 20, len(paths))] = 1
    dataset = MultiLabelDataset("bench", [f"c{k}" for k in range(20)], paths, labels)
    observed = observe_labels(labels, "single")

    rows = []
    for workers in args.workers:
        measured = {}
        for backend in ("pil", "dali"):
            loader = build_loader(dataset, observed, batch_size=args.batch_size, image_size=args.image_size,
                                  mean=IMAGENET_MEAN, std=IMAGENET_STD, train=True, hard_view=True,
                                  loader=backend, workers=workers, seed=0,
                                  device=args.device if backend == "dali" else None)
            times, images, peak = time_loader(loader, args.epochs, device if backend == "dali" else torch.device("cpu"))
            epoch_s = statistics.median(times)
            measured[backend] = images / epoch_s
            rows.append({"images": images, "src": "640x480 jpeg", "image_size": args.image_size,
                         "device": device_name(device) if backend == "dali" else "cpu",
                         "batch_size": args.batch_size, "workers": workers, "backend": backend,
                         "median_ms": 1000.0 * epoch_s / len(loader), "images_per_s": images / epoch_s,
                         "peak_mem_mb": peak / 2 ** 20})
            del loader
        for row in rows[-2:]:
            row["speedup"] = row["images_per_s"] / measured["pil"]
    print_table(rows, ["workers", "backend", "images", "image_size", "batch_size", "median_ms",
                       "images_per_s", "peak_mem_mb", "speedup"])
    extra = {"note": "median_ms is per batch; speedup = images/s vs the PIL DataLoader with the same "
                     "worker count, same run", "load_average_after": os.getloadavg(),
             "device": device_name(device), "dali_decode": "mixed" if device.type == "cuda" else "cpu"}
    if not args.no_breakdown:
        breakdown = stage_breakdown(paths, args.image_size)
        print("\nsingle-thread cost per image and stage (ms):")
        print_table(breakdown, ["stage", "pil_ms_per_image", "dali_ms_per_image"])
        extra["stage_breakdown"] = breakdown
    write_results("pipeline", rows, extra=extra, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
