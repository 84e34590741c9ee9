"""Rules as disjunctions of conjunctions of thresholds, read off scikit-learn trees.

A *term* is a conjunction of interval conditions, stored as a dict
``feature -> (low, high)`` meaning ``low < x[feature] <= high`` (``-inf`` /
``inf`` for an open side); a rule set is a list of terms (their disjunction).
Decision-tree paths give terms directly: the left branch of a node is
``x[f] <= t`` and the right branch ``x[f] > t`` (scikit-learn's convention).
"""

from __future__ import annotations

import math

import numpy as np

Term = dict[int, tuple[float, float]]


def leaf_terms(tree) -> list[tuple[Term, int]]:
    """Every leaf of a fitted ``DecisionTreeClassifier`` as (its path's term, the leaf's class)."""
    t = tree.tree_
    out: list[tuple[Term, int]] = []
    stack: list[tuple[int, Term]] = [(0, {})]
    while stack:
        node, term = stack.pop()
        left, right = t.children_left[node], t.children_right[node]
        if left == right:  # a leaf
            out.append((term, int(tree.classes_[int(np.argmax(t.value[node][0]))])))
            continue
        f, threshold = int(t.feature[node]), float(t.threshold[node])
        for child, interval in ((left, (-math.inf, threshold)), (right, (threshold, math.inf))):
            narrowed = conjoin(term, {f: interval})
            if narrowed is not None:  # always: a node's split lies inside its path's interval
                stack.append((child, narrowed))
    return out


def conjoin(a: Term | None, b: Term | None) -> Term | None:
    """The conjunction of two terms, or None when it is unsatisfiable (an empty interval)."""
    if a is None or b is None:
        return None
    out = dict(a)
    for f, (lo, hi) in b.items():
        if f in out:
            lo, hi = max(lo, out[f][0]), min(hi, out[f][1])
            if lo >= hi:
                return None
        out[f] = (lo, hi)
    return out


def conditions(term: Term) -> list[tuple[int, float, bool]]:
    """The term's single thresholds ``(feature, threshold, greater)``: ``x > t`` when greater, else ``x <= t``."""
    out = []
    for f, (lo, hi) in sorted(term.items()):
        if lo > -math.inf:
            out.append((f, lo, True))
        if hi < math.inf:
            out.append((f, hi, False))
    return out


def dedupe(terms: list[Term]) -> list[Term]:
    """Drop repeated terms, keeping the first occurrence's order."""
    seen, out = set(), []
    for term in terms:
        key = tuple(sorted(term.items()))
        if key not in seen:
            seen.add(key)
            out.append(term)
    return out


def matches(term: Term, x: np.ndarray) -> np.ndarray:
    """Boolean (N,): which rows of ``x`` (N, D) satisfy the term."""
    mask = np.ones(len(x), dtype=bool)
    for f, (lo, hi) in term.items():
        column = x[:, f]
        mask &= (column > lo) & (column <= hi)
    return mask


def format_term(term: Term, prefix: str = "x") -> str:
    """``x[3] > 0.5 and x[7] <= 0.1`` (``true`` for the empty term)."""
    parts = [f"{prefix}[{f}] {'>' if greater else '<='} {t:.4g}" for f, t, greater in conditions(term)]
    return " and ".join(parts) or "true"
