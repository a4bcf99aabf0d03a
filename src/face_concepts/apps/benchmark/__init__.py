"""The benchmark: per-class image sources, the runner and its report."""
