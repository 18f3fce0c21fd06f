"""fastlayers.torch against PyTorch's own kernels: PyTorch's OpInfo and ModuleInfo samples,
gradcheck, converted models, and the adapter's documented limits."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastlayers.torch needs PyTorch (the torch extra)")
import fastlayers as fl  # noqa: E402
import fastlayers.torch as flt  # noqa: E402
from torch import nn  # noqa: E402

# Normwise relative error of a sum of K products is about sqrt(K) * eps; the samples here sum at
# most a few hundred products per output (and an RNN compounds a few steps), so these bounds leave
# a margin of 10x or more over the rounding of either side, and are far below any real error. The
# same bound also applies absolutely (error <= tol * (norm + 1)): the samples' values are O(1), so
# a gradient whose O(1) terms cancel to a small norm still carries their rounding.
NORMWISE = {torch.float32: 1e-5, torch.float64: 1e-12}
DTYPES = (torch.float32, torch.float64)

# What the adapter refuses, by design, with the ValueError message it raises: the only samples of
# PyTorch's material that may be skipped (a test fails if any other error occurs, and also if one
# of these never occurs, so the list cannot go stale).
KNOWN_LIMITS = {
    "dilation must be 1: fastlayers' max_pool2d has no dilation",
    "nonlinearity='relu': fastlayers' rnn kernel is tanh only",
}


def assert_normwise_close(actual, expected, dtype, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.double(), expected.double()
    error = torch.linalg.vector_norm(actual - expected).item()
    scale = torch.linalg.vector_norm(expected).item()
    assert error <= NORMWISE[dtype] * (scale + 1), f"{what}: normwise error {error:.3g} for norm {scale:.3g}"


def tensors_of(value):
    """The tensors of a nested output (a tensor, or tuples of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in tensors_of(v)]


def compare(run_torch, run_fastlayers, leaves, dtype, what, own_leaves=None):
    """Outputs equal, and the gradients of the same random projection of the floating outputs
    equal: with respect to ``leaves`` for both runs, or for the fastlayers run with respect to
    ``own_leaves`` (its module's parameters, in the order of the torch module's ``leaves``)."""
    expected, actual = tensors_of(run_torch()), tensors_of(run_fastlayers())
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype, f"{what} output {i}: dtype {a.dtype} != {e.dtype}"
        if e.is_floating_point():
            assert_normwise_close(a, e, dtype, f"{what} output {i}")
        else:  # max_pool2d's indices
            assert torch.equal(a, e), f"{what} output {i}"
    floating = [(a, e) for a, e in zip(actual, expected) if e.is_floating_point() and e.requires_grad]
    if not floating or not leaves:
        return
    gen = torch.Generator().manual_seed(0)
    projections = [torch.randn(e.shape, generator=gen, dtype=e.dtype) for _, e in floating]
    grads_e = torch.autograd.grad([e for _, e in floating], leaves, projections, allow_unused=True)
    grads_a = torch.autograd.grad([a for a, _ in floating], own_leaves or leaves, projections, allow_unused=True)
    for i, (ga, ge) in enumerate(zip(grads_a, grads_e)):
        assert (ga is None) == (ge is None), f"{what} gradient {i}"
        if ge is not None:
            assert_normwise_close(ga, ge, dtype, f"{what} gradient {i}")


class LimitTally:
    """Counts the samples the adapter refused with one of KNOWN_LIMITS' messages."""

    def __init__(self):
        self.hits = {}

    def run(self, call):
        try:
            # PyTorch's samples are tiny: on one thread they skip OpenMP's start-up, which costs
            # more than the work on shared CI cores (the threaded kernels have their own tests).
            with fl.threads(1):
                call()
        except ValueError as exc:
            message = next((m for m in KNOWN_LIMITS if m in str(exc)), None)
            if message is None:
                raise
            self.hits[message] = self.hits.get(message, 0) + 1
            return False
        return True


# ---------------------------------------------------------------------------- PyTorch's OpInfo samples


@pytest.fixture(scope="module")
def op_db():
    pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (the torch extra)")
    from torch.testing._internal.common_methods_invocations import op_db

    return {op.name: op for op in op_db if not op.variant_test_name}


OPINFO = {
    "nn.functional.conv2d": (flt.conv2d, set(), 1),
    # 1440 samples per dtype, repeating 72 combinations of kernel_size, stride, padding, ceil_mode
    # and dilation over 6 input shapes: every 11th sample (deterministic) still holds all 72
    # combinations and all 6 shapes, in a tenth of the time.
    "nn.functional.max_pool2d": (flt.max_pool2d, {"dilation must be 1: fastlayers' max_pool2d has no dilation"}, 11),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(OPINFO))
def test_opinfo_samples(op_db, name, dtype):
    ours, expected_limits, every = OPINFO[name]
    op = op_db[name]
    tally, ran = LimitTally(), 0
    for i, sample in enumerate(op.sample_inputs("cpu", dtype, requires_grad=True)):
        if i % every:
            continue
        leaves = [t for t in [sample.input, *sample.args] if isinstance(t, torch.Tensor) and t.requires_grad]
        what = f"{name} {dtype} sample {i}: input {tuple(sample.input.shape)} args {sample.args} {sample.kwargs}"
        ran += tally.run(lambda: compare(lambda: op.op(sample.input, *sample.args, **sample.kwargs),
                                         lambda: ours(sample.input, *sample.args, **sample.kwargs),
                                         leaves, dtype, what))
    assert set(tally.hits) == expected_limits
    assert ran >= 30, f"only {ran} samples ran"


# ---------------------------------------------------------------------------- PyTorch's ModuleInfo samples


@pytest.fixture(scope="module")
def module_db():
    pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (the torch extra)")
    from torch.testing._internal.common_modules import module_db

    return {info.module_cls: info for info in module_db}


MODULEINFO = {
    nn.Conv2d: (flt.Conv2d, set()),
    nn.MaxPool2d: (flt.MaxPool2d, set()),
    nn.RNN: (flt.RNN, {"nonlinearity='relu': fastlayers' rnn kernel is tanh only"}),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("torch_cls", list(MODULEINFO), ids=lambda c: c.__name__)
def test_moduleinfo_samples(module_db, torch_cls, dtype, training):
    ours_cls, expected_limits = MODULEINFO[torch_cls]
    info = module_db[torch_cls]
    tally, ran = LimitTally(), 0
    for i, sample in enumerate(info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                                       training=training)):
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        forward = sample.forward_input

        def run():
            torch.manual_seed(0)
            reference = torch_cls(*args, **kwargs).to(dtype).train(training)
            ours = ours_cls(*args, **kwargs).to(dtype).train(training)
            assert list(ours.state_dict()) == list(reference.state_dict())
            ours.load_state_dict(reference.state_dict())
            inputs = [a for a in forward.args if isinstance(a, torch.Tensor) and a.requires_grad]
            compare(lambda: reference(*forward.args, **forward.kwargs), lambda: ours(*forward.args, **forward.kwargs),
                    inputs + list(reference.parameters()), dtype,
                    f"{torch_cls.__name__} sample {i} {sample.desc}: {args} {kwargs}",
                    own_leaves=inputs + list(ours.parameters()))

        ran += tally.run(run)
    assert set(tally.hits) == expected_limits
    assert ran >= 3
