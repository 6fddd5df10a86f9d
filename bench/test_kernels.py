"""Kernel throughput under pytest-benchmark (see bench/conftest.py): the same shapes, methods and
peers as bench/masked_attention.py, bench/label_contrastive.py and bench/hash_dropout.py, which build the calls timed here.
Each case records what the op's dispatch ran (`extra_info["ran"]`)."""
from __future__ import annotations

import pytest
import torch

from bench import hash_dropout as dropout_bench
from bench import label_contrastive as contrastive_bench
from bench import masked_attention as attention_bench
from bench.shapes import (ATTENTION_METHODS_FULL, ATTENTION_METHODS_QUICK, CONTRASTIVE_BACKENDS,
                          CONTRASTIVE_CLASSES, DROPOUT_BACKENDS, DROPOUT_SHAPES, attention_shapes,
                          contrastive_shapes)
from scob_fast.ops import last_backend


def pytest_generate_tests(metafunc):
    quick = metafunc.config.getoption("bench_shapes") == "quick"
    if "attention_case" in metafunc.fixturenames:
        methods = ATTENTION_METHODS_QUICK if quick else ATTENTION_METHODS_FULL
        cases = [(b, length, keep, pass_, method) for b, length, keep in attention_shapes(quick)
                 for pass_ in attention_bench.PASSES for method in methods]
        metafunc.parametrize("attention_case", cases,
                             ids=[f"B{b}-L{length}-keep{keep}-{p}-{m}" for b, length, keep, p, m in cases])
    if "dropout_case" in metafunc.fixturenames:
        cases = [(shape, pass_, backend) for shape in DROPOUT_SHAPES for pass_ in dropout_bench.PASSES
                 for backend in DROPOUT_BACKENDS if not (quick and backend == "reference")]
        metafunc.parametrize("dropout_case", cases,
                             ids=[f"{'x'.join(map(str, s))}-{p}-{b}" for s, p, b in cases])
    if "contrastive_case" in metafunc.fixturenames:
        cases = [(n, d, backward, backend) for n, d in contrastive_shapes(quick) for backward in (False, True)
                 for backend in CONTRASTIVE_BACKENDS]
        metafunc.parametrize("contrastive_case", cases,
                             ids=[f"N{n}-D{d}-{'fwd+bwd' if b else 'fwd'}-{k}" for n, d, b, k in cases])


@pytest.fixture(scope="module")
def attention_calls():
    cache = {}

    def get(b, length, keep, method):
        key = (b, length, keep)
        if key not in cache:
            cache.clear()   # one shape's inputs at a time
            cache[key] = {}
        if method not in cache[key]:
            cache[key][method] = attention_bench.make_calls(b, length, keep, [method])[0][method]
        return cache[key][method]

    return get


def test_masked_attention(benchmark, attention_calls, attention_case):
    b, length, keep, pass_, method = attention_case
    call = attention_calls(b, length, keep, method)[pass_]
    benchmark.group = f"masked_attention B={b} L={length} keep={keep} {pass_}"
    rounds = 3 if length >= 784 else 7
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info["ran"] = last_backend("masked_attention") if method in ("auto", "cpp") else None


def test_label_contrastive(benchmark, contrastive_case):
    n, d, backward, backend = contrastive_case
    inputs = contrastive_bench.make_inputs(n, n, d, CONTRASTIVE_CLASSES)
    ran = {}

    def call():
        ran["backend"] = contrastive_bench.step(inputs, backend, backward, temperature=0.2)

    benchmark.group = f"label_contrastive N=M={n} D={d} {'fwd+bwd' if backward else 'fwd'}"
    rounds = 2 if n >= 16384 else 5
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=0 if n >= 16384 else 1, iterations=1)
    benchmark.extra_info["ran"] = ran["backend"]


def test_hash_dropout(benchmark, dropout_case):
    shape, pass_, backend = dropout_case
    call = dropout_bench.make_call(torch.randn(shape, requires_grad=True), backend, pass_)
    benchmark.group = f"hash_dropout {'x'.join(map(str, shape))} {pass_}"
    benchmark.pedantic(call, rounds=7, warmup_rounds=1, iterations=1)
    benchmark.extra_info["ran"] = last_backend("hash_dropout") if backend == "auto" else None
