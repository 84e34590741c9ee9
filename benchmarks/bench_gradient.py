"""Time the gradient family against Captum on the same model and inputs.

    python benchmarks/bench_gradient.py [--repeat 5] [--batch 16]

Model: the built-in ``mnist-cnn`` (a same-shaped random CNN when its weights are
missing); inputs: the shipped sample digits (random digits-sized inputs when
missing). Each pair is timed ``--repeat`` times and the minimum is kept (the
machine is shared); one thread, as the project's CPU runs. Ratio = salfw / Captum.

Two salfw timings: through ``salfw.explain`` (which also runs one forward pass
of the batch for the predicted classes and probabilities it records in
``meta``) and the method's ``attribute`` alone (what Captum's call does).
"""

from __future__ import annotations

import argparse

import torch
from timing import best_time
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


def digits(n: int) -> torch.Tensor:
    try:
        from salfw.zoo.samples import load_samples
        x = load_samples()[0]
    except OSError:
        x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    model = mnist_cnn()
    x = digits(args.batch)
    with torch.no_grad():
        targets = model.network()(x).argmax(1)
    net = model.network()
    xs = x.clone().requires_grad_()
    steps, samples, chunk = 50, 20, 128
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
    print(f"model: mnist-cnn, batch {len(x)}, best of {args.repeat}, 1 thread, chunks of {chunk}")
    alone_runs = [alone("gradient"), alone("input-x-gradient"),
                  alone("integrated-gradients", steps=steps, batch_size=chunk),
                  alone("smoothgrad", samples=samples, batch_size=chunk),
                  alone("smoothgrad", samples=samples, batch_size=chunk, variant="vargrad")]
    print(f"{'salfw':36s} {'explain':>8s} {'alone':>8s}   {'Captum':31s} {'time (s)':>8s}  "
          f"ratio (explain / alone)")
    for (ours_name, ours, theirs_name, theirs), ours_alone in zip(pairs, alone_runs, strict=True):
        a, a1, b = best_time(ours, args.repeat), best_time(ours_alone, args.repeat), best_time(theirs, args.repeat)
        print(f"{ours_name:36s} {a:8.4f} {a1:8.4f}   {theirs_name:31s} {b:8.4f}  {a / b:5.2f} / {a1 / b:5.2f}")


if __name__ == "__main__":
    main()
