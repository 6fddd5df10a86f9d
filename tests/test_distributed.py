"""Data-parallel training under torchrun (gloo, 2 processes on this CPU): each rank's shard of a
batch is its slots of the one-process batch; 2 ranks with global batch B train the parameters 1
rank trains with batch B; every rank holds the same model, estimator and banks; kill -9 under 2
ranks then --resume gives the uninterrupted 2-rank run bit for bit; a resume under another world
size, or a global batch the ranks cannot split, is refused in one line.

The torchrun workers are this file itself (`python tests/test_distributed.py MODE ...`): `capture`
runs train.py's `run` and saves each rank's method state as `fit` leaves it; `gradients` averages
the gradients of single-positive losses over the ranks for a test below.
"""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data_resume import _TinyBackbone  # noqa: E402  (two feature levels for FeatureCache.build)
from test_resume import _assert_same_run, _position  # noqa: E402  (the kill -9 helpers of the 1-process test)

from scob_fast.data import CachedFeatureLoader, FeatureCache, build_dataset, build_loader, dali_available  # noqa: E402
from scob_fast.data import observe_labels  # noqa: E402
from scob_fast.data.testing import make_folder  # noqa: E402

# 100 demo images: 80 train rows, 5 steps of 16 per epoch; val 20, test 30.
DEMO = ["--dataset", "demo", "--demo-images", "100", "--image-size", "64", "--dim", "64", "--ffn", "128",
        "--batch-size", "16", "--quiet", "--loader", "pil", "--workers", "0", "--no-tensorboard", "--no-plots",
        "--no-diagnostics"]
STEPS_PER_EPOCH = 5
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# Float32 tolerance of a parameter after 5 Adam steps: the two runs sum the same gradients in
# another order (two half batches, then the all-reduce), ~1e-7 relative; Adam's first steps move a
# parameter by about lr (1e-3 .. 1e-2) whatever the gradient's size, so where a gradient is ~0 that
# rounding can change a step by a fraction of lr.
PARAM_ATOL = 2e-4


# -- the torchrun workers -----------------------------------------------------------------------------

def _capture(out_dir: str, argv: list[str]) -> int:
    from scob_fast import training
    from scob_fast.config import parse_args
    real_fit = training.fit

    def fit(method, *args, **kwargs):
        state = real_fit(method, *args, **kwargs)
        # Before run() loads best.pth (and broadcasts rank 0's weights): each rank's own state.
        kept = {k: v.detach().cpu().clone() for k, v in method.state_dict().items() if not k.startswith("backbone.")}
        torch.save(kept, Path(out_dir) / f"rank{os.environ.get('RANK', '0')}.pt")
        return state
    training.fit = fit
    training.run(parse_args(argv))
    return 0


GRADIENT_LOSSES = {"an": {}, "epr": {}, "role": {"seed": 0}, "splc": {}, "ll-r": {"delta_rel": 0.3},
                   "ll-cp": {"delta_rel": 0.3}, "em-apl": {"warmup_epochs": 0, "num_epochs": 2}}


