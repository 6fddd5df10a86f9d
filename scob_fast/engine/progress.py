"""A dependency-free progress line: step, smoothed losses and images/s, refreshed twice a second.

Reading loss values forces a host sync, so it happens only when the line is redrawn.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, prefix: str, enabled: bool = True, interval_s: float = 0.5):
        self.total, self.prefix, self.enabled, self.interval_s = total, prefix, enabled, interval_s
        self.start = self.last_draw = time.perf_counter()
        self.images = 0
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, step: int, batch_size: int, stats: dict) -> None:
        self.images += batch_size
        now = time.perf_counter()
        if not self.enabled or (now - self.last_draw < self.interval_s and step + 1 < self.total):
            return
        self.last_draw = now
        parts = [f"{k} {float(v):.4f}" for k, v in stats.items() if k.startswith("loss")]
        rate = self.images / max(now - self.start, 1e-9)
        sys.stderr.write(f"\r{self.prefix} [{step + 1:>5d}/{self.total}] {' '.join(parts)} {rate:6.1f} img/s ")
        sys.stderr.flush()

    def close(self) -> float:
        elapsed = time.perf_counter() - self.start
        if self.enabled:
            sys.stderr.write("\n")
        return self.images / max(elapsed, 1e-9)
