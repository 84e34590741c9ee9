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
``builtin:mnist-cnn``; for other models train one with ``salfw train-masker`` (a
command this plugin adds to salfw's command line through the
``salfw_register_commands`` hook) or :func:`train_masker`, and pass
``masker=PATH``. Attributions are the mask ``M``
(high = preserved = important); with ``evaluate`` the classifier's probability
of the target on ``Φ(x, M)`` and ``Φ(x, 1 − M)`` goes to ``meta`` (one more forward
pass of the classifier on 2N images). The masker file is read and checked against
the model by ``check_model`` and again by ``attribute`` (nothing is kept on the
instance between them). Weak global explanation: one model explains every input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from salfw.core.api import load_model
from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import ModelRequirementError, ParameterError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, param
from salfw.sdk.masks import upsample
from salfw.sdk.reference import reference

WEIGHTS = Path(__file__).resolve().parent / "weights"
SHIPPED_MASKER = WEIGHTS / "mnist-cnn-masker.safetensors"
SHIPPED_MODEL = "builtin:mnist-cnn"
#: ``salfw train-masker`` trains on the first images of the MNIST test split, the zoo's training range 0-7999.
TRAIN_SAMPLES = 8000

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
        self.config: dict[str, Any] = {"channels": channels, "num_classes": num_classes, "width": width,
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
        return upsample(torch.sigmoid(self.decoder(features)), (x.shape[-2], x.shape[-1]))


def classifier_fingerprint(model: WhiteBox) -> str:
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


def masker_loss(model: WhiteBox, masker_out: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
                fill: torch.Tensor, weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
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


def train_masker(model: WhiteBox, images: torch.Tensor, labels: torch.Tensor, epochs: int = 3, seed: int = 0, *,
                 batch_size: int = 64, learning_rate: float = 1e-3, width: int = 16, perturbation: str = "black",
                 weights: dict[str, float] | None = None, log: Callable[[str], Any] | None = None,
                 progress: bool = False) -> tuple[Masker, dict[str, Any]]:
    """Train a :class:`Masker` for the classifier ``model`` (a salfw WhiteBox) on ``images``/``labels``.

    Adam, shuffled mini-batches drawn from ``seed`` (the masker's initialisation
    too, without touching torch's global generator); the classifier is frozen (its
    parameters' ``requires_grad`` and mode are restored afterwards). Returns the
    masker (eval mode) and its settings (for :func:`save_masker`), including the
    classifier's fingerprint and the last epoch's mean loss terms. ``log`` is
    called with a line per epoch when given; ``progress`` shows a bar of the
    mini-batches on stderr.
    """
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    ctx = Context(seed, batch_size=batch_size, progress=progress, description="train-masker")
    generator = ctx.generator
    device = model.device
    num_classes = int(model.scores(images[:1]).shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        masker = Masker(images.shape[1], num_classes, width, model.input_range).to(device)
    optimiser = torch.optim.Adam(masker.parameters(), lr=learning_rate)
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
            for rows in ctx.batches(images.shape[0], description=f"epoch {epoch + 1}/{epochs}", unit="image"):
                idx = order[rows]
                x = images[idx].to(device)
                y = labels[idx].to(device)
                fill = reference(perturbation, x, model.input_range, generator, "perturbation").expand_as(x)
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
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        module.train(training)
    settings = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "learning_rate": learning_rate,
                "width": width, "perturbation": perturbation, "weights": weights, "samples": int(images.shape[0]),
                "fingerprint": classifier_fingerprint(model), "final_terms": history[-1] if history else {}}
    return masker.eval(), settings


def checked_masker(model: WhiteBox, path: str | os.PathLike | None) -> tuple[Masker, dict[str, Any]]:
    """The masker at ``path`` (None: the shipped one) and its settings, or a ModelRequirementError
    when it was trained for another network (its fingerprint differs from ``model``'s)."""
    masker, settings = load_masker(SHIPPED_MASKER if path is None else path)
    if settings.get("fingerprint") != classifier_fingerprint(model):
        if path is None:
            raise ModelRequirementError(
                f"real-time-saliency: the shipped masker was trained for {SHIPPED_MODEL}, not this model; "
                f"train one with 'salfw train-masker --model SPEC --out PATH' and pass masker=PATH")
        raise ModelRequirementError(
            f"real-time-saliency: the masker '{path}' was trained for a different network "
            f"(its weights' fingerprint differs); train one for this model with 'salfw train-masker'")
    return masker, settings


def shipped_model(kind: str) -> Model:
    """The classifier the shipped masker was trained for (the conformance suite's model, any input kind)."""
    return load_model(SHIPPED_MODEL)


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
    test_model = staticmethod(shipped_model)  # type: ignore[assignment]  # mypy binds a ClassVar callable as a method

    @dataclasses.dataclass(frozen=True)
    class Params:
        masker: str | None = param(None, "masker file (safetensors from `salfw train-masker`); None = the "
                                   "shipped masker for builtin:mnist-cnn")
        evaluate: bool = param(True, "also score Φ(x, M) and Φ(x, 1 − M) with the classifier (meta)")
        batch_size: int = batch_size(256, "samples per masker pass")

    def check_model(self, model: Model) -> None:
        super().check_model(model)
        assert isinstance(model, WhiteBox)  # refused above otherwise
        checked_masker(model, self.params.masker)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        p = self.params
        masker, settings = checked_masker(model, p.masker)
        masker = masker.to(device=x.device, dtype=x.dtype)
        with torch.no_grad():
            mask = torch.cat([masker(x[rows], targets[rows].to(x.device)) for rows in ctx.batches(x.shape[0])])
        meta: dict[str, Any] = {"masker": str(p.masker or SHIPPED_MASKER), "area": mask.flatten(1).mean(1).tolist()}
        if p.evaluate:
            fill = reference(settings.get("perturbation", "black"), x, model.input_range, ctx.generator, "perturbation")
            with torch.no_grad():
                both = torch.cat((x * mask + fill * (1 - mask), x * (1 - mask) + fill * mask))
                probs = torch.softmax(torch.cat([model.forward(both[rows]) for rows in ctx.batches(both.shape[0])]),
                                      dim=1)
            index = torch.cat((targets, targets)).to(x.device)[:, None]
            chosen = probs.gather(1, index)[:, 0]
            meta["preserved_probability"] = chosen[:x.shape[0]].tolist()
            meta["deleted_probability"] = chosen[x.shape[0]:].tolist()
        return mask, meta


@click.command("train-masker")
@click.option("--model", "spec", default=SHIPPED_MODEL, show_default=True, help="model spec to explain")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(min=1), help="passes over the data")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="masker file to write (.safetensors)")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the initialisation and shuffling")
@click.option("--samples", default=TRAIN_SAMPLES, show_default=True, type=click.IntRange(1, TRAIN_SAMPLES),
              help="training images (the first N of indices 0-7999)")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--learning-rate", default=1e-3, show_default=True, type=click.FloatRange(min=0.0))
