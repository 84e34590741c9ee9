"""Pixel flipping speed: salfw's batched MoRF against a per-sample, per-step loop.

MoRF with 100 steps (pixel by pixel, uniform-noise replacement) over 200 held-out MNIST digits
on the built-in CNN and MLP. The loop reference does what a straightforward implementation does
(one forward pass per flipping step of one sample, as in Quantus's PixelFlipping, whose issues
#96 and #350 report minutes to hours per image on larger inputs); it runs on 10 digits and is
scaled to 200. Quantus itself is not run: it installs without torch, but importing it imports
zennit, whose torchvision dependency cannot be installed beside the CPU build of torch here.

    python benchmarks/bench_metrics.py [--samples 200] [--repeats 2]

One thread (torch.set_num_threads(1)); the minimum over repeats is reported.
"""

from __future__ import annotations

import argparse

import torch
from timing import best_time

import salfw
from salfw.core.api import make_perturbation
from salfw.evaluation.harness import load_data
from salfw.evaluation.metrics.flipping import feature_scores, removal_ranks


def loop_morf(model, x, attributions, targets, steps: int, seed: int = 0) -> torch.Tensor:
    """The reference: for each sample, for each step, flip the next pixels and run the model once."""
    aopc = []
    for i in range(x.shape[0]):
        gen = torch.Generator().manual_seed(seed)
        fill = make_perturbation("uniform-noise").fill(x[i:i + 1], model.input_range, gen)
        scores, pixel_feature = feature_scores(attributions[i:i + 1], 1)
        ranks = removal_ranks(scores, "morf", gen)[0]
        f = ranks.numel()
        counts = torch.round(torch.linspace(0, f, steps + 1, dtype=torch.float64)).long()
        curve = []
        for k in range(steps + 1):
            keep = (ranks >= counts[k]).to(x.dtype)[pixel_feature].view(1, 1, *x.shape[2:])
            xk = x[i:i + 1] * keep + fill * (1 - keep)
            curve.append(model.probabilities(xk)[0, targets[i]].item())
        curve = torch.tensor(curve)
        aopc.append((curve[0] - curve).mean())
    return torch.stack(aopc)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--loop-samples", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="mnist-mlp,mnist-cnn")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x, _labels, description = load_data("mnist", args.samples)
    print(f"MoRF, {args.steps} steps, uniform-noise replacement, {description}, 1 thread")
    print(f"{'model':<10} {'salfw s':>9} {'loop s (scaled)':>16} {'ratio salfw/loop':>17}")
    for name in args.models.split(","):
        model = salfw.load_model(f"builtin:{name}")
        e = salfw.explain("gradient", model, x)
        ours = best_time(lambda model=model, e=e: salfw.evaluate("morf", model, x, e, steps=args.steps,
                                                                 random_order=False), args.repeats)
        k = min(args.loop_samples, len(x))
        check = salfw.evaluate("morf", model, x[:k], e.attributions[:k], target=e.targets[:k], steps=args.steps,
                               random_order=False)
        reference = loop_morf(model, x[:k], e.attributions[:k], e.targets[:k], args.steps)
        assert torch.allclose(check.double(), reference.double(), atol=1e-5), "batched and loop AOPC differ"
        loop = best_time(lambda model=model, e=e, k=k: loop_morf(model, x[:k], e.attributions[:k], e.targets[:k],
                                                                 args.steps), 1) * len(x) / k
        print(f"{name:<10} {ours:>9.2f} {loop:>16.2f} {ours / loop:>17.3f}")


if __name__ == "__main__":
    main()
