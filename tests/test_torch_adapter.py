"""fastlayers.torch against PyTorch's own kernels: PyTorch's OpInfo and ModuleInfo samples,
gradcheck, converted models, and the adapter's documented limits."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastlayers.torch needs PyTorch (the torch extra)")
import fastlayers as fl  # noqa: E402
import fastlayers.torch as flt  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.modules.utils import _pair  # noqa: E402

# Normwise relative error of a sum of K products is about sqrt(K) * eps; the samples here sum at
# most a few hundred products per output (and an RNN compounds a few steps), so these bounds leave
# a margin of 10x or more over the rounding of either side, and are far below any real error. The
# same bound also applies absolutely (error <= tol * (norm + 1)): the samples' values are O(1), so
# a gradient whose O(1) terms cancel to a small norm still carries their rounding.
NORMWISE = {torch.float32: 1e-5, torch.float64: 1e-12}
DTYPES = (torch.float32, torch.float64)

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


def run_sample(call):
    # PyTorch's samples are tiny: on one thread they skip OpenMP's start-up, which costs more
    # than the work on shared CI cores (the threaded kernels have their own tests).
    with fl.threads(1):
        call()


# ---------------------------------------------------------------------------- PyTorch's OpInfo samples


@pytest.fixture(scope="module")
def op_db():
    pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (the torch extra)")
    from torch.testing._internal.common_methods_invocations import op_db

    return {op.name: op for op in op_db if not op.variant_test_name}


# Every sample runs: the adapter expresses all of them (none is skipped).
OPINFO = {
    "nn.functional.conv2d": (flt.conv2d, 1),
    # 1440 samples per dtype, repeating 72 combinations of kernel_size, stride, padding, ceil_mode
    # and dilation over 6 input shapes: every 11th sample (deterministic) still holds all 72
    # combinations and all 6 shapes, in a tenth of the time.
    "nn.functional.max_pool2d": (flt.max_pool2d, 11),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(OPINFO))
def test_opinfo_samples(op_db, name, dtype):
    ours, every = OPINFO[name]
    op = op_db[name]
    ran, dilated = 0, 0
    for i, sample in enumerate(op.sample_inputs("cpu", dtype, requires_grad=True)):
        if i % every:
            continue
        leaves = [t for t in [sample.input, *sample.args] if isinstance(t, torch.Tensor) and t.requires_grad]
        what = f"{name} {dtype} sample {i}: input {tuple(sample.input.shape)} args {sample.args} {sample.kwargs}"
        run_sample(lambda: compare(lambda: op.op(sample.input, *sample.args, **sample.kwargs),
                                   lambda: ours(sample.input, *sample.args, **sample.kwargs),
                                   leaves, dtype, what))
        ran += 1
        dilated += _pair(sample.kwargs.get("dilation", 1)) != (1, 1)
    assert ran >= 30, f"only {ran} samples ran"
    assert name != "nn.functional.max_pool2d" or dilated > 0, "no dilated max_pool2d sample ran"


# ---------------------------------------------------------------------------- PyTorch's ModuleInfo samples


@pytest.fixture(scope="module")
def module_db():
    pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (the torch extra)")
    from torch.testing._internal.common_modules import module_db

    return {info.module_cls: info for info in module_db}


MODULEINFO = {nn.Conv2d: flt.Conv2d, nn.MaxPool2d: flt.MaxPool2d, nn.RNN: flt.RNN, nn.LSTM: flt.LSTM, nn.GRU: flt.GRU}
# The one configuration of these samples the adapter refuses, by design: nn.LSTM's proj_size (16
# of its 32 samples, which are all unbatched). Such a sample is checked to be refused with this
# message, not compared; the test fails if none occurs.
REFUSED = {nn.LSTM: ("proj_size", "fastlayers' lstm has no projection")}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("torch_cls", list(MODULEINFO), ids=lambda c: c.__name__)
def test_moduleinfo_samples(module_db, torch_cls, dtype, training):
    ours_cls = MODULEINFO[torch_cls]
    info = module_db[torch_cls]
    ran, relu, refused = 0, 0, 0
    for i, sample in enumerate(info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                                       training=training)):
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        forward = sample.forward_input
        if torch_cls in REFUSED and kwargs.get(REFUSED[torch_cls][0]):
            with pytest.raises(ValueError, match=REFUSED[torch_cls][1]):
                ours_cls(*args, **kwargs)
            refused += 1
            continue

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

        run_sample(run)
        ran += 1
        relu += kwargs.get("nonlinearity") == "relu"
    assert ran >= 3
    assert torch_cls is not nn.RNN or relu > 0, "no relu RNN sample ran"
    assert torch_cls not in REFUSED or refused > 0, "no refused sample occurred: REFUSED is stale"


# ---------------------------------------------------------------------------- gradcheck


def random_conv2d_case(rng):
    groups = int(rng.choice([1, 2]))
    C, F = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    KH, KW = (int(k) for k in rng.integers(1, 4, 2))
    stride, dilation = tuple(int(s) for s in rng.integers(1, 3, 2)), tuple(int(d) for d in rng.integers(1, 3, 2))
    padding = tuple(int(p) for p in rng.integers(0, 3, 2))
    H = int(rng.integers(dilation[0] * (KH - 1) + 1, 7))
    W = int(rng.integers(dilation[1] * (KW - 1) + 1, 7))
    x = torch.from_numpy(rng.standard_normal((int(rng.integers(1, 3)), C, H, W))).requires_grad_()
    w = torch.from_numpy(rng.standard_normal((F, C // groups, KH, KW))).requires_grad_()
    b = torch.from_numpy(rng.standard_normal(F)).requires_grad_() if rng.random() < 0.7 else None
    return (x, w, b, stride, padding, dilation, groups)


def random_max_pool2d_case(rng):
    KH, KW = (int(k) for k in rng.integers(1, 4, 2))
    stride, dilation = tuple(int(s) for s in rng.integers(1, 3, 2)), tuple(int(d) for d in rng.integers(1, 3, 2))
    padding = (int(rng.integers(0, KH // 2 + 1)), int(rng.integers(0, KW // 2 + 1)))
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(dilation[0] * (KH - 1) + 1, 8)),
             int(rng.integers(dilation[1] * (KW - 1) + 1, 8)))
    # distinct values spaced far beyond gradcheck's step (1e-6): no window has a near-tie, so the
    # max is differentiable where gradcheck probes it
    x = torch.from_numpy(rng.permutation(np.prod(shape)).reshape(shape) * 0.1).requires_grad_()
    return (x, (KH, KW), stride, padding, dilation, bool(rng.random() < 0.5))


def random_rnn_case(rng):
    T, N, D, H = (int(s) for s in rng.integers(1, 5, 4))
    x = torch.from_numpy(rng.standard_normal((T, N, D))).requires_grad_()
    h0 = torch.from_numpy(rng.standard_normal((N, H))).requires_grad_() if rng.random() < 0.7 else None
    Wx = torch.from_numpy(rng.standard_normal((D, H)) * 0.5).requires_grad_()
    Wh = torch.from_numpy(rng.standard_normal((H, H)) * 0.5).requires_grad_()
    b = torch.from_numpy(rng.standard_normal(H)).requires_grad_() if rng.random() < 0.7 else None
    return (x, h0, Wx, Wh, b, str(rng.choice(["tanh", "relu"])))


def random_gated_case(rng, gates):
    """Arguments of flt.lstm (gates=4: input, hx, cx, Wx, Wh, bias) or flt.gru (gates=3: input, hx,
    Wx, Wh, bias_ih, bias_hh), states and biases present or None at random."""
    T, N, D, H = (int(s) for s in rng.integers(1, 4, 4))

    def tensor(shape, scale=1.0, optional=False):
        if optional and rng.random() < 0.3:
            return None
        return torch.from_numpy(rng.standard_normal(shape) * scale).requires_grad_()

    states = [tensor((N, H), optional=True) for _ in range(2 if gates == 4 else 1)]
    biases = [tensor(gates * H, optional=True) for _ in range(1 if gates == 4 else 2)]
    return (tensor((T, N, D)), *states, tensor((D, gates * H), 0.5), tensor((H, gates * H), 0.5), *biases)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("op, make_case", [(flt.conv2d, random_conv2d_case), (flt.max_pool2d, random_max_pool2d_case),
                                           (flt.rnn, random_rnn_case),
                                           (flt.lstm, lambda rng: random_gated_case(rng, 4)),
                                           (flt.gru, lambda rng: random_gated_case(rng, 3))],
                         ids=["conv2d", "max_pool2d", "rnn", "lstm", "gru"])
def test_gradcheck(op, make_case, seed):
    case = make_case(np.random.default_rng(seed))
    with fl.threads(1):  # hundreds of tiny calls: see LimitTally.run
        assert torch.autograd.gradcheck(op, case, eps=1e-6, atol=1e-7, rtol=1e-6)


# ---------------------------------------------------------------------------- converted models


class ResidualBlock(nn.Module):
    def __init__(self, channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels * stride, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(channels * stride, channels * stride, 3, padding=1)
        self.shortcut = nn.Conv2d(channels, channels * stride, 1, stride) if stride > 1 else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


def small_resnet():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), ResidualBlock(8),
                         ResidualBlock(8, stride=2), nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.Flatten(),
                         nn.Linear(16 * 3 * 3, 10))


class RnnLanguageModel(nn.Module):
    def __init__(self, vocabulary=20, embedding=8, hidden=12, recurrent=nn.RNN):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.rnn = recurrent(embedding, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocabulary)

    def forward(self, tokens):
        hs, _ = self.rnn(self.embed(tokens))
        return self.head(hs)


def loss_and_grads(model, inputs, targets):
    logits = model(inputs)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return logits, torch.autograd.grad(loss, list(model.parameters()))


def assert_same_model(make_model, inputs, targets, swapped):
    torch.manual_seed(0)
    original = make_model().double()
    converted = copy.deepcopy(original)
    report = flt.convert(converted)
    assert sorted(name for name, _, _ in report.swapped) == sorted(swapped)
    logits_t, grads_t = loss_and_grads(original, inputs, targets)
    logits_f, grads_f = loss_and_grads(converted, inputs, targets)
    # float64 through a few layers: rounding is ~1e-15 normwise; 1e-10 is the bound
    tol = 1e-10
    assert torch.linalg.vector_norm(logits_f - logits_t) <= tol * torch.linalg.vector_norm(logits_t)
    for (name, _), gf, gt in zip(original.named_parameters(), grads_f, grads_t):
        assert torch.linalg.vector_norm(gf - gt) <= tol * torch.linalg.vector_norm(gt), name


def test_converted_resnet_equals_the_original():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 16, 16, generator=gen, dtype=torch.float64)
    assert_same_model(small_resnet, x, torch.randint(0, 10, (4,), generator=gen),
                      ["0", "2", "3.conv1", "3.conv2", "4.conv1", "4.conv2", "4.shortcut", "5"])


@pytest.mark.parametrize("recurrent", [nn.RNN, nn.LSTM, nn.GRU], ids=lambda c: c.__name__)
def test_converted_rnn_language_model_equals_the_original(recurrent):
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 20, (3, 9), generator=gen)
    assert_same_model(lambda: RnnLanguageModel(recurrent=recurrent), tokens[:, :-1], tokens[:, 1:], ["rnn"])


# ---------------------------------------------------------------------------- modules, convert, revert


def test_convert_reports_what_it_kept_and_why_and_revert_restores():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.RNN(3, 4).half(), nn.MaxPool2d(2, dilation=2),
                          MyConv(2, 2, 1), nn.ReLU(), nn.RNN(3, 4, nonlinearity="relu"))
    params = list(model.parameters())
    report = flt.convert(model)
    assert [(n, new) for n, _, new in report.swapped] == [("0", "fastlayers.torch.modules.Conv2d"),
                                                         ("2", "fastlayers.torch.modules.MaxPool2d"),
                                                         ("5", "fastlayers.torch.modules.RNN")]
    kept = {name: reason for name, _, reason in report.kept}
    assert kept == {"1": "parameter weight_ih_l0 has dtype torch.float16: fastlayers runs float32 and float64 only",
                    "3": "a subclass of torch.nn.modules.conv.Conv2d: its forward may differ",
                    "4": "no fastlayers equivalent"}
    assert "swapped 3, kept 3" in str(report)
    assert [type(m) for m in model] == [flt.Conv2d, nn.RNN, flt.MaxPool2d, MyConv, nn.ReLU, flt.RNN]
    assert list(model.parameters()) == params  # the same Parameter objects: optimisers keep working
    kept_again = {name: reason for name, _, reason in flt.convert(model).kept}
    assert kept_again["0"] == "already fastlayers.torch.modules.Conv2d"
    again = flt.revert(model)
    assert [n for n, _, _ in again.swapped] == ["0", "2", "5"]
    assert {name: reason for name, _, reason in again.kept}["1"] == "already torch.nn.modules.rnn.RNN"
    assert {name: reason for name, _, reason in again.kept}["4"] == "not a fastlayers.torch module"
    assert [type(m) for m in model] == [nn.Conv2d, nn.RNN, nn.MaxPool2d, MyConv, nn.ReLU, nn.RNN]
    root = nn.Conv2d(1, 1, 1)
    assert flt.convert(root).swapped == [("", "torch.nn.modules.conv.Conv2d", "fastlayers.torch.modules.Conv2d")]
    assert type(root) is flt.Conv2d


POOL_CONFIGS = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, ceil_mode=True),
                dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0))]


@pytest.mark.parametrize("params", POOL_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_relu_max_pool2d_equals_max_pool2d_of_relu(params, dtype):
    """The fused call against torch's max_pool2d(relu(x)) on ties (small integers, zeros among
    them, so whole windows are <= 0) and NaNs: the same values (a zero's sign aside: compared as
    values), and the gradients the same, element for element (each routes one dy per window:
    exact, up to the order of adding overlapping windows' terms)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 3, (2, 3, 9, 10), generator=gen).to(dtype)
    x[torch.rand(x.shape, generator=gen) < 0.05] = float("nan")
    xt, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yt = torch.nn.functional.max_pool2d(torch.relu(xt), **params)
    yf = flt.functional.relu_max_pool2d(xf, **params)
    torch.testing.assert_close(yf, yt, rtol=0, atol=0, equal_nan=True)
    dy = torch.randn(yt.shape, generator=gen, dtype=dtype)
    yt.backward(dy)
    yf.backward(dy)
    torch.testing.assert_close(xf.grad, xt.grad, rtol=NORMWISE[dtype], atol=NORMWISE[dtype], equal_nan=True)
    with torch.no_grad():  # the inference path, no autograd Function
        torch.testing.assert_close(flt.functional.relu_max_pool2d(x, **params), yt.detach(), rtol=0, atol=0,
                                   equal_nan=True)


@pytest.mark.parametrize("params", POOL_CONFIGS, ids=str)
def test_relu_max_pool2d_gradient_check(params):
    """Finite differences in float64 (distinct values, none near zero: the ReLU's kink and the
    maxima's ties are where a derivative does not exist)."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randperm(2 * 2 * 7 * 8, generator=gen).reshape(2, 2, 7, 8).double() / 10 - 5.05
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: flt.functional.relu_max_pool2d(t, **params), (x,))


def test_convert_fuse_runs_relu_pool_pairs_as_one_call_and_revert_restores():
    """convert(fuse=True) on a VGG-style stack: each ReLU -> MaxPool2d pair becomes FusedReLU ->
    ReLUMaxPool2d, the model's outputs and gradients those of the original (float64); a pair
    whose ReLU is shared or hooked, or whose pool returns indices, is kept and said why."""
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
                             nn.Flatten(), nn.Linear(6 * 4 * 4, 5)).double()
    fused = copy.deepcopy(original)
    report = flt.convert(fused, fuse=True)
    assert [type(m) for m in fused][:6] == [flt.Conv2d, flt.modules.FusedReLU, flt.modules.ReLUMaxPool2d] * 2
    swapped = {name: (old, new) for name, old, new in report.swapped}
    assert swapped["1"] == ("torch.nn.modules.activation.ReLU", "fastlayers.torch.modules.FusedReLU")
    assert swapped["2"] == ("torch.nn.modules.pooling.MaxPool2d", "fastlayers.torch.modules.ReLUMaxPool2d")
    assert "1" not in {name for name, _, _ in report.kept}
    gen = torch.Generator().manual_seed(5)
    x, targets = torch.randn(4, 3, 16, 16, generator=gen, dtype=torch.float64), torch.randint(0, 5, (4,), generator=gen)
    logits_t, grads_t = loss_and_grads(original, x, targets)
    logits_f, grads_f = loss_and_grads(fused, x, targets)
    tol = 1e-10  # float64 through four layers: rounding is ~1e-15 normwise
    assert torch.linalg.vector_norm(logits_f - logits_t) <= tol * torch.linalg.vector_norm(logits_t)
    for (name, _), gf, gt in zip(original.named_parameters(), grads_f, grads_t):
        assert torch.linalg.vector_norm(gf - gt) <= tol * torch.linalg.vector_norm(gt), name
    kept_again = {name: reason for name, _, reason in flt.convert(fused, fuse=True).kept}
    assert kept_again["2"] == "already fastlayers.torch.modules.ReLUMaxPool2d"
    reverted = flt.revert(fused)
    assert {name for name, _, _ in reverted.swapped} >= {"1", "2", "4", "5"}
    assert [type(m) for m in fused][:6] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d] * 2

    shared, hooked, pool = nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2)
    hooked.register_forward_hook(lambda module, args, output: None)
    model = nn.Sequential(shared, nn.MaxPool2d(2), shared, nn.MaxPool2d(2), hooked, nn.MaxPool2d(2),
                          nn.ReLU(), nn.MaxPool2d(2, return_indices=True), nn.ReLU(), pool, nn.Identity(), pool)
    kept = {name: reason for name, _, reason in flt.convert(model, fuse=True).kept}
    assert kept["0"] == "no fastlayers equivalent; not fused: the ReLU is used in several places"
    assert kept["4"] == "no fastlayers equivalent; not fused: the ReLU has hooks"
    assert kept["6"] == "no fastlayers equivalent; not fused: the pool returns indices"
    assert kept["8"] == "no fastlayers equivalent; not fused: the pool is used in several places"
    assert [type(m) for m in model][:10] == [nn.ReLU, flt.MaxPool2d] * 5


def test_modules_take_torch_checkpoints_and_refuse_what_they_cannot_run():
    torch.manual_seed(0)
    for reference, ours in ((nn.Conv2d(3, 4, 3, padding_mode="circular", padding=1), flt.Conv2d(3, 4, 3, padding_mode="circular", padding=1)),
                            (nn.RNN(3, 5, 2, bidirectional=True), flt.RNN(3, 5, 2, bidirectional=True)),
                            (nn.LSTM(3, 5, 2, bidirectional=True), flt.LSTM(3, 5, 2, bidirectional=True)),
                            (nn.GRU(3, 5, bias=False), flt.GRU(3, 5, bias=False))):
        assert list(ours.state_dict()) == list(reference.state_dict())
        ours.load_state_dict(reference.state_dict())
        x = torch.randn((2, 3, 6, 6) if isinstance(ours, nn.Conv2d) else (4, 2, 3))
        out_r, out_o = tensors_of(reference(x)), tensors_of(ours(x))
        for r, o in zip(out_r, out_o):
            assert_normwise_close(o, r, torch.float32, type(ours).__name__)
        assert isinstance(ours, type(reference)) and repr(ours).split("(", 1)[1] == repr(reference).split("(", 1)[1]
    with pytest.raises(ValueError, match="Conv2d: parameter weight has dtype torch.float16"):
        flt.Conv2d(1, 1, 1, dtype=torch.float16)
    with pytest.raises(TypeError, match="fastlayers.torch.RNN does not take a PackedSequence"):
        flt.RNN(2, 3)(nn.utils.rnn.pack_sequence([torch.randn(3, 2), torch.randn(2, 2)]))
    with pytest.raises(ValueError, match="LSTM: proj_size=2: fastlayers' lstm has no projection"):
        flt.LSTM(2, 3, proj_size=2)
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\) of tensors, got Tensor"):
        flt.LSTM(2, 3)(torch.randn(4, 1, 2), torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(1, 1, 3\), got \(1, 1, 4\)"):
        flt.LSTM(2, 3)(torch.randn(4, 1, 2), (torch.zeros(1, 1, 3), torch.zeros(1, 1, 4)))
    with pytest.raises(TypeError, match="fastlayers.torch.GRU does not take a PackedSequence"):
        flt.GRU(2, 3)(nn.utils.rnn.pack_sequence([torch.randn(3, 2), torch.randn(2, 2)]))


@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "given"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True), dict(batch_first=True, bias=False),
                                    dict(num_layers=3, batch_first=True, bidirectional=True)],
                         ids=["plain", "2-layer-bi", "batch-first-nobias", "3-layer-bi-batch-first"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_gated_modules_match_torch_on_batches(kind, config, dtype, with_state):
    """Batched inputs (PyTorch's ModuleInfo samples of nn.LSTM and nn.GRU are all unbatched), the
    initial states given or zeros; outputs, final states and every gradient."""
    torch.manual_seed(0)
    reference = getattr(nn, kind)(4, 6, **config).to(dtype)
    ours = getattr(flt, kind)(4, 6, **config).to(dtype)
    ours.load_state_dict(reference.state_dict())
    T, N = 5, 3
    x = torch.randn((N, T, 4) if config.get("batch_first") else (T, N, 4), dtype=dtype, requires_grad=True)
    shape = (reference.num_layers * (2 if reference.bidirectional else 1), N, 6)
    states = [torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(2 if kind == "LSTM" else 1)]
    hx = (tuple(states) if kind == "LSTM" else states[0]) if with_state else None
    leaves = [x, *(states if with_state else [])]
    compare(lambda: reference(x, hx), lambda: ours(x, hx), leaves + list(reference.parameters()), dtype,
            f"{kind} {config} {dtype}", own_leaves=leaves + list(ours.parameters()))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_gated_modules_dropout_between_layers(kind):
    """Dropout acts in training only (PyTorch's F.dropout between layers, so its masks differ from
    torch.nn's fused kernel: compared with the module's own eval output and by gradcheck under a
    fixed mask)."""
    torch.manual_seed(0)
    reference = getattr(nn, kind)(3, 4, num_layers=2, dropout=0.5).double().eval()
    ours = getattr(flt, kind)(3, 4, num_layers=2, dropout=0.5).double().eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    compare(lambda: reference(x), lambda: ours(x), [x], torch.float64, f"{kind} eval")
    ours.train()

    def output(x):
        torch.manual_seed(1)  # the same dropout mask on every call
        return ours(x)[0]

    assert torch.linalg.vector_norm(output(x) - ours.eval()(x)[0]) > 1e-3
    ours.train()
    with fl.threads(1):
        assert torch.autograd.gradcheck(output, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


# ---------------------------------------------------------------------------- documented limits


def test_double_backward_raises_instead_of_a_wrong_gradient():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(flt.conv2d(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_conv2d_skips_the_input_gradient_when_the_input_needs_none(monkeypatch):
    """An input without requires_grad (a network's input): the backward asks for dw and db only."""
    asked = []
    backward = fl.conv2d_backward
    monkeypatch.setattr(fl, "conv2d_backward", lambda *a, **k: asked.append(k["input_grad"]) or backward(*a, **k))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    gw, gb = torch.autograd.grad(flt.conv2d(x, w, b, 1, 1).square().sum(), (w, b))
    tw, tb = torch.autograd.grad(nn.functional.conv2d(x, w, b, 1, 1).square().sum(), (w, b))
    torch.testing.assert_close(gw, tw)
    torch.testing.assert_close(gb, tb)
    x.requires_grad_()
    torch.autograd.grad(flt.conv2d(x, w, b, 1, 1).sum(), (x,))
    assert asked == [False, True]


@pytest.mark.parametrize("dtype", DTYPES)
def test_calls_autograd_does_not_record_run_the_kernels_directly(monkeypatch, dtype):
    """Under no_grad, or on tensors none of which needs a gradient, conv2d and max_pool2d call the
    kernel without an autograd Function (no grad_fn), with the same bits as the recorded call,
    and max_pool2d computes the indices only where they are asked for."""
    asked = []
    pool = fl.max_pool2d
    monkeypatch.setattr(fl, "max_pool2d", lambda *a, **k: asked.append(k["return_indices"]) or pool(*a, **k))
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    w, b = torch.randn(4, 3, 3, 3, dtype=dtype, requires_grad=True), torch.randn(4, dtype=dtype, requires_grad=True)
    recorded_y = flt.conv2d(x, w, b, 1, 1)
    recorded_p, recorded_i = flt.max_pool2d(x.requires_grad_(), 3, 2, 1, return_indices=True)
    assert recorded_y.grad_fn is not None and recorded_p.grad_fn is not None and asked == [True]
    x.requires_grad_(False)
    with torch.no_grad():
        runs = [(flt.conv2d(x, w, b, 1, 1), *flt.max_pool2d(x, 3, 2, 1, return_indices=True))]
    runs.append((flt.conv2d(x, w.detach(), b.detach(), 1, 1), *flt.max_pool2d(x, 3, 2, 1, return_indices=True)))
    for y, p, i in runs:
        assert y.grad_fn is None and p.grad_fn is None and not y.requires_grad
        torch.testing.assert_close(y, recorded_y.detach(), rtol=0, atol=0)
        torch.testing.assert_close(p, recorded_p.detach(), rtol=0, atol=0)
        torch.testing.assert_close(i, recorded_i, rtol=0, atol=0)
    del asked[:]
    with torch.no_grad():
        maxima = flt.max_pool2d(x[0], 3, 2, 1)  # unbatched, no indices
    torch.testing.assert_close(maxima, recorded_p[0].detach(), rtol=0, atol=0)
    assert asked == [False]


def test_conv2d_on_weights_that_need_a_gradient_chooses_as_a_training_step(monkeypatch):
    """Forward and backward of a conv2d whose weight needs a gradient choose their kernel inside
    ``weights_change`` (a training step's weights change before the next call); a conv2d whose
    weight needs none (only the input's gradient) or under no_grad does not."""
    from fastlayers import _dispatch

    seen = []
    for name in ("conv2d", "conv2d_backward"):
        op = getattr(fl, name)
        monkeypatch.setattr(fl, name, lambda *a, _op=op, _name=name, **k: seen.append(
            (_name, _dispatch.weights_changing())) or _op(*a, **k))
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    flt.conv2d(x, w, None, 1, 1).sum().backward()
    assert seen == [("conv2d", True), ("conv2d_backward", True)]
    del seen[:]
    x.requires_grad_()
    flt.conv2d(x, w.detach(), None, 1, 1).sum().backward()
    with torch.no_grad():
        flt.conv2d(x, w, None, 1, 1)
    assert seen == [("conv2d", False), ("conv2d_backward", False), ("conv2d", False)]
    assert not _dispatch.weights_changing()


def test_channels_last_and_strided_inputs_are_copied_and_give_torch_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    compare(lambda: nn.functional.conv2d(x, w, None, 1, 1), lambda: flt.conv2d(x, w, None, 1, 1), [x, w],
            torch.float64, "channels_last conv2d")
    compare(lambda: nn.functional.max_pool2d(x[:, :, ::2], 2, return_indices=True),
            lambda: flt.max_pool2d(x[:, :, ::2], 2, return_indices=True), [x], torch.float64, "strided max_pool2d")


def test_compiled_model_runs_each_fastlayers_op_eagerly():
    torch.manual_seed(0)
    model = small_resnet().double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    expected = model(x)
    flt.convert(model)
    compiled = torch.compile(model, backend="eager")  # dynamo's graph breaks, without a C++ build
    assert torch.linalg.vector_norm(compiled(x) - expected) <= 1e-12 * torch.linalg.vector_norm(expected)


def test_contiguous_tensors_are_shared_not_copied():
    from fastlayers.torch._tensors import as_array

    t = torch.randn(2, 3, 4, 4)
    assert np.shares_memory(as_array("t", t), t.numpy())
    strided = t.transpose(2, 3)
    assert not np.shares_memory(as_array("t", strided), t.numpy()) and as_array("t", strided).flags.c_contiguous
    y = flt.conv2d(t, torch.randn(2, 3, 1, 1))
    assert y.is_contiguous() and y.dtype == torch.float32


def test_unsupported_tensors_are_refused_clearly():
    with pytest.raises(TypeError, match="input must have dtype torch.float32 or torch.float64, got torch.float16"):
        flt.conv2d(torch.zeros(1, 1, 3, 3, dtype=torch.float16), torch.zeros(1, 1, 1, 1, dtype=torch.float16))
    with pytest.raises(TypeError, match="input is on meta, but fastlayers.torch runs CPU tensors only"):
        flt.max_pool2d(torch.zeros(1, 1, 4, 4, device="meta"), 2)
    with pytest.raises(TypeError, match="input must be a dense"):
        flt.max_pool2d(torch.zeros(1, 1, 4, 4).to_sparse(), 2)
    with pytest.raises(ValueError, match=r"input must be 3-D \(unbatched\) or 4-D \(batched\), got 2-D"):
        flt.conv2d(torch.zeros(3, 3), torch.zeros(1, 1, 1, 1))


def test_importing_fastlayers_torch_imports_torch_but_fastlayers_alone_does_not():
    import subprocess
    import sys

    code = "import sys, fastlayers; a = 'torch' in sys.modules; import fastlayers.torch; print(a, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "True"]
