//! The verification checks of `ode::verify` on the four dynamics of issue #8 (an MLP,
//! Lotka–Volterra with learnable α, β, γ, δ, h' = A h, h' = sin(t)·W h): they pass the
//! correct dynamics, catch planted VJP errors at the right component, report the adjoint's
//! order in the tolerance, and refuse bad inputs with typed errors.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::{BoxError, CustomOp, Result as TapeResult, Scalar, Var};
use common::LotkaVolterra;
use ode::arbitrary::{mlp_problems, MlpField, MlpProblemShape};
use ode::verify::{
    adjoint_residual, tolerance_study, Component, GradientProblem, ProblemVector, ResidualPoints,
    StudyOptions, VerifyError,
};
use ode::{Dynamics, Options, Strategy};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// `h' = h Aᵀ` (rows of h are samples).
#[derive(Clone, Debug)]
struct Linear;

impl<T: Scalar> Dynamics<T> for Linear {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.matmul_t(p[0])
    }
}

/// `h' = sin(t) · h Wᵀ`.
#[derive(Clone, Debug)]
struct SinW;

impl<T: Scalar> Dynamics<T> for SinW {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.matmul_t(p[0])?.mul(t.sin())
    }
}

/// An elementwise op with hand-written VJPs: `tanh(x)`, or `x · k` with a 1×1 `k`; `bug`
/// plants an error in one of them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    None,
    /// tanh's VJP has its sign flipped.
    TanhSign,
    /// The scale op's VJP with respect to `k` is missing a factor 2 (its `x` VJP is right).
    ScaleParam,
}

struct HandTanh(Bug);