def _problem():
    """8 samples, 5 classes, one observed positive each; a linear model on random features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=g)
    w = torch.randn(6, 5, generator=g) * 0.5
    y = torch.zeros(8, 5)
    y[torch.arange(8), torch.randint(0, 5, (8,), generator=g)] = 1.0
    return x, w, y, torch.arange(8)


def _criterion(name):
    from scob_fast.methods.single_positive.losses import build_single_positive_loss
    _, _, y, _ = _problem()
    return build_single_positive_loss(name, 8, 5, 1.5, observed_labels=y.to(torch.uint8), **GRADIENT_LOSSES[name])


def _gradients(out: str) -> int:
    from scob_fast.engine.distributed import init_from_env, shutdown
    dist = init_from_env("cpu")
    x, w0, y, index = _problem()
    rows = slice(dist.rank * 4, dist.rank * 4 + 4)
    result = {}
    for name in GRADIENT_LOSSES:
        criterion, w = _criterion(name), w0.clone().requires_grad_(True)
        logits = x[rows] @ w
        loss = criterion.loss(dist.gather_with_grad(logits), dist.gather(y[rows]), dist.gather(index[rows]), 1)
        loss.backward()
        params = [w, *criterion.parameters()]
        mean_loss = dist.average_gradients(params, loss)
        result[name] = {"loss": float(mean_loss), "grads": [p.grad.clone() for p in params],
                        "state": {k: v.clone() for k, v in criterion.state_dict().items()}}
    torch.save(result, f"{out}.rank{dist.rank}")
    shutdown(dist)
    return 0


if __name__ == "__main__":
    mode, target, *rest = sys.argv[1:]
    sys.exit(_capture(target, rest) if mode == "capture" else _gradients(target))


# -- the tests ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    subprocess.run([sys.executable, "-c", "from scob_fast.data import demo_root; "
                    "demo_root(train_images=100, val_images=30)"],
                   env={**os.environ, "SCOB_FAST_CACHE_DIR": str(cache)}, check=True, timeout=300)
    return {**os.environ, "SCOB_FAST_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _run(env, command, log: Path, timeout=600) -> subprocess.CompletedProcess:
    # Append mode (O_APPEND): the ranks share this file, and with a shared offset one rank's write could
    # land over the other's newline.
    log.write_text("")
    with open(log, "a") as handle:
        done = subprocess.run(command, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
    return subprocess.CompletedProcess(command, done.returncode, log.read_text())


def _train_capture(env, tmp_path, name: str, ranks: int, args: list[str]) -> Path:
    out = tmp_path / name
    out.mkdir()
    launcher = TORCHRUN if ranks > 1 else [sys.executable]
    done = _run(env, [*launcher, str(Path(__file__)), "capture", str(out), *DEMO, *args, "--out", str(out / "run")],
                tmp_path / f"{name}.log")
    assert done.returncode == 0, done.stdout[-3000:]
    return out


# The loaders ------------------------------------------------------------------------------------------

HALF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
NO_DALI = pytest.mark.skipif(dali_available() is not None, reason="no DALI")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root, _ = make_folder(tmp_path_factory.mktemp("shards"), n_train=4, n_test=14)
    dataset = build_dataset("folder", root, "test")
    source = build_loader(dataset, observe_labels(dataset.labels, "full"), batch_size=4, image_size=16,
                          train=False, hard_view=False, loader="pil", workers=0, **HALF)
    cache = FeatureCache.build(tmp_path_factory.mktemp("cache") / "train", _TinyBackbone(), source, len(dataset),
                               flips=True, key={"test": 1})
    return dataset, cache


def _loader(kind, folder, train: bool, shard=(0, 1), batch=4):
    dataset, cache = folder
    observed = observe_labels(dataset.labels, "single")
    if kind == "cached":
        return CachedFeatureLoader(cache, dataset.labels, observed, batch, train=train, seed=3, shard=shard)
    return build_loader(dataset, observed, batch_size=batch, image_size=16, train=train, hard_view=train,
                        loader=kind, workers=0, seed=3, device="cpu" if kind == "dali" else None, shard=shard, **HALF)


@pytest.mark.parametrize("kind", ["pil", pytest.param("dali", marks=NO_DALI), "cached"])
@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_reads_its_slots_of_the_one_process_batch(folder, kind, world):
    """Training batches (14 images, batch 4: 3 batches): the ranks' batches, concatenated in rank
    order, are the one-process batch bit for bit (images, hard views, flips, labels, index)."""
    whole = _loader(kind, folder, train=True)
    shards = [_loader(kind, folder, train=True, shard=(r, world)) for r in range(world)]
    for epoch in (0, 1):
        for loader in (whole, *shards):
            loader.set_epoch(epoch)
        full = list(whole)
        parts = [list(s) for s in shards]
        assert len(full) == 3 and all(len(p) == 3 for p in parts) and all(len(s) == 3 for s in shards)
        for k, batch in enumerate(full):
            assert all(p[k]["index"].numel() == 4 // world for p in parts)
            for key in batch:
                assert torch.equal(torch.cat([p[k][key] for p in parts]), batch[key]), (kind, key, k)


@pytest.mark.parametrize("kind", ["pil", "cached"])
def test_eval_shards_pad_the_last_batch_with_its_last_image(folder, kind):
    """Eval (dataset order, last batch of 14 = 2 images) over 3 ranks: ceil(n/3) slots each, the last
    image repeated where the batch runs out; deduplicated by index, every image once, in order."""
    whole = [b["index"].tolist() for b in _loader(kind, folder, train=False)]
    assert whole[-1] == [12, 13]
    parts = [[b["index"].tolist() for b in _loader(kind, folder, train=False, shard=(r, 3))] for r in range(3)]
    assert [p[-1] for p in parts] == [[12], [13], [13]]
    assert [p[0] for p in parts] == [[0, 1], [2, 3], [3, 3]]
    seen = sorted({i for p in parts for b in p for i in b})
    assert seen == list(range(14))


def test_a_training_batch_the_ranks_cannot_split_is_refused(folder):
    with pytest.raises(ValueError, match="--batch-size 4 is the global batch and must be a multiple of the 3"):
        _loader("pil", folder, train=True, shard=(0, 3))


# The gradient of the global batch ---------------------------------------------------------------------

def _epr_transcribed(x, w, y, k):
    """Cole et al.'s EPR: mean over B x C of -y log p, plus ((mean_b sum_c p - k) / C)^2."""
    p = torch.sigmoid(x @ w)
    return (-y * torch.log(p)).mean() + ((p.sum(1).mean() - k) / p.shape[1]) ** 2


