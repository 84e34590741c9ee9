"""Relevance propagation vs Zennit (and DeepLIFT vs Captum) on the same model and inputs.

Times salfw's ``deep-taylor`` and ``lrp`` (epsilon-plus, epsilon-gamma-box) against
Zennit's equivalent composites, and ``deeplift`` against Captum's ``DeepLift``, on
the built-in MNIST networks (or a same-shaped random CNN/MLP if the zoo is not
there) for a batch of digits, with the same explicit targets on both sides (so
``salfw.explain`` runs no prediction pass); one thread, best of several repeats
taken alternately. Prints a table with the ratio salfw time / peer time
(< 1: salfw is faster).

    python benchmarks/bench_relevance.py [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import best_times

import salfw  # noqa: E402
from tests.oracles import import_zennit  # noqa: E402


def same_shaped(name):
    """A random network shaped like the built-in one (784-128-64-10 MLP; conv32-pool-conv64-pool-conv64-GAP CNN)."""
    from torch import nn
    torch.manual_seed(0)
    if name == "mnist-mlp":
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                            nn.Linear(64, 10))
    else:
        net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                            nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return salfw.WhiteBox(net.eval())


def load(name, batch):
    try:
        model = salfw.load_model(f"builtin:{name}")
        from salfw.zoo.samples import load_samples
        images, _ = load_samples()
    except Exception as exc:  # the zoo is optional here: time the same architecture
        print(f"builtin:{name} unavailable ({type(exc).__name__}); using a random network of the same shape")
        model, images = same_shaped(name), torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x = images.repeat((batch + len(images) - 1) // len(images), 1, 1, 1)[:batch]
    return model, x


def zennit_relevance(net, make_composite, x, targets):
    """Zennit's relevance for ``targets`` with a fresh composite (as one explanation would)."""
    from zennit.attribution import Gradient

    with Gradient(model=net, composite=make_composite()) as attributor:
        attributor(x, lambda out: out * torch.eye(out.shape[1])[targets])


def captum_deeplift(net, x, baseline, targets):
    from captum.attr import DeepLift

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DeepLift(net).attribute(x, baseline, target=targets)


def deep_taylor_composite(low, high):
    """Zennit's equivalent of salfw's ``deep-taylor``: z^B in the first layer, z+ above."""
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import ZBox, ZPlus
    from zennit.types import Linear as AnyLinear

    return SpecialFirstLayerMapComposite(layer_map=layer_map_base() + [(AnyLinear, ZPlus())],
                                         first_map=[(AnyLinear, ZBox(low, high))])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import_zennit()  # zennit needs a torchvision stand-in here
    from zennit.composites import EpsilonGammaBox, EpsilonPlus

    rows = []
    for name in ("mnist-mlp", "mnist-cnn"):
        model, x = load(name, args.batch)
        targets = model.scores(x).argmax(1)
        net = model.network()
        low, high = model.preprocessing.bounds(model.input_range, x)
        cases = [
            ("deep-taylor", {}, partial(deep_taylor_composite, low, high)),
            ("lrp", {"composite": "epsilon-plus"}, EpsilonPlus),
            ("lrp", {"composite": "epsilon-gamma-box"}, partial(EpsilonGammaBox, low, high)),
        ]
        for method, params, composite in cases:
            ours, theirs = best_times(
                [partial(salfw.explain, method, model, x, target=targets, batch_size=args.batch, **params),
                 partial(zennit_relevance, net, composite, x, targets)], args.repeats)
            rows.append((name, f"{method} {params.get('composite', '')}".strip(), "zennit", ours, theirs))
        ours, theirs = best_times(
            [partial(salfw.explain, "deeplift", model, x, target=targets, batch_size=args.batch),
             partial(captum_deeplift, net, x, torch.zeros_like(x), targets)], args.repeats)
        rows.append((name, "deeplift", "captum", ours, theirs))

    print(f"batch {args.batch}, 1 thread, best of {args.repeats}")
    print(f"{'model':<10} {'method':<28} {'peer':<7} {'salfw ms/img':>12} {'peer ms/img':>12} {'ratio':>7}")
    for name, method, peer_name, ours, theirs in rows:
        print(f"{name:<10} {method:<28} {peer_name:<7} {1000 * ours / args.batch:>12.3f} "
              f"{1000 * theirs / args.batch:>12.3f} {ours / theirs:>7.2f}")


if __name__ == "__main__":
    main()