impl<T: Scalar> CustomOp<T> for HandTanh {
    fn name(&self) -> &str {
        "hand_tanh"
    }
    fn forward(&mut self, x: &[&DMatrix<T>]) -> Result<Vec<DMatrix<T>>, BoxError> {
        Ok(vec![x[0].map(|x| x.tanh())])
    }
    fn vjp(
        &self,
        _x: &[&DMatrix<T>],
        y: &[&DMatrix<T>],
        g: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> Result<Vec<Option<DMatrix<T>>>, BoxError> {
        let sign = T::constant(if self.0 == Bug::TanhSign { -1.0 } else { 1.0 });
        let g = g[0].as_ref().ok_or("no cotangent")?;
        Ok(vec![Some(
            g.zip_map(y[0], |g, y| sign * g * (T::one() - y * y)),
        )])
    }
    fn held_bytes(&self) -> usize {
        0
    }
}

struct HandScale(Bug);

impl<T: Scalar> CustomOp<T> for HandScale {
    fn name(&self) -> &str {
        "hand_scale"
    }
    fn forward(&mut self, x: &[&DMatrix<T>]) -> Result<Vec<DMatrix<T>>, BoxError> {
        let k = x[1][(0, 0)];
        Ok(vec![x[0].map(|x| x * k)])
    }
    fn vjp(
        &self,
        x: &[&DMatrix<T>],
        _y: &[&DMatrix<T>],
        g: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> Result<Vec<Option<DMatrix<T>>>, BoxError> {
        let g = g[0].as_ref().ok_or("no cotangent")?;
        let k = x[1][(0, 0)];
        let factor = T::constant(if self.0 == Bug::ScaleParam { 2.0 } else { 1.0 });
        let dk = g.zip_map(x[0], |g, x| g * x).sum() * factor;
        Ok(vec![
            Some(g.map(|g| g * k)),
            Some(DMatrix::from_element(1, 1, dk)),
        ])
    }
    fn held_bytes(&self) -> usize {
        0
    }
}

/// `h' = k · tanh(h Wᵀ)` through the hand-written ops; parameters `[W, k]`.
#[derive(Clone, Debug)]
struct HandWritten(Bug);

impl<T: Scalar> Dynamics<T> for HandWritten {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let tape = h.tape();
        let z = tape.custom(HandTanh(self.0), &[h.matmul_t(p[0])?])?[0];
        Ok(tape.custom(HandScale(self.0), &[z, p[1]])?[0])
    }
}

fn m(r: usize, c: usize, v: &[f64]) -> DMatrix<f64> {
    DMatrix::from_row_slice(r, c, v)
}

fn one(x: f64) -> DMatrix<f64> {
    DMatrix::from_element(1, 1, x)
}

const MLP: MlpField = MlpField {
    time_input: true,
    decay: false,
};

fn mlp_problem() -> GradientProblem<MlpField> {
    let params = vec![
        m(
            4,
            3,
            &[
                0.5, -0.3, 0.2, 0.1, 0.8, -0.4, -0.6, 0.2, 0.3, 0.3, -0.1, 0.5,
            ],
        ),
        m(1, 4, &[0.1, -0.2, 0.05, 0.0]),
        m(2, 4, &[0.7, -0.5, 0.2, 0.4, -0.3, 0.6, -0.8, 0.1]),
        m(1, 2, &[0.05, -0.1]),
    ];
    GradientProblem::new(
        MLP,
        m(2, 2, &[0.5, -0.3, -0.2, 0.8]),
        vec![0.0, 0.6, 1.5],
        params,
    )
}

fn lotka_volterra_problem() -> GradientProblem<LotkaVolterra> {
    let params = [1.5, 1.0, 3.0, 1.0].map(one).to_vec();
    GradientProblem::new(
        LotkaVolterra,
        m(1, 2, &[1.0, 1.0]),
        vec![0.0, 1.0, 2.0],
        params,
    )
}

fn linear_problem() -> GradientProblem<Linear> {
    let a = m(2, 2, &[-0.3, 1.0, -1.0, -0.2]);
    GradientProblem::new(
        Linear,
        m(2, 2, &[1.0, 0.5, -0.4, 0.9]),
        vec![0.0, 2.0],
        vec![a],
    )
}

fn sin_w_problem() -> GradientProblem<SinW> {
    let w = m(2, 2, &[0.4, -1.2, 0.9, 0.1]);
    GradientProblem::new(SinW, m(1, 2, &[0.7, -0.5]), vec![0.0, 1.0, 3.0], vec![w])
}

fn hand_written_problem(bug: Bug) -> GradientProblem<HandWritten> {
    let params = vec![m(2, 2, &[0.5, -1.0, 1.0, 0.3]), one(0.8)];
    GradientProblem::new(
        HandWritten(bug),
        m(1, 2, &[0.4, -0.7]),
        vec![0.0, 1.0],
        params,
    )
}

/// The residual of correct dynamics is rounding, at every accepted step, in every part
/// (the time part included for the non-autonomous ones).
#[test]
fn residual_is_rounding_level_for_correct_dynamics() {
    let opts = Options::default().tolerances(1e-8, 1e-10);
    let reports = [
        (
            "mlp",
            adjoint_residual(&mlp_problem(), &opts, &ResidualPoints::AcceptedSteps),
        ),
        (
            "lotka-volterra",
            adjoint_residual(
                &lotka_volterra_problem(),
                &opts,
                &ResidualPoints::AcceptedSteps,
            ),
        ),
        (
            "linear",
            adjoint_residual(&linear_problem(), &opts, &ResidualPoints::AcceptedSteps),
        ),
        (
            "sin-w",
            adjoint_residual(&sin_w_problem(), &opts, &ResidualPoints::AcceptedSteps),
        ),
    ];
    for (name, report) in reports {
        let report = report.unwrap();
        eprintln!(
            "{name}: {} points, max rel {:.1e}",
            report.points.len(),
            report.max_relative
        );
        assert!(
            report.points.len() >= 5,
            "{name}: {} points",
            report.points.len()
        );
        assert!(
            report.points.iter().all(|p| p.adjoint_max_abs > 0.0),
            "{name}"
        );
        assert!(report.is_consistent(1e-12), "{name}:\n{report}");
        assert!(report.worst.is_some());
    }
    // The time part is really compared where f depends on t.
    let sin = adjoint_residual(&sin_w_problem(), &opts, &ResidualPoints::AcceptedSteps).unwrap();
    assert!(sin.points.iter().all(|p| p.time_rel <= 1e-12));
}

/// A tanh whose VJP has its sign flipped: the tape's VJP is −(∂f/∂h)ᵀa at every point, a
/// relative residual of 2 in the state part (and in W, upstream of tanh).
#[test]
fn residual_flags_a_flipped_vjp_sign() {
    let opts = Options::default();
    let good = adjoint_residual(
        &hand_written_problem(Bug::None),
        &opts,
        &ResidualPoints::AcceptedSteps,
    )
    .unwrap();
    assert!(good.is_consistent(1e-12), "{good}");
    let bad = adjoint_residual(
        &hand_written_problem(Bug::TanhSign),
        &opts,
        &ResidualPoints::AcceptedSteps,
    )
    .unwrap();
    eprintln!("{bad}");
    assert!(
        (bad.max_relative - 2.0).abs() < 1e-9,
        "{}",
        bad.max_relative
    );
    for p in bad.points.iter().filter(|p| p.adjoint_max_abs > 0.0) {
        assert!(
            (p.state_rel - 2.0).abs() < 1e-9,
            "t = {}: {}",
            p.t,
            p.state_rel
        );
    }
    let worst = bad.worst.unwrap();
    assert!(matches!(
        worst.component,
        Component::State | Component::Param(0)
    ));
    assert!(
        (worst.tape_vjp + worst.dual_product).abs() < 1e-12 * worst.dual_product.abs().max(1.0)
    );
}

/// A scale op whose parameter VJP is twice the truth (its state VJP is right): the state
/// part stays at rounding, the parameter `k` (θ[1]) is flagged with a relative residual
/// of 1/2, and the JSON says where.
#[test]
fn residual_flags_a_wrong_parameter_vjp_at_its_parameter() {
    let report = adjoint_residual(
        &hand_written_problem(Bug::ScaleParam),
        &Options::default(),
        &ResidualPoints::AcceptedSteps,
    )
    .unwrap();
    assert!(
        report.points.iter().all(|p| p.state_rel < 1e-12),
        "{report}"
    );
    let worst = report.worst.clone().unwrap();
    assert_eq!(worst.component, Component::Param(1));
    assert_eq!(worst.index, (0, 0));
    // |d − 2d| over max(|d|, |2d|).
    assert!((worst.relative - 0.5).abs() < 1e-9, "{}", worst.relative);
    assert!((worst.tape_vjp - 2.0 * worst.dual_product).abs() < 1e-12);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["worst"]["component"],
        serde_json::json!({ "param": 1 })
    );
    assert!(json["points"].as_array().unwrap().len() == report.points.len());
    assert!(format!("{report}").contains("theta[1](0, 0)"));
}

