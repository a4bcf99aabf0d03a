"""Progress on stderr, one implementation for every long loop (extraction, mini-batch passes).

On a terminal: a live tqdm bar that disappears when done, then one summary line. Elsewhere (a
log file, a pipe, a notebook capturing stderr): no carriage-return redraws; a line every
``LOG_EVERY`` seconds while the work lasts, and the same one summary line at the end, printed
once::

    activations: 3,300 patches in 12.4 s (266 patches/s)

Examples
--------
>>> import io
>>> out = io.StringIO()
>>> with Progress(10, "activations", unit="patch", enabled=True, file=out, clock=iter([0.0, 1.0, 1.5, 2.0]).__next__) as bar:
...     bar.update(4)
...     bar.update(6)
>>> out.getvalue()
'activations: 10 patches in 2.0 s (5 patches/s)\\n'
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LOG_EVERY = 30.0  # seconds between lines when stderr is not a terminal


def plural(unit: str) -> str:
    """``patch`` → ``patches``, ``image`` → ``images``, ``row`` → ``rows``."""
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


class Progress:
    """Counts work done; shows it on ``file`` (default stderr) when ``enabled``.

    Parameters
    ----------
    total : int or None
        Units expected (None: unknown).
    desc : str
        What is being done (``"activations"``).
    unit : str
        What one unit is, singular (``"patch"``, ``"image"``, ``"row"``).
    enabled : bool
        Show anything at all.
    file : text stream, optional
        Where to write (default: ``sys.stderr`` at construction time).
    clock : callable, optional
        Seconds as a float (default ``time.perf_counter``; tests pass a fake clock).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "item",
        enabled: bool = True,
        file: TextIO | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.file = file if file is not None else sys.stderr
        self._clock = clock or time.perf_counter
        self.n = 0
        self.postfix = ""
        self._closed = False
        self._bar: Any = None
        self._start = self._clock() if enabled else 0.0
        self._last_line = self._start
        if enabled and _is_terminal(self.file):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=True, leave=False, file=self.file
            )

    def update(self, k: int) -> None:
        self.n += int(k)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(k)
            return
        now = self._clock()
        if now - self._last_line >= LOG_EVERY:
            self._last_line = now
            done = f"{self.n:,}" + (f"/{self.total:,}" if self.total else "")
            extra = f", {self.postfix}" if self.postfix else ""
            print(f"{self.desc}: {done} {plural(self.unit)}{extra} …", file=self.file, flush=True)

    def set_postfix(self, text: str) -> None:
        """A short status shown next to the count (e.g. the running objective)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        """Remove the live bar and print the summary line, once."""
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        seconds = max(self._clock() - self._start, 0.0)
        rate = f" ({self.n / seconds:,.0f} {plural(self.unit)}/s)" if seconds > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {self.n:,} {plural(self.unit)} in {seconds:.1f} s{rate}{extra}",
            file=self.file,
            flush=True,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_terminal(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False
