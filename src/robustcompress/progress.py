"""Progress display: a tqdm bar on a terminal, plain periodic lines when stderr is redirected.

A redirected tqdm bar writes one carriage-return-separated update per refresh into the log
(hundreds of KB for a training run); :func:`bar` gives a bar only when stderr is a terminal and
otherwise prints a line such as ``epoch 3/10: 40% (120/300 batch, ETA 0:01:12)`` at each 10%
step (at most one per ``min_interval_s``) and at least every ``max_interval_s``.
"""
from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Iterable, Optional, TextIO


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default: stderr) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def format_eta(seconds: Optional[float]) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    return str(timedelta(seconds=round(seconds)))


def eta_seconds(elapsed: float, done: int, total: int) -> Optional[float]:
    """Remaining time at the rate so far (None before the first finished item)."""
    if done <= 0 or total <= 0:
        return None
    return elapsed / done * max(total - done, 0)


class PlainProgress:
    """Iterable wrapper printing periodic plain lines (no ``\\r``); a tqdm look-alike subset."""

    def __init__(self, iterable: Iterable, desc: str = "", total: Optional[int] = None,
                 unit: str = "it", stream: Optional[TextIO] = None, steps: int = 10,
                 min_interval_s: float = 5.0, max_interval_s: float = 60.0):
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else _len_or_none(iterable)
        self.unit = unit
        self.stream = stream
        self.steps = steps
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.n = 0
        self.postfix = ""
        self._t0 = self._last = time.monotonic()
        self._step = 0

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, k: int = 1) -> None:
        """Count ``k`` finished items; print a line when one is due."""
        self.n += k
        now = time.monotonic()
        step = self.n * self.steps // self.total if self.total else 0
        since = now - self._last
        if (step > self._step and since >= self.min_interval_s) or since >= self.max_interval_s:
            self._step = step
            self._last = now
            self.write(self.line(now - self._t0))

    def line(self, elapsed: float) -> str:
        """``desc: 40% (120/300 batch, ETA 0:01:12)[, postfix]``."""
        if self.total:
            eta = format_eta(eta_seconds(elapsed, self.n, self.total))
            body = f"{100 * self.n // self.total}% ({self.n}/{self.total} {self.unit}, ETA {eta})"
        else:
            body = f"{self.n} {self.unit}, {format_eta(elapsed)} elapsed"
        return f"{self.desc}: {body}" + (f", {self.postfix}" if self.postfix else "")

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kw.items())

    def write(self, msg: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(msg, file=stream, flush=True)

    def close(self) -> None:
        """Nothing to clear (lines are permanent)."""


class _Silent(PlainProgress):
    """Disabled progress: iterates, prints nothing."""

    def update(self, k: int = 1) -> None:
        self.n += k


def _len_or_none(iterable) -> Optional[int]:
    try:
        return len(iterable)
    except TypeError:
        return None


def bar(iterable: Iterable, desc: str = "", total: Optional[int] = None, unit: str = "it",
        enabled: bool = True, leave: bool = False):
    """A progress wrapper over ``iterable``: a tqdm bar when stderr is a terminal, else a
    :class:`PlainProgress`; nothing shown when ``enabled`` is False. All three support
    iteration, ``set_postfix`` and ``close``."""
    if not enabled:
        return _Silent(iterable, desc, total, unit)
    if is_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave)
    return PlainProgress(iterable, desc, total, unit)


def write(msg: str) -> None:
    """A permanent line that does not break a running bar (``tqdm.write`` on a terminal)."""
    if is_terminal():
        from tqdm.auto import tqdm

        tqdm.write(msg)
    else:
        print(msg, flush=True)
