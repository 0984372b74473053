"""from_sklearn: fitted scikit-learn estimators against their own leave-one-out refits."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LogisticRegression, Ridge, RidgeCV, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import infl
from infl.sklearn import from_sklearn
from infl.validate import correlations


def breast_cancer(n=450):
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return X[:n], y[:n], X[n:], y[n:]


def digits(n=400):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16, y[:n], X[1500:] / 16, y[1500:]


def log_loss(est, X, y):
    p = est.predict_proba(X)
    return -np.log(p[np.arange(len(y)), np.searchsorted(est.classes_, y)])


def squared_error(est, X, y):
    return (est.predict(X) - y) ** 2


def loo_pearson(est, X, y, Xt, yt, test_loss, k=10):
    """Pearson R and slope of -score / n against scikit-learn's own refits without each of the k most
    influential points, for the held-out point of highest loss (the paper's choice of a test point)."""
    i = int(np.argmax(test_loss(est, Xt, yt)))
    Xt, yt = Xt[i:i + 1], yt[i:i + 1]
    inf = from_sklearn(est, X, y)
    scores = inf.scores((Xt, yt))[0].numpy()
    top = np.argsort(-np.abs(scores))[:k]
    base = test_loss(est, Xt, yt)[0]
    actual = []
    for j in top:
        keep = np.arange(len(y)) != j
        actual.append(test_loss(clone(est).fit(X[keep], y[keep]), Xt, yt)[0] - base)
    predicted = -scores[top] / len(y)
    slope = np.polyfit(predicted, actual, 1)[0]
    return correlations(predicted, np.array(actual))[0], slope


def test_binary_logistic_regression_matches_sklearn_refits():
    X, y, Xt, yt = breast_cancer()
    est = LogisticRegression(C=0.05, tol=1e-12, max_iter=10_000).fit(X, y)
    r, slope = loo_pearson(est, X, y, Xt, yt, log_loss)
    assert r > 0.99 and 0.8 < slope < 1.4


def test_multinomial_logistic_regression_matches_sklearn_refits():
    X, y, Xt, yt = digits()
    est = LogisticRegression(C=0.1, tol=1e-12, max_iter=10_000).fit(X, y)
    r, slope = loo_pearson(est, X, y, Xt, yt, log_loss)
    assert r > 0.99 and 0.9 < slope < 1.15


def test_liblinear_penalised_intercept_matches_sklearn_refits():
    """liblinear penalises intercept / intercept_scaling: only l2 = 1/(C n s^2) on it makes theta stationary."""
    X, y, Xt, yt = breast_cancer()
    est = LogisticRegression(solver="liblinear", C=0.05, intercept_scaling=3.0, tol=1e-12, max_iter=10_000).fit(X, y)
    assert from_sklearn(est, X, y).grad_norm_ < 1e-6
    r, slope = loo_pearson(est, X, y, Xt, yt, log_loss)
    assert r > 0.99 and 0.8 < slope < 1.4


def test_ridge_matches_sklearn_refits():
    X, y = load_diabetes(return_X_y=True)
    est = Ridge(alpha=0.1).fit(X[:300], y[:300])
    assert from_sklearn(est, X[:300], y[:300]).grad_norm_ < 1e-6
    r, slope = loo_pearson(est, X[:300], y[:300], X[300:], y[300:], squared_error)
    assert r > 0.99 and 0.9 < slope < 1.15


@pytest.mark.parametrize("loss, r_min", [("squared_hinge", 0.9), ("hinge", 0.9)])
def test_linear_svc_tracks_sklearn_refits(loss, r_min):
    """Squared hinge: exact loss, generalised Hessian; hinge: SmoothHinge at the default t (README: R 0.95, 0.98)."""
    X, y, Xt, yt = breast_cancer()
    est = LinearSVC(C=0.05, loss=loss, tol=1e-9, max_iter=100_000).fit(X, y)
    inf = from_sklearn(est, X, y)
    r, slope = loo_pearson(est, X, y, Xt, yt, lambda e, A, b: inf.losses_of(e, (A, b)))
    assert r > r_min and 0.7 < slope < 1.5


def overlapping_classes(n=300, classes=3):
    """Three overlapping Gaussian classes: the unpenalised multinomial fit has a finite optimum."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    return rng.normal(size=(n, 4)) + 0.7 * y[:, None], y


def _multi_target_ridge():
    X, y = load_diabetes(return_X_y=True)
    Y = np.c_[y, X[:, 0] * 100 + y / 2]
    return Ridge(alpha=0.3, fit_intercept=True), X[:, 1:], Y


@pytest.mark.parametrize("make", [
    lambda: (LinearSVC(C=0.1, tol=1e-10, max_iter=100_000, intercept_scaling=2.0), *digits(300)[:2]),
    lambda: (LogisticRegression(C=0.1, fit_intercept=False, tol=1e-12, max_iter=10_000), *digits(300)[:2]),
    lambda: (LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000), *overlapping_classes()),
    _multi_target_ridge,
], ids=["linear-svc-ovr", "multinomial-no-intercept", "no-penalty", "ridge-multi-target"])
def test_estimator_optimum_is_stationary_for_the_mapped_objective(make):
    """grad R = 0 at scikit-learn's solution only if loss, l2 factors and intercept handling all match."""
    est, X, y = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert from_sklearn(est, X, y).grad_norm_ < 1e-5


def test_multinomial_gauge_gives_the_pseudo_inverse_scores():
    """Softmax intercepts are free up to a shared constant: scores must equal -g_t^T H^+ g_i with H singular."""
    X, y, Xt, yt = digits(150)
    est = LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000).fit(X, y)
    inf = from_sklearn(est, X, y, keep_train_grads=True)
    obj = inf.objective_
    H = inf.curvature_.to_dense().clone()
    H[-1, -1] -= infl.sklearn.GAUGE_L2  # the objective's own Hessian, without the gauge term
    ones = torch.zeros(obj.p, dtype=torch.float64)
    ones[-10:] = 1
    assert (H @ ones).abs().max() < 1e-10  # singular along "all intercepts + c"
    Gt = inf.test_grads((Xt, yt))
    expected = -Gt @ torch.linalg.pinv(H, hermitian=True) @ inf.train_grads_.T
    torch.testing.assert_close(inf.scores((Xt, yt)), expected, rtol=1e-6, atol=1e-8)


