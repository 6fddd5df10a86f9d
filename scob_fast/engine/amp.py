"""Precision and step policy: bfloat16 autocast on CPU, float16 + GradScaler (or bfloat16) on CUDA,
and the non-finite guard: a step whose loss or gradients are not finite is skipped (and counted)
instead of writing NaN into the weights."""
from __future__ import annotations

import contextlib

import torch


class NonFiniteTraining(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class AmpPolicy:
    def __init__(self, device: torch.device, enabled: bool, cuda_dtype: str = "float16",
                 clip_grad_norm: float | None = None, skip_nonfinite: bool = True):
        self.device = torch.device(device)
        self.enabled = enabled
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
