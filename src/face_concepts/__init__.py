"""face-concepts."""
