"""TCAV: testing with concept activation vectors (Kim et al., ICML 2018).

For a layer ``l`` with activations ``f_l(x)`` and a class ``k``
(``class_index``) with logit ``h_k``:

1. A *concept activation vector* (CAV) ``v_C`` is the normal of a linear
   classifier separating ``f_l`` of the concept's examples (positive) from
   ``f_l`` of a set of random examples (negative), pointing to the concept.
2. The conceptual sensitivity of an input is the directional derivative
   ``S_C,k(x) = grad_{f_l} h_k(f_l(x)) . v_C``.
3. The TCAV score is the fraction of the class's inputs with ``S > 0``.

Because a CAV learned against one random set may be meaningful by chance,
Kim et al. repeat step 1 against ``runs`` different random sets, and compare
the ``runs`` TCAV scores with those of *random* CAVs (a random set against
another random set) by a two-sided t-test; a concept is significant when
``p < alpha`` (0.05, Bonferroni-corrected over the concepts tested if asked,
as in the paper's section 3.2). Kim et al. used 500 random sets of ImageNet
images; here random sets are given by the caller or drawn as uniform noise
in the input range from the seed's CPU generator (``ctx.generator``; for
inputs without a natural random image set), and ``runs`` defaults to 10.
Random CAV ``i`` separates random set ``i - 1`` from random set ``i``, so
that its positive set changes from run to run (Kim et al.'s code keeps one
random set as the positive of every random CAV, which correlates the random
runs and makes the test too eager to call a random concept significant). A
concept given by one fixed example set still has correlated runs, so a
random concept is called significant somewhat more often than ``alpha``:
read the p-value with the effect size (``mean``).

The gradients at the layer are computed once for the class inputs (batched
backward passes of ``batch_size``), so each extra CAV costs a dot product.
The linear classifier is scikit-learn's ``SGDClassifier`` (hinge loss, as in
Kim et al.'s code) or ``LogisticRegression``, fitted on activations divided
by their root mean square (one scalar, so the CAV's direction is unchanged
but the solver converges on layers with large activations); the classifier
of the ``i``-th CAV is seeded with ``seed + i``.

At a layer followed only by linear operations (e.g. the last ReLU before a
global average pool and a linear head) the gradient is the same for every
input, so every TCAV score is 0 or 1: choose an earlier layer.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import torch

from salfw.core.context import Context
from salfw.core.contracts import ModelExplainer
from salfw.core.errors import InputError, ParameterError
from salfw.core.guard import preserved
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model, WhiteBox
from salfw.core.params import batch_size, layer, param
from salfw.sdk.understanding.context import explainer_context
from salfw.sdk.understanding.layers import activations, find_layer, require_white_box, tapped


def _tensor(value: Any, what: str, model: Model) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or len(value) < 2:
        raise InputError(f"TCAV data[{what!r}] must be a batch tensor (N, ...) with N >= 2, "
                         f"got {type(value).__name__}{tuple(getattr(value, 'shape', ()))}")
    if model.input_shape is not None and tuple(value.shape[1:]) != tuple(model.input_shape):
        raise InputError(f"TCAV data[{what!r}] has sample shape {tuple(value.shape[1:])}, the model takes "
                         f"{tuple(model.input_shape)}")
    return value.to(model.device, model.dtype)


class TCAV(ModelExplainer):
    """Concept sensitivity of a class at a layer, with a t-test against random concepts (Kim et al. 2018).

    ``data`` is a dict: ``"concepts"`` (name -> example batch), ``"inputs"``
    (the class's inputs) and optionally ``"random"`` (a list of ``runs + 1``
    example batches; default: uniform noise in the input range, as many
    samples as the largest concept, drawn from the seed). ``run`` returns, per
    concept, ``scores`` (one TCAV score per random set), ``mean``,
    ``p_value`` and ``significant``, plus ``random_scores`` (the random CAVs'),
    ``alpha`` (after any Bonferroni correction), ``layer`` and ``class_index``.
    """

    name = "tcav"
    box = "white"
    summary = "TCAV: concept activation vectors at a layer, scored and t-tested against random concepts (Kim 2018)"

    @dataclasses.dataclass(frozen=True)
    class Params:
        layer: str | None = layer(None, "layer whose activations the concepts are learned at (named as in "
                                  "named_modules(); required)")
        class_index: int = param(0, "class whose sensitivity to the concepts is measured", low=0)
        runs: int = param(10, "random sets each concept is learned against (and random CAVs compared)", low=2)
        alpha: float = param(0.05, "significance level of the two-sided t-test", low=0.0, high=1.0)
        bonferroni: bool = param(False, "divide alpha by the number of concepts tested")
        classifier: str = param("sgd", "linear classifier of the CAVs", choices=("sgd", "logistic"))
        batch_size: int = batch_size(256, "inputs per forward/backward pass")

    def _cav(self, positive: np.ndarray, negative: np.ndarray, seed: int) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression, SGDClassifier

        features = np.concatenate([positive, negative])
        features = features / (np.sqrt(np.mean(features ** 2)) or 1.0)  # one scale for all: same direction
        labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
        if self.params.classifier == "sgd":
            classifier = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)
        else:
            classifier = LogisticRegression(max_iter=1000)
        classifier.fit(features, labels)
        cav = classifier.coef_[0]
        return cav / (np.linalg.norm(cav) or 1.0)

    def _gradients(self, model: WhiteBox, at: torch.nn.Module, x: torch.Tensor, ctx: Context) -> np.ndarray:
        """d logit_k / d activation at the layer ``at``, flattened, for every class input."""
        k = self.params.class_index
        grads = []
        for chunk in ctx.batches(len(x), description="tcav gradients"):
            with tapped(at, detach_leaf=True) as tap:
                logits = model.forward(x[chunk])
            if k >= logits.shape[1]:
                raise ParameterError(f"class_index {k} out of range: the model has {logits.shape[1]} classes")
            (grad,) = torch.autograd.grad(logits[:, k].sum(), tap["out"])
            grads.append(grad.flatten(1))
        return torch.cat(grads).double().cpu().numpy()

    def run(self, model: Model, data: Any = None, seed: int = 0) -> dict[str, Any]:
        white = require_white_box(model, "tcav")
        p = self.params
        if not isinstance(data, dict) or "concepts" not in data or "inputs" not in data:
            raise InputError("tcav needs data={'concepts': {name: examples}, 'inputs': class inputs, "
                             "optionally 'random': [runs + 1 example batches]}")
        unknown = set(data) - {"concepts", "inputs", "random"}
        if unknown:
            raise InputError(f"tcav data: unknown keys {sorted(unknown)}; accepted: concepts, inputs, random")
        if not isinstance(data["concepts"], dict) or not data["concepts"]:
            raise InputError("tcav data['concepts'] must be a non-empty dict name -> example batch")
        concepts = {name: _tensor(v, f"concepts/{name}", white) for name, v in data["concepts"].items()}
        inputs = _tensor(data["inputs"], "inputs", white)
        ctx = explainer_context(self, seed)
        if data.get("random") is not None:
            randoms = [_tensor(v, f"random/{i}", white) for i, v in enumerate(data["random"])]
            if len(randoms) != p.runs + 1:
                raise InputError(f"tcav data['random'] must hold runs + 1 = {p.runs + 1} batches, got {len(randoms)}")
        else:
            count = max(len(c) for c in concepts.values())
            lo, hi = white.input_range
            randoms = [(lo + (hi - lo) * torch.rand((count, *inputs.shape[1:]), generator=ctx.generator))
                       .to(white.device, white.dtype) for _ in range(p.runs + 1)]
        with preserved(white.module):
            at = find_layer(white.module, p.layer)

            def acts(x: torch.Tensor) -> np.ndarray:
                return activations(white, p.layer, x, ctx).flatten(1).double().cpu().numpy()

            gradients = self._gradients(white, at, inputs, ctx)
            random_acts = [acts(r) for r in randoms]

            def score(cav: np.ndarray) -> float:
                return float(np.mean(gradients @ cav > 0))

            random_scores = [score(self._cav(random_acts[i - 1], random_acts[i], ctx.seed + i))
                             for i in range(1, p.runs + 1)]
            alpha = p.alpha / len(concepts) if p.bonferroni else p.alpha
            from scipy.stats import ttest_ind  # here: scipy.stats costs ~1 s at plugin load
            results = {}
            for name, examples in concepts.items():
                concept_acts = acts(examples)
                scores = [score(self._cav(concept_acts, random_acts[i], ctx.seed + i)) for i in range(1, p.runs + 1)]
                if np.ptp(scores) == 0 and np.ptp(random_scores) == 0:
                    p_value = 1.0 if scores[0] == random_scores[0] else 0.0
                else:
                    with warnings.catch_warnings():  # a constant sample (all scores 1.0) is a valid input
                        warnings.simplefilter("ignore", RuntimeWarning)
                        p_value = float(ttest_ind(scores, random_scores).pvalue)
                results[name] = {"scores": scores, "mean": float(np.mean(scores)), "p_value": p_value,
                                 "significant": bool(p_value < alpha)}
        return {"concepts": results, "random_scores": random_scores, "alpha": alpha, "layer": p.layer,
                "class_index": p.class_index}


@hookimpl
def salfw_register_model_explainers(register):
    register(TCAV)
