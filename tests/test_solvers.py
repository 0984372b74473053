"""Every solver against a dense float64 reference; CG against SciPy's iterates; LiSSA's convergence and failures."""

import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

import infl
from infl.errors import CurvatureError, DivergenceError, InputError
from infl.linear import curvature_operator, make_objective
from infl.operators import Dense, Hessian
from infl.objective import Objective
from infl.solvers import CG, Exact, LiSSA, cg, nystrom, top_eigenvalue
from infl.solvers.base import relative_residual
from infl.solvers.lanczos import top_eigenpairs


def spd(p: int, cond: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64)).Q
    lam = torch.logspace(0, np.log10(cond), p, dtype=torch.float64)
    return (Q * lam) @ Q.T


def rhs(k: int, p: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(k, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("solver", [Exact(), CG(tol=1e-12), CG(tol=1e-12, rank=0), CG(tol=1e-12, rank=5)])
def test_direct_and_cg_match_dense_solve(solver):
    A, B = spd(30, 1e3), rhs(4, 30)
    X, info = solver.fit(Dense(A)).solve(B)
    torch.testing.assert_close(X, torch.linalg.solve(A, B.T).T, rtol=1e-8, atol=1e-10)
    assert info.converged and info.max_residual < 1e-10


def test_exact_quad_is_the_quadratic_form_with_a_measured_residual():
    A, B = spd(30, 1e3), rhs(70, 30)
    q, info = Exact().fit(Dense(A)).quad(B)
    torch.testing.assert_close(q, (B * torch.linalg.solve(A, B.T).T).sum(1), rtol=1e-9, atol=1e-12)
    assert info.residual.shape == (64,) and info.max_residual < 1e-12 and "||L^-1 b||^2" in info.note


def test_solvers_on_model_hessian_match_dense(mlp):
    from infl.testing import dense_hessian

    obj = Objective(mlp.model, mlp.loss_fn, mlp.l2)
    op = Hessian(obj, mlp.X, mlp.y, batch_size=7) + 0.1
    H = dense_hessian(mlp.model, mlp.loss_fn, mlp.X, mlp.y, mlp.l2) + 0.1 * torch.eye(obj.p, dtype=torch.float64)
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-9, atol=1e-11)
    B = rhs(3, obj.p)
    ref = torch.linalg.solve(H, B.T).T
    for solver in (Exact(), CG(tol=1e-11)):
        torch.testing.assert_close(solver.fit(op).solve(B)[0], ref, rtol=1e-7, atol=1e-9)
    fast = Hessian(obj, mlp.X, mlp.y, batch_size=60) + 0.1
    X, _ = LiSSA(batch_size=1000, tol=1e-5).fit(fast, floor=0.1).solve(B)
    assert torch.linalg.norm(X - ref) / torch.linalg.norm(ref) < 1e-4


@pytest.mark.parametrize("iters", [1, 3])
def test_cg_iterates_match_scipy(iters):
    A, B = spd(25, 50, seed=3), rhs(1, 25, seed=4)
    X, info = cg(lambda V: V @ A, B, tol=1e-30, max_iter=iters)
    ref, _ = spla.cg(A.numpy(), B[0].numpy(), x0=np.zeros(25), rtol=1e-30, atol=0, maxiter=iters)
    np.testing.assert_allclose(X[0].numpy(), ref, rtol=1e-10, atol=1e-12)
    assert info.iterations == iters and not info.converged


def test_cg_reports_residual_and_warns_when_not_converged():
    A, B = spd(40, 1e4), rhs(2, 40)
    with pytest.warns(UserWarning, match="CG stopped at max_iter=2"):
        _, info = CG(max_iter=2, rank=0).fit(Dense(A)).solve(B)
    assert not info.converged and info.iterations == 2
    assert info.residual.shape == (2,) and info.max_residual > 1e-6


def test_cg_residual_is_true_residual():
    A, B = spd(40, 1e4), rhs(2, 40)
    X, info = cg(lambda V: V @ A, B, tol=1e-30, max_iter=5)
    true = (X @ A - B).norm(dim=1) / B.norm(dim=1)
    torch.testing.assert_close(info.residual, true, rtol=1e-6, atol=1e-12)


def test_cg_detects_negative_curvature():
    A = torch.diag(torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64))
    with pytest.raises(CurvatureError, match="negative curvature.*damping"):
        cg(lambda V: V @ A, torch.ones(1, 3, dtype=torch.float64), max_iter=10)


def test_exact_names_most_negative_eigenvalue():
    A = torch.diag(torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64))
    with pytest.raises(CurvatureError, match=r"smallest eigenvalue is -0\.5.*damping > 0\.5"):
        Exact().fit(Dense(A))
    with pytest.raises(CurvatureError, match=r"smallest eigenvalue is -0\.2.*damping > 0\.5 \(e\.g\. damping=1\)"):
        Exact().fit(Dense(A) + 0.3)  # the advice counts the damping already given (it said > 0.2)
    Exact().fit(Dense(A) + 1.0)  # and following it works


def test_exact_refuses_large_problems_politely():
    with pytest.raises(InputError, match="dense 30 x 30.*max_params=10.*solver='cg'"):
        Exact(max_params=10).fit(Dense(spd(30, 10)))


def test_nystrom_recovers_low_rank_spectrum_exactly():
    A = spd(20, 100)
    U, lam = nystrom(Dense(A), 20)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(A).flip(0), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(U.T @ torch.diag(lam) @ U, A, rtol=1e-6, atol=1e-6)


def test_preconditioner_cuts_iterations():
    A, B = spd(200, 1e4), rhs(2, 200)
    plain = CG(tol=1e-8, rank=0).fit(Dense(A)).solve(B)[1].iterations
    pre = CG(tol=1e-8, rank=150).fit(Dense(A)).solve(B)[1].iterations
    assert pre < plain / 2


