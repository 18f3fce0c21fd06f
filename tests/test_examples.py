"""fl.filters (the notes' kernel presets), fl.augment, and the picture examples at reduced size."""
import numpy as np
import pytest
from _helpers import load_example, make_rng
from notes_examples import ACTIVATION_MAP_ONES, IMAGE_9x9_PADDED

import fastlayers as fl
from fastlayers import augment, filters

# ---------------------------------------------------------------------------- filters

NOTES_PRESETS = {  # the notes' "Kernel Matrix examples", as printed
    "smooth": [[1, 1, 1], [1, 1, 1], [1, 1, 1]],
    "gaussian_blur": [[0, 1, 0], [1, 4, 1], [0, 1, 0]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "sharpen_intense": [[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]],
}

def test_presets_are_the_notes_kernels():
    for name, kernel in NOTES_PRESETS.items():
        np.testing.assert_array_equal(filters.get(name), kernel, err_msg=name)
    for name in filters.PRESETS:
        k = filters.get(name)
        assert k.shape == (3, 3) and k.dtype == np.float64
    # edge detectors respond to nothing on a flat image; sharpen keeps it
    assert filters.get("edges").sum() == filters.get("sobel_x").sum() == filters.get("sobel_y").sum() == 0
    assert filters.get("sharpen").sum() == filters.get("sharpen_intense").sum() == 1
    filters.get("smooth")[0, 0] = 99  # a copy: the preset is unchanged
    assert filters.get("smooth")[0, 0] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smoothing_preset_on_the_notes_depth_example(dtype):
    out = filters.apply(IMAGE_9x9_PADDED.astype(dtype), "smooth", normalize=False, padding="valid")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, ACTIVATION_MAP_ONES)
    np.testing.assert_allclose(filters.apply(IMAGE_9x9_PADDED.astype(dtype), "smooth", padding="valid"),
                               ACTIVATION_MAP_ONES / 9, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(filters.PRESETS))
def test_presets_on_a_flat_image(name):
    """Inside a flat image: normalised smoothing and sharpening keep the value, edges give 0."""
    out = filters.apply(np.full((6, 7), 0.5, np.float32), name)
    assert out.shape == (6, 7) and out.dtype == np.float32
    expected = 0.0 if filters.get(name).sum() == 0 else 0.5
    np.testing.assert_allclose(out[1:-1, 1:-1], expected, atol=1e-6)


def test_apply_on_rgb_filters_each_channel():
    rgb = make_rng(0).integers(0, 256, (9, 11, 3)).astype(np.uint8)
    out = filters.apply(rgb, "sharpen")
    assert out.shape == rgb.shape and out.dtype == np.float32  # integer images are filtered in float32
    for c in range(3):
        np.testing.assert_allclose(out[..., c], filters.apply(rgb[..., c].astype(np.float32), "sharpen"), rtol=1e-6)
    # sobel_x is the cross-correlation of the image rows with [-1, 0, 1] (weights 1, 2, 1 over rows)
    grey = make_rng(1).standard_normal((5, 6))
    gx = filters.apply(grey, "sobel_x", padding="valid")
    d = grey[:, 2:] - grey[:, :-2]
    np.testing.assert_allclose(gx, d[:-2] + 2 * d[1:-1] + d[2:], rtol=1e-12)


def test_apply_errors():
    with pytest.raises(ValueError, match="kernel must be one of .* or a 2-D array, got 'blurry'"):
        filters.apply(np.zeros((4, 4)), "blurry")
    with pytest.raises(ValueError, match=r"kernel must be 2-D \(KH, KW\), got shape \(3,\)"):
        filters.apply(np.zeros((4, 4)), [1, 2, 1])
    with pytest.raises(ValueError, match=r"image must be \(H, W\) or \(H, W, C\), got shape \(4,\)"):
        filters.apply(np.zeros(4), "smooth")


# ---------------------------------------------------------------------------- augment


def batch(n=4, dtype=np.float32):
    return make_rng(2).random((n, 3, 6, 8)).astype(dtype)


def test_hflip():
    x = batch()
    np.testing.assert_array_equal(augment.hflip(x), x[..., ::-1])
    np.testing.assert_array_equal(augment.hflip(augment.hflip(x)), x)
    np.testing.assert_array_equal(augment.random_hflip(x, p=1.0, rng=0), x[..., ::-1])
    np.testing.assert_array_equal(augment.random_hflip(x, p=0.0, rng=0), x)
    mixed = augment.random_hflip(batch(64), rng=0)
    flipped = [np.array_equal(m, b[..., ::-1]) for m, b in zip(mixed, batch(64))]
    assert 10 < sum(flipped) < 54  # about half, each image either flipped or untouched
    assert all(f or np.array_equal(m, b) for f, m, b in zip(flipped, mixed, batch(64)))


def test_rotate_by_right_angles_is_exact_up_to_rounding():
    x = make_rng(3).random((2, 3, 7, 7))
    np.testing.assert_allclose(augment.rotate(x, 90), np.rot90(x, 1, axes=(2, 3)), atol=1e-12)
    np.testing.assert_allclose(augment.rotate(x, -90), np.rot90(x, -1, axes=(2, 3)), atol=1e-12)
    np.testing.assert_allclose(augment.rotate(x, [180, 0]), np.stack([x[0, :, ::-1, ::-1], x[1]]), atol=1e-12)


def test_rotation_keeps_the_centre_and_fills_the_corners():
    x = np.ones((1, 1, 9, 9))
    out = augment.rotate(x, 45, fill=-1.0)
    assert out[0, 0, 4, 4] == 1.0
    assert out[0, 0, 0, 0] == -1.0  # the corner comes from outside the image


