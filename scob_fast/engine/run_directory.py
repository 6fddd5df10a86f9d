"""A run's directory: args.yaml, summary.csv (one row per epoch, header fixed by the first row),
log.jsonl, final.json. Every file is replaced whole through the atomic-write helper (fsync, rename),
so an interruption leaves the old version or the new one, never half a file. Under torchrun only
rank 0 writes: the other ranks hold a `RunDirectory(path, writes=False)`, whose writes do nothing."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from scob_fast.atomic_file import atomic_write


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


# Files that make a directory "hold a run" (and that --overwrite replaces).
RUN_FILES = ("args.yaml", "summary.csv", "log.jsonl", "last.pth", "best.pth", "final.json", "observed_labels.npz",
             "splits.json")


class RunDirectory:
    def __init__(self, path: str | Path, writes: bool = True):
        self.path = Path(path)
        self.writes = writes
        if not writes:       # another process owns the directory: touch nothing, not even its temp files
            return
        self.path.mkdir(parents=True, exist_ok=True)
        # A process killed inside an atomic write leaves its temp file; the real file is intact.
        for stale in self.path.glob("*.tmp"):
            stale.unlink(missing_ok=True)

    @staticmethod
    def holds_run(path: str | Path) -> bool:
        return any((Path(path) / name).exists() for name in RUN_FILES)

    def clear_run(self) -> None:
        if not self.writes:
            return
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def keep_epochs_up_to(self, epoch: int) -> None:
        """Drop the log rows of epochs after `epoch` (1-based): a run resumed from that epoch's
        checkpoint writes them again, once."""
        if not self.writes:
            return
        csv_path, log_path = self.path / "summary.csv", self.path / "log.jsonl"
        if csv_path.exists():
            lines = csv_path.read_text().splitlines(keepends=True)
            rows = [line for line in lines[1:] if int(line.split(",", 1)[0]) <= epoch]
            write_text_atomic(csv_path, "".join(lines[:1] + rows))
        if log_path.exists():
            kept = [line for line in log_path.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line)["epoch"] <= epoch]
            write_text_atomic(log_path, "".join(kept))

    def write_args(self, values: dict) -> None:
        if not self.writes:
            return
        write_text_atomic(self.path / "args.yaml", yaml.safe_dump(values, sort_keys=True))

    def _summary_header(self) -> list[str] | None:
        path = self.path / "summary.csv"
        if not path.exists():
            return None
        with open(path, newline="") as handle:
            return next(csv.reader(handle), None)

    def append_summary(self, row: dict) -> None:
        """One epoch's row into summary.csv (columns of the run's first row) and log.jsonl (all keys)."""
        if not self.writes:
            return
        csv_path, log_path = self.path / "summary.csv", self.path / "log.jsonl"
        header = self._summary_header() or list(row)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header, restval="", extrasaction="ignore", lineterminator="\n")
        old = csv_path.read_text() if csv_path.exists() else ""
        if not old:
            writer.writeheader()
        writer.writerow(row)
        write_text_atomic(csv_path, old + buffer.getvalue())
        old_log = log_path.read_text() if log_path.exists() else ""
        write_text_atomic(log_path, old_log + json.dumps(row) + "\n")

    def write_final(self, final: dict) -> None:
        if not self.writes:
            return
        write_text_atomic(self.path / "final.json", json.dumps(final, indent=2))
