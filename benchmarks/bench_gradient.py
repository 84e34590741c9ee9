"""Time the gradient family against Captum on the same model and inputs.

    python benchmarks/bench_gradient.py [--repeat 5] [--batch 16]
    python benchmarks/bench_gradient.py --model resnet18        # 224 px, batch 4, IG with 16 steps (issue #12)

Model: the built-in ``mnist-cnn`` (a same-shaped random CNN when its weights are
missing) on the shipped sample digits (random digits-sized inputs when
missing); or, with ``--model resnet18``, torchvision's ``resnet18`` with seeded
random weights on seeded random 224 px images (torchvision through
``tests/torchvision_shim.py``; ``--size``, ``--batch``, ``--steps`` change
them), where only gradient, input × gradient and integrated gradients are
timed (smoothgrad's 20 samples are 20 such passes). The contenders of a row
alternate within each of ``--repeat`` rounds and the minimum is kept (the
machine is shared); one thread, as the project's CPU runs. Ratio = salfw / Captum.

Two salfw timings: through ``salfw.explain`` (which also runs one forward pass
of the batch for the predicted classes and probabilities it records in
``meta``) and the method's ``attribute`` alone (what Captum's call does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from timing import best_times
from torch import nn

import salfw
from salfw.core.api import make_method
from salfw.core.guard import preserved


def mnist_cnn() -> salfw.WhiteBox:
    try:
        return salfw.load_model("builtin:mnist-cnn")
    except (salfw.SalfwError, OSError):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(64, 10))
        return salfw.WhiteBox(net.eval())


def resnet18() -> salfw.WhiteBox:
    """torchvision's resnet18 with seeded random weights (no download), ImageNet normalisation in the adapter."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.torchvision_shim import torchvision_models
    torch.manual_seed(0)
    net = torchvision_models().resnet18(weights=None).eval()
    return salfw.WhiteBox(net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def digits(n: int) -> torch.Tensor:
    try:
        from salfw.zoo.samples import load_samples
        x = load_samples()[0]
    except OSError:
        x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mnist-cnn", "resnet18"), default="mnist-cnn")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="default: 16 (mnist-cnn), 4 (resnet18)")
    parser.add_argument("--steps", type=int, default=None, help="IG steps; default: 50 (mnist-cnn), 16 (resnet18)")
    parser.add_argument("--size", type=int, default=224, help="resnet18's image size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    small = args.model == "mnist-cnn"
    batch = args.batch or (16 if small else 4)
    model = mnist_cnn() if small else resnet18()
    x = digits(batch) if small else torch.rand(batch, 3, args.size, args.size,
                                               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = model.network()(x).argmax(1)
    net = model.network()
    xs = x.clone().requires_grad_()
    steps, samples, chunk = args.steps or (50 if small else 16), 20, 128
    sigma = 0.15 * (model.input_range[1] - model.input_range[0])
    def alone(name, **params):
        method = make_method(name, **params)

        def run():
            with preserved(model.module):
                method.attribute(model, x, targets, salfw.Context(0))
        return run

    pairs = [
        ("gradient", lambda: salfw.explain("gradient", model, x, target=targets),
         "Saliency", lambda: Saliency(net).attribute(xs, target=targets, abs=False)),
        ("input-x-gradient", lambda: salfw.explain("input-x-gradient", model, x, target=targets),
         "InputXGradient", lambda: InputXGradient(net).attribute(xs, target=targets)),
        (f"integrated-gradients ({steps} steps)",
         lambda: salfw.explain("integrated-gradients", model, x, target=targets, steps=steps, batch_size=chunk),
         "IntegratedGradients",
         lambda: IntegratedGradients(net).attribute(x, baselines=0.0, target=targets, n_steps=steps,
                                                    internal_batch_size=chunk, return_convergence_delta=True)),
        (f"smoothgrad ({samples} samples)",
         lambda: salfw.explain("smoothgrad", model, x, target=targets, samples=samples, batch_size=chunk),
         "NoiseTunnel(Saliency)",
         lambda: NoiseTunnel(Saliency(net)).attribute(xs, nt_type="smoothgrad", nt_samples=samples,
                                                      nt_samples_batch_size=max(1, chunk // len(x)),
                                                      stdevs=sigma, target=targets, abs=False)),
        ("vargrad (20 samples)",
         lambda: salfw.explain("smoothgrad", model, x, target=targets, samples=samples, variant="vargrad",
                               batch_size=chunk),
         "NoiseTunnel(Saliency, vargrad)",
         lambda: NoiseTunnel(Saliency(net)).attribute(xs, nt_type="vargrad", nt_samples=samples,
                                                      nt_samples_batch_size=max(1, chunk // len(x)),
                                                      stdevs=sigma, target=targets, abs=False)),
    ]
    alone_runs = [alone("gradient"), alone("input-x-gradient"),
                  alone("integrated-gradients", steps=steps, batch_size=chunk),
                  alone("smoothgrad", samples=samples, batch_size=chunk),
                  alone("smoothgrad", samples=samples, batch_size=chunk, variant="vargrad")]
    rows = list(zip(pairs, alone_runs, strict=True))[:5 if small else 3]
    print(f"model: {args.model}, input {tuple(x.shape)}, best of {args.repeat} alternating rounds, 1 thread, "
          f"chunks of {chunk}")
    print(f"{'salfw':36s} {'explain':>8s} {'alone':>8s}   {'Captum':31s} {'time (s)':>8s}  "
          f"ratio (explain / alone)")
    for (ours_name, ours, theirs_name, theirs), ours_alone in rows:
        a, a1, b = best_times([ours, ours_alone, theirs], args.repeat)
        print(f"{ours_name:36s} {a:8.4f} {a1:8.4f}   {theirs_name:31s} {b:8.4f}  {a / b:5.2f} / {a1 / b:5.2f}")


if __name__ == "__main__":
    main()