def test_estimator_is_left_unchanged():
    X, y, _, _ = digits(150)
    est = LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y)
    coef, intercept = est.coef_.copy(), est.intercept_.copy()
    from_sklearn(est, X, y)
    assert np.array_equal(est.coef_, coef) and np.array_equal(est.intercept_, intercept)


@pytest.mark.parametrize("est, match", [
    (LogisticRegression(), "is not fitted"),
    (Lasso(alpha=0.1), "unsupported estimator Lasso; supported: LogisticRegression"),
    (LinearSVC(penalty="l1"), "penalty='l1' is not supported.*Supported: LogisticRegression"),
    (LogisticRegression(class_weight="balanced"), "class_weight='balanced'"),
    (SGDClassifier(loss="log_loss"), "loss='log_loss'.*use loss='hinge'"),
    (Ridge(positive=True), "positive=True"),
    (SGDClassifier(early_stopping=True), "early_stopping=True.*trains on a part of X"),
    (RidgeCV(), r"unsupported estimator RidgeCV.*refit Ridge\(alpha=est.alpha_\)"),
    (make_pipeline(StandardScaler(), LogisticRegression()),
     r"unsupported estimator Pipeline.*from_sklearn\(pipe\[-1\], pipe\[:-1\].transform\(X\), y\)"),
])
def test_unsupported_estimators_are_refused(est, match):
    X, y, _, _ = breast_cancer(100)
    if not isinstance(est, LogisticRegression) or est.class_weight is not None:  # fitted, except the first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)
    with pytest.raises(infl.InputError, match=match):
        from_sklearn(est, X, y)


def test_l1_logistic_regression_is_refused():
    X, y, _, _ = breast_cancer(100)
    est = LogisticRegression(solver="liblinear", l1_ratio=1.0, C=1.0).fit(X, y)
    with pytest.raises(infl.InputError, match="penalty 'l1'.*not twice differentiable"):
        from_sklearn(est, X, y)


