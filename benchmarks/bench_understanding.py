"""Time salfw's TCAV against Captum's ``captum.concept.TCAV`` on the built-in MNIST CNN.

Same model, layer ("5", the second max pool), concept (synthetic vertical
bars), random sets (training digits) and class inputs (40 held-out ones);
each library learns one CAV per (concept, random set) pair and scores the
ones. Captum's classifier is its own SGD linear model, so scores agree only
approximately. Prints a table with the ratio salfw time / Captum time (min
over ``--repeat`` runs, one torch thread). Usage:
``python benchmarks/bench_understanding.py [--repeat 3] [--runs 10]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch

import salfw
from salfw.sdk.understanding import make_explainer
from salfw.zoo.mnist import HELDOUT_SLICE, TRAIN_SLICE, load_mnist


def data(runs: int):
    images, labels = load_mnist()
    g = torch.Generator().manual_seed(0)
    bars = torch.zeros(40, 1, 28, 28)
    for i, c in enumerate(torch.randint(8, 20, (40,), generator=g).tolist()):
        bars[i, 0, 5:23, c:c + 3] = 1.0
    train = images[TRAIN_SLICE]
    randoms = [train[40 * i:40 * (i + 1)] for i in range(runs + 1)]
    held, held_labels = images[HELDOUT_SLICE], labels[HELDOUT_SLICE]
    return bars, randoms, held[held_labels == 1][:40]


def run_salfw(model, bars, randoms, inputs, runs):
    result = make_explainer("tcav", layer="5", class_index=1, runs=runs).run(
        model, {"concepts": {"bar": bars}, "inputs": inputs, "random": randoms})
    return result["concepts"]["bar"]["mean"]


def run_captum(model, bars, randoms, inputs, runs):
    from captum.concept import TCAV, Concept

    def concept(i, name, x):
        return Concept(i, name, [x])  # any iterable of batches serves as the data iterator

    network = model.network()
    bar = concept(0, "bar", bars)
    rand = [concept(i + 1, f"random{i}", r) for i, r in enumerate(randoms[1:runs + 1])]
    with tempfile.TemporaryDirectory() as path:
        tcav = TCAV(network, layers=["1.5"], save_path=path)
        scores = tcav.interpret(inputs, experimental_sets=[[bar, r] for r in rand], target=1)
    return float(torch.stack([v["1.5"]["sign_count"][0] for v in scores.values()]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model = salfw.load_model("builtin:mnist-cnn")
    bars, randoms, inputs = data(args.runs)
    rows = []
    for name, fn in (("salfw", run_salfw), ("captum", run_captum)):
        times, score = [], None
        for _ in range(args.repeat):
            start = time.perf_counter()
            score = fn(model, bars, randoms, inputs, args.runs)
            times.append(time.perf_counter() - start)
        rows.append((name, min(times), score))
    print(f"{'library':<8} {'seconds (min)':>14} {'mean TCAV score':>16}")
    for name, seconds, score in rows:
        print(f"{name:<8} {seconds:>14.3f} {score:>16.3f}")
    print(f"ratio salfw / captum: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