def test_averaged_gradients_of_two_ranks_are_the_global_batch_gradient(env, tmp_path):
    """Each rank holds 4 of 8 samples; gather_with_grad + average_gradients give the gradient of the
    loss of all 8 (batch statistics included: EPR's mean, the LL threshold, SPLC's sum), and the
    per-sample state (ROLE's estimator, LL-Cp's corrections, EM-APL's predictions) of all 8."""
    out = tmp_path / "grads"
    done = _run(env, [*TORCHRUN, str(Path(__file__)), "gradients", str(out)], tmp_path / "grads.log", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    ranks = [torch.load(f"{out}.rank{r}", weights_only=True) for r in (0, 1)]
    x, w0, y, index = _problem()
    for name in GRADIENT_LOSSES:
        criterion, w = _criterion(name), w0.clone().requires_grad_(True)
        loss = criterion.loss(x @ w, y, index, 1)
        loss.backward()
        want = [w.grad, *(p.grad for p in criterion.parameters())]
        for rank in ranks:
            got = rank[name]
            assert got["loss"] == pytest.approx(loss.item(), rel=1e-6), name
            for a, b in zip(got["grads"], want):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
            for key, value in criterion.state_dict().items():
                torch.testing.assert_close(got["state"][key], value, rtol=1e-6, atol=1e-7, msg=f"{name} {key}")
        for a, b in zip(ranks[0][name]["grads"], ranks[1][name]["grads"]):
            assert torch.equal(a, b), name                  # every rank takes the very same step
    w = w0.clone().requires_grad_(True)
    _epr_transcribed(x, w, y, 1.5).backward()
    torch.testing.assert_close(ranks[0]["epr"]["grads"][0], w.grad, rtol=1e-5, atol=1e-7)


# Training: 2 ranks against 1 ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """One epoch (5 steps) of each method, dropout off, with 1 rank and with 2 (cached per method)."""
    made = {}

    def get(method):
        if method not in made:
            tmp = tmp_path_factory.mktemp(method)
            args = ["--method", method, "--epochs", "1", "--dropout", "0"]
            made[method] = (_train_capture(env, tmp, "one", 1, args), _train_capture(env, tmp, "two", 2, args))
        return made[method]
    return get


METHODS = ["scob", "role"]


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_with_global_batch_b_train_what_one_rank_trains_with_b(runs, method):
    one, two = runs(method)
    a, b = torch.load(one / "rank0.pt", weights_only=True), torch.load(two / "rank0.pt", weights_only=True)
    assert a.keys() == b.keys()
    floats = [k for k in a if a[k].is_floating_point() and k != "bank.confidence"]
    assert floats and any("estimator" in k for k in floats)
    for key in floats:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=PARAM_ATOL, msg=key)
    for key in a.keys() - set(floats) - {"bank.confidence"}:   # e.g. which images won the bank's slots
        assert torch.equal(a[key], b[key]), key
    if method == "scob":
        assert (a["bank.image_index"] >= 0).any()
        finite = torch.isfinite(a["bank.confidence"])
        assert torch.equal(finite, torch.isfinite(b["bank.confidence"]))
        torch.testing.assert_close(b["bank.confidence"][finite], a["bank.confidence"][finite], rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_every_rank_holds_the_same_model_estimator_and_bank_after_an_epoch(runs, method):
    _, two = runs(method)
    r0, r1 = torch.load(two / "rank0.pt", weights_only=True), torch.load(two / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    estimator = next(v for k, v in r0.items() if "estimator" in k)
    assert estimator.shape[0] == 80                       # every training row, the other rank's included


# kill -9 under 2 ranks ------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _steps_done(position) -> int:
    return position["epoch"] * STEPS_PER_EPOCH + position["step"] if position else 0


SCOB_KILL = ["--method", "scob", "--epochs", "2", "--dropout", "0.1"]     # dropout: each rank's own RNG


def test_kill_9_under_two_ranks_then_resume_equals_the_uninterrupted_run(env, tmp_path):
    straight = tmp_path / "straight"
    done = _run(env, [*TORCHRUN, "train.py", *DEMO, *SCOB_KILL, "--out", str(straight)], tmp_path / "straight.log")
    assert done.returncode == 0, done.stdout[-3000:]
    saved = torch.load(straight / "last.pth", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2

    killed = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([*TORCHRUN, "train.py", *DEMO, *SCOB_KILL, "--out", str(killed),
                                 "--checkpoint-every", "1"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    # In the first epoch (or at its end): the run goes on while this loop reads the checkpoint and finds
    # the workers, and on a loaded machine the last steps of the run then finished before the kill.
    kill_after = random.Random(os.getpid()).randint(2, STEPS_PER_EPOCH)
    deadline = time.monotonic() + 300
    while _steps_done(_position(killed / "last.pth")) < kill_after:
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2
    for pid in workers:                  # freeze both ranks first, so that neither takes another step
        os.kill(pid, signal.SIGSTOP)
    for pid in workers:                  # the machine dies: both ranks at once, then the launcher
        os.kill(pid, signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert _steps_done(_position(killed / "last.pth")) < 2 * STEPS_PER_EPOCH

    done = _run(env, [*TORCHRUN, "train.py", *DEMO, *SCOB_KILL, "--out", str(killed), "--resume", "auto"],
                tmp_path / "resumed.log")
    assert done.returncode == 0, done.stdout[-3000:]
    assert not list(killed.glob("*.tmp"))
    _assert_same_run(straight, killed)
    # one writer: rank 0's files only, one log row per epoch (checked above), no stray outputs
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in straight.iterdir())


def test_resume_under_another_world_size_is_refused_in_one_line(env, tmp_path):
    run = tmp_path / "run"
    done = _run(env, [*TORCHRUN, "train.py", *DEMO, "--method", "an", "--epochs", "1", "--max-steps", "1",
                      "--out", str(run)], tmp_path / "two.log")
    assert done.returncode == 0, done.stdout[-3000:]
    done = _run(env, [sys.executable, "train.py", *DEMO, "--method", "an", "--epochs", "2", "--max-steps", "1",
                      "--out", str(run), "--resume", "auto"], tmp_path / "one.log")
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1] == (
        f"train.py: error: --resume {run / 'last.pth'}: the checkpoint was trained by 2 process(es) and this run "
        f"has 1 (torchrun --nproc_per_node x --nnodes); resume with the same world size")


def test_a_global_batch_the_ranks_cannot_split_stops_before_any_work(env, tmp_path):
    done = _run(env, [*TORCHRUN, "train.py", *DEMO, "--method", "an", "--batch-size", "15", "--out",
                      str(tmp_path / "run")], tmp_path / "odd.log", timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stdout.splitlines() if line.startswith("train.py: error")]
    assert sorted(lines) == sorted([
        "train.py: error: --batch-size 15 is the global batch and must be a multiple of the 2 processes "
        "(torchrun's world size); e.g. --batch-size 14",
        "train.py: error (rank 1 of 2): --batch-size 15 is the global batch and must be a multiple of the 2 "
        "processes (torchrun's world size); e.g. --batch-size 14"])
    assert not (tmp_path / "run").exists()