/// Chosen times (merged with the grid times) instead of the accepted steps; a time outside
/// the grid is a typed error.
#[test]
fn residual_at_chosen_times() {
    let problem = lotka_volterra_problem();
    let opts = Options::default();
    let times = vec![0.25, 0.5, 1.0, 1.75];
    let report = adjoint_residual(&problem, &opts, &ResidualPoints::Times(times)).unwrap();
    let ts: Vec<f64> = report.points.iter().map(|p| p.t).collect();
    assert_eq!(ts, vec![0.0, 0.25, 0.5, 1.0, 1.75, 2.0]);
    assert!(report.is_consistent(1e-12));
    // 2 state entries + 4 parameters + 1 time per point.
    assert_eq!(report.dual_evaluations, 6 * 7);
    let err = adjoint_residual(&problem, &opts, &ResidualPoints::Times(vec![2.5])).unwrap_err();
    assert!(
        matches!(err, VerifyError::OutsideGrid { t, .. } if t == 2.5),
        "{err}"
    );
    let err =
        adjoint_residual(&problem, &opts, &ResidualPoints::Times(vec![f64::NAN])).unwrap_err();
    assert!(matches!(err, VerifyError::OutsideGrid { .. }), "{err}");
}

/// The tolerance study on the four dynamics: the backsolve adjoint's error falls like
/// rtol (slope in [0.7, 1.3]); the exact strategies equal the taped gradient at every
/// tolerance; the report serialises with the documented keys.
#[test]
fn tolerance_study_on_the_four_dynamics() {
    let strategies = [
        Strategy::Taped,
        Strategy::backsolve(),
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: 2 },
    ];
    let rtols = [1e-4, 1e-6, 1e-8];
    let study = StudyOptions::default();
    let reports = [
        (
            "mlp",
            tolerance_study(&mlp_problem(), &strategies, &rtols, &study),
        ),
        (
            "lotka-volterra",
            tolerance_study(&lotka_volterra_problem(), &strategies, &rtols, &study),
        ),
        (
            "linear",
            tolerance_study(&linear_problem(), &strategies, &rtols, &study),
        ),
        (
            "sin-w",
            tolerance_study(&sin_w_problem(), &strategies, &rtols, &study),
        ),
    ];
    for (name, report) in reports {
        let report = report.unwrap();
        let slope = report.slope("backsolve").unwrap();
        eprintln!(
            "{name}: backsolve slope {slope:.3}, taped {:?}",
            report.slope("taped")
        );
        assert!(
            (0.7..=1.3).contains(&slope),
            "{name}: slope {slope}\n{report}"
        );
        for row in &report.rows {
            if row.strategy != "backsolve" {
                assert!(
                    row.taped_rel_err < 1e-12,
                    "{name} {}: {}",
                    row.strategy,
                    row.taped_rel_err
                );
            }
            // A loose tolerance gives a visibly loose gradient: the reference is tighter.
            assert!(row.grad_rel_err > 0.0);
        }
        assert_eq!(report.rows.len(), strategies.len() * rtols.len());
        let json = serde_json::to_value(&report).unwrap();
        let row = &json["rows"][0];
        for key in [
            "strategy",
            "rtol",
            "atol",
            "grad_rel_err",
            "taped_rel_err",
            "forward_nfe",
        ] {
            assert!(row.get(key).is_some(), "{key} missing from {row}");
        }
        assert_eq!(json["slopes"][1]["strategy"], "backsolve");
        assert!(json["slopes"][1]["slope"].is_f64());
    }
}

