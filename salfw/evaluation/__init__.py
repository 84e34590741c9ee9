"""Evaluation: metrics (plugins, :mod:`salfw.evaluation.metrics`), the methods x
metrics harness (:mod:`salfw.evaluation.harness`) and the comparison grid
(:mod:`salfw.evaluation.grid`).

Score an explanation with ``salfw.evaluate(metric, model, x, explanation)``;
list the metrics with ``salfw.metrics()``.
"""
