"""Shared plumbing below every stage: validation, seeding, devices, atomic files, warnings."""
