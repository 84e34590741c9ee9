"""Every registered method on CUDA, compared with the same explanation on the CPU.

    python benchmarks/gpu_check.py [--sizes 28 224] [--methods gradient lrp ...] [--json out.json]

For each image size and method, the same inputs, targets and seed are explained
on the CPU and on the GPU (when ``torch.cuda.is_available()``; otherwise only the
CPU column is filled). Reported per method: seconds per image on each device (one
run after a warm-up run, CUDA synchronised), the largest difference
between the two maps relative to the CPU map's largest magnitude, and whether it
is within the method's tolerance:

* ``1e-4`` for methods that are one pass, a fixed path or a closed form
  (gradients, relevance, CAMs, occlusion, LIME, RISE, ...): random draws come
  from CPU generators, so both devices see the same numbers and only floating
  point summation order differs (TF32 is switched off for the comparison);
* ``0.1`` for the optimisations (meaningful and extremal perturbation, Noise
  Mask, DeepFool, GeoSal), where rounding differences grow over hundreds of
  iterations and a search may cross an activation boundary one step earlier.

Models: ``builtin:mnist-cnn`` on shipped digits at 28 px; at 224 px a seeded,
random-weight VGG-style ReLU CNN on 3x224x224 inputs (no download; it has the
conv, ReLU, pooling and global-average-pool + linear head every white-box method
here accepts). Settings are each method's defaults, except where a default would
take minutes per 224 px image on the CPU side of the comparison (``SETTINGS_224``
lists them: fewer samples and iterations, larger windows, grid superpixels);
their timings are for those settings, not the defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch import nn

import salfw
from salfw.zoo.samples import load_samples

#: Methods skipped at a size, with the reason.
SKIP = {
    224: {"real-time-saliency": "its shipped masker is trained for mnist-cnn only"},
}
#: Settings at 224 px where a default would cost minutes of CPU time per image.
SETTINGS_224: dict[str, dict[str, Any]] = {
    "occlusion": {"window": (16, 16), "stride": (16, 16)},
    "prediction-difference": {"window": 56, "samples": 1},
    "kernel-shap": {"samples": 200, "segmentation": "grid", "cell": 16},
    "lime": {"samples": 200, "segmentation": "grid", "cell": 16},
    "rise": {"samples": 500},
    "meaningful-perturbation": {"iterations": 50},
    "extremal-perturbation": {"iterations": 50},
    "noise-mask": {"iterations": 100},
}
#: Methods whose result comes out of an iterative optimisation or search.
OPTIMISATIONS = {"meaningful-perturbation", "extremal-perturbation", "noise-mask", "deepfool", "geosal"}


def vgg_like(seed: int = 0) -> nn.Sequential:
    """A seeded random-weight ReLU CNN for 3x224x224 inputs, 10 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()


def setup(size: int, device: str, batch: int) -> tuple[salfw.WhiteBox, torch.Tensor]:
    if size == 28:
        model = salfw.load_model("builtin:mnist-cnn")
        x, _labels = load_samples()
        module = model.module.to(device)
        return salfw.WhiteBox(module, model.input_range, input_shape=model.input_shape), x[:batch]
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, size, size, generator=generator)
    return salfw.WhiteBox(vgg_like().to(device), (0.0, 1.0), mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225)), x


def timed(method: str, model: salfw.WhiteBox, x: torch.Tensor, targets: torch.Tensor,
          params: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """The attributions (on the CPU) and the seconds of one timed run after a warm-up run."""
    cuda = model.device.type == "cuda"
    result = salfw.explain(method, model, x, target=targets, seed=0, progress=False, **params)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    salfw.explain(method, model, x, target=targets, seed=0, progress=False, **params)
    if cuda:
        torch.cuda.synchronize()
    return result.attributions.detach().cpu().double(), time.perf_counter() - start


def check(size: int, methods: list[str], batch: int) -> list[dict[str, Any]]:
    cuda = torch.cuda.is_available()
    cpu_model, x = setup(size, "cpu", batch)
    gpu_model = setup(size, "cuda", batch)[0] if cuda else None
    targets = cpu_model.scores(x).argmax(1)
    rows = []
    for method in methods:
        reason = SKIP.get(size, {}).get(method)
        if reason:
            rows.append({"size": size, "method": method, "skipped": reason})
            continue
        params = SETTINGS_224.get(method, {}) if size == 224 else {}
        row: dict[str, Any] = {"size": size, "method": method, "settings": params}
        try:
            cpu_map, row["cpu_s_per_image"] = timed(method, cpu_model, x, targets, params)
            if gpu_model is not None:
                gpu_map, row["cuda_s_per_image"] = timed(method, gpu_model, x, targets, params)
                scale = max(cpu_map.abs().max().item(), 1e-12)
                row["relative_difference"] = (cpu_map - gpu_map).abs().max().item() / scale
                row["tolerance"] = 0.1 if method in OPTIMISATIONS else 1e-4
                row["agrees"] = row["relative_difference"] <= row["tolerance"]
            row["cpu_s_per_image"] /= batch
            if "cuda_s_per_image" in row:
                row["cuda_s_per_image"] /= batch
        except salfw.SalfwError as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 224], choices=[28, 224])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--batch", type=int, default=2, help="images per explanation")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # compare IEEE float32 on both devices
    torch.backends.cudnn.allow_tf32 = False
    methods = args.methods or sorted(salfw.methods())
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"# torch {torch.__version__}, {device}, {torch.get_num_threads()} CPU threads", flush=True)
    rows = [row for size in args.sizes for row in check(size, methods, args.batch)]
    bad = [r for r in rows if r.get("agrees") is False or "error" in r]
    print(f"# {len(rows)} rows, {len(bad)} disagreeing or failing", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
