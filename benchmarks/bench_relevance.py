"""Relevance propagation vs Zennit (and DeepLIFT vs Captum) on the same model and inputs.

Times salfw's ``deep-taylor`` and ``lrp`` (epsilon-plus, epsilon-gamma-box) against
Zennit's equivalent composites, and ``deeplift`` against Captum's ``DeepLift``, on
the built-in MNIST networks (or a same-shaped random CNN/MLP if the zoo is not
there) for a batch of digits; ``deep-taylor`` on a 3-layer MLP written as a custom
``nn.Module`` (traced with ``torch.fx``, where the graph cache matters), batch 64; and,
where torchvision is installed, ``lrp`` epsilon-plus against Zennit (``EpsilonPlus``
with its ``ResNetCanonizer``, as a Zennit user runs it) and ``deeplift`` against
Captum on a seeded random ``resnet18`` at 224 px, batch 4. Captum's ``DeepLift``
cannot run torchvision's ResNet as it is (each block calls its ``relu`` twice, which
its hooks refuse), so Captum gets a copy whose blocks use two ReLU modules. The same
explicit targets go to both sides (so ``salfw.explain`` runs no prediction pass); one
thread, best of several repeats taken alternately. Prints a table with the ratio
salfw time / peer time (< 1: salfw is faster).

    python benchmarks/bench_relevance.py [--batch 64] [--repeats 5] [--skip-resnet]
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
    """Zennit's equivalent of salfw's ``deep-taylor``: z^B in the first layer, z+ above, bias-free."""
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import ZBox, ZPlus
    from zennit.types import Linear as AnyLinear

    return SpecialFirstLayerMapComposite(layer_map=layer_map_base() + [(AnyLinear, ZPlus(zero_params="bias"))],
                                         first_map=[(AnyLinear, ZBox(low, high, zero_params="bias"))])


class CustomMLP(torch.nn.Module):
    """784-128-64-10 written as a custom module: salfw traces it with torch.fx (once, then cached)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(784, 128), torch.nn.Linear(128, 64), torch.nn.Linear(64, 10)
        self.relu1, self.relu2 = torch.nn.ReLU(), torch.nn.ReLU()

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def captum_resnet(net):
    """A copy of a torchvision ResNet whose basic blocks use two ReLU modules (Captum's DeepLift
    hooks refuse a module called twice); the same function."""
    import copy
    import types

    twin = copy.deepcopy(net)

    def forward(block, x):
        identity = x if block.downsample is None else block.downsample(x)
        out = block.relu(block.bn1(block.conv1(x)))
        return block.relu2(block.bn2(block.conv2(out)) + identity)

    for m in twin.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
        if type(m).__name__ == "BasicBlock":
            m.relu2 = torch.nn.ReLU()
            m.forward = types.MethodType(forward, m)
    return twin


def resnet_rows(repeats):
    """``lrp`` epsilon-plus vs Zennit and ``deeplift`` vs Captum on resnet18, 224 px, batch 4."""
    from tests.torchvision_shim import torchvision_installed, torchvision_models

    if not torchvision_installed():
        print("torchvision is not installed: resnet18 rows skipped")
        return []
    from zennit.composites import EpsilonPlus
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    net = torchvision_models().resnet18(weights=None).eval()
    model = salfw.WhiteBox(net)
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    targets = model.scores(x).argmax(1)
    rows = []
    ours, theirs = best_times(
        [partial(salfw.explain, "lrp", model, x, target=targets, composite="epsilon-plus"),
         partial(zennit_relevance, net, lambda: EpsilonPlus(canonizers=[ResNetCanonizer()]), x, targets)], repeats)
    rows.append(("resnet18", "lrp epsilon-plus", "zennit", ours, theirs, 4))
    twin = captum_resnet(net)
    ours, theirs = best_times([partial(salfw.explain, "deeplift", model, x, target=targets),
                               partial(captum_deeplift, twin, x, torch.zeros_like(x), targets)], repeats)
    rows.append(("resnet18", "deeplift", "captum", ours, theirs, 4))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-resnet", action="store_true", help="leave out the resnet18 rows (torchvision)")
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
            rows.append((name, f"{method} {params.get('composite', '')}".strip(), "zennit", ours, theirs, args.batch))
        ours, theirs = best_times(
            [partial(salfw.explain, "deeplift", model, x, target=targets, batch_size=args.batch),
             partial(captum_deeplift, net, x, torch.zeros_like(x), targets)], args.repeats)
        rows.append((name, "deeplift", "captum", ours, theirs, args.batch))

    torch.manual_seed(0)
    mlp = CustomMLP().eval()
    model = salfw.WhiteBox(mlp)
    x = torch.rand(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    targets = model.scores(x).argmax(1)
    ours, theirs = best_times([partial(salfw.explain, "deep-taylor", model, x, target=targets, batch_size=args.batch),
                               partial(zennit_relevance, mlp, partial(deep_taylor_composite, 0.0, 1.0), x, targets)],
                              args.repeats)
    rows.append(("custom-mlp", "deep-taylor", "zennit", ours, theirs, args.batch))
    if not args.skip_resnet:
        rows += resnet_rows(args.repeats)

    print(f"1 thread, best of {args.repeats}")
    print(f"{'model':<10} {'method':<28} {'peer':<7} {'batch':>5} {'salfw ms/img':>12} {'peer ms/img':>12} "
          f"{'ratio':>7}")
    for name, method, peer_name, ours, theirs, batch in rows:
        print(f"{name:<10} {method:<28} {peer_name:<7} {batch:>5} {1000 * ours / batch:>12.3f} "
              f"{1000 * theirs / batch:>12.3f} {ours / theirs:>7.2f}")


if __name__ == "__main__":
    main()
