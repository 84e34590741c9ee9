"""Whole datasets: explain and evaluate chunk by chunk into a zarr store, resumably, in one
process or in many under ``torch.distributed`` (``torchrun``); see docs/scale.md.

The store (a zarr group on disk; ``zarr.open(STORE)["lrp"][i]`` reads one map) holds, for
``N`` samples cut into chunks of ``chunk`` samples:

* ``<method>``: the attributions, (N, ...) float32, one zarr chunk per sample chunk
  (``explain_dataset``);
* ``scores/<method>/<metric>``: one score per sample, float64 (``evaluate_dataset``);
* ``index``, ``label`` (-1 where the data has none), ``target``, ``predicted`` and
  ``probability`` (the model's probability of the target class): the per-sample metadata;
* ``seconds/<method>``: each chunk's explanation time (the only thing that differs between
  two runs of the same command);
* ``done``: one flag per chunk, written last, so a chunk counts only once all of it is on disk;
* ``attrs["salfw"]``: the settings (command, salfw version, model, dataset, methods and metrics
  with all their parameters, seed, target rule, chunk size, device type), the pairs skipped
  and ``attrs["names"]``, per-sample names where the dataset has them (file paths).

Resuming: the same command on the same store skips the chunks marked done and computes the
rest; a command with other settings refuses to write into it. Randomness is seeded per sample,
never per rank or per batch: each method and metric runs with the same ``seed`` on every chunk,
and every method draws its random numbers per sample shape (the conformance suite checks that
a batch equals its samples one by one), so a sample's result depends on the sample and the
seed, not on the other samples of its chunk, its rank or the number of processes. The chunk
size is part of the settings, so every run computes the very same batches: results are
identical bit for bit between one process, many, and a resumed run (on the same kind of
device).

Distributed: when torchrun's environment variables (``RANK``, ``WORLD_SIZE``) are set, the
runner joins the process group (gloo on CPU, NCCL on CUDA; or uses one already initialised).
The chunks not yet done are dealt round-robin (rank ``r`` of ``W`` takes the ``r``-th, the
``r + W``-th, ... of them; on a fresh store, chunks ``i`` with ``i % W == r``), so a resumed
run shares what is left evenly whoever did the rest. Rank 0 creates or checks the store first,
shows the progress over all chunks (read from the ``done`` flags) and, after a barrier, writes
the summary. Each chunk is a separate set of zarr chunk files, so the ranks write without
locks and without a shared process for the data.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from salfw.core.api import as_batch, evaluate_full, explain, make_method, make_metric
from salfw.core.api import methods as registered_methods
from salfw.core.context import Context
from salfw.core.contracts import Dataset
from salfw.core.errors import InputError, SalfwError
from salfw.core.explanation import Explanation
from salfw.core.models import Model, WhiteBox
from salfw.core.params import params_to_json

from .harness import Comparison, _not_applicable, object_masks, summarise, write_comparison

#: Samples per chunk: the unit of work, of resumption and of a zarr chunk.
CHUNK = 64
#: Version of the store layout (part of the settings).
FORMAT = 1
#: The per-sample metadata arrays, beside the attributions and scores.
METADATA = ("index", "label", "target", "predicted", "probability")
TARGETS = ("predicted", "label")


class StoreError(SalfwError):
    """A store that cannot be written: other settings, not a salfw store, or incomplete."""


# -- distributed -----------------------------------------------------------------------
@dataclasses.dataclass
class Processes:
    """This process's place among the run's processes (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]


@contextlib.contextmanager
def processes(device: torch.device) -> Iterator[Processes]:
    """Join torchrun's process group when its environment is set (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``/``MASTER_PORT``): NCCL for a CUDA ``device``, gloo otherwise. A group the
    caller initialised is used as it is and left open; one initialised here is destroyed."""
    import torch.distributed as dist

    owned = False
    if not dist.is_initialized() and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owned = True
    try:
        if dist.is_initialized():
            yield Processes(dist.get_rank(), dist.get_world_size(), device)
        else:
            yield Processes(device=device)
    finally:
        if owned:
            dist.destroy_process_group()


