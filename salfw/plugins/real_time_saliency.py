"""Real-time saliency (Dabkowski & Gal 2017, "Real time image saliency for black box
classifiers", NeurIPS): a small masking network, trained once for a given
classifier, outputs a preservation mask for any input in one forward pass.

The masker ``M = masker(x, c)`` is an encoder-decoder conditioned on the class
selector ``c`` (a learnt class embedding multiplies the bottleneck features, the
paper's "feature filter"); for MNIST it is a small conv net producing a mask at
1/4 resolution (7×7), upsampled bilinearly to the input. It is trained on a
dataset with the paper's objective (eq. 5), averaged over the batch:

    L(M) = λ1 TV(M) + λ2 AV(M) − λp log f_c(Φ(x, M)) + λ3 f_c(Φ(x, 1 − M))^λ4

with ``TV`` the mean squared difference of neighbouring mask values, ``AV`` the
area ``mean((M + 5e-4)^0.3)``, ``f_c`` the classifier's softmax probability of the
true class and ``Φ(x, M) = x ⊙ M + A ⊙ (1 − M)`` with the alternative image ``A``
a salfw perturbation ("black" by default; the paper mixes blur, constant colour
and noise). The authors' reference code (pytorch-saliency's ``SaliencyLoss``, for
ImageNet) uses λ1 = 0.5 (smoothness), λ2 = 8 with area power 0.3 and λp = 0.3
(``PAPER_CODE_WEIGHTS``); on MNIST with a black fill these shrink the masks until
the preserved digit is no longer recognised (preserved probability ≈ 0.1 after 3
epochs), so the defaults (``DEFAULT_WEIGHTS``) keep λ1 = 0.5 and the area power
0.3 but use λ2 = 2 and λp = 1 (λ2 = 2 as in later reimplementations); λ3 = 1 and
λ4 = 1 are our choices. The paper also trains with
wrong class selectors (the mask should then be empty); we train with the true
labels only.

A trained masker is saved as safetensors with its architecture, training settings
and a fingerprint of the classifier's weights in the header; the method refuses a
model whose weights do not match (``ModelRequirementError``). The shipped masker
(``weights/mnist-cnn-masker.safetensors``, settings in the sidecar JSON) is for
``builtin:mnist-cnn``; for other models train one with ``salfw train-masker`` or
:func:`train_masker` and pass ``masker=PATH``. Attributions are the mask ``M``
(high = preserved = important); with ``evaluate`` the classifier's probability
of the target on ``Φ(x, M)`` and ``Φ(x, 1 − M)`` goes to ``meta`` (one more forward
pass of the classifier on 2N images). Weak global explanation: one model
explains every input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from salfw.core.api import load_model, make_perturbation
from salfw.core.contracts import Method
from salfw.core.errors import ModelRequirementError, ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.params import param

from salfw.sdk.masks import upsample

WEIGHTS = Path(__file__).resolve().parent / "weights"
SHIPPED_MASKER = WEIGHTS / "mnist-cnn-masker.safetensors"
SHIPPED_MODEL = "builtin:mnist-cnn"

PAPER_CODE_WEIGHTS = {"tv": 0.5, "area": 8.0, "area_power": 0.3, "preserve": 0.3, "destroy": 1.0,
                      "destroy_power": 1.0}
DEFAULT_WEIGHTS = {**PAPER_CODE_WEIGHTS, "area": 2.0, "preserve": 1.0}


class Masker(nn.Module):
    """conv(C→w)-ReLU-pool-conv(w→2w)-ReLU-pool, × class embedding, conv(2w→w)-ReLU-conv(w→1): a mask
    at 1/4 resolution, sigmoid, upsampled bilinearly to the input size. Inputs are scaled to [0, 1]
    from ``input_range`` first."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 16,
                 input_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.config = {"channels": channels, "num_classes": num_classes, "width": width,
                       "input_range": list(input_range)}
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True))
        self.selector = nn.Embedding(num_classes, 2 * width)
        self.decoder = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        lo, hi = self.config["input_range"]
        features = self.encoder((x - lo) / (hi - lo))
        features = features * self.selector(classes)[:, :, None, None]
        return upsample(torch.sigmoid(self.decoder(features)), tuple(x.shape[-2:]))


