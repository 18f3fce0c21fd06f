"""lstm on the CPU backend: wraps kernels/cpu/gated_rnn.pyx (see ._gated)."""
from ..._cpu import gated_rnn as _kernels
from . import _gated
from ._common import contiguous, workspace
from .rnn import _initial_state


@_gated.blas_kernel
def lstm_forward(x, h0, c0, Wx, Wh, b, g, outs):
    """(output, cell), and the kept gates (T*N, >= 4H) when ``g.keep``."""
    T, N, D, H, G = g.T, g.N, g.D, g.H, Wh.shape[1]
    dt, threads = x.dtype, _gated.num_threads(T, N, D, H, G)
    outs = hs, cs = _gated.outputs(outs, ((T, N, H), (T, N, H)), dt)
    with (_gated.packed_weights(Wx, Wh) as (packed_x, packed),
          _gated.forward_workspaces(Wx, Wh, T * N, N, g.keep, packed is not None) as (Wx_rows, Wh_rows, a, u)):
        _kernels.lstm_forward(
            contiguous(x).reshape(T * N, D), _initial_state(h0, N, H, dt), _initial_state(c0, N, H, dt),
            Wx_rows, Wh_rows, _gated.bias(b, G, dt), hs.reshape(T * N, H), cs.reshape(T * N, H), a, u,
            N, g.keep, packed_x, packed, _gated.avx512_blocking(), _gated.split_by_units(threads), threads,
        )
    return outs + (a,) if g.keep else outs


@_gated.blas_kernel
def lstm_backward(dhs, dcs, x, h0, c0, Wx, Wh, b, hs, cs, gates, g, outs):
    """``gates``: the forward's kept gates, or None (recomputed)."""
    T, N, D, H, G = g.T, g.N, g.D, g.H, Wh.shape[1]
    dt = x.dtype
    outs = dx, dh0, dc0, dWx, dWh, db = _gated.outputs(outs, ((T, N, D), (N, H), (N, H), (D, G), (H, G), (G,)), dt)
    with (workspace("gated_rnn_z", (T * N, G), dt) as dz, _gated.packed_transpose(Wh) as packed_t,
          _gated.transposed_rows(Wh, packed_t is not None) as WhT,
          _gated.backward_gates(gates, T * N, H, dt) as (gates, recompute)):
        _kernels.lstm_backward(
            contiguous(dhs).reshape(T * N, H), None if dcs is None else contiguous(dcs).reshape(T * N, H),
            contiguous(x).reshape(T * N, D), _initial_state(h0, N, H, dt), _initial_state(c0, N, H, dt),
            contiguous(Wx), contiguous(Wh), WhT, _gated.bias(b, G, dt),
            contiguous(hs).reshape(T * N, H), contiguous(cs).reshape(T * N, H), gates, recompute, dz,
            dx.reshape(T * N, D), dh0, dc0, dWx, dWh, db, packed_t, _gated.avx512_blocking(), N,
            _gated.num_threads(T, N, D, H, G),
        )
    return outs
