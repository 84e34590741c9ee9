"""Train the built-in MNIST models of salfw's model zoo, reproducibly.

Each model is trained on images 0-7999 of the MNIST test split (``t10k``) and
measured on images 8000-9999 (salfw.zoo.mnist.TRAIN_SLICE / HELDOUT_SLICE),
with fixed seeds and deterministic CPU algorithms, so running this script
again on the same PyTorch version reproduces the shipped weights. It writes
``salfw/zoo/weights/<name>.safetensors`` for each model and
``salfw/zoo/weights/models.json`` describing them all, plus the shipped
sample digits ``salfw/zoo/weights/samples.npz``, and prints the accuracies. The models
(docs/architecture.md and the README's model list):

* ``mnist-mlp``: a ReLU MLP without pooling (Deep Taylor, GeoSal).
* ``mnist-cnn``: a ReLU CNN with max pooling and a global-average-pool +
  linear head (the CAM family needs that head; Zhou et al. 2016).
* ``mnist-cnn-nobias``: the same CNN without any bias (VisualBackProp,
  Bojarski et al. 2018; the GeoSal thesis's bias-free networks).
* ``mnist-cnn-offset``: bias-free, trained on ``x - 0.5`` (the GeoSal thesis's
  offset layer). The offset is not part of the saved module; it is recorded
  as ``"preprocessing": {"offset": -0.5}`` and applied by the model adapter.

Usage: ``python scripts/train_zoo.py [--only NAME ...] [--mnist-dir DIR]``.
Takes a few minutes per model on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from salfw.sdk.understanding.specs import CNN_LAYERS, MLP_LAYERS  # noqa: E402  (shared with `salfw train`)
from salfw.zoo import toolkit  # noqa: E402
from salfw.zoo.mnist import HELDOUT_SLICE, TRAIN_SLICE, default_mnist_dir, load_mnist  # noqa: E402
from salfw.zoo.samples import SAMPLES_PATH, pick_samples  # noqa: E402

WEIGHTS = REPO / "salfw" / "zoo" / "weights"
COMMAND = "python scripts/train_zoo.py"

#: name -> (summary, layers, bias, offset, epochs, lr, augment); seed and batch size are shared.
#: The CNNs need the larger rate and 30 epochs: their global-average-pool head learns slowly from
#: 8,000 images (15 epochs at 1e-3 stayed near 95%).
MODELS = {
    "mnist-mlp": ("ReLU MLP 784-128-64-10 with bias, no pooling", MLP_LAYERS, True, 0.0, 30, 1e-3, 1),
    "mnist-cnn": (
        "ReLU CNN conv32-pool-conv64-pool-conv64, global average pool + linear head, with bias",
        CNN_LAYERS, True, 0.0, 30, 3e-3, 2,
    ),
    "mnist-cnn-nobias": (
        "ReLU CNN conv32-pool-conv64-pool-conv64, global average pool + linear head, no bias",
        CNN_LAYERS, False, 0.0, 30, 3e-3, 2,
    ),
    "mnist-cnn-offset": (
        "bias-free ReLU CNN as mnist-cnn-nobias, trained on inputs offset by -0.5",
        CNN_LAYERS, False, -0.5, 30, 3e-3, 2,
    ),
}
SEED = 0
BATCH_SIZE = 64


def write_samples(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Write the shipped sample digits (salfw.zoo.samples) as uint8 pixels, labels and MNIST indices."""
    indices = pick_samples(labels)
    pixels = (images[indices, 0] * 255).round().to(torch.uint8).numpy()
    np.savez_compressed(SAMPLES_PATH, images=pixels, labels=labels[indices].numpy(), indices=indices.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(MODELS), help="train only these models")
    parser.add_argument("--mnist-dir", type=Path, default=None,
                        help="MNIST IDX directory (default: $SALFW_MNIST_DIR, else ../shared/data/mnist)")
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True)
    images, labels = load_mnist(args.mnist_dir or default_mnist_dir())
    x_train, y_train = images[TRAIN_SLICE], labels[TRAIN_SLICE]
    x_held, y_held = images[HELDOUT_SLICE], labels[HELDOUT_SLICE]

    write_samples(images, labels)
    index_path = WEIGHTS / "models.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name in args.only or MODELS:
        summary, layers, bias, offset, epochs, lr, augment = MODELS[name]
        spec = {"layers": layers, "bias": bias, "input_shape": [1, 28, 28]}
        start = time.perf_counter()
        model = toolkit.build(layers, bias=bias, seed=SEED)
        losses = toolkit.train(
            model, x_train, y_train, epochs=epochs, lr=lr, batch_size=BATCH_SIZE, seed=SEED,
            augment=augment, offset=offset,
        )
        accuracy = toolkit.evaluate(model, x_held, y_held, offset=offset)
        seconds = time.perf_counter() - start
        entry = {
            "summary": summary,
            "file": f"{name}.safetensors",
            "spec": spec,
            "bias": bias,
            "preprocessing": {"offset": offset} if offset else {},
            "input_range": [0.0, 1.0],
            "accuracy": round(accuracy, 4),
            "heldout": {"split": "t10k", "indices": [HELDOUT_SLICE.start, HELDOUT_SLICE.stop - 1], "n": len(y_held)},
            "train_indices": [TRAIN_SLICE.start, TRAIN_SLICE.stop - 1],
            "seed": SEED,
            "epochs": epochs,
            "lr": lr,
            "batch_size": BATCH_SIZE,
            "augment_max_shift": augment,
            "final_loss": round(losses[-1], 5),
            "torch": torch.__version__,
            "command": f"{COMMAND} --only {name}",
        }
        toolkit.save(model, spec, WEIGHTS / entry["file"], metadata={k: v for k, v in entry.items() if k != "spec"})
        index[name] = entry
        index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
        print(f"{name}: held-out accuracy {accuracy:.4f} on {len(y_held)} images ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
