//! `ad_core::gradcheck` on whole ODE solves: a solve is a function on the tape like any other,
//! so the same check covers every gradient strategy. The exact strategies match `Dual64` to
//! rounding; backsolve matches to its solver tolerance, and a wrong strategy would not.

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::{gradcheck, GradcheckSettings, Scalar, Tape, TapeFunction, Tolerance, Var};
use costate::ode::{odeint_with, Dynamics, ErrorControl, Options, Strategy, TangentDirection};

/// h' = tanh(h Wᵀ) − α h, with W (2×2) and α (1×1) learnable.
#[derive(Clone)]
struct Damped;

impl<T: Scalar> Dynamics<T> for Damped {
    fn eval<'t>(
        &self,
        _t: Var<'t, T>,
        h: Var<'t, T>,
        p: &[Var<'t, T>],
    ) -> costate::ad_core::Result<Var<'t, T>> {
        h.matmul_t(p[0])?.tanh().sub(h.mul(p[1])?)
    }
}

/// L = Σ h(1)² through one strategy; inputs are [h0, W, α].
struct Solve {
    strategy: Strategy,
    options: Options,
}

impl TapeFunction for Solve {
    type Error = costate::ode::Error;
    fn eval<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        x: &[Var<'t, T>],
    ) -> Result<Var<'t, T>, Self::Error> {
        let t = tape.constant(DMatrix::from_row_slice(1, 3, &[0.0, 0.5, 1.0]).map(T::constant));
        let sol = odeint_with(
            tape,
            &Damped,
            x[0],
            t,
            &x[1..],
            &self.options,
            &self.strategy,
        )?;
        Ok(sol.last().square().sum())
    }
}

fn inputs() -> Vec<DMatrix<f64>> {
    vec![
        DMatrix::from_row_slice(2, 2, &[0.8, -0.4, 0.3, 1.1]),
        DMatrix::from_row_slice(2, 2, &[0.5, -1.2, 0.9, 0.2]),
        DMatrix::from_element(1, 1, 0.3),
    ]
}

#[test]
fn exact_strategies_pass_gradcheck_against_dual64_to_rounding() {
    let options = Options::default().tolerances(1e-8, 1e-10);
    for strategy in [
        Strategy::Taped,
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: 2 },
    ] {
        let name = strategy.name();
        let fun = Solve {
            strategy,
            options: options.clone(),
        };
        let report = gradcheck(&fun, &inputs(), &GradcheckSettings::default()).unwrap();
        assert!(report.passed(), "{name}:\n{report}");
        // n = 4 + 4 + 1 entries: one Dual64 solve each.
        assert_eq!(report.evaluations.dual, 9, "{name}");
        for input in &report.inputs {
            let dual = input.dual.as_ref().unwrap();
            assert!(dual.max_rel_error < 1e-11, "{name}: {}", dual.max_rel_error);
        }
    }
}

#[test]
fn backsolve_passes_to_its_tolerance_and_fails_at_rounding() {
    let fun = Solve {
        strategy: Strategy::backsolve(),
        options: Options::default().tolerances(1e-10, 1e-12),
    };
    let loose = GradcheckSettings {
        dual_tolerance: Tolerance {
            rel: 1e-6,
            ..Tolerance::DUAL
        },
        ..GradcheckSettings::default()
    };
    let report = gradcheck(&fun, &inputs(), &loose).unwrap();
    assert!(report.passed(), "{report}");
    // Backsolve's gradient is accurate to the tolerance, not to rounding: a check at rounding
    // level sees the difference (it would not if the adjoint were the discrete gradient).
    let strict = GradcheckSettings {
        dual_tolerance: Tolerance {
            rel: 1e-13,
            ..Tolerance::DUAL
        },
        ..GradcheckSettings::default()
    };
    let report = gradcheck(&fun, &inputs(), &strict).unwrap();
    assert!(!report.passed(), "{report}");
}

/// h' = a − h: at h0 = a the state never moves, so primal control takes 8 steps and the exact
/// gradient in `a` is −539.2 instead of 1 − e^{−10}.
#[derive(Clone)]
struct Relax;

impl<T: Scalar> Dynamics<T> for Relax {
    fn eval<'t>(
        &self,
        _t: Var<'t, T>,
        h: Var<'t, T>,
        p: &[Var<'t, T>],
    ) -> costate::ad_core::Result<Var<'t, T>> {
        p[0].sub(h)
    }
}

/// L = h(10) from h0 = 1 with `a` the input.
struct RelaxSolve {
    options: Options,
}

impl TapeFunction for RelaxSolve {
    type Error = costate::ode::Error;
    fn eval<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        x: &[Var<'t, T>],
    ) -> Result<Var<'t, T>, Self::Error> {
        let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 10.0]).map(T::constant));
        let h0 = tape.constant(DMatrix::from_element(1, 1, T::constant(1.0)));
        let sol = odeint_with(tape, &Relax, h0, t, x, &self.options, &Strategy::Taped)?;
        Ok(sol.last().sum())
    }
}

#[test]
fn gradcheck_names_unresolved_sensitivities_when_finite_differences_disagree() {
    let a = vec![DMatrix::from_element(1, 1, 1.0)];
    let primal = RelaxSolve {
        options: Options::default().tolerances(1e-8, 1e-8),
    };
    let report = gradcheck(&primal, &a, &GradcheckSettings::default()).unwrap();
    // Dual64 takes the same steps and agrees; finite differences move the state off its
    // equilibrium, take other steps and see the true derivative.
    assert!(report.inputs[0].dual.as_ref().unwrap().passed, "{report}");
    assert!(report.finite_differences_failed(), "{report}");
    let shown = report.to_string();
    assert!(
        shown.contains("note:") && shown.contains("convergence_check"),
        "{shown}"
    );
    assert!(shown.contains("ErrorControl::WithTangents"), "{shown}");
    // With tangent-aware control the gradient is the true one: no note, and it passes. The
    // direction is given, so the Dual64 run plans the same steps as the f64 one (a Dual64
    // solve under `WithTangents` would plan along its own dual parts instead).
    let tangents = RelaxSolve {
        options: Options {
            error_control: ErrorControl::Along(vec![TangentDirection {
                h0: DMatrix::zeros(1, 1),
                params: vec![DMatrix::from_element(1, 1, 1.0)],
            }]),
            ..Options::default().tolerances(1e-8, 1e-8)
        },
    };
    let report = gradcheck(&tangents, &a, &GradcheckSettings::default()).unwrap();
    assert!(report.passed(), "{report}");
    assert!(report.notes.is_empty());
    assert!(!report.to_string().contains("note:"));
}
