"""A global surrogate decision tree and its Gini importance map.

A global surrogate (Craven and Shavlik, 1996, "Extracting tree-structured
representations of trained networks"; Molnar, "Interpretable Machine
Learning", ch. "Global Surrogate") is an interpretable model trained to
mimic the network: here a CART tree (scikit-learn's
``DecisionTreeClassifier``, Breiman et al. 1984) fitted on flattened
inputs with the *network's* decisions as labels. Its quality as an
explanation is its *fidelity*, the fraction of held-out inputs on which tree
and network agree; its accuracy against the true labels is reported too.

The tree's Gini importance (mean decrease in impurity, Breiman 2001) of a
pixel is the impurity decrease of all splits on that pixel, weighted by the
samples reaching them, normalised to sum to 1; reshaped to the input, it is
the "importance map" of the review seed's experiment.

Why it fails on MNIST: a shallow tree splits on a handful of pixels, so the
map concentrates on a few isolated points instead of strokes; it is one map
for the whole data set, with nothing to say about why a given digit got its
class; and a tree small enough to read agrees with the network on only a
fraction of the digits (fidelity well below the network's accuracy), so
what it shows is not what the network does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from salfw.core.contracts import ModelExplainer
from salfw.core.guard import preserved
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import param
from salfw.sdk.understanding.data import train_heldout


class SurrogateTree(ModelExplainer):
    """A decision tree fitted to the network's predictions, with fidelity, accuracy and a Gini importance map.

    Works on any model with ``scores`` (white or black box). ``data = {"inputs":
    training inputs, "heldout": held-out inputs, "labels": optional held-out
    labels}``. ``run`` returns ``importance`` (shaped like one input, sums to 1
    when the tree splits at all), ``fidelity``, ``train_fidelity``,
    ``accuracy`` (with labels), ``depth``, ``leaves`` and ``tree`` (the fitted
    scikit-learn estimator).
    """

    name = "surrogate-tree"
    box = "black"
    summary = "Global surrogate decision tree on the network's predictions: fidelity and Gini importance map"

    @dataclasses.dataclass(frozen=True)
    class Params:
        max_depth: int = param(5, "depth of the tree (small enough to read)", low=1)
        min_samples_leaf: int = param(1, "fewest training inputs per leaf (scikit-learn's default)", low=1)

    def run(self, model: Model, data: Any = None, seed: int = 0) -> dict[str, Any]:
        from sklearn.tree import DecisionTreeClassifier

        inputs, heldout, labels = train_heldout(data, "surrogate-tree", model)
        with preserved(getattr(model, "module", None)):
            decisions = model.scores(inputs).argmax(1).cpu().numpy()
            held_decisions = model.scores(heldout).argmax(1).cpu().numpy()
        features = inputs.flatten(1).double().cpu().numpy()
        held_features = heldout.flatten(1).double().cpu().numpy()
        tree = DecisionTreeClassifier(max_depth=self.params.max_depth, min_samples_leaf=self.params.min_samples_leaf,
                                      random_state=seed).fit(features, decisions)
        predicted = tree.predict(held_features)
        importance = torch.from_numpy(tree.feature_importances_.copy()).reshape(inputs.shape[1:])
        result = {
            "importance": importance, "fidelity": float(np.mean(predicted == held_decisions)),
            "train_fidelity": float(np.mean(tree.predict(features) == decisions)),
            "depth": int(tree.get_depth()), "leaves": int(tree.get_n_leaves()), "tree": tree,
            "predicted": predicted,
        }
        if labels is not None:
            result["accuracy"] = float(np.mean(predicted == labels.numpy()))
        return result


@hookimpl
def salfw_register_model_explainers(register):
    register(SurrogateTree)
