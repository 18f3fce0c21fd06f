"""Numba CUDA kernels of fastlayers, installed as ``fastlayers._cuda``.

Imported only by ``fastlayers.backends.cuda`` when a CUDA op first runs: importing this package
imports numba. Modules:

* ``launch``  - tile sizes, the ``jit`` wrapper and the one launch-configuration helper;
* ``gemm``    - the shared-memory tiled GEMM with register blocking, specialised by index/epilogue
  device functions into the implicit-GEMM conv2d kernels and the RNN kernels;
* ``conv2d``  - conv2d forward (direct and implicit GEMM), dX, dW (split-K, no atomics);
* ``max_pool2d`` - max_pool2d forward with indices and its backward;
* ``rnn``     - the plain row-major GEMMs (also linear's) and the RNN's fused tanh / relu epilogues;
* ``activation`` - relu forward and backward;
* ``batch_norm`` - batch_norm forward, backward and the running-statistics update, a block per channel;
* ``loss``    - softmax cross-entropy (per-row terms and the gradient);
* ``optim``   - the SGD (momentum, weight decay) and Adam updates, in place;
* ``reduce``  - deterministic reductions (bias gradients, split-K partial sums) and fills;
* ``layout``  - strided-to-contiguous copies of non-contiguous GPU inputs.

Kernels are made per dtype (float32, float64) by ``*_kernel(name, dtype)`` factories, cached, and
compiled by Numba on first launch.
"""
