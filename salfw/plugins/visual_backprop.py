"""VisualBackProp (Bojarski, Choromanska, Choromanski, Firner, Jackel, Muller &
Zieba 2017, "VisualBackProp: efficient visualization of CNNs"), as described
in the GeoSal thesis.

One forward pass, no gradients. For every convolutional layer followed by a
ReLU, the ReLU's feature maps are averaged over channels, ``m_l`` (N, 1, h_l, w_l).
Starting from the deepest average, the running map is scaled up to the
previous layer's resolution by a transposed convolution with a *unity* filter
(all ones, one channel) of the layer's kernel size, stride, padding and
dilation, and multiplied pointwise with the next shallower average; this
repeats down to the input, whose size the last deconvolution reaches::

    v_L = m_L;   v_{l-1} = deconv_1(v_l, layer l) ⊙ m_{l-1};   VBP = deconv_1(v_1, layer 1)

The result (N, 1, H, W) is not normalised (a heatmap rescales it for display;
the paper shows it scaled to [0, 1]). It does not depend on the target class:
VisualBackProp shows which input regions drive the feature maps (of all
classes at once), so the targets are ignored. A local explanation.

Choices where the paper is silent (its networks have no pooling):

* a pooling layer (``nn.MaxPool2d`` / ``nn.AvgPool2d``) sits in the scaling
  chain like a layer without ReLU: its unity deconvolution (kernel, stride,
  padding of the pool) scales the map up to the pool's input size; no average
  is multiplied there;
* where a deconvolution's natural size differs from the layer's input size
  (a convolution or pool that drops border rows), the missing rows are added
  with ``output_padding`` (or zero padding / cropping where that cannot express
  it);
* the network must be a plain chain, as the paper's networks are: its leaf
  modules, in the order they are called, each called once, each taking the
  unchanged output of the one before (``nn.Sequential`` CNNs like the
  built-in ones and VGG). A network whose feature maps branch and merge
  (ResNet's skip connections, DenseNet's concatenations, MobileNet's and
  EfficientNet's residuals, a module called twice, a functional operation
  between two layers) is refused with :class:`ModelRequirementError` naming
  the first layer where the chain breaks: the paper defines no way through a
  sum or a concatenation, and walking such a network as a chain would
  silently drop the branches. ``grad-cam`` explains those networks. The
  chain ends at the first layer whose output is no longer a spatial map, or
  at an adaptive pool (the classifier's head).

The method is designed for ReLU CNNs without biases: the GeoSal thesis runs it
on a network of "ReLU non linearities without biases". Use the built-in
``mnist-cnn-nobias`` (the claim runs do), or ``mnist-cnn-offset`` whose -0.5
input offset lives in the adapter's preprocessing, so the network itself stays
bias-free; a network with biases (conv/linear ``bias``, BatchNorm shifts) triggers a
warning, and one without ``nn.Conv2d`` layers followed by an ``nn.ReLU``
module is refused with :class:`ModelRequirementError`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.errors import ModelRequirementError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size
from salfw.sdk.backprop import OTHER_ACTIVATIONS
from salfw.sdk.layers import is_spatial, model_label, trace

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_HEAD_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_SIZE_PRESERVING = (nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass
class _Step:
    """One layer of the scaling chain: its unity deconvolution's geometry and its input size."""

    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_size: tuple[int, int]


def _step(name: str, module: nn.Module, in_size) -> _Step:
    stride = module.stride if module.stride is not None else module.kernel_size
    dilation = getattr(module, "dilation", 1)
    return _Step(name, _pair(module.kernel_size), _pair(stride), _pair(module.padding), _pair(dilation),
                 tuple(in_size))


def unity_deconv(v: torch.Tensor, step: _Step) -> torch.Tensor:
    """Transposed convolution of (N, 1, h, w) maps with an all-ones filter, sized to the layer's input."""
    ones = torch.ones((1, 1) + step.kernel, dtype=v.dtype, device=v.device)
    natural = [(v.shape[2 + i] - 1) * step.stride[i] - 2 * step.padding[i] + step.dilation[i] * (step.kernel[i] - 1)
               + 1 for i in range(2)]
    extra = [step.in_size[i] - natural[i] for i in range(2)]
    fits = all(0 <= extra[i] < max(step.stride[i], step.dilation[i]) for i in range(2))
    out = F.conv_transpose2d(v, ones, stride=step.stride, padding=step.padding, dilation=step.dilation,
                             output_padding=tuple(extra) if fits else 0)
    return out if fits else F.pad(out, (0, extra[1], 0, extra[0]))


def bias_layers(module: nn.Module) -> list[str]:
    """Names of the layers that add a bias (conv/linear bias, BatchNorm shift)."""
    names = []
    for name, m in module.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.bias is not None:
            names.append(f"'{name}' ({type(m).__name__})")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            names.append(f"'{name}' ({type(m).__name__})")
    return names


