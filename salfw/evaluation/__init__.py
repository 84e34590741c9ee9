"""Evaluation: metrics (plugins, :mod:`salfw.evaluation.metrics`) and the methods x
metrics harness (:mod:`salfw.evaluation.harness`). The comparison grid is
:func:`salfw.draw_grid` (:mod:`salfw.core.render`).

Score an explanation with ``salfw.evaluate(metric, model, x, explanation)``;
list the metrics with ``salfw.metrics()``.
"""