def local_device(name: str | None) -> torch.device:
    """``--device``: None or "auto" is CUDA when available, else the CPU; under torchrun a CUDA
    device is the process's own GPU (``LOCAL_RANK``)."""
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available here")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def on_device(model: Model, device: torch.device) -> Model:
    """``model`` on ``device`` (the CLI's ``--device``): a copy of the adapter over the module moved
    there (``nn.Module.to`` moves it in place); a black box is returned as it is, its callable
    decides where it runs."""
    if not isinstance(model, WhiteBox) or model.device == device:
        return model
    moved = copy.copy(model)  # every adapter setting kept (preprocessing, selection, batch size)
    moved.module = model.module.to(device)
    moved._device = device  # what WhiteBox(device=...) sets
    return moved


# -- settings ------------------------------------------------------------------------------
def _version() -> str:
    return importlib.metadata.version("salfw")


def model_settings(model: Model, spec: str | None) -> dict[str, Any]:
    """What identifies a model: its spec (when loaded from one), its description without the
    class count (known only after a first pass) and, for a white box, a digest of its weights."""
    described = {k: v for k, v in model.describe().items() if k != "num_classes"}
    digest = None
    if isinstance(model, WhiteBox):
        h = hashlib.sha256()
        for name, tensor in model.module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
    return {"spec": spec, **described, "weights_sha256": digest, "device": model.device.type}