@pytest.mark.filterwarnings("ignore:the model is not at a stationary point")
def test_unconverged_fit_warns_what_it_means():
    X, y, _, _ = digits(150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = LogisticRegression(max_iter=3).fit(X, y)
    with pytest.warns(ConvergenceWarning, match="stopped at max_iter=3 .* Refit with a larger max_iter"):
        from_sklearn(est, X, y)
    Xb, yb, _, _ = breast_cancer(100)
    sgd = SGDClassifier(loss="hinge", alpha=0.01, max_iter=5, tol=None, random_state=0).fit(Xb, yb)  # 5 epochs
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        from_sklearn(sgd, Xb, yb, hinge_t=np.float32(0.01))  # scikit-learn does not warn here, so neither do we


def test_lissa_on_an_unpenalised_intercept_estimates_its_floor():
    """l2 is 0 on the intercept, so l2 + damping = 0 bounds nothing: LiSSA was handed 0 as its floor and refused
    ('cannot choose its depth'); it now estimates the smallest eigenvalue and matches the exact solve."""
    X, y, Xt, yt = breast_cancer(100)
    est = LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y)
    exact = from_sklearn(est, X, y).scores((Xt[:3], yt[:3]))
    lissa = from_sklearn(est, X, y, solver=infl.LiSSA())
    assert lissa.solver.estimated_
    torch.testing.assert_close(lissa.scores((Xt[:3], yt[:3])), exact, rtol=0, atol=1e-4 * float(exact.abs().max()))


def test_labels_the_estimator_never_saw_are_refused():
    X, y, Xt, _ = breast_cancer(100)
    inf = from_sklearn(LogisticRegression(tol=1e-10).fit(X, y), X, y)
    with pytest.raises(infl.InputError, match=r"labels \[7\] are not among the estimator's classes_"):
        inf.scores((Xt, np.full(len(Xt), 7)))


def test_data_frames_are_matched_to_the_estimator_by_column_name():
    """A test frame with the fitted columns in another order scores as the fitted order does (scikit-learn
    refuses such a frame; scoring it by position gave other numbers); other columns are refused by name."""
    pd = pytest.importorskip("pandas")
    X, y, Xt, yt = breast_cancer(120)
    names = [f"f{j}" for j in range(5)]
    train, test = pd.DataFrame(X[:, :5], columns=names), pd.DataFrame(Xt[:4, :5], columns=names)
    inf = from_sklearn(LogisticRegression(tol=1e-12).fit(train, y), train, y)
    S = inf.scores((test, yt[:4]))
    shuffled = test[names[::-1]]
    np.testing.assert_array_equal(inf.scores((shuffled, yt[:4])), S)
    assert list(shuffled.columns) == names[::-1]  # the user's frame is not reordered in place
    with pytest.raises(infl.InputError, match=r"test X's columns .* missing \['f0'\], unexpected \['age'\]"):
        inf.scores((test.rename(columns={"f0": "age"}), yt[:4]))
    with pytest.raises(infl.InputError, match=r"test X has columns that are not numbers: \['f1'\].*get_dummies"):
        inf.scores((test.assign(f1=["a", "b", "c", "d"]), yt[:4]))
    missing = test.astype("Float64")
    missing.loc[0, "f2"] = pd.NA  # a nullable column's missing cell
    with pytest.raises(infl.InputError, match="1 missing or infinite cell.*column 'f2', row 0"):
        inf.scores((missing, yt[:4]))


def test_logistic_regression_cv_is_its_refit_at_the_chosen_C():
    from sklearn.linear_model import LogisticRegressionCV

    X, y, Xt, yt = digits(200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cv = LogisticRegressionCV(Cs=3, tol=1e-10, max_iter=5000).fit(X, y)
    same = LogisticRegression(C=float(cv.C_[0]), tol=1e-10)
    same.coef_, same.intercept_, same.classes_, same.n_features_in_ = cv.coef_, cv.intercept_, cv.classes_, X.shape[1]
    same.n_iter_ = np.array([1])
    torch.testing.assert_close(from_sklearn(cv, X, y).scores((Xt[:3], yt[:3])),
                               from_sklearn(same, X, y).scores((Xt[:3], yt[:3])), rtol=1e-12, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folds = LogisticRegressionCV(Cs=2, refit=False, max_iter=2000).fit(X, y)
    with pytest.raises(infl.InputError, match="refit=False"):
        from_sklearn(folds, X, y)


def test_plan_reads_labels_as_fit_does_and_leaves_the_fit_alone():
    X, y, Xt, yt = breast_cancer(100)
    inf = from_sklearn(LogisticRegression(tol=1e-10).fit(X, y), X, y)
    before = inf.scores((Xt[:2], yt[:2]))
    assert sum(inf.plan((X, y)).values()) > 0
    torch.testing.assert_close(inf.scores((Xt[:2], yt[:2])), before, rtol=0, atol=0)