/// Finite differences, forward mode (Dual64) and every strategy agree on one gradient;
/// the HVP through backsolve matches central differences of its gradients.
#[test]
fn gradient_routes_agree() {
    let problem = lotka_volterra_problem();
    let opts = Options::with_method("dopri8")
        .unwrap()
        .tolerances(1e-12, 1e-14);
    let taped = problem.gradient(&opts, &Strategy::Taped).unwrap();
    let forward = problem.forward_mode_gradient(&opts).unwrap();
    assert!(forward.relative_error(&taped) < 1e-12);
    let fd = problem.finite_difference_gradient(&opts, 1e-5).unwrap();
    let fd_err = fd.relative_error(&taped);
    assert!(fd_err < 1e-7, "{fd_err:e}");
    let v = ProblemVector::probe(&problem, 3);
    let directional = problem.directional_derivative(&opts, &v).unwrap();
    assert!((directional - taped.dot(&v)).abs() < 1e-11 * directional.abs());
    // H v through backsolve against central differences of backsolve's gradients.
    let hvp = problem
        .hessian_vector_product(&opts, &Strategy::backsolve(), &v)
        .unwrap();
    assert!(hvp.gradient.relative_error(&taped) < 1e-9);
    let delta = 1e-5;
    let shifted = |sign: f64| {
        let mut q = problem.clone();
        q.h0 += &v.h0 * (sign * delta);
        for (p, d) in q.params.iter_mut().zip(&v.params) {
            *p += d * (sign * delta);
        }
        q.gradient(&opts, &Strategy::backsolve()).unwrap()
    };
    let (plus, minus) = (shifted(1.0), shifted(-1.0));
    let central = ProblemVector {
        h0: (&plus.h0 - &minus.h0) / (2.0 * delta),
        t: (&plus.t - &minus.t) / (2.0 * delta),
        params: plus
            .params
            .iter()
            .zip(&minus.params)
            .map(|(a, b)| (a - b) / (2.0 * delta))
            .collect(),
    };
    let err = hvp.hvp.relative_error(&central);
    assert!(err < 1e-6, "HVP vs differences of gradients {err:e}");
}

