import numpy as np
import pytest

from landslide.calibrate import best_threshold, calibrate, crossfit_f1, f1_at, fit_weights


def brute_best_f1(y, p):
    return max(f1_at(y, p, t) for t in np.unique(p))


def test_f1_by_hand():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.2, 0.8, 0.1, 0.7])
    # at 0.5: tp=2 fp=1 fn=1 -> 4/6
    assert f1_at(y, p, 0.5) == pytest.approx(2 / 3)


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 50)
        p = np.round(rng.random(50), 2)  # ties on purpose
        thr, f1 = best_threshold(y, p)
        assert f1 == pytest.approx(brute_best_f1(y, p))
        assert f1_at(y, p, thr) == pytest.approx(f1)


def test_no_positives_gives_zero():
    assert best_threshold(np.zeros(5, int), np.random.rand(5))[1] == 0.0


def test_weights_prefer_the_informative_model():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.6 + rng.random(400) * 0.5, 0, 1)
    noise = rng.random(400)
    w = fit_weights(y, np.c_[noise, good])
    assert w.sum() == pytest.approx(1.0) and w[1] > 0.7


def test_calibrate_output():
    y = np.array([0, 1, 0, 1, 1, 0])
    probs = np.array([[0.1, 0.2], [0.9, 0.7], [0.3, 0.1], [0.8, 0.9], [0.6, 0.4], [0.2, 0.6]])
    cal = calibrate(y, probs, ["a", "b"])
    assert set(cal) >= {"threshold", "weights", "oof_f1", "per_arch"}
    assert cal["oof_f1"] == 1.0 and abs(sum(cal["weights"].values()) - 1) < 1e-9
    assert (cal["n"], cal["n_pos"]) == (6, 3)


def test_crossfit_calls_each_fold_at_the_other_folds_threshold():
    """Fold 1's scores sit lower than fold 0's. One threshold over all rows separates both (F1 1, the
    in-sample figure); fitted on fold 0 alone (0.5) it calls fold 1's positive negative, fitted on fold 1
    (0.25) it calls fold 0 right: 1 TP, 1 FN -> 2/3."""
    y = np.array([1, 0, 1, 0])
    probs = np.array([[0.9], [0.1], [0.3], [0.2]])
    folds = np.array([0, 0, 1, 1])
    assert calibrate(y, probs, ["a"])["oof_f1"] == 1.0
    assert crossfit_f1(y, probs, folds) == pytest.approx(2 / 3)


def test_crossfit_fits_the_weights_on_the_other_folds_too():
    """Column a separates fold 0 and column b fold 1, each the other fold's noise: weights fitted on the
    other fold pick the wrong column, so the cross-fitted F1 falls below the in-sample one."""
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    a = np.array([0.9, 0.8, 0.2, 0.1, 0.1, 0.2, 0.8, 0.9])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    b = np.array([0.1, 0.2, 0.8, 0.9, 0.9, 0.8, 0.2, 0.1])
    probs = np.c_[a, b]
    assert crossfit_f1(y, probs, folds) == 0.0
    assert calibrate(y, probs, ["a", "b"])["oof_f1"] > 0.6


def test_crossfit_needs_two_folds():
    with pytest.raises(ValueError, match="two folds"):
        crossfit_f1(np.array([0, 1]), np.array([[0.2], [0.8]]), np.array([0, 0]))


def test_threshold_sits_halfway_to_the_next_score():
    """The cut generalises: halfway between the last positive call and the next lower score."""
    assert best_threshold(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.2])) == (pytest.approx(0.5), 1.0)


def test_weights_reach_the_simplex_corners_and_break_ties_by_log_loss():
    """Both columns separate the classes (F1 1 everywhere on the grid): the tie goes to the lowest log
    loss, which is all weight on the confident column, a corner of the grid."""
    y = np.array([0, 0, 1, 1])
    probs = np.c_[[0.05, 0.1, 0.9, 0.95], [0.4, 0.45, 0.55, 0.6]]
    np.testing.assert_allclose(fit_weights(y, probs), [1.0, 0.0])
    np.testing.assert_allclose(fit_weights(y, probs[:, ::-1]), [0.0, 1.0])


def test_calibration_threshold_and_f1_are_the_weighted_ensembles():
    """calibration.json's threshold and OOF F1 are those of the weighted probabilities, and no grid point
    beats that F1."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    probs = np.clip(np.c_[y * 0.3 + rng.random(120) * 0.8, y * 0.2 + rng.random(120) * 0.9], 0, 1)
    cal = calibrate(y, probs, ["a", "b"])
    w = np.array([cal["weights"]["a"], cal["weights"]["b"]])
    thr, f1 = best_threshold(y, probs @ w)
    assert (cal["threshold"], cal["oof_f1"]) == (pytest.approx(thr), pytest.approx(f1))
    # The diagnostics beside it, by hand from the same probabilities (here F1 at 0.5 is well below the best).
    p = probs @ w
    call = p >= 0.5
    tp, fp, fn = int(np.sum(call & (y == 1))), int(np.sum(call & (y == 0))), int(np.sum(~call & (y == 1)))
    assert cal["oof_f1_at_0.5"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) and cal["oof_f1_at_0.5"] < f1 - 0.02
    pc = np.clip(p, 1e-7, 1 - 1e-7)  # some rows are exactly 0 or 1 here
    assert cal["oof_log_loss"] == pytest.approx(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
    grid = [brute_best_f1(y, probs @ np.array([k / 20, 1 - k / 20])) for k in range(21)]
    assert cal["oof_f1"] == pytest.approx(max(grid))
    for i, arch in enumerate("ab"):
        assert cal["per_arch"][arch]["f1"] == pytest.approx(brute_best_f1(y, probs[:, i]))


def test_logistic_baseline_fits_a_separable_feature_and_not_noise():
    """The demo's bar (landslide.baseline): on a band mean that separates the classes its Newton fit
    scores them apart; on pure noise it does not find signal."""
    from landslide.baseline import band_means, fit_logreg

    rng = np.random.default_rng(0)
    y = (np.arange(200) % 4 == 0).astype(float)  # 25 % positive, as imbalanced as the real set
    x = rng.normal(size=(200, 3, 4, 4))
    x[:, 1] += y[:, None, None] * 1.5  # band 1 brighter on landslides
    f = band_means(x)
    np.testing.assert_allclose(f, x.mean((2, 3)))
    z = (f - f.mean(0)) / f.std(0)
    w, b = fit_logreg(z, y)
    assert w[1] > 1 and abs(w[0]) < 0.5 and abs(w[2]) < 0.5
    assert best_threshold(y, 1 / (1 + np.exp(-(z @ w + b))))[1] > 0.9
    wn, _ = fit_logreg(rng.normal(size=(200, 3)), y)
    assert np.abs(wn).max() < 0.5