def test_cg_with_a_float32_sketch_still_solves_to_a_tight_tolerance():
    """The Nystrom sketch runs on the operator's float32 form and the preconditioner is applied in float64
    (symmetric, so CG's theory holds): CG reaches tol 1e-11 in about as many steps as with a float64 sketch."""
    A, B = spd(200, 1e4), rhs(3, 200)
    exact = torch.linalg.solve(A, B.T).T
    op, plain = Counted(A), Counted(A)
    plain.in_float32 = lambda: None
    steps = []
    for each in (op, plain):
        solver = CG(tol=1e-11, rank=100).fit(each)
        assert solver.precond.U.dtype == torch.float64
        X, info = solver.solve(B)
        assert info.converged and info.max_residual <= 1e-11
        torch.testing.assert_close(X, exact, rtol=1e-8, atol=1e-12)
        steps.append(info.iterations)
    assert steps[0] <= steps[1] + 2


@pytest.mark.parametrize("make", ["ill-conditioned", "low rank + 1e-9"])
def test_preconditioners_reaching_below_float32s_resolution_are_built_in_float64(make):
    """A float32 sketch cannot resolve eigenvalues below ~1e-7 of the largest: on such spectra CG took up to 8x
    the steps and Arnoldi(refine) lost 4 digits. Where what they invert reaches below 1e-4 of the largest, they
    are rebuilt in float64, so the answers are those of the float64 build, to the bit."""
    B = rhs(4, 150)
    if make == "ill-conditioned":  # Nystrom rank 100 of cond 1e10 captures eigenvalues down to ~1e-7 of the top
        op, solvers = lambda: Counted(spd(150, 1e10)), [lambda: CG(rank=100, tol=1e-10, max_iter=3000)]  # noqa: E731
    else:
        J = torch.randn(10, 150, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        op = lambda: Counted(1e3 * J.T @ J) + 1e-9  # noqa: E731
        solvers = [lambda: CG(rank=20, tol=1e-10, max_iter=3000), lambda: infl.Arnoldi(rank=12, refine=5)]
    for solver in solvers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, plain = op(), op()
            plain.in_float32 = lambda: None
            (X, info), (Y, ref) = (solver().fit(o).solve(B) for o in (ours, plain))
        assert info.iterations == ref.iterations and torch.equal(X, Y)


def test_lissa_shows_its_progress_when_asked_or_once_a_solve_runs_long(capsys, monkeypatch):
    """A long default LiSSA ran minutes without a sign of life: its bar appears after PROGRESS_AFTER seconds
    (here 0), from the start with progress=True, never with False; the answer is the same."""
    from infl.solvers import lissa

    A, B = spd(15, 20), rhs(2, 15)
    answers = []
    for progress, after, shown in ((False, 0.0, False), (None, 3600.0, False), (None, 0.0, True), (True, 3600.0, True)):
        monkeypatch.setattr(lissa, "PROGRESS_AFTER", after)
        answers.append(LiSSA(depth=50, progress=progress).fit(Dense(A)).solve(B)[0])
        err = capsys.readouterr().err
        assert ("LiSSA (2 right-hand sides)" in err and "50/50" in err) == shown, (progress, after, err)
    assert all(torch.equal(X, answers[0]) for X in answers)
    for bad in ("yes", 0, np.False_):  # 0 passed as False but showed the bar
        with pytest.raises(InputError, match="LiSSA progress must be None"):
            LiSSA(progress=bad)


def test_lissa_converges_to_exact_at_sufficient_depth():
    A, B = spd(15, 20), rhs(2, 15)
    ref = torch.linalg.solve(A, B.T).T
    err = []
    for depth in (10, 100, 1000):
        X, _ = LiSSA(depth=depth).fit(Dense(A)).solve(B)
        err.append(float((X - ref).norm() / ref.norm()))
    assert err[0] > err[1] > err[2] and err[2] < 1e-8


def test_lissa_automatic_depth_meets_its_tolerance():
    A, B = spd(15, 20), rhs(2, 15)
    solver = LiSSA(tol=1e-6).fit(Dense(A), floor=1.0)
    X, info = solver.solve(B)
    ref = torch.linalg.solve(A, B.T).T
    assert float((X - ref).norm() / ref.norm()) < 1e-5
    assert "truncation bound" in info.note and solver.scale_ >= top_eigenvalue(Dense(A)) * 0.99


def test_lissa_raises_on_too_small_scale():
    A, B = spd(15, 20), rhs(2, 15)
    with pytest.raises(DivergenceError, match="diverged.*Raise scale"):
        LiSSA(depth=200, scale=5.0).fit(Dense(A)).solve(B)


def test_lissa_without_lower_bound_asks_for_damping_or_depth():
    with pytest.raises(InputError, match="damping > 0.*depth explicitly"):
        LiSSA().fit(Dense(spd(5, 2)), floor=0.0)


def test_lissa_estimates_its_floor_where_l2_does_not_bound_the_hessian(mlp):
    """The MLP's data Hessian has negative eigenvalues (lambda_min(H) < l2 at its minimum): l2 would be a false
    floor that cuts the series short (truncation error about 0.25 here); LiSSA's Lanczos estimate finds H's
    smallest eigenvalue and the answer meets its tolerance. With Gauss-Newton (PSD data part) l2 is the floor."""
    from infl.testing import dense_hessian

    H = dense_hessian(mlp.model, mlp.loss_fn, mlp.X, mlp.y, mlp.l2)
    lam = float(torch.linalg.eigvalsh(H)[0])
    assert 0 < lam < mlp.l2 / 2, "the test needs a Hessian whose smallest eigenvalue is well below l2"
    inf = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver=LiSSA(batch_size=1000)).fit((mlp.X, mlp.y))
    assert lam <= inf.solver.floor <= 1.05 * lam
    G = inf.test_grads((mlp.X[:5], mlp.y[:5]))
    ref = torch.linalg.solve(H, G.T).T
    T = inf.s_test((mlp.X[:5], mlp.y[:5]))
    assert float((T - ref).norm() / ref.norm()) < 3e-3
    assert "estimated smallest eigenvalue" in inf.info.note and inf.info.max_residual < 3e-3
    ggn = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver=LiSSA(), curvature="gauss-newton").fit((mlp.X, mlp.y))
    assert ggn.solver.floor == mlp.l2 and not ggn.solver.estimated_


