"""Tests for evaluation/metrics.py: A. Fréchet distance, B. KVD, C. IS, against closed forms,
brute-force loops and independent NumPy computations."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from digan_jax.evaluation import metrics

METHODS = ("eigh", "svd", "sqrtm")


def _synthetic_features(rng, num, dim=400, mean_shift=0.0):
  """Gaussian features, covariance eigenvalues log-spaced 1e2..1e-4 (trace about 2938)."""
  basis, _ = np.linalg.qr(np.random.default_rng(1234).normal(size=(dim, dim)))
  scales = np.sqrt(np.logspace(2, -4, dim))
  return (rng.normal(size=(num, dim)) * scales) @ basis.T + mean_shift


@pytest.fixture(scope="module")
def big_sets():
  rng = np.random.default_rng(0)
  return _synthetic_features(rng, 2048), _synthetic_features(rng, 2048, mean_shift=0.05)


# ---------------------------------------------------------------------------------------------
# A. Fréchet distance.


@pytest.mark.parametrize("method", METHODS)
def test_fd_of_a_set_with_itself_is_zero(big_sets, method):
  x, _ = big_sets
  _, sigma = metrics.gaussian_statistics(x)
  fd = metrics.frechet_distance(x, x, method=method)
  assert abs(fd) < 1e-8 * np.trace(sigma)


def test_gaussian_statistics_match_numpy_cov():
  x = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32)
  mu, sigma = metrics.gaussian_statistics(x)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
  _, sigma_biased = metrics.gaussian_statistics(x, unbiased=False)
  np.testing.assert_allclose(
    sigma_biased, np.cov(x.astype(np.float64), rowvar=False, bias=True), rtol=1e-12
  )


@pytest.mark.parametrize("method", METHODS)
def test_fd_diagonal_closed_form(method):
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
  a, b = rng.uniform(0.1, 5.0, size=20), rng.uniform(0.1, 5.0, size=20)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = metrics.frechet_distance_from_statistics(mu1, np.diag(a), mu2, np.diag(b), method=method)
  assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_fd_non_commuting_2x2(method):
  sigma1 = np.array([[2.0, 1.0], [1.0, 2.0]])
  sigma2 = np.diag([1.0, 4.0])
  # tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for the 2x2 M = sigma1 sigma2, since for its
  # eigenvalues (√λ1 + √λ2)² = λ1 + λ2 + 2√(λ1λ2).
  got = metrics.frechet_distance_from_statistics(
    np.zeros(2), sigma1, np.array([1.0, 2.0]), sigma2, method=method
  )
  assert got == pytest.approx(5.771220447654342, rel=1e-13)
  assert metrics.trace_sqrt_product(sigma1, sigma2, method=method) == pytest.approx(
    math.sqrt(10.0 + 2.0 * math.sqrt(12.0)), rel=1e-13
  )


def test_fd_properties():
  rng = np.random.default_rng(3)
  dim = 16
  x = rng.normal(size=(300, dim)) @ rng.normal(size=(dim, dim))
  y = rng.normal(size=(250, dim)) @ rng.normal(size=(dim, dim)) + 0.3
  fd = metrics.frechet_distance(x, y)
  assert fd > 1.0
  assert metrics.frechet_distance(y, x) == pytest.approx(fd, rel=1e-10)
  shift = rng.normal(size=dim) * 10
  assert metrics.frechet_distance(x + shift, y + shift) == pytest.approx(fd, rel=1e-10)
  rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  assert metrics.frechet_distance(x @ rotation, y @ rotation) == pytest.approx(fd, rel=1e-10)
  assert metrics.frechet_distance(3.0 * x, 3.0 * y) == pytest.approx(9.0 * fd, rel=1e-10)


def test_fd_routes_agree_on_d400_n2048(big_sets):
  x, y = big_sets
  values = {m: metrics.frechet_distance(x, y, method=m) for m in METHODS}
  # Same-distribution-ish sets: FD is a small difference of traces ~3000 (the same-distribution
  # bias alone is about 61 at N = 2048 on this synthetic set).
  assert 10.0 < values["eigh"] < 500.0
  for a, b in itertools.combinations(METHODS, 2):
    assert abs(values[a] - values[b]) < 1e-9 * abs(values["sqrtm"]), (a, b, values)


def test_fd_biased_covariance_option(big_sets):
  x, y = big_sets
  n = x.shape[0]
  unbiased = metrics.frechet_distance(x, y)
  biased = metrics.frechet_distance(x, y, unbiased=False)
  # With equal N, every covariance term scales by c = (N-1)/N and the mean term does not.
  mean_term = np.sum((x.mean(0) - y.mean(0)) ** 2)
  c = (n - 1) / n
  # FD is a small difference of traces (~3000 here): float64 rounding scales with the traces, not
  # with FD (numpy 2.4 / scipy 1.17 measured 1.1e-8 absolute, 1.7e-10 of FD).
  scale = np.trace(np.cov(x.T)) + np.trace(np.cov(y.T))
  err = abs(biased - (c * unbiased + (1 - c) * mean_term))
  print(f"biased FD {biased:.10f}: error {err:.3g} = {err / scale:.3g} of the traces ({scale:.1f})")
  assert err < 1e-10 * scale
  assert -1e-3 < (biased - unbiased) / unbiased < 0  # ~-0.05%: StyleGAN-V's biased covariance


def test_fd_rejects_bad_input():
  with pytest.raises(ValueError, match="num_samples"):
    metrics.frechet_distance(np.zeros(5), np.zeros(5))
  with pytest.raises(ValueError, match="shapes"):
    metrics.frechet_distance(np.ones((5, 3)), np.ones((5, 4)))
  with pytest.raises(ValueError, match="NaN"):
    metrics.frechet_distance(np.full((5, 3), np.nan), np.ones((5, 3)))
  with pytest.raises(ValueError, match="method"):
    metrics.trace_sqrt_product(np.eye(2), np.eye(2), method="cholesky")


# ---------------------------------------------------------------------------------------------
# B. KVD.


def test_polynomial_kernel_hand_values():
  x = np.array([[1.0, 2.0], [0.0, -1.0]])
  y = np.array([[3.0, 4.0]])
  np.testing.assert_allclose(metrics.polynomial_kernel(x, y), [[6.5**3], [(-4 / 2 + 1) ** 3]])


def _brute_force_mmd2(x, y):
  d = x.shape[1]
  k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def test_kvd_equals_brute_force_loop():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.5
  assert metrics.kernel_distance(x, y) == pytest.approx(_brute_force_mmd2(x, y), rel=1e-12)
  assert metrics.kernel_distance(x, x[:4]) == pytest.approx(_brute_force_mmd2(x, x[:4]), rel=1e-12)


def test_kvd_is_unbiased_over_repeated_draws():
  rng = np.random.default_rng(5)
  draws = np.array(
    [
      metrics.kernel_distance(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)))
      for _ in range(200)
    ]
  )
  stderr = draws.std(ddof=1) / math.sqrt(len(draws))
  assert abs(draws.mean()) < 3 * stderr, (draws.mean(), stderr)
  # The biased V-statistic (diagonal kept) would sit far above zero for the same draws.
  assert draws.min() < 0 < draws.max()


def test_kvd_separates_distributions():
  rng = np.random.default_rng(6)
  same = metrics.kernel_distance(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)))
  shifted = metrics.kernel_distance(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 1.0)
  assert shifted > 0.1 > abs(same)


def test_kvd_blocks_2048_is_mean_of_two_1024_halves():
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(2048, 400)), rng.normal(size=(2048, 400)) * 1.1
  halves = [
    metrics.kernel_distance(x[:1024], y[:1024]),
    metrics.kernel_distance(x[1024:], y[1024:]),
  ]
  mean, stderr = metrics.kernel_distance_blocks(x, y, max_block_size=1024)
  assert mean == pytest.approx(np.mean(halves), rel=1e-12)
  assert stderr == pytest.approx(abs(halves[0] - halves[1]) / 2, rel=1e-9)
  # A single block is DIGAN's full estimator, with no standard error.
  full, full_err = metrics.kernel_distance_blocks(x, y, max_block_size=4096)
  assert full == pytest.approx(metrics.kernel_distance(x, y), rel=1e-12)
  assert math.isnan(full_err)


def test_kvd_blocks_uneven_sizes():
  rng = np.random.default_rng(8)
  x, y = rng.normal(size=(10, 3)), rng.normal(size=(7, 3))
  # ceil(10 / 4) = 3 blocks: x rows 0-3, 3-6, 6-10 (floor sizes first); y rows 0-2, 2-4, 4-7.
  blocks = [
    _brute_force_mmd2(x[0:3], y[0:2]),
    _brute_force_mmd2(x[3:6], y[2:4]),
    _brute_force_mmd2(x[6:10], y[4:7]),
  ]
  mean, stderr = metrics.kernel_distance_blocks(x, y, max_block_size=4)
  assert mean == pytest.approx(np.mean(blocks), rel=1e-12)
  assert stderr == pytest.approx(math.sqrt(np.var(blocks, ddof=1) / 3), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# C. IS formula.


def test_is_even_one_hot_is_num_classes():
  probs = np.eye(10)[np.arange(100) % 10]
  assert metrics.inception_score(probs)[0] == pytest.approx(10.0, rel=1e-12)
  assert metrics.inception_score(probs, eps=1e-7)[0] == pytest.approx(10.0, rel=1e-5)


def test_is_identical_predictions_is_one():
  probs = np.tile(scipy.stats.dirichlet.rvs(np.ones(7), random_state=0), (50, 1))
  score, std = metrics.inception_score(probs, num_splits=5)
  assert score == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_is_tgan_single_split_with_eps():
  probs = scipy.stats.dirichlet.rvs(np.full(101, 0.05), size=64, random_state=1)
  marginal = probs.mean(0)
  want = math.exp(np.mean(np.sum(probs * (np.log(probs + 1e-7) - np.log(marginal + 1e-7)), axis=1)))
  score, std = metrics.inception_score(probs, eps=1e-7)
  assert score == pytest.approx(want, rel=1e-12) and std == 0.0
  assert 1.0 < score < 101.0


def test_is_stylegan_v_mode_matches_reference():
  probs = scipy.stats.dirichlet.rvs(np.full(101, 0.1), size=205, random_state=2)
  shuffled = probs[np.random.RandomState(42).permutation(len(probs))]
  scores = []
  for k in range(10):  # 20 rows per split; the last 5 rows are dropped
    part = shuffled[k * 20 : (k + 1) * 20]
    kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
    scores.append(np.exp(kl.sum(1).mean()))
  score, std = metrics.inception_score(probs, num_splits=10, shuffle_seed=42)
  assert score == pytest.approx(np.mean(scores), rel=1e-12)
  assert std == pytest.approx(np.std(scores), rel=1e-9)
  # Without the shuffle the splits differ, so the mean differs.
  assert metrics.inception_score(probs, num_splits=10)[0] != pytest.approx(score, rel=1e-9)
