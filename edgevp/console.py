"""Human output: rich on a terminal, plain lines otherwise; everything is also appended to the run's log.txt."""
from __future__ import annotations

import sys
import time
from pathlib import Path


class Reporter:
    """Logs to stderr (rich when it is a terminal) and to an optional log file."""

    def __init__(self, log_file: Path | None = None, quiet: bool = False, progress: bool | None = None):
        self.log_file = log_file
        self.quiet = quiet
        self.tty = sys.stderr.isatty() if progress is None else progress
        self._console = None
        self._progress = None
        self._task = None

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def log(self, msg: str, to_screen: bool = True) -> None:
        if self.log_file is not None:
            from .io import append_line

            append_line(self.log_file, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}")
        if to_screen and not self.quiet:
            if self.tty:
                self.console.print(msg, markup=False)
            else:
                print(msg, file=sys.stderr, flush=True)

    # -- progress bars (terminal only; the caller logs periodic lines otherwise) ----------------------------------
    def start_bar(self, description: str, total: int, completed: int = 0) -> None:
        if not self.tty or self.quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.progress import TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, info="")

    def advance_bar(self, info: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=info)

    def stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
