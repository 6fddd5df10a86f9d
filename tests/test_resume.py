"""Kill -9 in the middle of an epoch, resume, and get the uninterrupted run bit for bit; SIGTERM
writes a checkpoint and stops with one line."""
import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scob_fast.data import dali_available

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "demo", "--demo-images", "300", "--image-size", "64", "--dim", "64", "--ffn", "128",
         "--batch-size", "16", "--quiet", "--epochs", "2", "--max-steps", "4", "--dropout", "0.1"]
TOTAL_STEPS = 8


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    # Generate the demo set once, so that the timed runs below do not race to create it.
    subprocess.run([sys.executable, "-c", "from scob_fast.data import demo_root; "
                    "demo_root(train_images=300, val_images=90)"],
                   env={**os.environ, "SCOB_FAST_CACHE_DIR": str(cache)}, check=True, timeout=300)
    return {**os.environ, "SCOB_FAST_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}


class _Run:
    """train.py in a subprocess; its stderr goes to a file (a pipe could fill up and block it)."""

    def __init__(self, env, args, log: Path):
        self.log = log
        with open(log, "w") as handle:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *SMALL, *args], env=env,
                                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=handle)

    def wait(self, timeout):
        return self.proc.wait(timeout=timeout)

    def poll(self):
        return self.proc.poll()

    def send_signal(self, signum):
        self.proc.send_signal(signum)

    @property
    def stderr(self) -> str:
        return self.log.read_text()


def _train(env, args, log: Path) -> _Run:
    return _Run(env, args, log)


def _position(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["position"]
    except Exception:    # not there yet
        return None


def _steps_done(position) -> int:
    return position["epoch"] * 4 + position["step"] if position else 0


def _wait_for(proc, path: Path, steps: int, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _steps_done(_position(path)) >= steps:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {steps}: {proc.stderr}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {steps} within {timeout} s")


def _assert_same_run(a_dir: Path, b_dir: Path) -> None:
    a = torch.load(a_dir / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(b_dir / "last.pth", map_location="cpu", weights_only=True)
    assert a["position"] == b["position"] == {"epoch": 2, "step": 0}
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # The log rows agree in every column except the wall-clock ones, and each epoch appears once.
    rows = []
    for directory in (a_dir, b_dir):
        with open(directory / "summary.csv") as handle:
            rows.append([{k: v for k, v in row.items() if not k.startswith(("train_time", "train_images_per_s"))}
                         for row in csv.DictReader(handle)])
    assert rows[0] == rows[1] and [row["epoch"] for row in rows[0]] == ["1", "2"]


LOADERS = [
    pytest.param("scob", ["--loader", "pil", "--workers", "0"], id="scob-pil0"),
    pytest.param("scob", ["--loader", "dali", "--workers", "2"], id="scob-dali",
                 marks=pytest.mark.skipif(dali_available() is not None, reason="DALI is not importable")),
    pytest.param("an", ["--loader", "pil", "--workers", "2"], id="an-pil2"),
]


@pytest.mark.parametrize("method, loader", LOADERS)
def test_kill_9_then_resume_equals_the_uninterrupted_run(env, tmp_path, method, loader):
    args = ["--method", method, *loader]
    straight = tmp_path / "straight"
    proc = _train(env, args + ["--out", str(straight)], tmp_path / "straight.log")
    assert proc.wait(timeout=600) == 0, proc.stderr

    killed = tmp_path / "killed"
    proc = _train(env, args + ["--out", str(killed), "--checkpoint-every", "1"], tmp_path / "killed.log")
    kill_after = random.Random(os.getpid()).randint(2, TOTAL_STEPS - 2)
    _wait_for(proc, killed / "last.pth", kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert _steps_done(_position(killed / "last.pth")) < TOTAL_STEPS

    proc = _train(env, args + ["--out", str(killed), "--resume", "auto"], tmp_path / "resumed.log")
    assert proc.wait(timeout=600) == 0, proc.stderr
    assert not list(killed.glob("*.tmp"))
    _assert_same_run(straight, killed)


def test_sigterm_writes_a_checkpoint_and_stops_with_one_line(env, tmp_path):
    out = tmp_path / "run"
    proc = _train(env, ["--method", "an", "--loader", "pil", "--workers", "0", "--out", str(out),
                        "--checkpoint-every", "1"], tmp_path / "run.log")
    _wait_for(proc, out / "last.pth", 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: SIGTERM: stopped after step") and "--resume" in last
    position = _position(out / "last.pth")
    assert 2 <= _steps_done(position) < TOTAL_STEPS
