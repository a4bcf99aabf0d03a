"""Applications built on the pipeline: the demo and the benchmark."""
