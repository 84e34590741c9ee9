"""Dataset scale (issue 16): ``salfw explain``/``salfw evaluate --dataset`` on 64 digits in one
process equal the in-memory ``salfw.explain``, equal a run under ``torchrun --nproc-per-node 2``,
and equal a run killed midway and resumed; a store refuses a run with other settings."""

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import salfw
from salfw.evaluation.scale import open_store
from salfw.zoo.samples import load_samples
from tests.test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["gradient", "smoothgrad"]          # smoothgrad draws random noise: seeding is exercised
SETS = ["--set", "smoothgrad.samples=8", "--seed", "3", "--chunk", "16"]
METRIC_SETS = ["--metrics", "deletion,pointing-game", "--set", "deletion.steps=8", "--seed", "3"]


def digits() -> np.ndarray:
    """64 different 8-bit digits: the 20 shipped ones, shifted and mirrored."""
    x, _ = load_samples()
    x = torch.cat([x, x.roll(2, dims=-1), x.roll(-2, dims=-2), x.flip(-1)])[:64]
    return np.round(x[:, 0].numpy() * 255).astype(np.uint8)


def arrays(store) -> dict[str, np.ndarray]:
    """Every array of a store except the timings, by path."""
    out = {}

    def walk(group, prefix):
        for name in group.group_keys():
            if prefix or name != "seconds":
                walk(group[name], f"{prefix}{name}/")
        for name in group.array_keys():
            out[prefix + name] = np.asarray(group[name][:])
    walk(open_store(store), "")
    return out


def assert_same_store(a, b):
    first, second = arrays(a), arrays(b)
    assert sorted(first) == sorted(second)
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    first, second = (open_store(store).attrs.asdict()["salfw"] for store in (a, b))
    for attrs in (first, second):
        attrs["settings"].pop("attributions", None)   # the explain store's path
    assert first == second


def table(path) -> list[list[str]]:
    with open(path) as f:
        return list(csv.reader(f))


def summary(directory) -> list[tuple]:
    with open(directory / "results.csv") as f:
        return [(r["method"], r["metric"], r["mean"], r["sem"], r["n"]) for r in csv.DictReader(f)]


def subprocess_env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scale")
    np.save(directory / "digits.npy", digits())
    np.save(directory / "labels.npy", np.arange(64) % 10)
    return directory, f"npy:{directory / 'digits.npy'}?labels={directory / 'labels.npy'}"


@pytest.fixture(scope="module")
def reference(data):
    """explain + evaluate in this process (one torch thread, as each torchrun process has)."""
    directory, spec = data
    from salfw.cli.main import main  # run_cli needs capsys, which a module fixture cannot have

    for args in (["explain", *METHODS, "--dataset", spec, "--out", str(directory / "one.zarr"), *SETS],
                 ["evaluate", "--dataset", spec, "--attributions", str(directory / "one.zarr"),
                  "--model", "builtin:mnist-cnn", *METRIC_SETS, "--out", str(directory / "one-eval")]):
        try:
            main(args)
        except SystemExit as exc:
            assert not exc.code, args
    return directory / "one.zarr", directory / "one-eval"


def test_the_store_holds_what_explain_computes_in_memory(data, reference):
    store, evaluation = reference
    x = torch.from_numpy(digits()).float()[:, None] / 255
    model = salfw.load_model("builtin:mnist-cnn")
    group = open_store(store)
    for method, params in (("gradient", {}), ("smoothgrad", {"samples": 8})):
        e = salfw.explain(method, model, x, seed=3, **params)       # all 64 at once, one seed
        assert torch.equal(torch.from_numpy(group[method][:]), e.attributions), method
        assert torch.equal(torch.from_numpy(group["target"][:]), e.targets)
    assert group["label"][:].tolist() == [i % 10 for i in range(64)]
    assert group["index"][:].tolist() == list(range(64)) and group["done"][:].all()
    assert group[METHODS[1]].chunks[0] == 16
    rows = table(evaluation / "scores.csv")
    assert rows[0] == ["index", "label", "target", "predicted", "method", "deletion", "pointing-game"]
    assert len(rows) == 1 + 64 * len(METHODS)
    deletion = salfw.evaluate("deletion", model, x, torch.from_numpy(group["gradient"][:]),
                              target=torch.from_numpy(group["target"][:]), seed=3, steps=8)
    assert [float(r[5]) for r in rows[1:65]] == deletion.double().tolist()


