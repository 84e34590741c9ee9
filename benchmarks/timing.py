"""Timing shared by the benchmark scripts: the best of ``repeat`` rounds, after one warm-up call.

Callables timed together alternate within each round, so that load from other
processes on a shared machine hits salfw and the peer library alike.
"""

import time


def best_times(fns, repeat):
    """Minimum seconds of each callable over ``repeat`` alternating rounds."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def best_time(fn, repeat):
    """Minimum seconds of one callable over ``repeat`` calls, after a warm-up."""
    return best_times([fn], repeat)[0]