def train_masker_command(spec: str, epochs: int, out: str, seed: int, samples: int, batch_size: int,
                         learning_rate: float) -> None:
    """Train a real-time saliency masker (Dabkowski & Gal 2017) for MODEL on the MNIST test split's
    first images (the zoo's training range) and write it to OUT (and OUT with a .json suffix)."""
    from salfw.zoo.mnist import default_mnist_dir, load_mnist

    model = load_model(spec)
    if not isinstance(model, WhiteBox):
        raise click.ClickException(f"train-masker needs a white-box model (a torch.nn.Module); {spec} is not one")
    try:
        images, labels = load_mnist(default_mnist_dir())
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"MNIST not found ({exc}); set SALFW_MNIST_DIR to a directory with the "
                                   f"MNIST IDX files") from None
    masker, settings = train_masker(model, images[:samples], labels[:samples], epochs=epochs, seed=seed,
                                    batch_size=batch_size, learning_rate=learning_rate,
                                    log=lambda line: click.echo(line, err=True), progress=sys.stderr.isatty())
    settings["model"] = spec
    save_masker(masker, out, settings)
    sidecar = Path(out).with_suffix(".json")
    sidecar.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    click.echo(f"wrote {out} and {sidecar}")


@hookimpl
def salfw_register_methods(register: Any) -> None:
    register(RealTimeSaliency)


@hookimpl
def salfw_register_commands(cli: Any) -> None:
    cli.add_command(train_masker_command)
