"""The worked examples of the course notes the library grew from, as arrays for the tests.

The notes are not part of the repository: their examples live here, with the values as printed,
except one cell they misprint (computed, not copied: see FEATURE_MAP_1)."""
import numpy as np

IMAGE_7x7 = np.array(
    [[0, 0, 0, 0, 0, 0, 0],
     [0, 1, 0, 0, 0, 1, 0],
     [0, 0, 0, 0, 0, 0, 0],
     [0, 0, 0, 1, 0, 0, 0],
     [0, 1, 0, 0, 0, 1, 0],
     [0, 0, 1, 1, 1, 0, 0],
     [0, 0, 0, 0, 0, 0, 0]], dtype=float)
DETECTOR_1 = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 1]], dtype=float)
DETECTOR_2 = np.array([[0, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=float)
# "Feature Map1" as the notes print it, but for row 3, column 3 (1-based), which they misprint
# as 1. That cell is computed from the definition (a window times the detector, summed) instead:
# image[2:5, 2:5] holds a single one, under the detector's central zero.
FEATURE_MAP_1 = np.array(
    [[0, 1, 0, 0, 0],
     [0, 1, 1, 1, 0],
     [1, 0, 1, 2, 1],
     [1, 4, 2, 1, 0],
     [0, 0, 1, 2, 1]], dtype=float)
FEATURE_MAP_1[2, 2] = np.sum(IMAGE_7x7[2:5, 2:5] * DETECTOR_1)
FEATURE_MAP_2 = np.array(
    [[0, 0, 0, 0, 0],
     [1, 1, 1, 1, 1],
     [1, 1, 0, 1, 1],
     [1, 2, 4, 2, 1],
     [1, 0, 0, 0, 1]], dtype=float)
# The notes' max-pool slide pools the printed (typo) Feature Map1; the typo cell is no window's
# maximum, so the pooled map is the same either way.
POOLED_MAP_1 = np.array([[1, 1, 0], [4, 2, 1], [0, 2, 1]], dtype=float)

ACTIVATION_MAP_ONES = np.array(
    [[4, 5, 4, 2, 3, 4, 4],
     [5, 6, 5, 4, 6, 6, 5],
     [3, 3, 3, 3, 6, 6, 5],
     [3, 3, 2, 2, 4, 5, 4],
     [3, 3, 2, 2, 4, 5, 4],
     [5, 6, 4, 3, 4, 5, 4],
     [3, 4, 3, 3, 4, 4, 3]], dtype=float)

IMAGE_KERNEL_SLIDES = np.array(
    [[1, 1, 1, 0, 0, 1, 1],
     [1, 1, 0, 1, 0, 1, 1],
     [1, 0, 0, 1, 1, 1, 0],
     [0, 0, 0, 0, 0, 1, 1],
     [1, 1, 0, 0, 0, 0, 1],
     [1, 0, 0, 1, 1, 1, 0],
     [1, 1, 1, 0, 0, 1, 1]], dtype=float)
# The depth example's image is the kernel slides' image with one ring of zero padding.
IMAGE_9x9_PADDED = np.pad(IMAGE_KERNEL_SLIDES, 1)
SMOOTHING_3x3 = np.ones((3, 3))
CROSS_3x3 = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=float)
