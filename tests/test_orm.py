import numpy as np
import pytest

from mpq_export.util.errors import MPQError
from mpq_export.stages.orm import OrmSettings, compute_importance, linear_cka, orm_matrix


def _gram(y):
    y = y.reshape(len(y), -1).astype(np.float64)
    return y @ y.T


def test_orm_of_a_layer_with_itself_and_a_scaled_copy_is_one():
    x = np.random.default_rng(0).standard_normal((32, 50))
    for est in ("biased", "unbiased"):
        assert linear_cka(x, x, est) == pytest.approx(1.0, abs=1e-12)
        assert linear_cka(x, -3.7 * x, est) == pytest.approx(1.0, abs=1e-12)


def test_independent_low_dimensional_features_are_near_orthogonal():
    rng = np.random.default_rng(1)
    vals = [linear_cka(rng.standard_normal((256, 2)), rng.standard_normal((256, 2))) for _ in range(20)]
    assert np.mean(vals) < 0.02


def test_high_dimensional_bias_and_the_unbiased_estimator():
    """docs/design.md: N=32 independent Gaussians give biased CKA ~0.04 at d=2, ~0.77 at d=100, ~0.997 at d=10,000."""
    rng = np.random.default_rng(2)

    def mean_cka(d, est, reps=30):
        return np.mean([linear_cka(rng.standard_normal((32, d)), rng.standard_normal((32, d)), est) for _ in range(reps)])

    assert mean_cka(2, "biased") < 0.15
    assert 0.6 < mean_cka(100, "biased") < 0.9
    assert mean_cka(10_000, "biased") > 0.99
    for d in (2, 100, 10_000):
        assert abs(mean_cka(d, "unbiased")) < 0.05


def test_correlated_features_score_higher_than_unrelated_ones_with_the_unbiased_estimator():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 4000))
    y = x + 0.5 * rng.standard_normal(x.shape)
    z = rng.standard_normal(x.shape)
    assert linear_cka(x, y, "unbiased") > 0.6 > 0.05 > abs(linear_cka(x, z, "unbiased"))


def test_time_only_layer_is_excluded_and_takes_the_median():
    """A layer that sees the same input for every sample has a zero centred Gram: ORM undefined."""
    rng = np.random.default_rng(4)
    K, N = 3, 16
    base = rng.standard_normal((N, 30))
    grams = []
    for k in range(K):
        feats = [base + 0.1 * k * rng.standard_normal(base.shape), rng.standard_normal((N, 30)),
                 base @ rng.standard_normal((30, 30)), np.tile(rng.standard_normal((1, 30)), (N, 1))]
        grams.append(np.stack([_gram(f) for f in feats]))
    grams = np.stack(grams)
    imp = compute_importance(grams, np.array([900, 500, 100]), ["a", "b", "c", "time"], OrmSettings())
    assert imp.excluded == ["time"]
    assert imp.theta[3] == pytest.approx(np.median(imp.theta[:3]))
    assert np.isnan(imp.gamma_per_t[:, 3]).all()
    # b is unrelated to a and c, so it is the most orthogonal and the most important
    assert imp.theta[1] == imp.theta[:3].max()


def test_aggregation_weights_late_steps_by_alpha():
    rng = np.random.default_rng(5)
    grams = np.stack([np.stack([_gram(rng.standard_normal((8, 5))) for _ in range(4)]) for _ in range(3)])
    ts = np.array([900, 500, 100])
    for alpha in (0.0, 2.0):
        imp = compute_importance(grams, ts, list("abcd"), OrmSettings(alpha=alpha, beta=3.0))
        w = np.exp(-alpha * ts / 1000)
        want = (w[:, None] * np.exp(-3.0 * imp.gamma_per_t)).sum(0) / w.sum()
        np.testing.assert_allclose(imp.theta, want)
    imp = compute_importance(grams, ts, list("abcd"), OrmSettings(alpha=2.0, beta=3.0, agg="exp-of-mean"))
    w = np.exp(-2.0 * ts / 1000)
    np.testing.assert_allclose(imp.theta, np.exp(-3.0 * (w[:, None] * imp.gamma_per_t).sum(0) / w.sum()))


def test_default_beta_makes_beta_times_std_gamma_one():
    rng = np.random.default_rng(6)
    grams = np.stack([np.stack([_gram(rng.standard_normal((8, 5))) for _ in range(5)])])
    imp = compute_importance(grams, np.array([500]), list("abcde"), OrmSettings())
    assert imp.beta * np.nanstd(imp.gamma_per_t[0]) == pytest.approx(1.0)


def test_orm_matrix_is_symmetric_with_unit_diagonal():
    rng = np.random.default_rng(7)
    grams = np.stack([_gram(rng.standard_normal((12, d))) for d in (3, 8, 20)])
    orm, valid = orm_matrix(grams)
    assert valid.all()
    np.testing.assert_allclose(orm, orm.T)
    np.testing.assert_allclose(np.diag(orm), 1.0)
    assert ((orm >= -1e-12) & (orm <= 1 + 1e-12)).all()


def test_bad_settings_are_user_errors():
    with pytest.raises(MPQError, match="orm-estimator"):
        OrmSettings(estimator="fancy")
    with pytest.raises(MPQError, match="beta"):
        OrmSettings(beta=-1)


def test_timestep_weights_stay_finite_at_the_ends_of_the_alpha_range():
    from mpq_export.stages.orm import MAX_ALPHA, timestep_weights

    ts = np.array([999, 500, 0])
    for alpha in (-MAX_ALPHA, MAX_ALPHA):
        w = timestep_weights(ts, alpha, 1000)
        assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0)
        assert w[np.argmin(alpha * ts)] == w.max()  # the step exp(-alpha t / T) favours
    np.testing.assert_allclose(timestep_weights(ts, -2.0, 1000), np.exp(2.0 * ts / 1000) / np.exp(2.0 * ts / 1000).sum())