def test_evaluating_without_a_store_explains_the_same(data, reference, tmp_path, capsys):
    _, spec = data
    _, evaluation = reference
    code, out, err = run_cli(["evaluate", "--dataset", spec, "--methods", ",".join(METHODS), "--chunk", "16",
                              "--set", "smoothgrad.samples=8", *METRIC_SETS, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "deletion ↓" in out and "±" in out
    assert table(tmp_path / "scores.csv") == table(evaluation / "scores.csv")
    assert summary(tmp_path) == summary(evaluation)


def test_two_processes_under_torchrun_give_identical_results(data, reference, tmp_path):
    _, spec = data
    store, evaluation = reference
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "salfw.cli.main"]
    for args in (["explain", *METHODS, "--dataset", spec, "--out", str(tmp_path / "two.zarr"), *SETS],
                 ["evaluate", "--dataset", spec, "--attributions", str(tmp_path / "two.zarr"),
                  "--model", "builtin:mnist-cnn", *METRIC_SETS, "--out", str(tmp_path / "two-eval")]):
        done = subprocess.run([*launch, *args], capture_output=True, text=True, env=subprocess_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "in 2 processes" in done.stdout + done.stderr
    assert_same_store(tmp_path / "two.zarr", store)
    assert_same_store(tmp_path / "two-eval" / "scores.zarr", evaluation / "scores.zarr")
    assert table(tmp_path / "two-eval" / "scores.csv") == table(evaluation / "scores.csv")
    assert summary(tmp_path / "two-eval") == summary(evaluation)
    # rank 0's refusal stops both processes with the same one-line error; neither waits for the other
    refused = subprocess.run([*launch, "explain", *METHODS, "--dataset", spec, "--out", str(tmp_path / "two.zarr"),
                              *SETS, "--seed", "4"], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert refused.returncode != 0 and refused.stderr.count("error: ") == 2 and "seed:" in refused.stderr


KILL_MIDWAY = textwrap.dedent("""
    import os, signal, sys
    from salfw.cli.main import main
    from salfw.evaluation import scale

    computed = []
    compute = scale.ExplainJob.compute

    class KillWhileWriting(dict):
        # the arrays of one chunk: the process is killed after the first is written
        def items(self):
            for i, item in enumerate(super().items()):
                if i == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield item

    def compute_then_die(self, *args, **kwargs):
        outputs, seconds = compute(self, *args, **kwargs)
        computed.append(1)
        return (KillWhileWriting(outputs) if len(computed) == 3 else outputs), seconds  # probe, chunk 0, chunk 1

    scale.ExplainJob.compute = compute_then_die
    main(sys.argv[1:])
""")


def test_a_killed_run_resumes_to_identical_results(data, reference, tmp_path, capsys):
    _, spec = data
    store, _ = reference
    args = ["explain", *METHODS, "--dataset", spec, "--out", str(tmp_path / "killed.zarr"), *SETS]
    killed = subprocess.run([sys.executable, "-c", KILL_MIDWAY, *args], capture_output=True, text=True,
                            env=subprocess_env(), timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    group = open_store(tmp_path / "killed.zarr")
    assert group["done"][:].tolist() == [True, False, False, False]
    assert group["index"][16:32].tolist() == list(range(16, 32))   # chunk 1 was partly written
    code, out, err = run_cli(args, capsys)
    assert code == 0 and "(1 already done)" in out, err
    assert_same_store(tmp_path / "killed.zarr", store)


def test_a_store_refuses_other_settings(data, reference, tmp_path, capsys):
    _, spec = data
    store, evaluation = reference
    before = arrays(store)
    for change, named in ((["--seed", "4"], "seed"), (["--set", "smoothgrad.samples=9"], "methods"),
                          (["--chunk", "32"], "chunk"), (["--target", "label"], "target")):
        args = ["explain", *METHODS, "--dataset", spec, "--out", str(store), *SETS, *change]
        code, out, err = run_cli(args, capsys)
        assert code == 2 and "written with other settings" in err and f"{named}:" in err, err
    code, out, err = run_cli(["explain", *METHODS, "--dataset", f"{spec}&stop=32", "--out", str(store), *SETS],
                             capsys)
    assert code == 2 and "dataset:" in err
    code, out, err = run_cli(["explain", *METHODS, "--dataset", spec, "--out", str(evaluation / "scores.zarr"),
                              *SETS], capsys)
    assert code == 2 and '"evaluate" in the store' in err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    code, out, err = run_cli(["explain", "gradient", "--dataset", spec, "--out", str(tmp_path / "notes")], capsys)
    assert code == 2 and "is not a salfw store" in err
    after = arrays(store)
    assert all(np.array_equal(before[k], after[k]) for k in before)