def test_a_linear_model_with_a_loss_not_convex_in_its_outputs_has_no_floor_from_l2(logreg):
    """l2 + damping bounds a linear model's Hessian only for a loss convex in the outputs. With log(1 + r^2) the
    Hessian is indefinite; LiSSA and Arnoldi took l2 as the floor and answered; now they refuse, as exact does.
    Cross-entropy keeps its free floor."""
    cauchy = lambda out, t: torch.log1p((out.squeeze(1) - t).square())  # noqa: E731
    model = torch.nn.Linear(logreg.X.shape[1], 1).double()
    with torch.no_grad():
        model.weight.fill_(0.3)
    y = 3 * logreg.X[:, 0] - 2.0
    for solver in (infl.Exact(), LiSSA(), infl.Arnoldi(rank=2)):
        with pytest.raises(CurvatureError, match="not positive definite|<= 0"):
            infl.Influence(model, cauchy, l2=0.01, solver=solver, stationarity_tol=float("inf")).fit((logreg.X, y))
    convex = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2, solver=LiSSA()).fit(logreg.train)
    assert convex.solver.floor == logreg.l2 and not convex.solver.estimated_


def test_lissa_says_when_its_estimated_floor_has_not_settled():
    """A log-spread spectrum (1e-3..10, p = 500): Lanczos overestimates the smallest eigenvalue and its Ritz
    residual says so; LiSSA warns, notes it, and does not report convergence."""
    lam = torch.logspace(-3, 1, 500, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(500, 500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).Q
    with pytest.warns(UserWarning, match="smallest eigenvalue has not settled"):
        solver = LiSSA(max_depth=50).fit(Dense((Q * lam) @ Q.T))
    assert solver.floor > 1e-3 and not solver.settled_
    info = solver.solve(rhs(1, 500))[1]
    assert "not settled" in info.note and not info.converged


def test_lissa_refuses_an_operator_with_a_negative_eigenvalue():
    A = spd(10, 10) - 2 * torch.eye(10, dtype=torch.float64)  # eigenvalues -1 .. 8
    with pytest.raises(CurvatureError, match=r"eigenvalue of about -1 <= 0.*damping > 1"):
        LiSSA().fit(Dense(A))
    with pytest.raises(CurvatureError, match=r"eigenvalue of about -0.5 <= 0.*damping > 1"):
        LiSSA().fit(Dense(A) + 0.5)


def test_lissa_same_seed_same_result(logreg):
    obj = make_objective(logreg.model, logreg.loss_fn, logreg.l2, logreg.X[:2])
    op = curvature_operator(obj, logreg.X, logreg.y, 16)
    B = rhs(2, obj.p)
    a = LiSSA(depth=50, batch_size=10, seed=3).fit(op, floor=0.05).solve(B)[0]
    b = LiSSA(depth=50, batch_size=10, seed=3).fit(op, floor=0.05).solve(B)[0]
    c = LiSSA(depth=50, batch_size=10, seed=4).fit(op, floor=0.05).solve(B)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("bad, words", [(dict(tol=0), "CG needs tol > 0"), (dict(max_iter=0), "CG max_iter must be"),
                                        (dict(rank=-1), "CG rank must be")])
def test_cg_settings_validated(bad, words):
    with pytest.raises(InputError, match=words):
        CG(**bad)


@pytest.mark.parametrize("bad,match", [(dict(depth=0), "depth"), (dict(scale=-1.0), "scale"),
                                       (dict(repeats=0), "repeats"), (dict(tol=2.0), "tol")])
def test_lissa_settings_validated(bad, match):
    with pytest.raises(InputError, match=match):
        LiSSA(**bad)


def test_influence_solvers_agree_on_logistic_regression(logreg):
    S = {}
    for name, solver in [("exact", "exact"), ("cg", "cg"), ("lissa", LiSSA(batch_size=45, repeats=4, tol=1e-4))]:
        S[name] = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2, solver=solver).fit(logreg.train).scores(logreg.test)
    torch.testing.assert_close(S["cg"], S["exact"], rtol=1e-5, atol=1e-8)
    r = np.corrcoef(S["lissa"].flatten(), S["exact"].flatten())[0, 1]
    assert r > 0.995


def test_arnoldi_is_exact_when_the_dropped_spectrum_is_flat():
    lam = torch.cat([torch.tensor([50.0, 20.0, 9.0, 4.0], dtype=torch.float64), torch.full((26,), 0.3, dtype=torch.float64)])
    A = torch.diag(lam)  # Hutchinson's trace is exact for a diagonal matrix
    B = rhs(3, 30)
    solver = infl.Arnoldi(rank=4).fit(Dense(A))
    X, info = solver.solve(B)
    torch.testing.assert_close(X, B / lam, rtol=1e-8, atol=1e-10)
    assert abs(solver.lam_rest - 0.3) < 1e-8 and "treated as one eigenvalue" in info.note
    assert info.converged and info.residual.shape == (3,) and info.max_residual < 1e-12  # measured, so it may say so


def test_approximate_solvers_measure_their_residual_and_warn_when_it_is_large(mlp):
    """Plain Arnoldi, EK-FAC and K-FAC are approximations: each solve measures the residual of `check`
    right-hand sides (nan for the others), warns when the median exceeds 0.1 naming the refinement, and
    reports converged only for a solved answer."""
    B = rhs(12, 51)
    A = Hessian(Objective(mlp.model, mlp.loss_fn, mlp.l2), mlp.X, mlp.y)
    makers = [(lambda check: infl.Arnoldi(rank=5, check=check), r"Arnoldi\(refine=5\)"),
              (lambda check: infl.EKFAC(check=check), r"EKFAC\(refine=4\)"),
              (lambda check: infl.KFAC(check=check), r"KFAC\(refine=4\)")]
    for make, fix in makers:
        with pytest.warns(UserWarning, match=f"relative residual .* approximation.*{fix}"):
            X, info = make(3).fit(A).solve(B)
        torch.testing.assert_close(info.residual[:3], relative_residual(A.matmat(X[:3]), B[:3]))
        assert info.residual[3:].isnan().all() and not info.converged and info.max_residual > 0.1
        assert "relative residual against hessian on 3 of 12 right-hand sides" in info.note
        unmeasured = make(0).fit(A).solve(B)[1]
        assert unmeasured.residual is None and not unmeasured.converged


