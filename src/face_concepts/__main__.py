"""``python -m face_concepts``: the same command line as ``face-concepts``."""

from __future__ import annotations

from face_concepts.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
