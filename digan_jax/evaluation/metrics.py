"""Distribution metrics on classifier features: Fréchet distance (FVD), KVD and the IS formula.

This module owns the host-side arithmetic that turns feature (or class-probability) arrays into the
numbers we report. Everything is float64 NumPy/SciPy: FD and KVD are small differences of large sums
(an all-float32 FD at N=2048 is off by ~1%), so the float32 arithmetic of some reference codebases
is not reproduced. The formulas follow TF-GAN (`tensorflow_gan/python/eval/classifier_metrics.py`),
DIGAN (`src/scripts/compute_fvd_kvd.py`, `src/scripts/fvd/fvd.py`), StyleGAN-V (`FeatureStats` in
`src/metrics/metric_utils.py`, `video_inception_score.py`) and TGAN (`calc_inception.py`).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import scipy.linalg

SqrtMethod = Literal["eigh", "svd", "sqrtm"]

# TF-GAN leaves singular values below this un-rooted in its SVD square root (`trace_sqrt_product`).
_SVD_SQRT_EPS = 1e-10


def _as_float64_matrix(features, name: str) -> np.ndarray:
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a [num_samples, num_features] array, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or Inf values")
  return x


def gaussian_statistics(features, *, unbiased: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of [N, D] features in float64.

  unbiased=True divides by N - 1 (TF-GAN, DIGAN); False divides by N (StyleGAN-V's `FeatureStats`).
  """
  x = _as_float64_matrix(features, "features")
  n = x.shape[0]
  ddof = 1 if unbiased else 0
  if n - ddof <= 0:
    raise ValueError(f"need at least {ddof + 1} samples for the covariance, got {n}")
  mu = x.mean(axis=0)
  centred = x - mu
  sigma = centred.T @ centred / (n - ddof)
  return mu, sigma


def _symmetric_sqrt_eigh(mat: np.ndarray) -> np.ndarray:
  # Symmetrise first: covariances are symmetric only up to rounding.
  w, v = np.linalg.eigh((mat + mat.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _symmetric_sqrt_svd(mat: np.ndarray) -> np.ndarray:
  u, s, vh = np.linalg.svd(mat)
  s = np.where(s < _SVD_SQRT_EPS, s, np.sqrt(s))
  return (u * s) @ vh


def trace_sqrt_product(sigma1, sigma2, *, method: SqrtMethod = "eigh") -> float:
  """tr((sigma1 sigma2)^(1/2)) for symmetric positive semi-definite sigma1, sigma2.

  'eigh' (default): A = sqrt(sigma1) by eigendecomposition, then the eigenvalues of the symmetric
    PSD matrix A sigma2 A (similar to sigma1 sigma2), clipped at 0 and rooted.
  'svd': TF-GAN's `trace_sqrt_product` route, SVD square roots with values < 1e-10 left un-rooted.
  'sqrtm': scipy.linalg.sqrtm of the non-symmetric product, real part (StyleGAN-V's route).
  """
  sigma1 = np.asarray(sigma1, dtype=np.float64)
  sigma2 = np.asarray(sigma2, dtype=np.float64)
  if method == "eigh":
    a = _symmetric_sqrt_eigh(sigma1)
    inner = a @ sigma2 @ a
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())
  if method == "svd":
    a = _symmetric_sqrt_svd(sigma1)
    return float(np.trace(_symmetric_sqrt_svd(a @ sigma2 @ a)))
  if method == "sqrtm":
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.real(np.trace(root)))
  raise ValueError(f"unknown method {method!r}; expected 'eigh', 'svd' or 'sqrtm'")


def frechet_distance_from_statistics(
  mu1, sigma1, mu2, sigma2, *, method: SqrtMethod = "eigh"
) -> float:
  """||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)), in float64."""
  mu1 = np.asarray(mu1, dtype=np.float64)
  mu2 = np.asarray(mu2, dtype=np.float64)
  sigma1 = np.asarray(sigma1, dtype=np.float64)
  sigma2 = np.asarray(sigma2, dtype=np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(
      f"statistics shapes do not match: mu {mu1.shape} vs {mu2.shape}, "
      f"sigma {sigma1.shape} vs {sigma2.shape}"
    )
  diff = mu1 - mu2
  return float(
    diff @ diff
    + np.trace(sigma1)
    + np.trace(sigma2)
    - 2.0 * trace_sqrt_product(sigma1, sigma2, method=method)
  )


def frechet_distance(
  features1, features2, *, unbiased: bool = True, method: SqrtMethod = "eigh"
) -> float:
  """Fréchet distance between Gaussians fitted to two [N, D] feature sets (FVD on I3D logits).

  Biased upward and sample-size dependent (TF-GAN's docstring says so): compare only at equal N.
  """
  mu1, sigma1 = gaussian_statistics(features1, unbiased=unbiased)
  mu2, sigma2 = gaussian_statistics(features2, unbiased=unbiased)
  return frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2, method=method)