def dataset_settings(dataset: Dataset) -> dict[str, Any]:
    return {"name": dataset.name, "location": dataset.location, "params": params_to_json(dataset.params),
            "samples": len(dataset)}


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _differences(stored: dict, ours: dict) -> str:
    keys = [k for k in dict.fromkeys([*stored, *ours]) if stored.get(k) != ours.get(k)]

    def short(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return "; ".join(f"{k}: {short(stored.get(k))} in the store, {short(ours.get(k))} now" for k in keys)


# -- the store -------------------------------------------------------------------------------
def open_store(path: str | os.PathLike, mode: Literal["r", "r+", "w"] = "r") -> Any:
    """The zarr group at ``path`` (typed ``Any``: zarr's own annotations do not follow a group's
    members' types)."""
    import zarr

    return zarr.open_group(str(path), mode=mode)


def _is_salfw_store(path: Path) -> bool:
    try:
        group = open_store(path)
    except Exception:  # not a zarr group at all (zarr 2 and 3 raise different errors)
        return False
    return "salfw" in group.attrs


def _create(path: Path, settings: dict, outputs: dict[str, np.ndarray], samples: int, chunk: int,
            extra: dict[str, Any]) -> None:
    """A new store for ``samples`` samples: one array per output (shape and dtype from the
    probe), the ``seconds`` arrays and the ``done`` flags; the settings are written last, so a
    store without them is an unfinished creation and is created again."""
    group = open_store(path, "w")
    chunks = math.ceil(samples / chunk)
    for name, value in outputs.items():
        parent = group
        *folders, leaf = name.split("/")
        for folder in folders:
            parent = parent.require_group(folder)
        parent.zeros(name=leaf, shape=(samples, *value.shape[1:]), chunks=(chunk, *value.shape[1:]),
                     dtype=value.dtype)
    seconds = group.require_group("seconds")
    for method in settings["methods"]:
        seconds.zeros(name=method, shape=(chunks,), chunks=(1,), dtype="float64")
    group.zeros(name="done", shape=(chunks,), chunks=(1,), dtype="bool")
    group.attrs.update({**extra, "salfw": {"settings": settings, **extra.get("salfw", {})}})


def _check(path: Path, settings: dict) -> Any:
    """Open an existing store for writing, refusing one written with other settings."""
    group = open_store(path, "r+")
    stored = group.attrs["salfw"]["settings"]
    if stored != settings:
        raise StoreError(f"{path} was written with other settings ({_differences(stored, settings)}); "
                         f"resume with the same command, or write to another store")
    return group


@dataclasses.dataclass
class Run:
    """What one run did: samples and chunks in all, those already done when it started, the
    chunks this rank computed, and its wall time (rank 0's includes waiting for the others)."""

    store: Path
    samples: int
    chunks: int
    resumed: int
    resumed_samples: int
    computed: int
    seconds: float
    processes: int
    rank: int


class _Job:
    """A per-chunk computation: ``settings`` identify it; ``compute`` returns the chunk's arrays
    by name and each method's seconds. On the probe (the first sample, ``probe=True``, which
    gives the arrays' shapes) it records in ``skipped`` the pairs that do not apply."""

    settings: dict[str, Any]
    model: Model
    dataset: Dataset
    skipped: list[dict[str, Any]]

    def compute(self, x: torch.Tensor, labels: torch.Tensor | None, start: int, stop: int, probe: bool = False
                ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        raise NotImplementedError

    def metadata(self, x: torch.Tensor, labels: torch.Tensor | None, start: int, stop: int,
                 target: Any) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """``(targets, metadata arrays)`` for samples ``start..stop-1``."""
        probabilities = self.model.probabilities(x)
        predicted = probabilities.argmax(dim=1)
        if target == "predicted":
            targets = predicted
        elif target == "label":
            if labels is None:
                raise InputError(f"--target label: dataset '{self.dataset.name}:{self.dataset.location}' "
                                 f"has no labels")
            targets = labels.to(predicted.device)
        else:
            if not 0 <= int(target) < probabilities.shape[1]:
                raise InputError(f"target {target} is not a class of this model (0..{probabilities.shape[1] - 1})")
            targets = torch.full_like(predicted, int(target))
        label = labels if labels is not None else torch.full((stop - start,), -1, dtype=torch.int64)
        return targets, {
            "index": np.arange(start, stop, dtype=np.int64), "label": label.cpu().numpy().astype(np.int64),
            "target": targets.cpu().numpy().astype(np.int64), "predicted": predicted.cpu().numpy().astype(np.int64),
            "probability": probabilities.gather(1, targets[:, None])[:, 0].double().cpu().numpy()}


def run_chunks(job: _Job, store: str | os.PathLike, chunk: int = CHUNK, progress: bool | None = False,
               description: str = "") -> Run:
    """Compute every chunk of ``job.dataset`` not yet done into ``store``, sharing the chunks
    among torchrun's processes; see the module's docstring."""
    path = Path(store)
    samples = len(job.dataset)
    chunks = math.ceil(samples / chunk)
    try:
        with processes(job.model.device) as procs:
            started = time.perf_counter()
            error: SalfwError | None = None
            if procs.rank == 0:
                try:
                    _prepare(job, path, samples, chunk)
                except SalfwError as exc:
                    error = exc
            error = procs.broadcast(error)  # every rank stops with rank 0's mistake, none waits
            if error is not None:
                raise error
            group = _check(path, job.settings)
            job.skipped = group.attrs["salfw"].get("skipped", [])
            done = group["done"]
            # rank 0's view of what is done, before anyone computes: every rank deals the same list
            finished = procs.broadcast(np.asarray(done[:], dtype=bool) if procs.rank == 0 else None)
            mine = [i for i in range(chunks) if not finished[i]][procs.rank::procs.world]
            show = bool(os.isatty(2) if progress is None else progress) and procs.rank == 0
            bar = Context(progress=show).progress(samples, description, unit="img")
            shown = _samples_done(finished, chunk, samples)
            bar.update(shown)
            arrays: dict[str, Any] = {}

            def handle(name: str) -> Any:
                """An array of the store, opened once (each lookup reads its metadata)."""
                if name not in arrays:
                    arrays[name] = group[name]
                return arrays[name]
            try:
                for i in mine:
                    start, stop = i * chunk, min(samples, (i + 1) * chunk)
                    x, labels = job.dataset.read(start, stop)
                    outputs, seconds = job.compute(x, labels, start, stop)
                    for name, value in outputs.items():
                        handle(name)[start:stop] = value
                    for method, took in seconds.items():
                        handle(f"seconds/{method}")[i] = took
                    done[i] = True  # last: the chunk counts once all of it is written
                    if show:  # everyone's progress, from the flags (other ranks write them too)
                        now = _samples_done(np.asarray(done[:], dtype=bool), chunk, samples) \
                            if procs.distributed else shown + stop - start
                        bar.update(now - shown)
                        shown = now
                procs.barrier()
                bar.update(samples - shown)
            finally:
                bar.close()
            return Run(path, samples, chunks, int(finished.sum()), _samples_done(finished, chunk, samples), len(mine),
                       time.perf_counter() - started, procs.world, procs.rank)
    finally:
        job.dataset.close()


def _samples_done(done: np.ndarray, chunk: int, samples: int) -> int:
    sizes = np.minimum(chunk, samples - chunk * np.arange(done.size))
    return int(sizes[done].sum())


def _prepare(job: _Job, path: Path, samples: int, chunk: int) -> None:
    """Rank 0: check an existing store's settings, or create the store from a one-sample probe
    (which gives the arrays' shapes and the pairs that do not apply)."""
    if path.exists() and _is_salfw_store(path):
        _check(path, job.settings)
        return
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        try:
            group = open_store(path)
            unfinished = "salfw" not in group.attrs and "done" in group
        except Exception:  # not a zarr group at all (zarr 2 and 3 raise different errors)
            unfinished = False
        if not unfinished:
            raise StoreError(f"{path} exists and is not a salfw store; choose another --out")
    x, labels = job.dataset.read(0, 1)
    job.skipped = []
    outputs, _ = job.compute(x, labels, 0, 1, probe=True)
    names = job.dataset.names()
    extra: dict[str, Any] = {"salfw": {"skipped": job.skipped, "samples": samples, "chunk": chunk}}
    if names is not None:
        extra["names"] = names
    _create(path, job.settings, outputs, samples, chunk, extra)


# -- explain ---------------------------------------------------------------------------------
class ExplainJob(_Job):
    def __init__(self, methods: list[str], model: Model, dataset: Dataset, *, model_spec: str | None = None,
                 method_params: dict[str, dict] | None = None, seed: int = 0, target: Any = "predicted",
                 chunk: int = CHUNK):
        method_params = method_params or {}
        clash = [m for m in methods if m in (*METADATA, "done", "seconds", "scores")]
        if clash:
            raise InputError(f"method name(s) {', '.join(clash)} clash with the store's own arrays")
        self.methods, self.given = methods, {m: dict(method_params.get(m, {})) for m in methods}
        self.instances = {m: make_method(m, **self.given[m]) for m in methods}
        self.model, self.dataset, self.seed, self.target = model, dataset, int(seed), _target_rule(target)
        self.skipped = []
        self.settings = _canonical({
            "command": "explain", "format": FORMAT, "salfw": _version(), "model": model_settings(model, model_spec),
            "dataset": dataset_settings(dataset), "chunk": int(chunk), "seed": self.seed, "target": self.target,
            "methods": {m: params_to_json(i.params) for m, i in self.instances.items()}})

    def compute(self, x: torch.Tensor, labels: torch.Tensor | None, start: int, stop: int, probe: bool = False
                ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        batch = as_batch(self.model, x)
        targets, outputs = self.metadata(batch, labels, start, stop, self.target)
        seconds = {}
        for method in self.methods:
            e = explain(method, self.model, batch, target=targets, seed=self.seed, progress=False,
                        **self.given[method])
            outputs[method] = e.attributions.float().cpu().numpy()
            seconds[method] = e.meta["seconds"]
        return outputs, seconds


def _target_rule(target: Any) -> Any:
    if target in TARGETS:
        return target
    try:
        return int(target)
    except (TypeError, ValueError):
        raise InputError(f"target must be 'predicted', 'label' or a class index, got {target!r}") from None


def explain_dataset(methods: str | list[str], model: Model, dataset: Dataset, store: str | os.PathLike, *,
                    model_spec: str | None = None, method_params: dict[str, dict] | None = None, seed: int = 0,
                    target: Any = "predicted", chunk: int = CHUNK, progress: bool | None = False) -> Run:
    """Explain every sample of ``dataset`` with each method into the zarr ``store``.

    ``target``: "predicted" (the model's class, as ``salfw.explain(target=None)``), "label" (the
    dataset's labels) or a class index. ``method_params`` maps a method to its parameters.
    Resumes a store written by the same call; refuses one written with other settings.
    """
    methods = [methods] if isinstance(methods, str) else list(methods)
    return run_chunks(ExplainJob(methods, model, dataset, model_spec=model_spec, method_params=method_params,
                                 seed=seed, target=target, chunk=chunk), store, chunk, progress, "explaining")


# -- evaluate --------------------------------------------------------------------------------
class EvaluateJob(_Job):
    def __init__(self, methods: list[str], metrics: list[str], model: Model, dataset: Dataset, *,
                 model_spec: str | None = None, method_params: dict[str, dict] | None = None,
                 metric_params: dict[str, dict] | None = None, seed: int = 0, target: Any = "predicted",
                 attributions: str | os.PathLike | None = None, chunk: int = CHUNK):
        method_params, metric_params = method_params or {}, metric_params or {}
        self.model, self.dataset, self.seed = model, dataset, int(seed)
        self.metric_given = {m: dict(metric_params.get(m, {})) for m in metrics}
        self.metrics = {m: make_metric(m, **self.metric_given[m]) for m in metrics}
        self.skipped = []
        self.source: Any = None
        if attributions is not None:
            self.source, source_settings = _explained(attributions, model, dataset, seed)
            unknown = [m for m in methods if m not in source_settings["methods"]]
            if unknown:
                raise InputError(f"{attributions} holds no attributions of {', '.join(unknown)}; it has "
                                 f"{', '.join(source_settings['methods'])}")
            self.method_json = {m: source_settings["methods"][m] for m in methods}
            self.target = source_settings["target"]
            chunk = source_settings["chunk"]
        else:
            self.method_given = {m: dict(method_params.get(m, {})) for m in methods}
            self.method_json = {m: params_to_json(make_method(m, **self.method_given[m]).params) for m in methods}
            self.target = _target_rule(target)
        self.methods = methods
        self.settings = _canonical({
            "command": "evaluate", "format": FORMAT, "salfw": _version(), "model": model_settings(model, model_spec),
            "dataset": dataset_settings(dataset), "chunk": int(chunk), "seed": self.seed, "target": self.target,
            "methods": self.method_json, "metrics": {m: params_to_json(i.params) for m, i in self.metrics.items()},
            "attributions": None if attributions is None else str(Path(attributions).resolve())})
        self.chunk = int(chunk)

    def compute(self, x: torch.Tensor, labels: torch.Tensor | None, start: int, stop: int, probe: bool = False
                ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        batch = as_batch(self.model, x)
        targets, outputs = self.metadata(batch, labels, start, stop, self.target)
        skip = {(s["method"], s["metric"]) for s in self.skipped}
        seconds = {}
        for method in self.methods:
            if self.source is not None:
                if self.source["target"][start:stop].tolist() != targets.tolist():
                    raise StoreError(f"the stored targets differ from the model's on samples {start}..{stop - 1}")
                stored = torch.from_numpy(np.asarray(self.source[method][start:stop])).to(batch)
                explanation = Explanation(stored, targets, method, registered_methods()[method].kind,
                                          self.method_json[method], {}, batch, self.model.input_range)
                seconds[method] = float(self.source["seconds"][method][start // self.chunk])
            else:
                explanation = explain(method, self.model, batch, target=targets, seed=self.seed, progress=False,
                                      **self.method_given[method])
                seconds[method] = explanation.meta["seconds"]
            for metric, instance in self.metrics.items():
                if (method, metric) in skip:
                    continue
                cls = type(instance)
                reason = _not_applicable(cls, metric, self.model, batch)
                if reason is None:
                    mask = object_masks(batch, self.model.input_range) if "mask" in cls.needs else None
                    try:
                        values, _ = evaluate_full(metric, self.model, batch, explanation, targets, self.seed,
                                                  mask=mask, progress=False, **self.metric_given[metric])
                    except SalfwError as exc:
                        if not probe:
                            raise
                        reason = str(exc).splitlines()[0]
                if reason is not None:
                    if not probe:  # a pair that applied to the probe but not here: a data-dependent failure
                        raise InputError(f"{method} / {metric} on samples {start}..{stop - 1}: {reason}")
                    self.skipped.append({"method": method, "metric": metric, "reason": reason})
                    continue
                outputs[f"scores/{method}/{metric}"] = values.detach().double().cpu().numpy()
        return outputs, seconds


def _explained(store: str | os.PathLike, model: Model, dataset: Dataset, seed: int) -> tuple[Any, dict]:
    """An explain store's group and settings, checked to be complete and to match ``model``,
    ``dataset`` and ``seed``."""
    path = Path(store)
    if not (path.exists() and _is_salfw_store(path)):
        raise StoreError(f"{store} is not a salfw store written by 'salfw explain'")
    group = open_store(path)
    settings = group.attrs["salfw"]["settings"]
    if settings["command"] != "explain":
        raise StoreError(f"{store} was written by 'salfw {settings['command']}', not 'salfw explain'")
    ours = _canonical({"model": model_settings(model, settings["model"]["spec"]),
                       "dataset": dataset_settings(dataset), "seed": int(seed)})
    theirs = {key: settings[key] for key in ours}
    if ours != theirs:
        raise StoreError(f"{store} explains another model, dataset or seed ({_differences(theirs, ours)})")
    done = np.asarray(group["done"][:], dtype=bool)
    if not done.all():
        raise StoreError(f"{store} is unfinished ({int(done.sum())} of {done.size} chunks); run the same "
                         f"'salfw explain' again to finish it")
    return group, settings


def evaluate_dataset(methods: str | list[str], metrics: str | list[str], model: Model, dataset: Dataset,
                     out: str | os.PathLike, *, model_spec: str | None = None,
                     method_params: dict[str, dict] | None = None, metric_params: dict[str, dict] | None = None,
                     seed: int = 0, target: Any = "predicted", attributions: str | os.PathLike | None = None,
                     chunk: int = CHUNK, progress: bool | None = False) -> tuple[Run, Comparison | None]:
    """Score every sample of ``dataset`` with each metric for each method: the per-sample scores
    go to the zarr store ``out/scores.zarr`` (resumable, shared among torchrun's processes), then
    rank 0 writes ``out/scores.csv`` (one row per sample and method) and the summary
    ``out/results.{csv,json,md}`` (mean ± standard error). ``attributions``: an explain store of
    the same model, dataset and seed to score instead of explaining again. Returns the run and,
    on rank 0, the summary (None on the other ranks)."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    job = EvaluateJob(methods, metrics, model, dataset, model_spec=model_spec, method_params=method_params,
                      metric_params=metric_params, seed=seed, target=target, attributions=attributions, chunk=chunk)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    run = run_chunks(job, directory / "scores.zarr", job.chunk, progress, "evaluating")
    if run.rank != 0:
        return run, None
    return run, write_scores(directory, job)


def write_scores(directory: Path, job: EvaluateJob) -> Comparison:
    """``scores.csv`` (streamed chunk by chunk) and the summary tables, from the finished store."""
    group = open_store(directory / "scores.zarr")
    samples = group["index"].shape[0]
    chunk = job.chunk
    skipped = {(s["method"], s["metric"]) for s in job.skipped}
    pairs = [(m, k) for m in job.methods for k in job.metrics if (m, k) not in skipped]
    with open(directory / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "target", "predicted", "method", *job.metrics])
        for method in job.methods:
            for start in range(0, samples, chunk):
                rows = slice(start, min(samples, start + chunk))
                meta = [np.asarray(group[name][rows]) for name in ("index", "label", "target", "predicted")]
                values = {k: np.asarray(group["scores"][method][k][rows]) for m, k in pairs if m == method}
                for j in range(len(meta[0])):
                    writer.writerow([*(int(a[j]) for a in meta), method,
                                     *(repr(float(values[k][j])) if k in values else "" for k in job.metrics)])
    result = Comparison(settings={"methods": job.methods, "metrics": list(job.metrics), "samples": samples,
                                  "seed": job.seed, "dataset": job.settings["dataset"]},
                        skipped=[{"model": _model_name(job), **s} for s in job.skipped])
    for method in job.methods:
        per_sample = float(np.asarray(group["seconds"][method][:]).sum()) / samples
        for metric, instance in job.metrics.items():
            if (method, metric) in pairs:
                scores = torch.from_numpy(np.asarray(group["scores"][method][metric][:]))
                result.rows.append({"model": _model_name(job), "method": method, "metric": metric,
                                    **summarise(scores), "higher_is_better": type(instance).higher_is_better,
                                    "method_seconds_per_sample": per_sample})
    write_comparison(result, directory)
    return result


def _model_name(job: _Job) -> str:
    spec = job.settings["model"]["spec"]
    return spec.split(":", 1)[-1] if spec else type(job.model).__name__
