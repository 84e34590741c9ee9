"""Time guided backprop, deconvnet, Grad-CAM and Guided Grad-CAM against Captum's equivalents.

Same model (the built-in ``mnist-cnn``; with ``--model resnet18`` torchvision's
``resnet18`` with seeded random weights, imported through
``tests/torchvision_shim.py``), same inputs (the shipped sample digits,
repeated to ``--batch``; for resnet18 seeded random ``--size`` px images), same
targets, one process. Each timing is
the minimum over ``--repeat`` rounds in which the contenders alternate (the
machines are shared and noisy), with one thread. Two salfw columns: ``attribute`` is the method alone (what Captum's
``attribute`` does), ``explain`` is the public ``salfw.explain`` call, which
also validates the input and runs one extra forward pass for the predicted
classes and probabilities it records in ``meta``. Grad-CAM++, CAM and
VisualBackProp have no Captum equivalent and are timed alone.

    python benchmarks/bench_cam.py [--batch 64] [--repeat 5]
    python benchmarks/bench_cam.py --model resnet18 [--batch 4] [--size 224]    # issue #12's setting

On resnet18 VisualBackProp refuses (skip connections: not a plain chain) and is left out.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from timing import best_times

import salfw
from salfw.core.api import make_method
from salfw.core.guard import preserved
from salfw.zoo.samples import load_samples


def resnet18_inputs(batch: int, size: int) -> tuple[salfw.WhiteBox, torch.Tensor, torch.Tensor]:
    """torchvision's resnet18, seeded random weights (no download), ImageNet normalisation; random images, their
    predicted classes as targets."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.torchvision_shim import torchvision_models
    torch.manual_seed(0)
    model = salfw.WhiteBox(torchvision_models().resnet18(weights=None).eval(), mean=(0.485, 0.456, 0.406),
                           std=(0.229, 0.224, 0.225))
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model.network()(x).argmax(1)
    return model, x, target


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mnist-cnn", "resnet18"), default="mnist-cnn")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 (mnist-cnn), 4 (resnet18)")
    parser.add_argument("--size", type=int, default=224, help="resnet18's image size")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Captum warns about its ReLU hooks on every call

    from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam

    if args.model == "resnet18":
        model, x, target = resnet18_inputs(args.batch or 4, args.size)
        layer_name = "layer4"  # the last stage: what salfw's grad-cam finds on its own
    else:
        model = salfw.load_model("builtin:mnist-cnn")
        images, labels = load_samples()
        batch = args.batch or 64
        reps = -(-batch // images.shape[0])
        x = images.repeat(reps, 1, 1, 1)[:batch]
        target = labels.repeat(reps)[:batch]
        layer_name = "7"  # the last ReLU: what salfw's grad-cam finds on its own
    net = model.network()
    layer = dict(model.module.named_modules())[layer_name]

    def ours(name, **params):
        method = make_method(name, **params)

        def run():
            with preserved(model.module):
                method.attribute(model, x, target, salfw.Context(0))
        return run

    def explain(name, **params):
        return lambda: salfw.explain(name, model, x, target=target, **params)

    def grad_cam_captum():
        cam = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
        LayerAttribution.interpolate(cam, x.shape[2:], "bilinear")

    rows = [
        ("guided-backprop", lambda: GuidedBackprop(net).attribute(x.clone().requires_grad_(True), target=target)),
        ("deconvnet", lambda: Deconvolution(net).attribute(x.clone().requires_grad_(True), target=target)),
        ("grad-cam", grad_cam_captum),
        ("guided-grad-cam", lambda: GuidedGradCam(net, layer).attribute(x, target=target,
                                                                         interpolate_mode="bilinear")),
        ("grad-cam-plus-plus", None),
        ("cam", None),
        *([("visual-backprop", None)] if args.model == "mnist-cnn" else []),
    ]
    print(f"{args.model}, input {tuple(x.shape)}, min of {args.repeat} runs, 1 thread, torch {torch.__version__}")
    print(f"{'method':<20}{'salfw attribute':>16}{'salfw explain':>15}{'captum':>10}{'ratio attr':>12}"
          f"{'ratio explain':>15}")
    for name, peer in rows:
        if peer is None:
            t_attr, t_expl = best_times([ours(name), explain(name)], args.repeat)
            print(f"{name:<20}{t_attr * 1e3:>14.1f}ms{t_expl * 1e3:>13.1f}ms{'-':>10}{'-':>12}{'-':>15}")
            continue
        t_attr, t_expl, t_peer = best_times([ours(name), explain(name), peer], args.repeat)
        print(f"{name:<20}{t_attr * 1e3:>14.1f}ms{t_expl * 1e3:>13.1f}ms{t_peer * 1e3:>8.1f}ms"
              f"{t_attr / t_peer:>12.2f}{t_expl / t_peer:>15.2f}")


if __name__ == "__main__":
    main()