def test_arnoldi_accepts_a_singular_psd_curvature_in_float32():
    """A = J^T J of rank 6 (p = 60): the dropped directions' mean is 0 up to rounding, not a sign of indefiniteness.
    Whatever the rounding's sign, it is treated alike: a warning and a thousandth of the smallest kept eigenvalue
    (a tiny positive estimate was once inverted as it was, making the answer 1e9 times too large)."""
    for j in range(4):
        J = torch.randn(6, 60, generator=torch.Generator().manual_seed(j))
        for seed in range(3):
            with pytest.warns(UserWarning, match="singular to this precision"):
                solver = infl.Arnoldi(rank=6, seed=seed).fit(Dense(J.T @ J))
            assert solver.lam_rest == pytest.approx(1e-3 * float(solver.lam[-1]))


def test_arnoldi_clamps_a_dropped_mean_just_above_its_smallest_kept_eigenvalue_silently():
    """A tail flat to 1% and rank 80 > the 40 distinct eigenvalues: with refine the pairs are fitted to tol 0.1,
    so the dropped mean may exceed the smallest kept eigenvalue by about that much. Clamped without a warning;
    a mean far above it (pairs that missed the top) still warns."""
    p = 300
    lam = torch.cat([torch.logspace(1, -1, 40, dtype=torch.float64),
                     0.1 + 1e-3 * torch.rand(p - 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)])
    Q = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).Q
    A = Dense((Q * lam) @ Q.T)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver = infl.Arnoldi(rank=80, refine=2).fit(A)
    assert solver.lam_rest <= float(solver.lam[-1])

    class MissesTheTop(infl.Arnoldi):  # eigenpairs 41..80: the top 40 are left among the dropped directions
        def _top_eigenpairs(self, op):
            lam, U = super()._top_eigenpairs(op)
            return lam[40:], U[40:]

    with pytest.warns(UserWarning, match="mean dropped eigenvalue lies outside"):
        MissesTheTop(rank=80, refine=2).fit(A)


def test_approximate_and_refined_solves_do_not_depend_on_a_right_hand_sides_scale():
    """A confidently right test point's gradient can be 1e-167: its squares underflow. The answer scales with b
    and the measured relative residual does not (it read 0, converged, where the refined solve returned 0)."""
    A = Dense(spd(40, 1e3, seed=3))
    B = rhs(3, 40)
    for make in (lambda: infl.Arnoldi(rank=5), lambda: infl.Arnoldi(rank=5, refine=3)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unrefined answer is approximate: it warns at both scales
            X, info = make().fit(A).solve(B)
            tiny_X, tiny_info = make().fit(A).solve(B * 1e-170)
        torch.testing.assert_close(tiny_X * 1e170, X, rtol=1e-10, atol=0)
        torch.testing.assert_close(tiny_info.residual, info.residual, rtol=1e-8, atol=0, equal_nan=True)
        assert tiny_info.converged == info.converged and tiny_info.iterations == info.iterations


def test_arnoldi_keeps_a_dropped_mean_far_below_its_smallest_kept_eigenvalue():
    """Kept eigenvalues of 1000 and a flat l2-sized tail of 0.1: the tail is kept as it is (a clamp at 1e-3 of
    the smallest kept eigenvalue, meant for estimates <= 0, once raised it to 1 and the solve was 10x off)."""
    lam = torch.cat([torch.full((5,), 1000.0, dtype=torch.float64) + torch.arange(5.0, dtype=torch.float64),
                     torch.full((45,), 0.1, dtype=torch.float64)])
    solver = infl.Arnoldi(rank=5).fit(Dense(torch.diag(lam)))
    assert abs(solver.lam_rest - 0.1) < 1e-10
    B = rhs(2, 50)
    torch.testing.assert_close(solver.solve(B)[0], B / lam, rtol=1e-8, atol=1e-10)


def test_solver_counts_refuse_bools_and_accept_numpy_integers():
    for make in (lambda v: infl.Arnoldi(rank=v), lambda v: infl.Arnoldi(probes=v), lambda v: infl.Arnoldi(block=v),
                 lambda v: LiSSA(repeats=v), lambda v: LiSSA(depth=v), lambda v: CG(max_iter=v), lambda v: CG(rank=v)):
        with pytest.raises(InputError, match="must be an integer"):
            make(True)
        make(np.int64(3))
    assert infl.Arnoldi(rank=np.int64(5)).rank == 5 and type(LiSSA(repeats=np.int32(2)).repeats) is int


def test_arnoldi_refuses_a_curvature_whose_dropped_directions_are_negative():
    """The top eigenvalues are positive, the rest average below 0: z^T A z < 0 for the probes proves A indefinite."""
    lam = torch.cat([torch.tensor([9.0, 7.0, 5.0], dtype=torch.float64), torch.linspace(-0.4, 0.1, 27, dtype=torch.float64)])
    Q = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).Q
    with pytest.raises(CurvatureError, match="not positive definite.*outside the top 3 is .* < 0.*damping"):
        infl.Arnoldi(rank=3).fit(Dense((Q * lam) @ Q.T))


