"""A readable terminal for long multi-stage commands (`ils demo`).

`QuietConsole` sends everything written to the process's stdout/stderr file descriptors (our
logging, Ray's and Ray Serve's INFO lines, the lines Ray forwards from its workers, the
trainer's metrics) to log files, one per stage, and keeps the terminal for what a person reads:
one progress bar per stage and short summaries.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO


class QuietConsole:
    """Terminal output on a copy of the original stderr; fds 1 and 2 go to log files."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._saved: tuple[int, int] | None = None
        self.term: TextIO = sys.stdout

    def __enter__(self) -> "QuietConsole":
        if not self.enabled:
            return self
        self.log_dir.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.term = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        self._redirect(self.log_dir / "demo.log")
        return self

    def __exit__(self, *exc) -> None:
        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        self.term.close()
        self.term = sys.stdout

    def _redirect(self, path: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def say(self, text: str = "") -> None:
        """A line (or lines) for the person at the terminal."""
        print(text, file=self.term, flush=True)

    @contextmanager
    def stage(self, label: str, log_name: str) -> Iterator[Path]:
        """Run a stage with its output in `<log_dir>/<log_name>.log` and a progress bar on the terminal.

        The bar shows the elapsed time while the stage runs and fills when it ends (the stages
        do not report their own progress); off a terminal, one line when the stage ends."""
        path = self.log_dir / f"{log_name}.log"
        if not self.enabled:
            yield path
            return
        self._redirect(path)
        t0 = time.time()
        bar = self._bar(label) if self.term.isatty() else None
        ok = False
        try:
            yield path
            ok = True
        finally:
            self.elapsed = time.time() - t0
            if bar is not None:
                bar(ok)
            else:  # not a terminal (CI, a pipe): one line per stage
                self.say(f"{label:<24} {'done' if ok else 'FAILED'} in {self.elapsed:.0f} s")
            self._redirect(self.log_dir / "demo.log")

    def _bar(self, label: str):
        """A tqdm bar on the terminal, refreshed every second; returns the function that ends it."""
        from tqdm import tqdm

        bar = tqdm(total=1, desc=f"{label:<24}", file=self.term, leave=True, ncols=72,
                   bar_format="{desc} |{bar}| {elapsed} {postfix}")
        done = threading.Event()

        def tick() -> None:
            while not done.wait(1.0):
                bar.refresh()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()

        def finish(ok: bool) -> None:
            done.set()
            ticker.join()
            bar.set_postfix_str("done" if ok else "FAILED", refresh=False)
            bar.update(1 if ok else 0)
            bar.close()

        return finish


def tail(path: Path, n: int = 15) -> str:
    """The last `n` lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
