"""Precision and step policy: bfloat16 autocast on CPU, float16 + GradScaler (or bfloat16) on CUDA,
and the non-finite guard: a step whose loss or gradients are not finite is skipped (and counted)
instead of writing NaN into the weights.

--amp on a CPU without bfloat16 instructions runs float32 (one log line says so): oneDNN emulates
bfloat16 convolutions there (bfloat16 training steps were measured 10x slower than float32 on an
AVX2 machine), so --amp would only make the run slower. `cpu_bf16_support()` decides; SCOB_FAST_CPU_BF16=1 / 0
forces bfloat16 / float32 (scob_fast/env.py).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from scob_fast import env

log = logging.getLogger("scob_fast.amp")

# /proc/cpuinfo names of the instructions that compute bfloat16 natively: x86 AVX512-BF16 (Cooper
# Lake, Zen 4 and later) and AMX-BF16 (Sapphire Rapids and later) in "flags", Arm's BF16 extension
# (ARMv8.6) in "Features". AVX-512 alone is not enough: oneDNN then converts to float32 and back.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_logged: set[str] = set()


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[frozenset]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (None where it cannot be read)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _torch_cpuinfo(name: str) -> bool:
    # torch.cpu's private probes (the cpuinfo library; every OS); absent in some builds.
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def cpu_bf16_support() -> tuple[bool, str]:
    """(native, evidence): whether this CPU has bfloat16 instructions, and the one-line evidence
    (torch's CPU capability, the bfloat16 flags found in /proc/cpuinfo and by torch's cpuinfo probes)."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = cpu_flags() or frozenset()
    found = {f for f in NATIVE_BF16_FLAGS if f in flags}
    if _torch_cpuinfo("_is_avx512_bf16_supported"):
        found.add("avx512_bf16")
    if _torch_cpuinfo("_is_amx_tile_supported"):
        found.add("amx_tile")   # torch has no AMX-BF16 probe; every AMX CPU so far has AMX-BF16
    if found:
        return True, f"CPU capability {capability}, bfloat16 instructions: {', '.join(sorted(found))}"
    return False, f"CPU capability {capability}, no bfloat16 instructions (none of avx512_bf16, amx_bf16, bf16)"


class CpuAutocast(NamedTuple):
    use_bf16: bool     # run bfloat16 autocast for --amp
    native: bool       # the CPU has bfloat16 instructions
    message: str       # the one line logged at start


def cpu_autocast_decision() -> CpuAutocast:
    """What --amp does on this CPU: SCOB_FAST_CPU_BF16 if set, else bfloat16 exactly where it is native."""
    native, evidence = cpu_bf16_support()
    forced = env.cpu_bf16()
    if forced is True:
        return CpuAutocast(True, native, f"--amp: bfloat16 autocast forced by SCOB_FAST_CPU_BF16=1 ({evidence})")
    if forced is False:
        return CpuAutocast(False, native, f"--amp: float32, forced by SCOB_FAST_CPU_BF16=0 ({evidence})")
    if native:
        return CpuAutocast(True, True, f"--amp: bfloat16 autocast ({evidence})")
    return CpuAutocast(False, False, f"--amp: this CPU has no native bfloat16 ({evidence}); running float32, "
                                     f"which is faster than emulated bfloat16 (SCOB_FAST_CPU_BF16=1 forces it)")


def _log_once(message: str, level: int) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, "%s", message)


class NonFiniteTraining(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class AmpPolicy:
    def __init__(self, device: torch.device, enabled: bool, cuda_dtype: str = "float16",
                 clip_grad_norm: float | None = None, skip_nonfinite: bool = True):
        self.device = torch.device(device)
        self.requested = enabled          # --amp as given
        self.reason = None                # why --amp on CPU runs float32 / bfloat16 (None: not decided)
        if enabled and self.device.type == "cpu":
            decision = cpu_autocast_decision()
            enabled, self.reason = decision.use_bf16, decision.message
            # A warning when --amp does not do what it says (float32) or runs emulated bfloat16.
            quiet = decision.use_bf16 and decision.native
            _log_once(decision.message, logging.INFO if quiet else logging.WARNING)
        self.enabled = enabled            # what runs
        if self.device.type == "cuda":
            self.dtype = torch.float16 if cuda_dtype == "float16" else torch.bfloat16
        else:
            self.dtype = torch.bfloat16
        use_scaler = enabled and self.device.type == "cuda" and self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.clip_grad_norm = clip_grad_norm
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0          # in total
        self.consecutive_skipped = 0    # since the last good step

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @staticmethod
    def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]

    def _gradients_ok(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """Clip (if asked) and check that loss and gradients are finite: one host sync per step."""
        if self.clip_grad_norm is None and not self.skip_nonfinite:
            return True
        params = self._parameters(optimizer)
        if not params:
            norm = loss.new_zeros(())
        elif self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not self.skip_nonfinite:
            return True
        return bool(torch.isfinite(norm.float() + loss.detach().float()))

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """backward + optimiser step (+ scaler update); gradients are zeroed first. Returns False when
        the step was skipped because the loss or a gradient was not finite."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            ok = self._gradients_ok(loss, optimizer)
            if ok:
                optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
            ok = self._gradients_ok(loss, optimizer)
            # GradScaler skips the update itself when the unscaled gradients hold inf/NaN; with a
            # finite loss that is its normal scale search, not a fault to count.
            ok = ok or bool(torch.isfinite(loss.detach()))
            self.scaler.step(optimizer)
            self.scaler.update()
        if ok:
            self.consecutive_skipped = 0
        else:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.consecutive_skipped += 1
        return ok

    def state_dict(self) -> dict:
        state = {"skipped_steps": self.skipped_steps}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.skipped_steps = int(state.get("skipped_steps", 0))
        scaler = state.get("scaler", state if "scale" in state else None)
        if self.scaler is not None and scaler:
            self.scaler.load_state_dict(scaler)
