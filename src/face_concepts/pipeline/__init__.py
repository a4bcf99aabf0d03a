"""Orchestration: the explainer, the shared bank, executors, persistence and explanations."""
