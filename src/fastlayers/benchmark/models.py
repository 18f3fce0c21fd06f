"""Whole networks as benchmark workloads: what a user of ``fastlayers.layers`` gets end to end.

A model case (``op`` a key of ``MODELS``, shape the input batch (N, C, H, W)) times, as its
"forward", one inference (eval mode, no gradient) and, as its "backward", one training step:
zero the gradients, forward, softmax cross-entropy, backward (no gradient for the images), an SGD
update with momentum. fastlayers runs it through ``fastlayers.layers`` on a host backend
(``numpy``: the reference; ``cpu``), PyTorch through ``torch.nn`` and ``torch.optim.SGD`` in its
own process (and, as ``fastlayers.torch``, the same program with its modules swapped by
``fastlayers.torch.convert(net, fuse=True)``: what a PyTorch user gets from fastlayers), ONNX Runtime and
OpenVINO the inference as an ONNX model of the whole network. The weights are inputs of the case,
drawn from the seed like the images, so every side runs the same network on the same batch (the
inputs' digests say so).
"""
from __future__ import annotations

import numpy as np

from ..ops._workload import Workload, normal, onnx_graph, torch_no_grad

LEARNING_RATE, MOMENTUM = 0.01, 0.9
MODEL_LEGEND = ("models: infer = one inference (eval mode, no gradient); train = one training step (zero_grad, "
                "forward, softmax cross-entropy, backward, SGD with momentum)")
CLASSES = 10


