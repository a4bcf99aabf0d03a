"""The command-line interface: ``face-concepts <command>`` (entry point ``face_concepts.cli.main:main``).

``main.py`` parses and runs the commands, ``common.py`` holds what they share, ``atlas.py`` the
many-class command.
"""
