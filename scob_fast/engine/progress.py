"""Progress of a loop on stderr: a tqdm bar on a terminal, plain lines in a log file, or nothing.

    progress = Progress(total_steps, "epoch 1/3", enabled=not quiet)
    for step, batch in enumerate(loader):
        ...
        progress.update(step, batch_size, stats)     # stats: {"loss_sup": tensor, ...}
    images_per_s = progress.close()

Modes (`configure(mode=...)`, the run's --progress, sets the default of every Progress after it):
- `bar`: tqdm with elapsed time, ETA, images/s and the smoothed losses;
- `lines`: one plain line (no carriage return) every `percent` % of the total or every `seconds`
  seconds, whichever comes first, and at the end: what a log file should hold;
- `none`: silent (also `enabled=False`, i.e. --quiet: the trainer's one line per epoch remains);
- `auto`: `bar` when the stream is a terminal and tqdm is installed, else `lines`.

Losses are summed on their device between redraws; reading them (a host sync) happens only when
the display is redrawn (at most every `interval_s` seconds).
"""
from __future__ import annotations

import sys
import time

MODES = ("auto", "bar", "lines", "none")
_SETTINGS = {"mode": "auto", "percent": 10, "seconds": 60.0}
_SMOOTHING = 0.6           # weight of the previous smoothed value at each redraw


def configure(mode: str | None = None, percent: int | None = None, seconds: float | None = None) -> dict:
    """Set the defaults of later Progress displays; returns the previous settings (to restore)."""
    previous = dict(_SETTINGS)
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        _SETTINGS["mode"] = mode
    if percent is not None:
        if not 1 <= int(percent) <= 100:
            raise ValueError(f"progress percent must be in [1, 100], got {percent}")
        _SETTINGS["percent"] = int(percent)
    if seconds is not None:
        if not float(seconds) > 0:
            raise ValueError(f"progress seconds must be > 0, got {seconds}")
        _SETTINGS["seconds"] = float(seconds)
    return previous


def restore(settings: dict) -> None:
    _SETTINGS.update(settings)


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def resolve_mode(mode: str, stream) -> str:
    if mode != "auto":
        return mode
    is_tty = getattr(stream, "isatty", None)
    return "bar" if (is_tty is not None and is_tty() and _tqdm() is not None) else "lines"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    def __init__(self, total: int, prefix: str, enabled: bool = True, interval_s: float = 0.5, *,
                 mode: str | None = None, stream=None, percent: int | None = None, seconds: float | None = None):
        self.total, self.prefix, self.interval_s = max(int(total), 0), prefix, interval_s
        self.stream = stream if stream is not None else sys.stderr
        mode = mode or _SETTINGS["mode"]
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.mode = resolve_mode(mode, self.stream) if enabled else "none"
        if self.mode == "bar" and _tqdm() is None:
            self.mode = "lines"
        self.enabled = self.mode != "none"
        self.percent = percent or _SETTINGS["percent"]
        self.seconds = seconds or _SETTINGS["seconds"]
        self.start = self.last_draw = self.last_line = time.perf_counter()
        self.images = 0
        self.done = 0
        self.count = 0
        self.pending: dict = {}            # loss sums since the last redraw (device tensors)
        self.pending_steps = 0
        self.smoothed: dict[str, float] = {}
        self.next_percent = self.percent
        self.last_line_done = 0
        self.bar = None
        if self.mode == "bar":
            self.bar = _tqdm()(total=self.total, desc=prefix, unit="step", file=self.stream, dynamic_ncols=True,
                               mininterval=interval_s, leave=True)

    # -- bookkeeping --------------------------------------------------------------------------
    def _accumulate(self, stats: dict) -> None:
        for key, value in stats.items():
            if not key.startswith("loss"):
                continue
            value = value.detach() if hasattr(value, "detach") else float(value)
            self.pending[key] = self.pending[key] + value if key in self.pending else value
        self.pending_steps += 1

    def _read_losses(self) -> None:
        if self.pending_steps:
            for key, total in self.pending.items():
                mean = float(total) / self.pending_steps
                old = self.smoothed.get(key)
                self.smoothed[key] = mean if old is None else _SMOOTHING * old + (1 - _SMOOTHING) * mean
        self.pending, self.pending_steps = {}, 0

    def rate(self, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        return self.images / max(now - self.start, 1e-9)

    def _losses_text(self) -> str:
        return " ".join(f"{k} {v:.4f}" for k, v in self.smoothed.items())

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        parts = [f"{self.prefix}: {self.done}/{self.total}"]
        if self.total:
            parts[0] += f" ({100.0 * self.done / self.total:.0f}%)"
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        parts.append(f"elapsed {_duration(elapsed)} eta {_duration(eta)}")
        parts.append(f"{self.rate(now):.1f} img/s")
        losses = self._losses_text()
        if losses:
            parts.append(losses)
        return ", ".join(parts)

    # -- the interface the loops call ---------------------------------------------------------
    def update(self, step: int, batch_size: int, stats: dict) -> None:
        """After step `step` (0-based) of this display's `total` steps, which held `batch_size` images."""
        self.images += int(batch_size)
        self.done = step + 1
        if not self.enabled:
            return
        self._accumulate(stats)
        now = time.perf_counter()
        last = self.total and self.done >= self.total
        if self.mode == "bar":
            if now - self.last_draw >= self.interval_s or last:
                self.last_draw = now
                self._read_losses()
                text = self._losses_text()
                self.bar.set_postfix_str(f"{self.rate(now):.1f} img/s" + (f", {text}" if text else ""),
                                         refresh=False)
            self.bar.update(self.done - self.bar.n)
            return
        due_percent = self.total and 100.0 * self.done / self.total >= self.next_percent
        if due_percent or now - self.last_line >= self.seconds or last:
            self._read_losses()
            self._write_line(now)
            if self.total:
                while 100.0 * self.done / self.total >= self.next_percent:
                    self.next_percent += self.percent

    def _write_line(self, now: float) -> None:
        self.stream.write(self._line(now) + "\n")
        self.stream.flush()
        self.last_line, self.last_line_done = now, self.done

    def close(self) -> float:
        """End the display; returns the images per second over its lifetime."""
        now = time.perf_counter()
        if self.mode == "bar" and self.bar is not None:
            self._read_losses()
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and self.done != self.last_line_done:
            self._read_losses()
            self._write_line(now)
        self.enabled = False
        return self.images / max(now - self.start, 1e-9)
