"""Timing of the black-box perturbation family against its peers, on the built-in MNIST CNN.

* LIME, 1,000 samples on one digit, on a fixed grid of 7 x 7 and of 14 x 14 superpixels
  (lime's default quickshift yields about two superpixels on MNIST, and the GeoSal thesis
  limits the superpixel size; both sides get the same segments)
  with lime's default hiding (each superpixel's mean): salfw against (a) the floor --
  1,000 bare batched forward passes of already perturbed images -- and (b) the ``lime``
  library given the same segmentation and number of samples (its default batch_size=10,
  and batch_size=256 like salfw).
* RISE, 4,000 masks on one digit (the paper's N).
* Occlusion, 4 x 4 windows with stride 2 on 20 digits, against Captum's ``Occlusion``
  (perturbations_per_eval=256, the same batch as salfw's).

Prints a table: times are the minimum over repeats, single-threaded (torch.set_num_threads(1)),
ratios are salfw time / the other time. Run: ``python benchmarks/bench_perturbation.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from timing import best_time

import salfw
from salfw.zoo.samples import load_samples

REPEATS = 3


def main():
    torch.set_num_threads(1)
    model = salfw.load_model("builtin:mnist-cnn")
    images, _ = load_samples()
    digit = images[:1]
    rows = []

    # -- LIME --------------------------------------------------------------------
    from lime import lime_image

    network = model.network()

    def classifier(batch):
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch[..., :1].transpose(0, 3, 1, 2))).float()
            return torch.softmax(network(x), 1).numpy()

    overheads = {}
    for cell in (4, 2):  # 49 superpixels, and 196 (a small maximum superpixel size, as in the thesis)
        label = f"lime 1000 samples, {(28 // cell) ** 2} superpixels"
        lime_params = dict(segmentation="grid", cell=cell, samples=1000, perturbation="superpixel-mean",
                           batch_size=256)
        first = salfw.explain("lime", model, digit, **lime_params)
        segments = first.meta["segments"][0].numpy()
        samples = torch.from_numpy(first.meta["samples"][0]).double()
        flat = segments.ravel()
        means = torch.from_numpy(np.bincount(flat, weights=digit[0, 0].double().numpy().ravel())
                                 / np.bincount(flat))[segments].float()
        keep = samples[:, torch.from_numpy(segments)].float()[:, None]
        perturbed = digit * keep + means * (1 - keep)

        t_salfw = best_time(lambda kw=lime_params: salfw.explain("lime", model, digit, **kw), REPEATS)
        t_floor = best_time(lambda batch=perturbed: model.probabilities(batch, 256), REPEATS)
        rows.append((label, t_salfw, "bare forward passes (floor)", t_floor))
        overheads[label] = (t_salfw - t_floor) / t_floor
        target = int(first.targets[0])
        for lime_batch in (10, 256):
            def run_lime(target=target, lime_batch=lime_batch, segments=segments):
                explainer = lime_image.LimeImageExplainer(random_state=0)
                explainer.explain_instance(digit[0, 0].double().numpy(), classifier, labels=(target,),
                                           top_labels=None, hide_color=None, num_samples=1000,
                                           batch_size=lime_batch, segmentation_fn=lambda img: segments)
            rows.append((label, t_salfw, f"lime library, batch_size={lime_batch}", best_time(run_lime, 2)))

    # -- RISE --------------------------------------------------------------------
    t_rise = best_time(lambda: salfw.explain("rise", model, digit, samples=4000), REPEATS)
    masks_only = torch.rand(4000, 1, 28, 28)
    rows.append(("rise 4000 masks (salfw)", t_rise, "bare forward passes", best_time(
        lambda: model.probabilities(digit * masks_only, 500), REPEATS)))

    # -- Occlusion ---------------------------------------------------------------
    from captum.attr import Occlusion

    batch = images
    targets = model.scores(batch).argmax(1)
    t_occ = best_time(lambda: salfw.explain("occlusion", model, batch, target=targets, window=(4, 4),
                                            stride=(2, 2)), REPEATS)
    occ = Occlusion(network)
    t_captum = best_time(lambda: occ.attribute(batch, sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), baselines=0.0,
                                          target=targets, perturbations_per_eval=256), REPEATS)
    rows.append(("occlusion 4x4/2, 20 digits (salfw)", t_occ, "captum Occlusion", t_captum))

    print(f"{'salfw':38s} {'seconds':>8s}   {'compared with':34s} {'seconds':>8s} {'ratio':>7s}")
    for name, ours, other_name, other in rows:
        print(f"{name:38s} {ours:8.3f}   {other_name:34s} {other:8.3f} {ours / other:7.3f}")
    print()
    for label, overhead in overheads.items():
        print(f"{label}: time beyond the 1,000 bare forward passes = {100 * overhead:.1f}% of them")


if __name__ == "__main__":
    main()