def polynomial_kernel(x, y) -> np.ndarray:
  """k(x, y) = (x.y / d + 1)^3, the KVD kernel (sklearn: degree 3, gamma 1/d, coef0 1)."""
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  m, n = x.shape[0], y.shape[0]
  if m < 2 or n < 2:
    raise ValueError(f"the unbiased MMD^2 needs at least 2 samples per set, got {m} and {n}")
  k_xx = polynomial_kernel(x, x)
  k_yy = polynomial_kernel(y, y)
  k_xy = polynomial_kernel(x, y)
  # Off-diagonal sums: the diagonal k(x_i, x_i) terms are what make the plain V-statistic biased.
  term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
  term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
  return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kernel_distance(features1, features2) -> float:
  """KVD: unbiased MMD^2 with the cubic polynomial kernel over the full sets (DIGAN's estimator).

  Can be negative. Reported raw (no x1000), as DIGAN does (paper Table 1).
  """
  x = _as_float64_matrix(features1, "features1")
  y = _as_float64_matrix(features2, "features2")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
  return _mmd2_unbiased(x, y)


def _block_bounds(n: int, num_blocks: int) -> np.ndarray:
  # Contiguous near-equal blocks: the first ones get floor(n / num_blocks), the last
  # n mod num_blocks ones one more (TF-GAN's `kernel_classifier_distance_and_std_from_activations`).
  base = n // num_blocks
  num_plus_one = n - base * num_blocks
  sizes = [base] * (num_blocks - num_plus_one) + [base + 1] * num_plus_one
  return np.concatenate([[0], np.cumsum(sizes)])


def kernel_distance_blocks(
  features1, features2, *, max_block_size: int = 1024
) -> tuple[float, float]:
  """TF-GAN's block KVD estimator: (mean over blocks, standard error).

  num_blocks = ceil(max(n1, n2) / max_block_size); each block pairs the i-th contiguous block of
  both sets; the standard error is sqrt(var_ddof1(blocks) / num_blocks), NaN for a single block.
  Rows are assumed to be in random order.
  """
  x = _as_float64_matrix(features1, "features1")
  y = _as_float64_matrix(features2, "features2")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
  if max_block_size < 2:
    raise ValueError(f"max_block_size must be >= 2, got {max_block_size}")
  num_blocks = math.ceil(max(x.shape[0], y.shape[0]) / max_block_size)
  bounds_x = _block_bounds(x.shape[0], num_blocks)
  bounds_y = _block_bounds(y.shape[0], num_blocks)
  estimates = np.array(
    [
      _mmd2_unbiased(x[bounds_x[i] : bounds_x[i + 1]], y[bounds_y[i] : bounds_y[i + 1]])
      for i in range(num_blocks)
    ]
  )
  mean = float(estimates.mean())
  if num_blocks == 1:
    return mean, float("nan")
  return mean, float(math.sqrt(estimates.var(ddof=1) / num_blocks))


def inception_score(
  probs, *, num_splits: int = 1, eps: float = 0.0, shuffle_seed: int | None = None
) -> tuple[float, float]:
  """IS = exp(E_x KL(p(y|x) || p(y))) from [N, K] class probabilities: (mean, std) over splits.

  TGAN v1: num_splits=1, eps=1e-7 (added inside both logs). TGANv2: num_splits=1, eps=1e-20.
  StyleGAN-V: num_splits=10, eps=0, shuffle_seed=42 (rows permuted with np.random.RandomState(42)).
  Splits are contiguous, each of N // num_splits rows (a remainder is dropped). std is the
  population std over splits (0 for one split).
  """
  p = _as_float64_matrix(probs, "probs")
  if np.any(p < 0):
    raise ValueError("probs must be non-negative class probabilities")
  if shuffle_seed is not None:
    p = p[np.random.RandomState(shuffle_seed).permutation(p.shape[0])]
  split_size = p.shape[0] // num_splits
  if num_splits < 1 or split_size < 1:
    raise ValueError(f"cannot make {num_splits} splits from {p.shape[0]} samples")
  scores = []
  for k in range(num_splits):
    part = p[k * split_size : (k + 1) * split_size]
    marginal = part.mean(axis=0, keepdims=True)
    # 0 * log 0 = 0: classes with zero probability contribute nothing.
    with np.errstate(divide="ignore", invalid="ignore"):
      kl = np.where(part > 0, part * (np.log(part + eps) - np.log(marginal + eps)), 0.0)
    scores.append(math.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))
