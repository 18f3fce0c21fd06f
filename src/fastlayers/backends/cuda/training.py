"""What device-resident training needs besides the ops: moving arrays between host and GPU, the
device-side gradient accumulation and copies, the softmax cross-entropy loss and the optimiser
updates (kernels/cuda/loss.py, optim.py). Used by fastlayers.layers, losses and optim when their
arrays live on the GPU; importing it does not import numba (its functions do). Nothing here reads
GPU memory back to the host but ``to_host`` and ``host_copy``."""
from __future__ import annotations

import numpy as np

from ._arrays import Call, _device_array, column_sums, fill, flat, kernels


def to_device(a):
    """A new device array with host array ``a``'s values (C order)."""
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a))


def to_host(a):
    """A NumPy copy of device array ``a``."""
    return _device_array(a).copy_to_host()


def host_copy(a):
    """A NumPy copy of ``a``, a NumPy or a device array (checkpoints of models and optimisers)."""
    return a.copy() if isinstance(a, np.ndarray) else to_host(a)


def copy(a):
    """A new device array with device array ``a``'s values, copied on the GPU."""
    from numba import cuda

    d = _device_array(a)
    out = cuda.device_array(tuple(d.shape), dtype=d.dtype)
    out.copy_to_device(d)
    return out


def accumulate(target, grad):
    """``target += grad`` on the GPU (same shape and dtype, target C-ordered)."""
    call = Call(target, grad)
    t, g = _device_array(target), call.input("grad", grad)
    if t.size:
        grid, block = kernels().launch.launch_config("elementwise", t.size)
        kernels().gated_rnn.add_kernel(t.dtype)[grid, block](flat(t), flat(g), flat(t), t.size)


def zeros(shape, dtype):
    from numba import cuda

    d = cuda.device_array(shape, dtype=dtype)
    fill(d, 0)
    return d


def softmax_cross_entropy(logits, labels):
    """(loss, dlogits) of the mean softmax cross-entropy over the rows of device ``logits``
    (..., K) against integer ``labels`` (...), as ``fastlayers.reference.softmax_cross_entropy``.
    ``loss`` is a 0-d device array (read it with ``loss.copy_to_host()``): nothing is read back.
    Labels on the host are copied to the GPU; a label outside [0, K) makes the loss NaN (checking
    the range would read the labels back)."""
    call = Call(logits, labels)
    z, y = call.input("logits", logits), call.input("labels", labels)
    dt = z.dtype
    shape = tuple(z.shape)
    K = shape[-1]
    R = z.size // K if K else int(np.prod(shape[:-1]))
    dz = call.empty(shape, dt)
    loss = call.empty((), dt)
    terms = call.scratch("softmax cross-entropy terms", (max(R, 1),), dt)
    if R == 0:
        fill(terms, 0)  # the mean of nothing is 0, as the reference's
    else:
        grid, block = kernels().launch.launch_config("elementwise", R)
        kernels().loss.softmax_cross_entropy_kernel(dt)[grid, block](flat(z), flat(y), flat(dz), terms, R, K,
                                                                     dt.type(R))
    column_sums(terms, flat(loss), terms.size, 1, 1)
    return loss, dz


def _elementwise(factory, *arrays):
    """A new device array of ``arrays[-1]``'s shape from ``factory(dtype)``'s kernel, called on
    the flat ``arrays`` and the output (all of one shape and dtype, on the device)."""
    from numba import cuda

    call = Call(*arrays)
    d = [call.input(f"argument {i}", a) for i, a in enumerate(arrays)]
    out = cuda.device_array(tuple(d[-1].shape), dtype=d[-1].dtype)
    _launch(factory(out.dtype), out.size, *map(flat, d), flat(out))
    return out


def tanh(x):
    """tanh(x) of device array ``x``, a new device array (the Tanh layer on the GPU)."""
    return _elementwise(kernels().activation.tanh_kernel, x)


def tanh_backward(dy, y):
    """dy * (1 - y^2): the Tanh layer's backward from its output ``y``."""
    return _elementwise(kernels().activation.tanh_backward_kernel, dy, y)


def sigmoid(x):
    """1 / (1 + exp(-x)) of device array ``x``, without overflow (the Sigmoid layer on the GPU)."""
    return _elementwise(kernels().activation.sigmoid_kernel, x)


def sigmoid_backward(dy, y):
    """dy * y * (1 - y): the Sigmoid layer's backward from its output ``y``."""
    return _elementwise(kernels().activation.sigmoid_backward_kernel, dy, y)


def _launch(kernel, size, *args):
    if size:
        grid, block = kernels().launch.launch_config("elementwise", size)
        kernel[grid, block](*args, size)


def sgd_update(p, g, v, lr, momentum, weight_decay, first):
    """One SGD step on device parameter ``p`` with gradient ``g``, in place; ``v`` the momentum
    buffer (None without momentum), set to the step's gradient when ``first``."""
    pd, gd = _device_array(p), Call(g).input("grad", g)
    dt = pd.dtype.type
    vd = flat(_device_array(v)) if v is not None else zeros(0, pd.dtype)
    _launch(kernels().optim.sgd_kernel(pd.dtype), pd.size, flat(pd), flat(gd), vd, dt(lr), dt(momentum),
            dt(weight_decay), bool(first))


def adam_update(p, g, m, v, lr, betas, eps, weight_decay, t):
    """One Adam step (step count ``t`` >= 1) on device parameter ``p``, moments ``m`` and ``v``
    updated in place."""
    pd, gd = _device_array(p), Call(g).input("grad", g)
    dt = pd.dtype.type
    b1, b2 = betas
    _launch(kernels().optim.adam_kernel(pd.dtype), pd.size, flat(pd), flat(gd), flat(_device_array(m)),
            flat(_device_array(v)), dt(lr), dt(b1), dt(b2), dt(1 - b1), dt(1 - b2), dt(eps), dt(weight_decay),
            dt(1 - b1**t), dt(1 - b2**t))
