"""Concurrent explanations on one shared model: results equal the sequential ones, the model is restored.

The guard (:func:`salfw.core.guard.preserved`) is re-entrant per module: the
first call in saves the state, the last call out restores it; module hooks a
method adds act only on forward passes run by the thread that added them. The
deterministic tests below pin each half with events (no reliance on thread
scheduling); the threads × methods test then checks the whole on real methods.
"""

import threading

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

import salfw
from salfw.core.guard import model_fingerprint, preserved, same_fingerprint
from salfw.sdk.backprop import deconvnet_relus, guided_relus, target_gradient
from salfw.sdk.layers import captured_output, trace

WAIT = 30  # seconds; only reached when a thread is stuck, which fails the test


@pytest.fixture()
def model():
    white = salfw.load_model("builtin:mnist-cnn")
    white.module.train()  # the guard must restore training mode too
    return white


def digits(n=2, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def in_thread(body):
    """Start ``body`` in a thread; return (thread, errors list) so the test can join and check it."""
    errors: list[BaseException] = []

    def run():
        try:
            body()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def finish(thread, errors):
    thread.join(WAIT)
    assert not thread.is_alive(), "a thread is stuck"
    if errors:
        raise errors[0]


def state(module):
    return [m.training for m in module.modules()], [p.requires_grad for p in module.parameters()]


# -- the guard ----------------------------------------------------------------------------------------
def test_nested_guard_restores_only_at_the_outermost_exit(model):
    module = model.module
    before = model_fingerprint(module)
    with preserved(module):
        with preserved(module):
            pass
        # the inner exit must not restore training mode and requires_grad early
        assert not any(state(module)[0]) and not any(state(module)[1])
    assert same_fingerprint(before, model_fingerprint(module))


@pytest.mark.parametrize("shared", ["the same module", "a model sharing its first layers"])
def test_overlapping_guards_in_two_threads_restore_once_both_have_left(model, shared):
    module = model.module
    other_module = module if shared == "the same module" else nn.Sequential(*module[:4], nn.Flatten())
    before = model_fingerprint(module)
    entered, release = threading.Event(), threading.Event()

    def other():
        with preserved(other_module):
            entered.set()
            assert release.wait(WAIT)

    with preserved(module):
        thread, errors = in_thread(other)
        assert entered.wait(WAIT)
    # this thread left first: the other one is still explaining, so its layers stay in eval/no-grad
    assert not any(state(other_module)[0]) and not any(state(other_module)[1])
    release.set()
    finish(thread, errors)
    assert same_fingerprint(before, model_fingerprint(module))


def test_a_concurrent_call_leaves_the_hooks_of_another_in_place(model):
    """One call's exit must not remove the hooks another call still uses; leftovers go at the last exit."""
    module = model.module
    before = model_fingerprint(module)
    hooked, left = threading.Event(), threading.Event()
    seen: list[str] = []

    def other():
        with preserved(module):
            module[1].register_forward_hook(lambda *a: seen.append("module"))  # a hook a method forgot to remove
            module_globals.register_module_forward_hook(lambda *a: seen.append("global"))  # and a global one
            hooked.set()
            assert left.wait(WAIT)
            model.forward(digits(1))

    with preserved(module), preserved(nn.Linear(2, 2)):  # another model's guard must not remove the global hook
        thread, errors = in_thread(other)
        assert hooked.wait(WAIT)
    left.set()  # both guards above were entered first and have left; the other call's hooks must still act
    finish(thread, errors)
    assert "module" in seen and "global" in seen
    assert same_fingerprint(before, model_fingerprint(module))  # the leftovers are gone now


# -- hooks act only for the thread that added them ----------------------------------------------------
def test_rectifier_and_capture_hooks_leave_other_threads_forward_passes_alone(model):
    x, targets = digits(), torch.tensor([3, 7])
    with preserved(model.module):
        plain = target_gradient(model, x, targets)
        with guided_relus(model):
            guided = target_gradient(model, x, targets)
        with deconvnet_relus(model):
            deconv = target_gradient(model, x, targets)
        assert not torch.equal(plain, guided) and not torch.equal(plain, deconv)

        for rule in (guided_relus, deconvnet_relus):
            active, done = threading.Event(), threading.Event()
            got: dict[str, torch.Tensor] = {}

            def other(rule=rule, active=active, done=done, got=got):
                with rule(model), captured_output(model.module[7], "7") as store:
                    active.set()
                    assert done.wait(WAIT)
                    got["own"] = target_gradient(model, x, targets)
                    got["calls"] = torch.tensor(len(store))

            thread, errors = in_thread(other)
            assert active.wait(WAIT)
            here = target_gradient(model, x, targets)  # the other thread's hooks are installed now
            calls, _ = trace(model, x[:1])
            done.set()
            finish(thread, errors)
            assert torch.equal(here, plain), f"{rule.__name__} in another thread changed this thread's gradient"
            assert torch.equal(got["own"], guided if rule is guided_relus else deconv), f"{rule.__name__} failed"
            assert int(got["calls"]) == 1  # the capture saw its own forward pass only
            assert len(calls) == len(list(model.module.modules())) - 1  # the trace saw each layer once


# -- the whole: threads × methods ---------------------------------------------------------------------
METHODS = {
    "gradient": {},
    "input-x-gradient": {},
    "integrated-gradients": {"steps": 8},
    "smoothgrad": {"samples": 4},
    "guided-backprop": {},
    "deconvnet": {},
    "grad-cam": {},
    "guided-grad-cam": {},
    "grad-cam-plus-plus": {},
    "cam": {},
    "visual-backprop": {},
    "lrp": {},
    "deeplift": {},
    "excitation-backprop": {},
    "local-linear": {},
    "occlusion": {"window": [7, 7], "stride": [7, 7]},
}


@pytest.mark.filterwarnings("ignore:visual-backprop is designed for ReLU CNNs without biases")
def test_threads_times_methods_equal_the_sequential_results(model):
    threads = 4
    x, targets = digits(2, seed=1), torch.tensor([1, 8])
    names = list(METHODS)
    expected = {name: salfw.explain(name, model, x, target=targets, **METHODS[name]).attributions
                for name in names}
    model.module.register_forward_hook(lambda *a: None)  # a user's own hook stays
    before = model_fingerprint(model.module)
    barrier = threading.Barrier(threads)
    results: dict[tuple[int, str], torch.Tensor] = {}
    errors: list[str] = []

    def worker(index):
        try:
            for step in range(len(names)):  # every thread runs every method, in a rotated order
                name = names[(index + step) % len(names)]
                barrier.wait(WAIT)  # all threads start their next explanation together
                results[index, name] = salfw.explain(name, model, x, target=targets, **METHODS[name]).attributions
        except threading.BrokenBarrierError:
            pass  # another thread failed and broke the barrier; its error is reported
        except Exception as exc:
            errors.append(f"thread {index}: {exc!r}")
            barrier.abort()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(WAIT * 4)
    assert not any(thread.is_alive() for thread in pool), "a thread is stuck"
    assert not errors, "\n".join(errors)
    wrong = [f"thread {i}: {name} (max diff {(a - expected[name]).abs().max().item():.3g})"
             for (i, name), a in sorted(results.items())
             if not torch.allclose(a, expected[name], rtol=1e-5, atol=1e-6 * expected[name].abs().max().item())]
    assert not wrong, "concurrent results differ from the sequential ones:\n" + "\n".join(wrong)
    assert len(results) == threads * len(names)
    assert same_fingerprint(before, model_fingerprint(model.module)), "the model was changed"