def test_arnoldi_warns_when_an_eigenvalue_lies_far_below_the_dropped_mean_and_refuses_a_negative_one():
    """A network's Hessian can have eigenvalues far below l2 even at a minimum. The dropped directions all get
    their mean, so those were inverted 50x too weakly: the answer was 59% off on a tanh MLP while the measured
    residual (0.07) stayed under the warning's 0.1. The smallest eigenvalue is now estimated (the curvature's
    floor is unknown) and such a gap warns; a negative one, hidden in a positive mean, is refused. Given a floor
    (a positive semi-definite data part: l2 + damping bounds it), or with refine, nothing is estimated."""
    lam = torch.cat([torch.logspace(1, 0, 5, dtype=torch.float64), torch.full((40,), 0.01, dtype=torch.float64),
                     torch.tensor([2e-4, 1e-4], dtype=torch.float64)])
    Q = torch.linalg.qr(torch.randn(47, 47, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).Q
    A = Dense((Q * lam) @ Q.T)
    with pytest.warns(UserWarning, match=r"eigenvalue of about 0.0001, [\d.]+x below .*Pass refine=5"):
        solver = infl.Arnoldi(rank=5).fit(A)
    assert solver.bottom_ == pytest.approx(1e-4, rel=1e-3)
    estimate = "smallest-eigenvalue estimate where the floor is unknown (Lanczos basis 100 x 47), during fit"
    assert solver.footprint(A)[estimate] == 102 * 47 * 8 and estimate not in infl.Arnoldi(refine=2).footprint(A)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        infl.Arnoldi(rank=5, refine=3).fit(A)
        infl.Arnoldi(rank=5).fit(A, floor=1e-4)
    lam[-1] = -1e-3  # the mean of the dropped ones stays positive
    with pytest.raises(CurvatureError, match="eigenvalue of about -0.001 <= 0.*Add damping > 0.001"):
        infl.Arnoldi(rank=5).fit(Dense((Q * lam) @ Q.T))
    with pytest.raises(CurvatureError, match="eigenvalue of about -0.0005 <= 0.*Add damping > 0.001"):
        infl.Arnoldi(rank=5).fit(Dense((Q * lam) @ Q.T) + 5e-4)


def test_arnoldi_keeping_the_remainder_beats_dropping_it(logreg):
    obj = make_objective(logreg.model, logreg.loss_fn, logreg.l2, logreg.X[:2])
    op = curvature_operator(obj, logreg.X, logreg.y, 64)
    B = rhs(4, obj.p)
    ref = torch.linalg.solve(op.to_dense(), B.T).T
    solver = infl.Arnoldi(rank=6, probes=200).fit(op)
    X, _ = solver.solve(B)
    dropped = (B @ solver.U.T / solver.lam) @ solver.U
    assert (X - ref).norm() < 0.5 * (dropped - ref).norm()


def test_arnoldi_refined_by_cg_approaches_the_dense_solve():
    """Arnoldi(refine=k): k CG steps on A preconditioned by the low-rank inverse. The A-norm error falls with k
    from the low-rank answer's, and CG run to its tolerance reaches the dense solve."""
    A, B = spd(40, 1e4, seed=3), rhs(5, 40)
    exact = torch.linalg.solve(A, B.T).T
    errors = []
    for k in (0, 5, 20, 200):
        X, info = infl.Arnoldi(rank=8, refine=k).fit(Dense(A)).solve(B)
        E = X - exact
        errors.append(float(((E @ A) * E).sum()))
        if k:
            assert info.method == "arnoldi+cg" and info.residual.shape == (5,)
            assert "refined by" in info.note and "carry" in info.note
    assert errors[0] > 1e-2 * float(((exact @ A) * exact).sum())
    assert errors[2] < errors[1] < errors[0] and info.converged
    torch.testing.assert_close(X, exact, rtol=1e-6, atol=1e-9)
    with pytest.raises(InputError, match="refine"):
        infl.Arnoldi(refine=-2)


def test_arnoldi_as_a_preconditioner_fits_its_eigenpairs_loosely():
    """With refine the eigenpairs only precondition: the default tol is 0.1, which costs fewer products than
    1e-6 and refines as well."""
    A, B = spd(300, 1e2, seed=5), rhs(4, 300)
    exact = torch.linalg.solve(A, B.T).T
    counted = [Counted(A), Counted(A)]
    loose = infl.Arnoldi(rank=10, refine=30).fit(counted[0])
    tight = infl.Arnoldi(rank=10, refine=30, tol=1e-6).fit(counted[1])
    assert loose.tol == 0.1 and infl.Arnoldi(rank=10).tol == 1e-6 and counted[0].products < counted[1].products / 2
    error = [float((solver.solve(B)[0] - exact).norm() / exact.norm()) for solver in (loose, tight)]
    assert error[1] < 1e-3 and error[0] < 1.1 * error[1]
    with pytest.raises(InputError, match="tol must lie in"):
        infl.Arnoldi(tol=2.0)


def test_arnoldi_fits_a_preconditioners_eigenpairs_in_float32_where_a_floor_is_known():
    """With refine (and its loose tol) and a known floor the Lanczos products run on the operator's float32 form:
    fewer digits in the preconditioner only, the refined answer as accurate as with float64 eigenpairs, and the
    answer float64. A tight tol keeps float64 products, which float32 rounding could not meet; so does an unknown
    floor, where small eigenvalues hidden among the dropped ones would go unseen."""
    A, B = spd(300, 1e2, seed=6), rhs(4, 300)
    exact = torch.linalg.solve(A, B.T).T
    ops = [Counted(A), Counted(A), Counted(A), Counted(A)]
    ops[1].in_float32 = lambda: None  # no float32 form: the float64 path
    seen = []
    for op in ops:
        low = op.in_float32
        op.in_float32 = lambda low=low: seen.append(low()) or seen[-1]
    floor = 1.0  # spd's smallest eigenvalue
    solvers = [infl.Arnoldi(rank=20, refine=20).fit(ops[0], floor), infl.Arnoldi(rank=20, refine=20).fit(ops[1], floor),
               infl.Arnoldi(rank=20, refine=20, tol=1e-6).fit(ops[2], floor),
               infl.Arnoldi(rank=20, refine=20).fit(ops[3])]
    assert [s.U.dtype for s in solvers] == [torch.float32, torch.float64, torch.float64, torch.float64]
    assert seen[0] is not None and seen[1] is None and len(seen) == 2  # tight tol, no floor: never asked
    X32, X64 = (s.solve(B)[0] for s in solvers[:2])
    assert X32.dtype == torch.float64
    error = [float((X - exact).norm() / exact.norm()) for X in (X32, X64)]
    assert error[0] < 2e-2 and error[0] < 1.1 * error[1] + 1e-6


def test_float32_refinement_steps_keep_the_directions_that_tell_nearly_equal_right_hand_sides_apart():
    """Pairs of right-hand sides 1e-3 apart: a float32 basis dropped the directions between them as rounding
    (24% more error on some rows after 6 steps); the float32 products' steps are now as accurate as float64's."""
    A = spd(300, 30, seed=6)
    base = rhs(6, 300)
    B = torch.cat([base, base + 1e-3 * rhs(6, 300, seed=2)])
    solver = infl.Arnoldi(rank=5, refine=6).fit(Typed(A), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, info = solver.solve(B)
        solver.low_ = None
        Y, _ = solver.solve(B)
    assert "float32 products, the answers checked in float64)" in info.note
    exact = torch.linalg.solve(A, B.T).T
    error = lambda D: torch.einsum("kp,pq,kq->k", D, A, D).sqrt()  # noqa: E731 -- the A-norm block CG minimises
    assert (error(X - exact) <= 1.01 * error(Y - exact)).all()


def test_refinement_groups_right_hand_sides_and_stops_when_the_space_is_full(monkeypatch):
    """Block CG in groups of REFINE_BLOCK right-hand sides: each group's space is its own, and a group whose
    space stops growing (here: all of R^p) is exact in fewer steps than asked."""
    from infl.solvers import krylov

    monkeypatch.setattr(krylov, "REFINE_BLOCK", 2)
    A, B = spd(12, 1e3, seed=4), rhs(5, 12)
    X, info = infl.Arnoldi(rank=3, refine=50).fit(Dense(A)).solve(B)
    torch.testing.assert_close(X, torch.linalg.solve(A, B.T).T, rtol=1e-7, atol=1e-9)
    assert info.converged and info.iterations < 50 and info.residual.shape == (5,)


def test_arnoldi_rank_must_be_below_p():
    with pytest.raises(InputError, match="rank 30 must be below the number of parameters p = 30"):
        infl.Arnoldi(rank=30).fit(Dense(spd(30, 10)))


def test_arnoldi_estimates_the_dropped_spectrum_of_a_dense_operator():
    gen = torch.Generator().manual_seed(5)
    Q = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64)).Q
    lam = torch.cat([torch.logspace(2, 0, 10, dtype=torch.float64), torch.full((190,), 0.01, dtype=torch.float64)])
    solver = infl.Arnoldi(rank=10).fit(Dense((Q * lam) @ Q.T))
    assert abs(solver.lam_rest - 0.01) < 1e-6  # the deflated trace is exact when the rest is flat


