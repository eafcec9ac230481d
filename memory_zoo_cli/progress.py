"""One line of progress on stderr for a `memory-zoo` command that runs longer than a few seconds.

A command says what step it is in (`step("loading the model")`) or how far through a count it is (`count(total,
"tokens", "scored")`, then `advance(n)`). What is shown depends on where stderr goes:

* a terminal: one line, redrawn in place a few times a second once the command has run 2 seconds, with the
  time spent in the step, or the count with its rate and the time left; it is erased when the command ends, so only
  the command's own output (or its one-line error) stays on the screen.
* anything else (a log file, a pipe, CI): plain lines that stay, written only for slow work, so quick commands and
  their one-line errors print nothing else: a step once it has lasted 5 seconds (then every `interval` seconds), a
  count every `interval` seconds, and a closing line with the total time when anything was written.

Standard library only: the launcher shows the first step (importing torch and transformers) before they load.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """The progress line of one command (see the module docstring); a context manager that ends the line on exit.

    Args:
        name: shown at the start of every line, e.g. "memory-zoo eval".
        stream: where the line goes (default: sys.stderr at the time of each write).
        terminal: redraw in place (default: whether `stream` is a terminal).
        delay: seconds before anything is shown; on a terminal since the start (default 2), otherwise since the step
            started (default 5: importing torch and transformers takes about 3 s, and is not worth a line in a log).
        interval: seconds between plain lines of a count or a long step (not on a terminal).
        refresh: seconds between redraws on a terminal.
    """

    def __init__(self, name: str, stream: TextIO | None = None, terminal: bool | None = None,
                 delay: float | None = None, interval: float = 10.0, refresh: float = 0.2) -> None:
        self.name = name
        self._stream = stream
        self.terminal = self._is_terminal() if terminal is None else terminal
        self.delay = (2.0 if self.terminal else 5.0) if delay is None else delay
        self.interval, self.refresh = interval, refresh
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._step: str | None = None
        self._step_started = self._started
        self._step_logged = True
        self._count: tuple[int, str, str] | None = None  # total, unit, what is being done
        self._done = 0
        self._count_started = self._started
        self._last_plain = 0.0  # when the last plain line was written
        self._plain_step: str | None = None  # the step the last plain line named
        self._drawn = False  # a line is on the terminal
        self._written = False  # a plain line was written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the command reports ----------------------------------------------------------------------------------

    def step(self, text: str, logged: bool = True) -> None:
        """The command is now doing `text` (e.g. "loading the model from my-mixer"); ends any count. A step that is
        not `logged` shows on a terminal only."""
        with self._lock:
            self._step, self._count, self._step_started = text, None, time.monotonic()
            self._step_logged = logged
        self._ensure_thread()

    def count(self, total: int, unit: str, what: str) -> None:
        """The command now works through `total` `unit` (e.g. 5000, "tokens", "scored"); `advance` reports each part."""
        with self._lock:
            now = time.monotonic()
            self._count, self._done, self._count_started = (max(int(total), 0), unit, what), 0, now
            self._step, self._step_started, self._last_plain = None, now, now
        self._ensure_thread()

    def advance(self, amount: int = 1) -> None:
        """`amount` more units of the current count are done."""
        with self._lock:
            self._done += int(amount)

    def close(self, failed: bool = False) -> None:
        """End the progress line: erase it on a terminal; elsewhere, after plain lines, a last one with the total
        time (not when the command `failed`: its error follows). Closing again does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self.terminal and self._drawn:
                self._write("\r\033[K")
                self._drawn = False
            elif not self.terminal and self._written and not failed:
                self._write(f"{self.name}: done in {_duration(time.monotonic() - self._started)}"
                            f"{self._count_summary()}\n")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(failed=error is not None)

    # --- drawing ---------------------------------------------------------------------------------------------------

    def _is_terminal(self) -> bool:
        isatty = getattr(self._target(), "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False

    def _target(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _write(self, text: str) -> None:
        try:
            target = self._target()
            target.write(text)
            target.flush()
        except (OSError, ValueError):  # a closed or broken stream must not break the command
            pass

    def _ensure_thread(self) -> None:
        # The line is drawn from a thread of its own, so that a step that blocks (from_pretrained, generate) still
        # shows its time; the command's own thread only records what it is doing.
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="memory-zoo-progress", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh if self.terminal else min(self.refresh * 2.5, 0.5)):
            with self._lock:
                self._draw(time.monotonic())

    def _count_summary(self) -> str:
        if self._count is None:
            return ""
        total, unit, what = self._count
        seconds = time.monotonic() - self._count_started
        rate = f", {self._done / seconds:,.0f} {unit}/s" if seconds > 0 else ""
        return f" ({self._done:,} {unit} {what}{rate})"

    def line(self, now: float | None = None) -> str | None:
        """The text of the progress line now (None before anything is reported)."""
        now = time.monotonic() if now is None else now
        if self._count is not None:
            total, unit, what = self._count
            seconds = now - self._count_started
            text = f"{self.name}: {self._done:,}/{total:,} {unit} {what}"
            if self._done and seconds > 0:
                rate = self._done / seconds
                text += f", {rate:,.0f} {unit}/s, {_duration(max(total - self._done, 0) / rate)} left"
            return text
        if self._step is not None:
            return f"{self.name}: {self._step} ({_duration(now - self._step_started)})"
        return None

    def _draw(self, now: float) -> None:
        text = self.line(now)
        if text is None:
            return
        if self.terminal:
            if now - self._started < self.delay:
                return
            width = shutil.get_terminal_size((100, 20)).columns
            if len(text) >= width:  # a wrapped line could not be redrawn in place
                text = text[:max(width - 2, 1)] + "…"
            self._write(f"\r{text}\033[K")
            self._drawn = True
            return
        if self._count is not None:
            due = now - self._last_plain >= self.interval
        else:
            lasted = now - self._step_started
            due = self._step_logged and lasted >= self.delay and (self._plain_step != self._step
                                                                  or now - self._last_plain >= self.interval)
        if due:
            self._write(text + "\n")
            self._last_plain, self._plain_step, self._written = now, self._step, True
