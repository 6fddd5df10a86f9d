"""Mixed precision policy: bfloat16 autocast on CPU; float16 + GradScaler (or bfloat16) on CUDA."""
from __future__ import annotations

import contextlib

import torch


class AmpPolicy:
    def __init__(self, device: torch.device, enabled: bool, cuda_dtype: str = "float16"):
        self.device = torch.device(device)
        self.enabled = enabled
        if self.device.type == "cuda":
            self.dtype = torch.float16 if cuda_dtype == "float16" else torch.bfloat16
        else:
            self.dtype = torch.bfloat16
        use_scaler = enabled and self.device.type == "cuda" and self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """backward + optimiser step (+ scaler update); gradients are zeroed first."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
