"""How every op exposes its kernels to torch: C++ and Triton ops with one schema, one set of fake
kernels and one autograd formula.

An op `<op>` has two pairs of torch ops:
  scob_fast::<op>_fwd / <op>_bwd                 defined by scob_fast._C (csrc/<op>/): CPU bodies, and
                                                 CUDA bodies in CUDA builds (the tensors' device picks one)
  scob_fast::<op>_triton_fwd / <op>_triton_bwd   defined here, with the same schemas, as Python custom ops
                                                 whose bodies are scob_fast.kernels.<op>.forward / backward
`register_kernel_op` gives both pairs the op's fake kernels (torch.compile, opcheck) and autograd, so
every kernel backend traces, differentiates and is checked the same way. The op module calls the
chosen forward op directly: no Python custom op wraps the C++ ones, which would cost a second trip
through the dispatcher on every call.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from scob_fast import _ext


def triton_missing() -> Optional[str]:
    """None when triton is installed here (found without importing it), else why not."""
    try:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
    except (ImportError, ValueError) as exc:
        return f"triton is not importable ({exc})"
    return None


@functools.lru_cache(maxsize=None)
def _triton_module(op_name: str):
    # Importing a kernels module imports triton: this happens on the first call of a Triton op only.
    return importlib.import_module(f"scob_fast.kernels.{op_name}")


def _triton_body(op_name: str, function: str) -> Callable:
    def body(*args):
        return getattr(_triton_module(op_name), function)(*args)
    body.__name__ = f"{op_name}_triton_{function}"
    return body


@dataclass(frozen=True)
class KernelOp:
    """The torch ops of one op's kernels, resolved once at import (dispatch then reads attributes)."""
    name: str
    cpp_forward: Optional[Callable]   # torch.ops.scob_fast.<op>_fwd; None when scob_fast._C lacks it
    cuda: bool                        # the C++ op has CUDA bodies
    triton_forward: Callable          # torch.ops.scob_fast.<op>_triton_fwd

    def forward(self, backend: str) -> Callable:
        """The forward op that runs `backend` ("triton"; "cpp" and "cuda" share the C++ op)."""
        return self.triton_forward if backend == "triton" else self.cpp_forward

    def cpp_missing(self) -> Optional[str]:
        """None when the C++ op exists, else why not."""
        if self.cpp_forward is not None:
            return None
        return _ext.load_error() or f"scob_fast._C has no {self.name} kernels (rebuild it)"


def _register(forward_name: str, backward_name: str, fake_forward: Callable, fake_backward: Callable,
              setup_context: Callable, backward: Callable) -> None:
    torch.library.register_fake(f"scob_fast::{forward_name}")(fake_forward)
    torch.library.register_fake(f"scob_fast::{backward_name}")(fake_backward)
    backward_op = getattr(torch.ops.scob_fast, backward_name)
    torch.library.register_autograd(f"scob_fast::{forward_name}", functools.partial(backward, backward_op),
                                    setup_context=setup_context)


def register_kernel_op(name: str, *, forward_schema: str, backward_schema: str, fake_forward: Callable,
                       fake_backward: Callable, setup_context: Callable, backward: Callable) -> KernelOp:
    """Registers fake kernels and autograd on the C++ pair (when scob_fast._C has it) and defines the
    Triton pair with the same ones.

    forward_schema / backward_schema: the C++ schemas without the op name, "(Tensor q, ...) -> (...)"
    (tests check that they match csrc/). fake_forward / fake_backward: the ops' fake kernels.
    setup_context(ctx, inputs, output): as for torch.library.register_autograd. backward(backward_op,
    ctx, *grads): the gradient formula, given the backward op of the pair being differentiated.
    """
    cpp = _ext.cpp_available() and hasattr(torch.ops.scob_fast, f"{name}_fwd")
    if cpp:
        _register(f"{name}_fwd", f"{name}_bwd", fake_forward, fake_backward, setup_context, backward)
    for suffix, function, schema in (("fwd", "forward", forward_schema), ("bwd", "backward", backward_schema)):
        torch.library.custom_op(f"scob_fast::{name}_triton_{suffix}", _triton_body(name, function),
                                mutates_args=(), schema=schema)
    _register(f"{name}_triton_fwd", f"{name}_triton_bwd", fake_forward, fake_backward, setup_context, backward)
    ops = torch.ops.scob_fast
    return KernelOp(
        name=name,
        cpp_forward=getattr(ops, f"{name}_fwd") if cpp else None,
        cuda=cpp and torch._C._dispatch_has_kernel_for_dispatch_key(f"scob_fast::{name}_fwd", "CUDA"),
        triton_forward=getattr(ops, f"{name}_triton_fwd"),
    )
