"""Warnings that a saved run keeps: what the terminal showed while fitting and evaluating.

:func:`recording` keeps the one-line text of every warning shown inside it (after the caller's
filters; shown warnings are still shown). The pipeline saves the list with the run and the atlas
shows it: every warning the terminal shows is on the page too. Python shows a "default" warning
once per code location, so a second fit in the same process may record fewer; the atlas also
derives its notices from the run itself (convergence, dead concepts, approximate split, metrics).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


def one_line(message: object) -> str:
    """A warning's text on one line (as the CLI prints it)."""
    return " ".join(str(message).split())


@contextmanager
def recording(sink: list[str]) -> Iterator[list[str]]:
    """Append to ``sink`` the text of every warning *shown* inside (once each).

    Warnings pass the caller's filters as usual (``-q``, ``simplefilter("ignore")``,
    ``pytest.warns``); only those that reach ``warnings.showwarning`` (the terminal) are kept,
    and they are still shown.

    Examples
    --------
    >>> seen = []
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("always")
    ...     with recording(seen):
    ...         warnings.warn("the solver did not   converge", stacklevel=1)
    >>> seen
    ['the solver did not converge']
    """
    original = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = one_line(message)
        if text not in sink:
            sink.append(text)
        original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield sink
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = original