def classifier_fingerprint(model) -> str:
    """SHA-256 of the classifier's state values in order (names ignored, so a wrapped module matches),
    its input range and its preprocessing: identifies the network a masker was trained for."""
    front = {"input_range": list(model.input_range), "preprocessing": model.preprocessing.settings}
    digest = hashlib.sha256(json.dumps(front, sort_keys=True, default=repr).encode())
    for tensor in model.module.state_dict().values():
        digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_masker(masker: Masker, path: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Write the masker's weights to ``path`` (safetensors) with its config and training settings."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in masker.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={"config": json.dumps(masker.config),
                                                   "settings": json.dumps(settings, sort_keys=True)})


def load_masker(path: str | os.PathLike) -> tuple[Masker, dict[str, Any]]:
    """Read a masker written by :func:`save_masker`; returns ``(masker, settings)`` (eval mode, CPU)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ParameterError(f"real-time-saliency: masker file '{path}' not found; train one with "
                             f"'salfw train-masker --model SPEC --out PATH'")
    with safe_open(path, framework="pt") as f:
        header = f.metadata() or {}
    if "config" not in header:
        raise ParameterError(f"real-time-saliency: '{path}' is not a masker file (no 'config' in its header)")
    config = json.loads(header["config"])
    masker = Masker(config["channels"], config["num_classes"], config["width"], tuple(config["input_range"]))
    masker.load_state_dict(load_file(path), strict=True)
    return masker.eval(), json.loads(header.get("settings", "{}"))


def masker_loss(model, masker_out: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, fill: torch.Tensor,
                weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's objective (module docstring), averaged over the batch; returns (loss, terms)."""
    m = masker_out
    tv = ((m[..., 1:, :] - m[..., :-1, :]) ** 2).mean() + ((m[..., :, 1:] - m[..., :, :-1]) ** 2).mean()
    area = (m + 5e-4).pow(weights["area_power"]).mean()
    both = torch.cat((x * m + fill * (1 - m), x * (1 - m) + fill * m))
    log_probs = torch.log_softmax(model.forward(both), dim=1)
    index = torch.cat((labels, labels))[:, None]
    log_p = log_probs.gather(1, index)[:, 0]
    preserved, destroyed = log_p[:x.shape[0]], log_p[x.shape[0]:]
    preserve = -preserved.mean()
    destroy = destroyed.exp().pow(weights["destroy_power"]).mean()
    loss = (weights["tv"] * tv + weights["area"] * area + weights["preserve"] * preserve
            + weights["destroy"] * destroy)
    terms = {"tv": tv.item(), "area": area.item(), "preserve": preserve.item(), "destroy": destroy.item(),
             "loss": loss.item()}
    return loss, terms


