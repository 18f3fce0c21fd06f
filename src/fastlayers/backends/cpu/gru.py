"""gru on the CPU backend: wraps kernels/cpu/gated_rnn.pyx (see ._gated)."""
from ..._cpu import gated_rnn as _kernels
from . import _gated
from ._common import contiguous, workspace
from .rnn import _initial_state


@_gated.blas_kernel
def gru_forward(x, h0, Wx, Wh, bx, bh, g, outs):
    """(output,), and the kept gates (T*N, >= 4H) when ``g.keep``."""
    T, N, D, H, G = g.T, g.N, g.D, g.H, Wh.shape[1]
    dt, threads = x.dtype, _gated.num_threads(T, N, D, H, G)
    outs = (hs,) = _gated.outputs(outs, ((T, N, H),), dt)
    with (_gated.packed_weights(Wx, Wh) as (packed_x, packed),
          _gated.forward_workspaces(Wx, Wh, T * N, N, g.keep, packed is not None) as (Wx_rows, Wh_rows, a, u)):
        _kernels.gru_forward(
            contiguous(x).reshape(T * N, D), _initial_state(h0, N, H, dt), Wx_rows, Wh_rows,
            _gated.bias(bx, G, dt), _gated.bias(bh, G, dt), hs.reshape(T * N, H), a, u, N, g.keep,
            packed_x, packed, _gated.avx512_blocking(), _gated.split_by_units(threads), threads,
        )
    return outs + (a,) if g.keep else outs


@_gated.blas_kernel
def gru_backward(dhs, x, h0, Wx, Wh, bx, bh, hs, gates, g, outs):
    """``gates``: the forward's kept gates, or None (recomputed)."""
    T, N, D, H, G = g.T, g.N, g.D, g.H, Wh.shape[1]
    dt = x.dtype
    outs = dx, dh0, dWx, dWh, dbx, dbh = _gated.outputs(outs, ((T, N, D), (N, H), (D, G), (H, G), (G,), (G,)), dt)
    with (workspace("gated_rnn_z", (T * N, G), dt) as da, workspace("gated_rnn_u", (T * N, G), dt) as du,
          _gated.packed_transpose(Wh) as packed_t, _gated.transposed_rows(Wh, packed_t is not None) as WhT,
          _gated.backward_gates(gates, T * N, H, dt) as (gates, recompute)):
        _kernels.gru_backward(
            contiguous(dhs).reshape(T * N, H), contiguous(x).reshape(T * N, D), _initial_state(h0, N, H, dt),
            contiguous(Wx), contiguous(Wh), WhT, _gated.bias(bx, G, dt), _gated.bias(bh, G, dt),
            contiguous(hs).reshape(T * N, H), gates, recompute, da, du, dx.reshape(T * N, D), dh0, dWx, dWh,
            dbx, dbh, packed_t, _gated.avx512_blocking(), N, _gated.num_threads(T, N, D, H, G),
        )
    return outs
