"""salfw against Zennit and Captum on torchvision's ResNet-18 at ImageNet size (issue #12's speed targets).

    python benchmarks/bench_architectures.py [--batch 4] [--size 224] [--repeat 3] [--write-docs]

Model: ``torchvision.models.resnet18(weights=None)`` with seeded weights and non-trivial BatchNorm
statistics (as in the architecture matrix), in float32; inputs: ``--batch`` photographs at ``--size`` px,
already normalised (both sides get the same tensor and the same explicit targets, so ``salfw.explain``
runs no prediction pass). One thread; each pair alternates within every round and the minimum over
``--repeat`` rounds is kept (the machine may be shared). Ratio = salfw / peer (< 1: salfw is faster).

Pairs: ``lrp`` epsilon-plus / Zennit ``EpsilonPlus`` with its ``ResNetCanonizer`` (a fresh composite per
call, as one explanation is); ``integrated-gradients`` (16 steps, Gauss-Legendre) / Captum
``IntegratedGradients``; ``gradient`` / Captum ``Saliency``; ``deeplift`` / Captum ``DeepLift``;
``guided-backprop`` / Captum ``GuidedBackprop``. Captum's DeepLift and GuidedBackprop hook ReLU modules and
refuse torchvision's ResNet, whose blocks call one ReLU module twice: they run on a copy whose blocks
have a second ReLU module (same function, same weights); salfw runs on the original.
``--write-docs`` puts the table into docs/architectures.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from architectures import (  # noqa: E402  (scripts/architectures.py: the matrix's models and inputs)
    DOC,
    TIMES_END,
    TIMES_START,
    _nontrivial_batchnorm,
    natural_images,
    replace_region,
    torchvision_models,
)
from timing import best_times  # noqa: E402

import salfw  # noqa: E402
from salfw.core.preprocessing import Preprocessing  # noqa: E402
from tests.oracles import import_zennit  # noqa: E402


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _nontrivial_batchnorm(torchvision_models().resnet18(weights=None), seed=1).eval()


def _block_forward(self, x):  # torchvision's BasicBlock.forward with a second ReLU module
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu2(out + identity)


def relu_per_call(net: nn.Module) -> nn.Module:
    """A copy in which no ReLU module is called twice (what Captum's DeepLift and GuidedBackprop need)."""
    net = copy.deepcopy(net)
    net.relu = nn.ReLU()
    for m in net.modules():
        if type(m).__name__ == "BasicBlock":
            m.relu, m.relu2 = nn.ReLU(), nn.ReLU()
            m.forward = types.MethodType(_block_forward, m)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import_zennit()
    from captum.attr import DeepLift, GuidedBackprop, IntegratedGradients, Saliency
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus
    from zennit.torchvision import ResNetCanonizer

    net = resnet18()
    pixels = natural_images(args.size, 2)
    pixels = torch.cat([pixels, pixels.flip(3)] * ((args.batch + 3) // 4))[:args.batch]
    x = Preprocessing((0.0, 1.0), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))(pixels)
    model = salfw.WhiteBox(net, (float(x.min()), float(x.max())))
    with torch.no_grad():
        targets = net(x).argmax(1)
    twin = relu_per_call(net)
    with torch.no_grad():
        assert torch.allclose(twin(x), net(x)), "the ReLU-per-call copy computes another function"

    def zennit_lrp():
        with Gradient(net, EpsilonPlus(canonizers=[ResNetCanonizer()])) as attributor:
            attributor(x.clone().requires_grad_(), lambda out: out * torch.eye(out.shape[1])[targets])

    steps = args.steps
    pairs = [
        ("lrp (epsilon-plus)", lambda: salfw.explain("lrp", model, x, target=targets, composite="epsilon-plus"),
         "Zennit EpsilonPlus + ResNetCanonizer", zennit_lrp),
        (f"integrated-gradients ({steps} steps)",
         lambda: salfw.explain("integrated-gradients", model, x, target=targets, steps=steps, baseline=0.0),
         "Captum IntegratedGradients",
         lambda: IntegratedGradients(net).attribute(x, baselines=0.0, target=targets, n_steps=steps)),
        ("gradient", lambda: salfw.explain("gradient", model, x, target=targets),
         "Captum Saliency", lambda: Saliency(net).attribute(x.clone().requires_grad_(), target=targets, abs=False)),
        ("deeplift", lambda: salfw.explain("deeplift", model, x, target=targets, baseline=0.0),
         "Captum DeepLift (ReLU per call)",
         lambda: DeepLift(twin).attribute(x.clone(), baselines=0.0, target=targets)),
        ("guided-backprop", lambda: salfw.explain("guided-backprop", model, x, target=targets),
         "Captum GuidedBackprop (ReLU per call)",
         lambda: GuidedBackprop(twin).attribute(x.clone(), target=targets)),
    ]
    header = (f"resnet18, {args.batch} × 3 × {args.size} × {args.size}, float32, 1 thread, "
              f"best of {args.repeat} alternating rounds")
    lines = [header, "", "| salfw | s | peer | s | ratio |", "|---|---|---|---|---|"]
    print(header)
    for ours_name, ours, theirs_name, theirs in pairs:
        a, b = best_times([ours, theirs], args.repeat)
        line = f"| `{ours_name}` | {a:.3f} | {theirs_name} | {b:.3f} | {a / b:.2f} |"
        print(line, flush=True)
        lines.append(line)
    if args.write_docs:
        DOC.write_text(replace_region(DOC.read_text(), TIMES_START, TIMES_END, "\n".join(lines)))
        print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
