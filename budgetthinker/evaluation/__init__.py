"""Evaluation stage: benchmarks, methods, runner, grading, metrics and reports."""