/// Every bad input is a typed error, never a panic.
#[test]
fn bad_inputs_are_typed_errors() {
    let opts = Options::default();
    let good = linear_problem();
    let all = [Strategy::Taped];
    let check = |p: &GradientProblem<Linear>| p.gradient(&opts, &Strategy::Taped).unwrap_err();

    let mut p = good.clone();
    p.grid.clear();
    assert!(matches!(
        check(&p),
        VerifyError::Solve(ode::Error::BadTimeGrid { .. })
    ));
    let mut p = good.clone();
    p.grid = vec![0.0, 1.0, 0.5];
    p.cotangents.push(None);
    assert!(matches!(
        check(&p),
        VerifyError::Solve(ode::Error::BadTimeGrid { .. })
    ));
    let mut p = good.clone();
    p.cotangents.pop();
    assert!(matches!(
        check(&p),
        VerifyError::CotangentCount { got: 1, grid: 2 }
    ));
    let mut p = good.clone();
    p.cotangents[1] = Some(DMatrix::zeros(3, 2));
    assert!(matches!(
        check(&p),
        VerifyError::Shape {
            expected: (2, 2),
            got: (3, 2),
            ..
        }
    ));
    let mut p = good.clone();
    p.cotangents[1] = None;
    assert!(matches!(check(&p), VerifyError::NoCotangent));
    let mut p = good.clone();
    p.h0[(0, 1)] = f64::NAN;
    assert!(matches!(check(&p), VerifyError::NonFinite { ref what } if what == "h0"));
    let mut p = good.clone();
    p.params[0][(1, 1)] = f64::INFINITY;
    assert!(matches!(check(&p), VerifyError::NonFinite { ref what } if what == "parameter 0"));
    let mut p = good.clone();
    p.h0 = DMatrix::zeros(0, 2);
    p.cotangents = vec![None, Some(DMatrix::zeros(0, 2))];
    assert!(matches!(
        check(&p),
        VerifyError::Solve(ode::Error::EmptyState { .. })
    ));
    // A parameter of the wrong shape fails inside the dynamics, as a tape error.
    let mut p = good.clone();
    p.params[0] = DMatrix::zeros(3, 3);
    assert!(matches!(check(&p), VerifyError::Solve(_)));

    // Sweeps and steps.
    let study = StudyOptions::default();
    for rtols in [vec![1e-4, 0.0], vec![-1e-6], vec![f64::NAN]] {
        let err = tolerance_study(&good, &all, &rtols, &study).unwrap_err();
        assert!(
            matches!(err, VerifyError::BadValue { what: "rtol", .. }),
            "{err}"
        );
    }
    let err = tolerance_study(&good, &all, &[], &study).unwrap_err();
    assert!(matches!(err, VerifyError::Empty { what: "rtols" }));
    let err = tolerance_study(&good, &[], &[1e-6], &study).unwrap_err();
    assert!(matches!(err, VerifyError::Empty { what: "strategies" }));
    let err = good.finite_difference_gradient(&opts, 0.0).unwrap_err();
    assert!(matches!(err, VerifyError::BadValue { .. }));
    // Bad options reach the solve's own error.
    let err = good
        .gradient(&Options::default().tolerances(-1.0, 1e-9), &Strategy::Taped)
        .unwrap_err();
    assert!(matches!(
        err,
        VerifyError::Solve(ode::Error::BadOption { name: "rtol", .. })
    ));

    // Directions of the wrong shape.
    let v = ProblemVector::zeros_like(&good);
    assert!(v.clone().with_param(1, one(1.0)).is_err());
    // The largest index is an error, not an overflow.
    assert!(v.clone().with_param(usize::MAX, one(1.0)).is_err());
    assert!(v.clone().with_param(0, one(1.0)).is_err());
    let mut short = v.clone();
    short.t = DMatrix::zeros(1, 5);
    let err = good.directional_derivative(&opts, &short).unwrap_err();
    assert!(matches!(err, VerifyError::Shape { .. }), "{err}");
    let mut nan = v;
    nan.h0[(0, 0)] = f64::NAN;
    let err = good
        .hessian_vector_product(&opts, &Strategy::Taped, &nan)
        .unwrap_err();
    assert!(matches!(err, VerifyError::NonFinite { .. }), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0DE5_7A7E),
        ..ProptestConfig::default()
    })]

    /// Any small random MLP problem: the backsolve adjoint's gradient is within 100·rtol of
    /// the taped one, and the adjoint residual of the (correct) dynamics is rounding.
    #[test]
    fn adjoint_matches_taped_on_random_problems(problem in mlp_problems(MlpProblemShape::default())) {
        let rtol = 1e-8;
        let opts = Options::default().tolerances(rtol, rtol * 1e-2);
        let taped = problem.gradient(&opts, &Strategy::Taped).unwrap();
        let adjoint = problem.gradient(&opts, &Strategy::backsolve()).unwrap();
        let err = adjoint.relative_error(&taped);
        prop_assert!(err <= 100.0 * rtol, "relative error {err:e}");
        let times = ResidualPoints::Times(vec![problem.grid[0] + 0.1]);
        let residual = adjoint_residual(&problem, &opts, &times).unwrap();
        prop_assert!(residual.is_consistent(1e-11), "{residual}");
    }
}

/// With a finite-difference step the study also measures every gradient against central
/// differences; those errors are the reference errors up to the differences' own error.
#[test]
fn tolerance_study_against_finite_differences() {
    let study = StudyOptions {
        finite_difference_step: Some(1e-5),
        ..StudyOptions::default()
    };
    let strategies = [Strategy::Taped, Strategy::backsolve()];
    let report = tolerance_study(
        &lotka_volterra_problem(),
        &strategies,
        &[1e-5, 1e-7],
        &study,
    )
    .unwrap();
    let floor = report.fd_vs_reference.unwrap();
    assert!(floor > 0.0 && floor < 1e-7, "FD vs reference {floor:e}");
    for row in &report.rows {
        let fd = row.fd_rel_err.unwrap();
        assert!(
            (fd - row.grad_rel_err).abs() <= 2.0 * floor + 1e-3 * row.grad_rel_err,
            "{}: fd {fd:e}, reference {:e}",
            row.strategy,
            row.grad_rel_err
        );
    }
    assert!(format!("{report}").contains("err vs FD"));
    // Without a step there is no FD column.
    let plain = tolerance_study(
        &lotka_volterra_problem(),
        &strategies,
        &[1e-5],
        &StudyOptions::default(),
    )
    .unwrap();
    assert!(plain.fd_vs_reference.is_none() && plain.rows.iter().all(|r| r.fd_rel_err.is_none()));
}