class Counted(Dense):
    """A dense operator that counts the vectors it has been multiplied with, its float32 form's too."""

    def __init__(self, H, tally=None):
        super().__init__(H)
        self.tally = tally or [0]

    @property
    def products(self):
        return self.tally[0]

    def matmat(self, V):
        self.tally[0] += V.shape[0]
        return super().matmat(V)

    def in_float32(self):
        return Counted(self.H.float(), self.tally)


class Typed(Counted):
    """A Counted operator that also notes the dtype and row count of every product, its float32 form's too."""

    def __init__(self, H, tally=None, seen=None):
        super().__init__(H, tally)
        self.seen = [] if seen is None else seen

    def matmat(self, V):
        self.seen.append((V.dtype, V.shape[0]))
        return super().matmat(V)

    def in_float32(self):
        return Typed(self.H.float(), self.tally, self.seen)


def test_refinement_steps_take_float32_products_where_op_confirms_them_and_redo_in_float64_where_not(monkeypatch):
    """Given the operator's float32 form, refine's block CG steps take its products; the operator itself then
    measures the true residuals of a few rows (CLOSING_PROBES), and those reported are the returned answers'
    own. Ten steps: the answers are the float64 steps' to a hundredth of their error. Thirty, down to
    float32's rounding: the group is solved again in float64, the float64 answers to the bit. So is a group
    where one row not measured is solved down to float32's rounding while the measured ones are not (its
    answer is the space's first direction for row 0)."""
    from infl.solvers.krylov import CLOSING_PROBES, spread

    A, B = spd(300, 10, seed=6), rhs(12, 300)
    easy = B.clone()
    start = infl.Arnoldi(rank=5, refine=10).fit(Typed(A), 1.0).inverse((B[:1] / B[0].abs().max()).float())
    easy[4] = (A @ start.double().T).T[0]
    assert 4 not in spread(12, CLOSING_PROBES)
    for steps, B in ((10, B), (30, B), (10, easy)):
        exact = torch.linalg.solve(A, B.T).T
        op = Typed(A)
        solver = infl.Arnoldi(rank=5, refine=steps).fit(op, 1.0)
        assert solver.low_ is not None and solver.U.dtype == torch.float32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            op.seen.clear()
            X, info = solver.solve(B)
            seen, solver.low_ = list(op.seen), None
            Y, ref = solver.solve(B)  # the same preconditioner, float64 steps
        fine = steps == 30 or B is easy
        assert X.dtype == torch.float64 and ("solved again in float64" in info.note) == fine
        assert seen[0] == (torch.float32, B.shape[0])
        if fine:  # float32 steps, then the float64 ones from the start
            assert (torch.float64, B.shape[0]) in seen and seen[-1][0] == torch.float64
            assert torch.equal(X, Y) and ref.converged == (steps == 30)
            continue
        assert (torch.float64, CLOSING_PROBES) in seen and (torch.float64, B.shape[0]) not in seen
        gap, error = float((X - Y).norm()), float((Y - exact).norm())
        assert gap < 1e-2 * error and error > 1e-5 * float(exact.norm())  # not yet solved: the steps count
        true = (B - X @ A).norm(dim=1) / B.norm(dim=1)
        known = ~info.residual.isnan()
        assert int(known.sum()) == CLOSING_PROBES
        torch.testing.assert_close(info.residual[known], true[known], rtol=1e-6, atol=0)
    from infl.solvers import krylov

    monkeypatch.setattr(krylov, "REFINE_BLOCK", 4)  # three groups; only the first holds an easy row, with row 0
    B = rhs(12, 300)
    B[1] = easy[4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solver = infl.Arnoldi(rank=5, refine=10).fit(Typed(A), 1.0)
        X, info = solver.solve(B)
        solver.low_ = None
        Y, _ = solver.solve(B)
    assert "1 of 3 groups of right-hand sides solved again in float64" in info.note
    assert torch.equal(X[:4], Y[:4]) and not torch.equal(X[4:], Y[4:])


def test_the_float32_check_measures_only_rows_it_can_and_float32s_negative_curvature_defers_to_float64():
    """A nan right-hand side among the measured rows made float32's error nan, and every comparison with it
    passed: nan rows are not measured now, and the easy row is still caught. A float32 form that meets negative
    curvature hands the group to float64, and the note says why."""
    from infl.solvers.krylov import CLOSING_PROBES, spread

    A, B = spd(300, 10, seed=6), rhs(12, 300)
    solver = infl.Arnoldi(rank=5, refine=10).fit(Typed(A), 1.0)
    B[4] = (A @ solver.inverse((B[:1] / B[0].abs().max()).float()).double().T).T[0]  # solved in the first block
    B[2] = float("nan")
    assert 2 in spread(12, CLOSING_PROBES)
    low = solver.low_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, info = solver.solve(B)
        solver.low_ = None
        Y, _ = solver.solve(B)
        solver.low_ = Typed(-A.float())
        Z, bent = solver.solve(B)
    rest = torch.arange(12) != 2
    assert low is not None and "solved again in float64, as float32's rounding reached their residuals" in info.note
    assert torch.equal(X[rest], Y[rest]) and X[2].isnan().all()
    assert "solved again in float64, as float32 met non-positive curvature" in bent.note
    assert torch.equal(Z[rest], Y[rest])


def test_block_lanczos_finds_the_dense_top_eigenpairs_through_thick_restarts():
    gen = torch.Generator().manual_seed(7)
    Q = torch.linalg.qr(torch.randn(300, 300, generator=gen, dtype=torch.float64)).Q
    lam = 0.9 ** torch.arange(300, dtype=torch.float64) - 0.02  # slowly decaying, a few negative at the bottom
    op = Counted((Q * lam) @ Q.T)
    top, U, converged = top_eigenpairs(op, 8, tol=1e-10, block=4, max_dim=24)
    assert converged and op.products > 24  # the basis of 24 was restarted
    torch.testing.assert_close(top, lam[:8], rtol=1e-9, atol=0)
    torch.testing.assert_close((U @ Q[:, :8]).abs(), torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(U @ U.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-10)
    _, _, converged = top_eigenpairs(Counted((Q * lam) @ Q.T), 8, tol=1e-10, block=4, max_dim=24, max_restarts=0)
    assert not converged
    with pytest.raises(ValueError, match="max_dim"):
        top_eigenpairs(op, 8, block=4, max_dim=12)


def test_lissa_on_an_indefinite_operator_raises_instead_of_returning_garbage():
    A = torch.diag(torch.tensor([1.0, 0.5, -0.05], dtype=torch.float64))
    with pytest.raises(DivergenceError, match="diverged"):
        LiSSA(depth=2000, scale=1.2).fit(Dense(A), floor=0.01).solve(torch.ones(1, 3, dtype=torch.float64))


def test_a_solver_instance_can_serve_two_influences(logreg, mlp):
    shared = CG(tol=1e-10)
    a = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2, solver=shared).fit(logreg.train)
    b = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver=shared).fit(mlp.train)
    ref = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2, solver="exact").fit(logreg.train)
    torch.testing.assert_close(a.scores(logreg.test), ref.scores(logreg.test), rtol=1e-6, atol=1e-9)
    assert b.scores(mlp.test).shape == (8, 60)