def train_masker(model, images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, seed: int = 0, *,
                 batch_size: int = 64, learning_rate: float = 1e-3, width: int = 16, perturbation: str = "black",
                 weights: dict[str, float] | None = None, log=None) -> tuple[Masker, dict[str, Any]]:
    """Train a :class:`Masker` for the classifier ``model`` (a salfw WhiteBox) on ``images``/``labels``.

    Adam, shuffled mini-batches drawn from ``seed``; the classifier is frozen (its
    parameters' ``requires_grad`` and mode are restored afterwards). Returns the
    masker (eval mode) and its settings (for :func:`save_masker`), including the
    classifier's fingerprint and the last epoch's mean loss terms. ``log`` is
    called with a line per epoch when given.
    """
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = model.device
    num_classes = int(model.scores(images[:1]).shape[1])
    masker = Masker(images.shape[1], num_classes, width, model.input_range).to(device)
    optimiser = torch.optim.Adam(masker.parameters(), lr=learning_rate)
    fill_maker = make_perturbation(perturbation)
    module = model.module
    flags = [p.requires_grad for p in module.parameters()]
    training = module.training
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    history = []
    try:
        for epoch in range(epochs):
            order = torch.randperm(images.shape[0], generator=generator)
            sums: dict[str, float] = {}
            for start in range(0, images.shape[0], batch_size):
                idx = order[start:start + batch_size]
                x = images[idx].to(device)
                y = labels[idx].to(device)
                fill = fill_maker.fill(x, model.input_range, generator).expand_as(x)
                loss, terms = masker_loss(model, masker(x, y), x, y, fill, weights)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v * x.shape[0]
            means = {k: v / images.shape[0] for k, v in sums.items()}
            history.append(means)
            if log is not None:
                log(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        module.train(training)
    settings = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "learning_rate": learning_rate,
                "width": width, "perturbation": perturbation, "weights": weights, "samples": int(images.shape[0]),
                "fingerprint": classifier_fingerprint(model), "final_terms": history[-1] if history else {}}
    return masker.eval(), settings


class RealTimeSaliency(Method):
    name = "real-time-saliency"
    box = "white"
    kind = "mask"
    summary = "a masking network trained for the classifier, one forward pass per input (Dabkowski & Gal 2017)"
    scope = "weak global"
    requires = ("differentiable (to train the masker)", "a masker trained for this model")
    input_kinds = ("image",)
    random = False
    test_params = {}
    test_model = staticmethod(lambda kind: load_model(SHIPPED_MODEL))

    @dataclasses.dataclass(frozen=True)
    class Params:
        masker: str | None = param(None, "masker file (safetensors from `salfw train-masker`); None = the "
                                   "shipped masker for builtin:mnist-cnn")
        evaluate: bool = param(True, "also score Φ(x, M) and Φ(x, 1 − M) with the classifier (meta)")
        batch_size: int = param(256, "samples per masker pass", low=1)

    def check_model(self, model):
        super().check_model(model)
        path = SHIPPED_MASKER if self.params.masker is None else Path(self.params.masker)
        masker, settings = load_masker(path)
        if settings.get("fingerprint") != classifier_fingerprint(model):
            if self.params.masker is None:
                raise ModelRequirementError(
                    f"real-time-saliency: the shipped masker was trained for {SHIPPED_MODEL}, not this model; "
                    f"train one with 'salfw train-masker --model SPEC --out PATH' and pass masker=PATH")
            raise ModelRequirementError(
                f"real-time-saliency: the masker '{path}' was trained for a different network "
                f"(its weights' fingerprint differs); train one for this model with 'salfw train-masker'")
        self._masker, self._settings = masker, settings

    def attribute(self, model, x, targets, ctx):
        seed = ctx.seed
        masker = self._masker.to(device=x.device, dtype=x.dtype)
        p = self.params
        with torch.no_grad():
            mask = torch.cat([masker(x[s:s + p.batch_size], targets[s:s + p.batch_size].to(x.device))
                              for s in range(0, x.shape[0], p.batch_size)])
        meta: dict[str, Any] = {"masker": str(p.masker or SHIPPED_MASKER), "area": mask.flatten(1).mean(1).tolist()}
        if p.evaluate:
            fill = make_perturbation(self._settings.get("perturbation", "black")).fill(x, model.input_range, None)
            with torch.no_grad():
                both = torch.cat((x * mask + fill * (1 - mask), x * (1 - mask) + fill * mask))
                probs = torch.softmax(torch.cat([model.forward(both[s:s + p.batch_size])
                                                 for s in range(0, both.shape[0], p.batch_size)]), dim=1)
            index = torch.cat((targets, targets)).to(x.device)[:, None]
            chosen = probs.gather(1, index)[:, 0]
            meta["preserved_probability"] = chosen[:x.shape[0]].tolist()
            meta["deleted_probability"] = chosen[x.shape[0]:].tolist()
        return mask, meta


@hookimpl
def salfw_register_methods(register):
    register(RealTimeSaliency)
