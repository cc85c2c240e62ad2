"""A training run on disk: run directory, eval, checkpoints and resume, metrics, report."""