def test_self_influence_reports_every_chunk(logreg):
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2, solver="cg", batch_size=32).fit(logreg.train)
    inf.self_influence()
    assert inf.info.residual.shape == (90,) and inf.info.converged


def test_block_lanczos_restarts_with_fresh_directions_when_the_krylov_space_is_invariant():
    """0.5 I + a rank-3 term: after the first blocks nothing new is reachable; the deflated directions are
    replaced by random ones orthogonal to the basis, so the eigenvalues stay right and U stays orthonormal."""
    G = torch.randn(3, 200, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    A = 0.5 * torch.eye(200, dtype=torch.float64) + G.T @ G
    top, U, converged = top_eigenpairs(Dense(A), 5, tol=1e-10, block=4, max_dim=40)
    torch.testing.assert_close(top, torch.linalg.eigvalsh(A).flip(0)[:5], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(U @ U.T, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-8)
    assert converged


def test_closing_step_lowers_every_probed_rows_error_and_measures_only_those_rows(monkeypatch):
    """After the block CG steps, refine moves each row along its preconditioned residual by one length
    measured on CLOSING_PROBES rows spread over all of them: each probed row's A-norm error falls below the
    block CG answer's, the residual is reported for those rows only (nan elsewhere) and matches b - A x there;
    disabling the step gives back the block CG answer."""
    from infl.solvers import krylov

    A, B = spd(80, 1e4, seed=9), rhs(12, 80)
    exact = torch.linalg.solve(A, B.T).T
    a_err = lambda X: ((X - exact) @ A * (X - exact)).sum(1)  # noqa: E731
    solver = infl.Arnoldi(rank=6, refine=3).fit(Dense(A))
    X, info = solver.solve(B)
    monkeypatch.setattr(krylov, "_closing_step", lambda op, M, X, R, res, bnorm, movable: (X, res, None))
    krylov_only, plain = solver.solve(B)
    probed = ~info.residual.isnan()
    assert int(probed.sum()) == krylov.CLOSING_PROBES and probed[0] and probed[-1]  # spread, ends included
    assert (a_err(X)[probed] < a_err(krylov_only)[probed]).all()
    assert float(a_err(X).sum()) < float(a_err(krylov_only).sum())
    assert not plain.residual.isnan().any()
    measured = (B[probed] - X[probed] @ A).norm(dim=1) / B[probed].norm(dim=1)
    torch.testing.assert_close(info.residual[probed], measured, rtol=1e-8, atol=1e-12)
    assert info.max_residual == pytest.approx(float(measured.max()), rel=1e-8)  # over the rows measured
    assert "closing step of length" in info.note and not info.converged


def test_closing_step_probes_rows_of_every_kind():
    """Rows of two kinds (far apart in the spectrum, so their best step lengths differ 100-fold) in data
    order: probes spread over all rows see both kinds, the total error falls and no row's rises by more than
    half (with probes from the first rows only, the step was 112 and the other rows' errors rose 10^4-fold;
    a shared step length cannot promise every unprobed row an improvement)."""
    from infl.solvers import krylov

    A = spd(1000, 1e4, seed=9)
    Q = torch.linalg.eigh(A).eigenvectors
    B = rhs(200, 1000, seed=3)
    B[:8] = B[:8] @ Q[:, :300] @ Q[:, :300].T  # low curvature
    B[8:] = B[8:] @ Q[:, -200:-20] @ Q[:, -200:-20].T  # high curvature the rank-20 inverse misses
    exact = torch.linalg.solve(A, B.T).T
    a_err = lambda X: ((X - exact) @ A * (X - exact)).sum(1)  # noqa: E731
    solver = infl.Arnoldi(rank=20, refine=2).fit(Dense(A))
    X, _ = solver.solve(B)
    block = krylov._closing_step
    try:
        krylov._closing_step = lambda op, M, X, R, res, bnorm, movable: (X, res, None)
        before, _ = solver.solve(B)
    finally:
        krylov._closing_step = block
    assert float(a_err(X).sum()) <= float(a_err(before).sum()) and (a_err(X) <= 1.5 * a_err(before)).all()


def test_no_closing_step_once_the_space_holds_the_exact_answer():
    """In float32 an exact answer (the Krylov space stopped growing) still has a residual above 1e-8; it is
    left as it is, every residual measured."""
    A, B = spd(40, 1e2, seed=11).float(), rhs(3, 40).float()
    X, info = infl.Arnoldi(rank=4, refine=100).fit(Dense(A)).solve(B)
    assert info.iterations < 100 and "closing step" not in info.note and not info.residual.isnan().any()
    torch.testing.assert_close(X, torch.linalg.solve(A, B.T).T, rtol=1e-3, atol=1e-4)


def test_closing_step_skips_zero_rows_and_a_preconditioner_that_is_not_positive_definite():
    """A zero right-hand side (a test point with zero gradient, e.g. past a hinge's margin) gets x = 0 and
    residual 0, and does not make the step length 0 / 0; a preconditioner with r.Mr <= 0 leaves the block CG
    answer as it is, and the note says so."""
    from infl.solvers.krylov import refine

    A, B = spd(50, 1e3, seed=10), rhs(4, 50)
    B[1] = 0
    X, info = refine(Dense(A), B, 2, lambda R: R.clone(), "cg", "")
    assert torch.isfinite(X).all() and (X[1] == 0).all() and info.residual[1] == 0
    assert "closing step of length" in info.note and info.residual[[0, 2, 3]].isfinite().all()
    X, info = refine(Dense(A), B, 2, lambda R: -R, "cg", "")
    assert torch.isfinite(X).all() and "no closing step" in info.note and info.residual.isfinite().all()


def test_refinement_keeps_a_small_right_hand_side_and_caps_its_basis_at_p():
    """A right-hand side 1e-9 times smaller than the others is still solved (directions are judged per row),
    and refine far beyond p holds at most p basis vectors and is exact."""
    A, B = spd(60, 1e3, seed=8), rhs(4, 60)
    B[2] *= 1e-9
    solver = infl.Arnoldi(rank=5, refine=3).fit(Dense(A))
    X, info = solver.solve(B)
    own, _ = cg(Dense(A).matmat, B[2:3], tol=1e-30, max_iter=3, precond=solver.inverse)
    exact = torch.linalg.solve(A, B.T).T
    a_err = lambda E: float((E @ A * E).sum())  # noqa: E731
    assert a_err(X[2:3] - exact[2:3]) <= a_err(own - exact[2:3]) * (1 + 1e-6)
    X, info = infl.Arnoldi(rank=5, refine=1000).fit(Dense(A)).solve(B)
    torch.testing.assert_close(X, exact, rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize("solver", [CG(rank=0), LiSSA(depth=200, check=0)])
def test_a_tiny_right_hand_side_does_not_underflow(solver):
    """A confidently right point's gradient (1e-25 in float32) made p^T A p underflow to 0: CG called the operator
    indefinite and LiSSA diverged. Rows are solved at unit norm and scaled back."""
    A = spd(6, 10.0).float()
    B = rhs(2, 6).float()
    B[1] *= 1e-25
    X, _ = solver.fit(Dense(A)).solve(B)
    ref = torch.linalg.solve(A.double(), B.double().T).T
    assert torch.allclose(X[1].double() / 1e-25, ref[1] / 1e-25, rtol=1e-2, atol=0)


def test_exact_in_float32_says_when_the_precision_is_not_enough():
    """float32 Cholesky on a curvature of condition 1e7: the answer is far from the solve; it said converged."""
    A = spd(40, 1e7).float()
    B = rhs(3, 40).float()
    with pytest.warns(UserWarning, match=r"exact: the Cholesky solve in float32 left .* Compute in float64"):
        X, info = Exact().fit(Dense(A)).solve(B)
    assert not info.converged
    X64, info64 = Exact().fit(Dense(A.double())).solve(B.double())
    assert info64.converged


def test_lissa_is_converged_only_when_its_residuals_meet_its_tolerance():
    """A LiSSA whose measured residuals are above its own tol reported converged (noise from sampled batches);
    here too few steps leave the residual above tol."""
    A = spd(8, 20.0)
    B = rhs(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        short = LiSSA(depth=5, tol=1e-3).fit(Dense(A), floor=float(torch.linalg.eigvalsh(A)[0]))
        _, info = short.solve(B)
    assert float(info.residual.nan_to_num(0).max()) > 1e-3 and not info.converged
    full = LiSSA(tol=1e-3).fit(Dense(A), floor=float(torch.linalg.eigvalsh(A)[0]))
    _, info = full.solve(B)
    assert info.converged and float(info.residual.max()) <= 1e-3


def test_an_approximate_answer_warns_from_a_median_residual_of_one_percent():
    """A median relative residual of 0.03-0.07 left plain Arnoldi's scores 30% off on linear heads (well
    conditioned enough that no other check fired) under the former 0.1 threshold."""
    from infl.solvers.base import warn_if_approximate

    with pytest.warns(UserWarning, match="relative residual 0.03"):
        warn_if_approximate("arnoldi", 0.03, "median", "hessian", "Pass refine=5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_approximate("arnoldi", 0.009, "median", "hessian", "Pass refine=5")
