"""Two files committed as one: a data file and the index that records its checksum.

Built on the single-file writers of ``io.py`` (temporary file, ``fsync``, ``os.replace``): the
data file is renamed into place before its index, and the previous data file is kept as a
backup until the new index is in place, so a reader (and the next writer) can always tell which
data file the index vouches for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from face_concepts._core.io import (
    clear_stale_temporaries,
    fsync_directory,
    publish,
    remove_quietly,
    sha256_bytes,
    write_temporary,
)

__all__ = ["atomic_write_pair", "backup_path"]


# ---------------------------------------------------------------------- two files, one commit
def backup_path(data_path: str | os.PathLike[str]) -> Path:
    """Where :func:`atomic_write_pair` keeps the previous data file while it commits."""
    data_path = Path(data_path)
    return data_path.with_name(f".{data_path.name}.prev")


def atomic_write_pair(
    data_path: str | os.PathLike[str],
    data: bytes,
    index_path: str | os.PathLike[str],
    index: bytes,
    *,
    sha_key: str = "file_sha256",
) -> None:
    """Replace a data file and the JSON index describing it so that the index is the commit.

    ``index`` must be a JSON object whose ``sha_key`` is the sha256 of ``data``. Both are
    written to fsync-ed temporary files first; then the data file is renamed into place (the
    previous one kept as :func:`backup_path`), then the index. If the index rename fails the
    previous data file is put back, so the previous pair still loads; if the process dies
    between the renames, the backup is the file the old index describes (readers may fall back
    to it, and the next write restores it before starting). No temporary file is left behind.

    Examples
    --------
    >>> import tempfile, pathlib, hashlib, json
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> idx = json.dumps({"file_sha256": hashlib.sha256(b"x").hexdigest()}).encode()
    >>> atomic_write_pair(d / "a.bin", b"x", d / "a.json", idx)
    >>> sorted(p.name for p in d.iterdir())
    ['a.bin', 'a.json']
    """
    data_path, index_path = Path(data_path), Path(index_path)
    backup = backup_path(data_path)
    for path in (data_path, index_path, backup):  # what a killed save left behind
        clear_stale_temporaries(path.parent, path.name)
    tmp_data = write_temporary(data_path, data)  # creates the directory if needed
    try:
        _settle_backup(data_path, index_path, sha_key)
        tmp_index = write_temporary(index_path, index)
    except BaseException:
        remove_quietly(tmp_data)
        raise
    had_old = data_path.exists()
    try:
        if had_old:
            _link_or_copy(data_path, backup)
        publish(tmp_data, data_path)
        fsync_directory(data_path.parent)  # the data rename must be durable before the index's
    except BaseException:
        for leftover in (tmp_data, tmp_index, backup):
            remove_quietly(leftover)
        raise
    try:
        publish(tmp_index, index_path)
    except BaseException:
        # The old index describes the old data file: put it back (or drop the orphan).
        try:
            if had_old:
                os.replace(backup, data_path)
            else:
                remove_quietly(data_path)
        except OSError:
            pass  # the backup stays, and readers fall back to it
        raise
    remove_quietly(backup)
    fsync_directory(data_path.parent)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Keep the current data file under ``dst`` (a hard link costs no copy)."""
    remove_quietly(dst)
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links
        publish(write_temporary(dst, src.read_bytes()), dst)


def _settle_backup(data_path: Path, index_path: Path, sha_key: str) -> None:
    """Finish what a write that died between its two renames left behind."""
    backup = backup_path(data_path)
    if not backup.exists():
        return
    try:
        recorded = json.loads(index_path.read_bytes())[sha_key]
        current = sha256_bytes(data_path.read_bytes()) if data_path.exists() else None
        restore = sha256_bytes(backup.read_bytes()) == recorded and current != recorded
    except (OSError, ValueError, KeyError, TypeError):
        restore = False
    if restore:
        os.replace(backup, data_path)
    else:
        remove_quietly(backup)