class VggWorkload(Workload):
    """The VGG-style CNN: three stages of Conv(3x3, padding 1) -> ReLU -> MaxPool(2) with 32, 64
    and 128 filters, Flatten, Dense(to 10 classes). Case shape (N, C, H, W), H and W at least 8
    (each pool halves them, rounding down)."""

    STAGES = (32, 64, 128)
    direction_names = {"forward": "infer", "backward": "train"}
    takes_out = False
    # What the model calls: the backends that run all of these run it.
    FUNCTIONS = {"forward": ("conv2d", "relu", "max_pool2d", "linear"),
                 "backward": ("conv2d", "relu", "max_pool2d", "linear", "conv2d_backward", "relu_backward",
                              "max_pool2d_backward", "linear_backward")}

    def case_error(self, case):
        side = 1 << len(self.STAGES)
        if min(case.shape[2:]) < side:
            return f"the {case.op} model needs images of at least {side}x{side}, got {case.shape[2]}x{case.shape[3]}"
        return None

    def _convs(self, case):
        """(in channels, out channels, plane height, plane width) of each convolution."""
        channels = (case.shape[1],) + self.STAGES
        return [(channels[i], channels[i + 1], case.shape[2] >> i, case.shape[3] >> i) for i in range(len(self.STAGES))]

    def _features(self, case):
        n = len(self.STAGES)
        return self.STAGES[-1] * (case.shape[2] >> n) * (case.shape[3] >> n)

    def inputs(self, case, direction, dtype, seed):
        draw = normal(seed, dtype)
        inputs = dict(input=draw(case.shape))
        if direction == "backward":
            inputs["labels"] = np.random.default_rng(seed).integers(0, CLASSES, case.shape[0])
        for i, (cin, cout, _, _) in enumerate(self._convs(case), 1):
            inputs[f"conv{i}.weight"] = draw((cout, cin, 3, 3), 1 / np.sqrt(9 * cin))
            inputs[f"conv{i}.bias"] = draw(cout, 1 / np.sqrt(9 * cin))
        features = self._features(case)
        inputs["fc.weight"] = draw((CLASSES, features), 1 / np.sqrt(features))  # torch.nn.Linear's layout
        inputs["fc.bias"] = draw(CLASSES, 1 / np.sqrt(features))
        return inputs

    def work(self, case, direction, dtype):
        """FLOPs of the convolutions and the Dense layer (the pools and ReLUs are not counted):
        a training step adds each one's weight gradient and, but for the first convolution's
        (the images need none), its input gradient, each as many as its forward."""
        n = case.shape[0]
        convs = [2 * n * cout * h * w * cin * 9 for cin, cout, h, w in self._convs(case)]
        forward = sum(convs) + 2 * n * self._features(case) * CLASSES
        return (forward if direction == "forward" else 3 * forward - convs[0]), "flop"

    def unavailable(self, case, direction, family, ops):
        if family == "cuda":
            return "the model cases run fastlayers.layers on the host backends (numpy, cpu) only"
        if ops is None:
            return None
        if case.op in ops:  # the inference engines list the model by name
            return None if direction == "forward" else f"{family} runs inference only"
        missing = [f for f in self.FUNCTIONS[direction] if f not in ops]
        return f"the {family} backend has no {', '.join(missing)}" if missing else None

    def fastlayers_model(self, case, inputs, backend=None):
        """The model in ``fastlayers.layers`` with the case's weights, on ``backend``."""
        from .. import layers as L

        dtype = inputs["input"].dtype
        stages = []
        for i, (cin, cout, _, _) in enumerate(self._convs(case), 1):
            conv = L.Conv2D(cin, cout, 3, padding=1, dtype=dtype)
            conv.params["w"], conv.params["b"] = inputs[f"conv{i}.weight"], inputs[f"conv{i}.bias"]
            stages += [conv, L.ReLU(dtype=dtype), L.MaxPool2D(2, dtype=dtype)]
        dense = L.Dense(self._features(case), CLASSES, dtype=dtype)
        dense.params["W"], dense.params["b"] = inputs["fc.weight"].T, inputs["fc.bias"]
        return L.Sequential(*stages, L.Flatten(dtype=dtype), dense, backend=backend)

    def fastlayers_call(self, case, direction, args, kwargs):
        import fastlayers as fl

        inputs = dict(args)
        net, x = self.fastlayers_model(case, inputs, kwargs.get("backend")), inputs["input"]
        if direction == "forward":
            net.eval()

            def infer():
                with fl.no_grad():
                    return net.forward(x)

            return infer
        opt, labels = fl.optim.SGD(net, lr=LEARNING_RATE, momentum=MOMENTUM), inputs["labels"]

        def step():
            opt.zero_grad()
            loss, dlogits = fl.losses.softmax_cross_entropy(net.forward(x), labels)
            net.backward(dlogits, input_grad=False)
            opt.step()
            return np.asarray(loss)

        return step

    @staticmethod
    def args(case, direction, inputs):
        return tuple(inputs.items())  # by name: fastlayers_call builds the model from them

    def torch_model(self, torch, case, inputs, device="cpu"):
        nn = torch.nn
        stages = []
        for i, (cin, cout, _, _) in enumerate(self._convs(case), 1):
            stages += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        net = nn.Sequential(*stages, nn.Flatten(), nn.Linear(self._features(case), CLASSES))
        net = net.to(device=device, dtype=torch.from_numpy(inputs["input"]).dtype)  # then the weights, exactly
        linears = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
        names = [f"conv{i}" for i in range(1, len(self.STAGES) + 1)] + ["fc"]
        with torch.no_grad():
            for module, name in zip(linears, names):
                module.weight.copy_(torch.from_numpy(inputs[f"{name}.weight"]))
                module.bias.copy_(torch.from_numpy(inputs[f"{name}.bias"]))
        return net

    def torch_call(self, torch, case, direction, inputs, seed, device="cpu", swap=False):
        """PyTorch's inference or training step; ``swap``: with the model's torch.nn modules
        swapped for fastlayers.torch's, each ReLU -> MaxPool2d pair as one call
        (``fastlayers.torch.convert(net, fuse=True)``), as a PyTorch user after speed would."""
        net = self.torch_model(torch, case, inputs, device)
        if swap:
            from ..torch import convert

            convert(net, fuse=True)
        x = torch.from_numpy(inputs["input"]).to(device)
        if direction == "forward":
            net.eval()
            return torch_no_grad(torch, lambda: net(x))
        labels = torch.from_numpy(inputs["labels"]).to(device)
        opt = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad()
            loss = loss_fn(net(x), labels)
            loss.backward()
            opt.step()
            return loss.detach()

        return step

    onnx_forward = True

    def onnx_model(self, onnx, case, inputs):
        make, nodes, last = onnx.helper.make_node, [], "input"
        for i in range(1, len(self.STAGES) + 1):
            nodes += [make("Conv", [last, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"], kernel_shape=[3, 3],
                           pads=[1, 1, 1, 1]),
                      make("Relu", [f"conv{i}"], [f"relu{i}"]),
                      make("MaxPool", [f"relu{i}"], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2])]
            last = f"pool{i}"
        nodes += [make("Flatten", [last], ["flat"], axis=1),
                  make("Gemm", ["flat", "fc.weight", "fc.bias"], ["output"], transB=1)]
        feed = {"input": inputs["input"]}
        constants = {k: v for k, v in inputs.items() if k != "input"}
        model = onnx_graph(onnx, case, nodes, feed, [("output", inputs["input"].dtype, (case.shape[0], CLASSES))],
                           constants)
        return model, feed


MODELS = {"vgg": VggWorkload()}
