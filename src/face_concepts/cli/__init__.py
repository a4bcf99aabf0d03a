"""The command-line interface: ``face-concepts <command>``."""

from face_concepts.cli.main import main

__all__ = ["main"]
