"""Where face-concepts keeps files between runs (the command line's activation cache)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FACE_CONCEPTS_CACHE"


def default_cache_dir() -> Path:
    """The command line's activation cache: ``$FACE_CONCEPTS_CACHE`` if set, else
    ``$XDG_CACHE_HOME/face-concepts/activations``, else ``~/.cache/face-concepts/activations``.

    Examples
    --------
    >>> import os
    >>> os.environ[CACHE_ENV] = "/tmp/fc-cache"
    >>> default_cache_dir()
    PosixPath('/tmp/fc-cache')
    >>> del os.environ[CACHE_ENV]
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "face-concepts" / "activations"
