"""Names made from user text: the one slug used for run folders, figure files and cache keys."""

from __future__ import annotations

__all__ = ["slug"]


def slug(text: object) -> str:
    """Lower-case ``text`` with every non-alphanumeric character turned into ``_``, and no
    ``_`` at either end (``""`` when nothing alphanumeric is left).

    Examples
    --------
    >>> slug("Egyptian cat"), slug("resnet18/layer3.1"), slug(" -- ")
    ('egyptian_cat', 'resnet18_layer3_1', '')
    """
    return "".join(ch if ch.isalnum() else "_" for ch in str(text).lower()).strip("_")