def test_zoom_and_shift():
    x = batch()
    np.testing.assert_array_equal(augment.zoom(x, 1.0), x)
    # zooming in by 2 about the centre (3, 3) of a 7x7 image: output row r reads row (r - 3) / 2 + 3
    odd = make_rng(4).random((1, 1, 7, 7))
    zoomed = augment.zoom(odd, 2.0)[0, 0]
    np.testing.assert_allclose(zoomed[3, 3], odd[0, 0, 3, 3])
    np.testing.assert_allclose(zoomed[1, 3], odd[0, 0, 2, 3])
    np.testing.assert_allclose(zoomed[2, 3], (odd[0, 0, 2, 3] + odd[0, 0, 3, 3]) / 2)
    shifted = augment.shift(x, 1, -2)
    np.testing.assert_array_equal(shifted[:, :, 1:, :-2], x[:, :, :-1, 2:])
    assert np.all(shifted[:, :, 0, :] == 0) and np.all(shifted[:, :, :, -2:] == 0)


def test_random_transforms_are_seeded_and_shaped():
    x = batch()
    for fn, kwargs in ((augment.random_rotation, dict(max_degrees=20)), (augment.random_zoom, {}),
                       (augment.random_shift, dict(max_shift=2)), (augment.random_augment, dict(max_degrees=10))):
        a, b, c = fn(x, rng=5, **kwargs), fn(x, rng=5, **kwargs), fn(x, rng=6, **kwargs)
        assert a.shape == x.shape and a.dtype == x.dtype, fn.__name__
        np.testing.assert_array_equal(a, b, err_msg=fn.__name__)
        assert not np.array_equal(a, c), fn.__name__


def test_random_shift_moves_whole_images():
    x = batch(8)
    out = augment.random_shift(x, (1, 2), rng=0)
    for o, img in zip(out, x):
        assert any(np.array_equal(o, augment.shift(img[None], r, c)[0]) for r in (-1, 0, 1) for c in range(-2, 3))


def test_random_crop_takes_windows_of_the_padded_image():
    x = batch(5)
    out = augment.random_crop(x, (4, 5), padding=1, rng=0)
    assert out.shape == (5, 3, 4, 5)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for o, p in zip(out, padded):
        assert any(np.array_equal(o, p[:, i : i + 4, j : j + 5]) for i in range(5) for j in range(6))
    with pytest.raises(ValueError, match="size 9x5 is larger than the padded image 8x10"):
        augment.random_crop(x, (9, 5), padding=1)


def test_random_augment_flip_only_gives_the_image_or_its_mirror():
    x = batch(16, np.float64)
    out = augment.random_augment(x, rng=1)
    for o, img in zip(out, x):
        assert np.allclose(o, img, atol=1e-12) or np.allclose(o, img[..., ::-1], atol=1e-12)


def test_augment_errors():
    with pytest.raises(ValueError, match="x must be 4-D"):
        augment.hflip(np.zeros((3, 4, 5)))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        augment.rotate(np.zeros((1, 1, 3, 3), np.uint8), 10)
    with pytest.raises(ValueError, match=r"degrees must be a finite number or one per image \(2 values\)"):
        augment.rotate(np.zeros((2, 1, 3, 3)), [1, 2, 3])
    with pytest.raises(ValueError, match="zoom_range must be a pair"):
        augment.random_zoom(np.zeros((1, 1, 3, 3)), (1.2, 0.8))


# ---------------------------------------------------------------------------- picture examples


def test_filters_example_writes_its_grid(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    results, path = load_example("filters").run(tmp_path, image="chelsea", size=60)
    assert path.exists() and path.stat().st_size > 10_000
    shape = next(iter(results.values())).shape
    assert len(shape) == 3 and shape[2] == 3 and max(shape) >= 60
    assert all(r.shape == shape for r in results.values())


def test_augment_example_writes_its_grid(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    batch_out, path = load_example("augment").run(tmp_path, count=3, seed=0, size=60)
    assert path.exists() and path.stat().st_size > 10_000
    assert batch_out.shape[:2] == (3, 3) and batch_out.dtype == np.float32
    assert not np.array_equal(batch_out[0], batch_out[1])


def test_importing_fastlayers_loads_no_example_dependency():
    import subprocess
    import sys

    code = ("import sys, fastlayers; "
            "print([m for m in ('matplotlib', 'skimage', 'sklearn', 'torch') if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_filters_follow_the_backend_choice():
    img = make_rng(5).random((5, 5))
    with fl.use_backend("numpy"):
        ref = filters.apply(img, "gaussian_blur")
    np.testing.assert_allclose(filters.apply(img, "gaussian_blur"), ref, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------- the PyTorch drop-in example


def test_torch_drop_in_example_trains_the_converted_model_like_the_original():
    pytest.importorskip("torch", reason="the example needs PyTorch (the torch extra)")
    result = load_example("torch_drop_in").run(batch=4, size=8, steps=3, width=4, verbose=False)
    assert [name for name, _, _ in result["report"].swapped] == ["0", "2", "4", "5", "7", "9"]
    # float32, the same weights and batches: the losses differ by rounding only (sums of a few
    # hundred products per activation, 3 SGD steps)
    np.testing.assert_allclose(result["fastlayers_losses"], result["torch_losses"], rtol=1e-4)
    assert result["torch_losses"][-1] != result["torch_losses"][0]  # it trained
    assert result["torch_step_s"] > 0 and result["fastlayers_step_s"] > 0
