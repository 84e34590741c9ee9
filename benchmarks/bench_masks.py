"""Speed of the optimisation-based masks on MNIST (issue 7).

For each method: iterations, seconds for a batch of digits optimised together,
seconds per image and per image-iteration; for real-time saliency, the masker's
time per image against one forward pass of the classifier. No peer library
implements these methods in this environment (TorchRay is not installed), so
there are no ratios against one; the real-time masker's ratio is against the
classifier itself. One thread, best of ``--repeat`` runs.

    python benchmarks/bench_masks.py [--samples 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import salfw
from salfw.zoo.samples import load_samples

SETTINGS = [
    ("meaningful-perturbation", {"iterations": 300, "factor": 4}),
    ("extremal-perturbation", {"iterations": 800, "areas": (0.05, 0.1, 0.2)}),
    ("noise-mask", {"iterations": 1000}),
]


def best_time(fn, repeat: int) -> float:
    """Best of ``repeat`` calls; ``fn`` returns its own seconds or None to be timed here."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        own = fn()
        times.append(own if own is not None else time.perf_counter() - start)
    return min(times)


def time_explain(name: str, model, x: torch.Tensor, params: dict, repeat: int):
    """Best of ``repeat`` explanations' own seconds, and the last explanation."""
    seen = {}

    def run():
        seen["e"] = salfw.explain(name, model, x, seed=0, **params)
        return seen["e"].meta["seconds"]

    return best_time(run, repeat), seen["e"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts (quick runs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = salfw.load_model("builtin:mnist-cnn")
    x = load_samples()[0][:args.samples]
    print(f"{args.samples} MNIST digits, builtin:mnist-cnn, 1 thread, best of {args.repeat}")
    print(f"{'method':26s} {'iterations':>10s} {'batch s':>9s} {'s/image':>9s} {'ms/image/iter':>14s}")
    for name, params in SETTINGS:
        params = dict(params, iterations=max(1, int(params["iterations"] * args.scale)))
        seconds, explanation = time_explain(name, model, x, params, args.repeat)
        iters = explanation.meta.get("iterations", params["iterations"])
        mean_iters = sum(iters) / len(iters) if isinstance(iters, list) else iters
        per_image = seconds / x.shape[0]
        print(f"{name:26s} {mean_iters:10.0f} {seconds:9.3f} {per_image:9.4f} {1000 * per_image / mean_iters:14.4f}")

    def masker():
        return salfw.explain("real-time-saliency", model, x, seed=0, evaluate=False).meta["seconds"]

    def forward():
        with torch.no_grad():
            model.module(x)

    rts = best_time(masker, max(args.repeat, 5)) / x.shape[0]
    fwd = best_time(forward, max(args.repeat, 5)) / x.shape[0]
    print(f"{'real-time-saliency':26s} {1:10d} {rts * x.shape[0]:9.4f} {rts:9.5f}")
    print(f"real-time masker per image {1e3 * rts:.3f} ms vs one classifier forward {1e3 * fwd:.3f} ms "
          f"(ratio {rts / fwd:.2f})")


if __name__ == "__main__":
    main()