def _chain(model, calls) -> tuple[list[_Step], dict[int, torch.Tensor], dict[int, str]]:
    """The scaling chain (conv and pool steps) and the channel-averaged ReLU maps after each conv step."""
    steps: list[_Step] = []
    averages: dict[int, torch.Tensor] = {}
    names: dict[int, str] = {}
    last_conv = False
    previous = None
    first_conv = None
    for call in calls:
        module = call.module
        if next(module.children(), None) is not None:
            continue
        if not is_spatial(call.output) or isinstance(module, _HEAD_POOLS):
            break
        if previous is not None:
            _check_link(model, previous, call)
        previous = call
        if isinstance(module, nn.Conv2d):
            steps.append(_step(call.name, module, call.input.shape[2:]))
            last_conv = True
            first_conv = first_conv or call.name
        elif isinstance(module, _POOLS):
            steps.append(_step(call.name, module, call.input.shape[2:]))
            last_conv = False
        elif isinstance(module, nn.ReLU) and last_conv:
            averages[len(steps)] = call.output.mean(dim=1, keepdim=True)
            names[len(steps)] = call.name
        elif not isinstance(module, _SIZE_PRESERVING) and call.input is not None \
                and call.input.shape[2:] != call.output.shape[2:]:
            raise ModelRequirementError(
                f"visual-backprop scales maps back through Conv2d and MaxPool2d/AvgPool2d layers only; layer "
                f"{call.name!r} ({type(module).__name__}) of {model_label(model)} changes the spatial size. Use "
                f"'grad-cam', which reads one layer of any CNN")
    if not averages:
        smooth = next(((name, type(m).__name__) for name, m in model.module.named_modules()
                       if isinstance(m, OTHER_ACTIVATIONS)), None)
        found = (f": its first activation, layer {smooth[0]!r} ({smooth[1]}), is not a ReLU" if smooth else
                 f": its convolution {first_conv!r} is not followed by one" if first_conv else "")
        raise ModelRequirementError(f"{model_label(model)} has no nn.Conv2d layer followed by an nn.ReLU module"
                                    f"{found}; visual-backprop averages the feature maps of ReLU convolutional "
                                    f"layers (Bojarski et al. 2017). Use 'grad-cam' on a CNN")
    return steps, averages, names


def _check_link(model, previous, call) -> None:
    """Refuse unless ``call`` is a first call that takes the unchanged output of ``previous`` (a plain chain)."""
    if call.index > 0:
        broken = "is called a second time in the forward pass (a module reused)"
    elif call.input is not previous.output or call.input_version != previous.output_version:
        broken = (f"does not take the unchanged output of the layer before it, {previous.name!r} "
                  f"({type(previous.module).__name__}): a skip connection, a concatenation or a functional "
                  f"operation sits between them")
    else:
        return
    raise ModelRequirementError(
        f"visual-backprop follows a plain chain of convolution, ReLU and pooling modules (Bojarski et al. 2017); "
        f"in {model_label(model)} layer {call.name!r} ({type(call.module).__name__}) {broken}, so the chain "
        f"would leave out branches of the network. Use 'grad-cam', which reads one layer of any CNN")


def visual_backprop(model, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """VisualBackProp maps (N, 1, H, W) of a batch and the names of the averaged ReLU layers."""
    calls, _ = trace(model, x)
    steps, averages, names = _chain(model, calls)
    deepest = max(averages)
    v = averages[deepest]
    for position in range(deepest, 0, -1):
        v = unity_deconv(v, steps[position - 1])
        if position - 1 in averages:
            v = v * averages[position - 1]
    return v, [names[p] for p in sorted(names)]


class VisualBackProp(Method):
    name = "visual-backprop"
    box = "white"
    kind = "additive"
    scope = "local"
    input_kinds = ("image",)
    requires = ("conv", "relu", "no bias")
    summary = ("product of channel-averaged ReLU conv maps scaled up by unity deconvolutions "
               "(Bojarski et al. 2017, VisualBackProp)")

    @dataclasses.dataclass(frozen=True)
    class Params:
        batch_size: int = batch_size(256, "samples per forward pass")

    def check_model(self, model: Model) -> None:
        super().check_model(model)
        assert isinstance(model, WhiteBox)  # the white-box check above refused any other model
        if not any(isinstance(m, nn.Conv2d) for m in model.module.modules()):
            raise ModelRequirementError(f"{model_label(model)} has no nn.Conv2d layer; visual-backprop explains "
                                        f"convolutional networks")
        biased = bias_layers(model.module)
        if biased:
            warnings.warn(f"visual-backprop is designed for ReLU CNNs without biases; {model_label(model)} has "
                          f"biases in {', '.join(biased[:6])}{', ...' if len(biased) > 6 else ''}: "
                          f"the map may show the biases' pattern rather than the input's", stacklevel=2)

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert isinstance(model, WhiteBox)  # check_model refused any other model
        maps: list[torch.Tensor] = []
        layers: list[str] = []
        for sl in ctx.batches(x.shape[0], self.params.batch_size):
            chunk_maps, layers = visual_backprop(model, x[sl])
            maps.append(chunk_maps)
        return torch.cat(maps), {"layers": layers}


@hookimpl
def salfw_register_methods(register):
    register(VisualBackProp)
