"""Numbers written for people: a fixed number of decimals, never a negative zero."""

from __future__ import annotations

__all__ = ["fixed"]


def fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals; a value that rounds to zero prints without a sign
    (a concept with code 0 contributes ``0 · (negative)`` = ``-0.0``, which would read
    ``-0.000``).

    Examples
    --------
    >>> fixed(-1e-9, 3), fixed(-0.0, 1), fixed(-0.0006, 3), fixed(2.5, 1)
    ('0.000', '0.0', '-0.001', '2.5')
    """
    text = f"{float(value):.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text
