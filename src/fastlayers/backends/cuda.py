"""The ``"cuda"`` backend (Numba CUDA). Not implemented yet: it offers no ops."""

OPS = frozenset()


def availability():
    return False, "the CUDA backend is not implemented yet"
