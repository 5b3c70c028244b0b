//! The convergence check: does an exact strategy's gradient converge to the true derivative,
//! or only to the derivative of a discretisation whose steps do not resolve it?

use std::fmt;

use ad_core::num_dual::Dual64;
use serde::Serialize;

use super::problem::GradientProblem;
use super::table::{render, sci};
use super::{Result, VerifyError};
use crate::dynamics::Dynamics;
use crate::options::{ErrorControl, Options};
use crate::strategy::{ContinuousAdjoint, Strategy};

/// The settings of a [`convergence_check`].
#[derive(Clone, Debug)]
pub struct ConvergenceOptions {
    /// The exact strategy whose gradient is checked (default [`Strategy::Taped`]; any exact
    /// strategy gives the same gradient to rounding).
    pub strategy: Strategy,
    /// Tangent directions of the tangent-aware gradient (default 1).
    pub directions: usize,
    /// Relative tolerance of the tight references (default 1e-10).
    pub tight_rtol: f64,
    /// Absolute tolerance of the tight references (default 1e-12).
    pub tight_atol: f64,
    /// The exact gradient at the caller's tolerances counts as converged when its relative
    /// error against the reference is at most this many times `rtol` (default 100: a
    /// converged gradient's error is typically within 10 × rtol), or at most 3 times the
    /// tangent-aware gradient's error at the same tolerances (low-order methods stay far
    /// above rtol whatever is controlled), which is believed up to 10 times this bar.
    pub agreement: f64,
}

impl Default for ConvergenceOptions {
    fn default() -> Self {
        Self {
            strategy: Strategy::Taped,
            directions: 1,
            tight_rtol: 1e-10,
            tight_atol: 1e-12,
            agreement: 100.0,
        }
    }
}

/// What the check concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// The exact gradient at the caller's tolerances agrees with the tight adjoint.
    Converged,
    /// It disagrees, but the exact gradient with primal control converges as the tolerance
    /// falls: the tolerance is too loose for the gradient.
    ToleranceTooLoose,
    /// It disagrees, and tightening the tolerance does not help: the forward's steps do not
    /// resolve the sensitivities (a state at rest while its derivatives move).
    StepsDoNotResolveSensitivities,
    /// The two tight references (the interpolating adjoint and the tangent-aware exact gradient)
    /// disagree with each other, so there is nothing trustworthy to compare with.
    NoReliableReference,
}

/// One gradient of the check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConvergenceRow {
    /// What was computed (strategy, error control, tolerance).
    pub gradient: String,
    /// Its relative tolerance.
    pub rtol: f64,
    /// Its relative error against the tight interpolating adjoint
    /// ([`super::ProblemVector::relative_error`] over `h0` and θ).
    pub rel_err: f64,
    /// Accepted forward steps.
    pub steps: usize,
    /// Forward evaluations of f (the strategy's own forward).
    pub forward_nfe: usize,
    /// Evaluations of f on dual numbers by the tangent-aware planning solve.
    pub tangent_nfe: usize,
}

/// What [`convergence_check`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConvergenceReport {
    /// The verdict.
    pub verdict: Verdict,
    /// The verdict in plain language, with what to do about it.
    pub explanation: String,
    /// The agreement threshold at the caller's tolerance (see
    /// [`ConvergenceOptions::agreement`]).
    pub threshold: f64,
    /// The gradients compared, the reference (error 0) last.
    pub rows: Vec<ConvergenceRow>,
}

impl ConvergenceReport {
    /// Whether the exact gradient at the caller's tolerances can be trusted.
    pub fn converged(&self) -> bool {
        self.verdict == Verdict::Converged
    }
}

impl fmt::Display for ConvergenceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "convergence check: {:?}", self.verdict)?;
        writeln!(f, "{}", self.explanation)?;
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.gradient.clone(),
                    sci(Some(r.rtol)),
                    sci(Some(r.rel_err)),
                    r.steps.to_string(),
                    r.forward_nfe.to_string(),
                    r.tangent_nfe.to_string(),
                ]
            })
            .collect();
        f.write_str(&render(
            &[
                "gradient",
                "rtol",
                "err vs reference",
                "steps",
                "fwd NFE",
                "dual NFE",
            ],
            &rows,
        ))
    }
}

/// Check whether an exact strategy's gradient of `problem` at the tolerances of `opts` is
/// the true derivative.
///
/// An exact strategy (taped, the exact replays, auto, reversible, and a `Dual64` solve)
/// returns the derivative of the discrete solve whose steps the error control chose. The
/// check computes that gradient at the caller's tolerances and compares it, over `h0` and
/// θ, with the interpolating adjoint at tight tolerances (which controls the error of the
/// adjoint and of its parameter integral; the gauss adjoint's quadrature is not controlled);
/// it also computes the exact gradient with tangent-aware control
/// ([`ErrorControl::WithTangents`]) at the caller's tolerances and at the tight ones (the
/// latter cross-checks the reference), and with primal control at the tight ones (does it
/// converge at all?). Cost: five gradients, two of them at tight tolerances.
///
/// ```
/// use ad_core::{nalgebra::DMatrix, Result as TapeResult, Scalar, Var};
/// use ode::verify::{convergence_check, ConvergenceOptions, GradientProblem, Verdict};
/// use ode::{Dynamics, Options};
///
/// /// h' = a − h: started at h0 = a, the state never moves while dh/da = 1 − e^{−t} does.
/// #[derive(Clone, Debug)]
/// struct Relax;
/// impl<T: Scalar> Dynamics<T> for Relax {
///     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
///         p[0].sub(h)
///     }
/// }
///
/// let one = DMatrix::from_element(1, 1, 1.0);
/// let problem = GradientProblem::new(Relax, one.clone(), vec![0.0, 10.0], vec![one]);
/// let opts = Options::default().tolerances(1e-6, 1e-6);
/// let report = convergence_check(&problem, &opts, &ConvergenceOptions::default())?;
/// println!("{report}");
/// assert_eq!(report.verdict, Verdict::StepsDoNotResolveSensitivities);
/// // With tangent-aware control the same strategy converges.
/// let report = convergence_check(&problem, &opts.with_tangents(1), &ConvergenceOptions::default())?;
/// assert_eq!(report.verdict, Verdict::Converged);
/// # Ok::<(), ode::verify::VerifyError>(())
/// ```
pub fn convergence_check<F>(
    problem: &GradientProblem<F>,
    opts: &Options,
    check: &ConvergenceOptions,
) -> Result<ConvergenceReport>
where
    F: Dynamics<f64> + Dynamics<Dual64> + Clone + 'static,
{
    problem.validate()?;
    opts.validate()?;
    for (what, value) in [
        ("tight rtol", check.tight_rtol),
        ("tight atol", check.tight_atol),
        ("agreement factor", check.agreement),
    ] {
        if !(value.is_finite() && value > 0.0) {
            return Err(VerifyError::BadValue {
                what,
                index: 0,
                value,
            });
        }
    }
    if !check.strategy.is_exact() {
        return Err(VerifyError::NotExact {
            strategy: check.strategy.name(),
        });
    }
    let strategy = &check.strategy;
    let name = strategy.name();
    let tangents = opts.clone().with_tangents(check.directions);
    let user_control = match opts.error_control {
        ErrorControl::Primal => "primal control".to_string(),
        _ => "the caller's tangent control".to_string(),
    };
    let tight = opts.clone().tolerances(check.tight_rtol, check.tight_atol);
    let tight_primal = Options {
        error_control: ErrorControl::Primal,
        ..tight.clone()
    };
    let tight_tangents = tight.clone().with_tangents(check.directions);
    // The interpolating adjoint integrates a_θ under its error control; the gauss adjoint's
    // quadrature is not error-controlled, and where a stays still while ∂f/∂θ moves (a
    // parameter forcing a state at rest) its backward steps grow past what the quadrature
    // resolves.
    let adjoint = Strategy::Interpolating(
        ContinuousAdjoint::default().tolerances(check.tight_rtol, check.tight_atol),
    );
    let (reference, ref_stats, _) = problem.gradient_with_stats(&tight_primal, &adjoint)?;
    let reference = reference.without_times();
    let mut rows = Vec::new();
    let mut row = |label: String, o: &Options, s: &Strategy| -> Result<f64> {
        let (g, stats, _) = problem.gradient_with_stats(o, s)?;
        let rel_err = g.without_times().relative_error(&reference);
        rows.push(ConvergenceRow {
            gradient: label,
            rtol: o.rtol,
            rel_err,
            steps: stats.accepted,
            forward_nfe: stats.nfe,
            tangent_nfe: stats.tangent_nfe,
        });
        Ok(rel_err)
    };
    let at_user = row(format!("{name}, {user_control}"), opts, strategy)?;
    let with_tangents = row(
        format!("{name}, {} tangent direction(s)", check.directions),
        &tangents,
        strategy,
    )?;
    let tight_primal_err = row(format!("{name}, primal control"), &tight_primal, strategy)?;
    let cross = row(
        format!("{name}, {} tangent direction(s)", check.directions),
        &tight_tangents,
        strategy,
    )?;
    rows.push(ConvergenceRow {
        gradient: "interpolating adjoint (reference)".into(),
        rtol: check.tight_rtol,
        rel_err: 0.0,
        steps: ref_stats.accepted,
        forward_nfe: ref_stats.nfe,
        tangent_nfe: 0,
    });
    // The tangent-aware gradient at the caller's rtol shows how close a converged gradient
    // gets at that rtol (low-order methods stay far above rtol); believed up to 10 times
    // the agreement bar.
    let bar = check.agreement * opts.rtol;
    let threshold = bar.max((3.0 * with_tangents).min(10.0 * bar));
    let tight_threshold = (100.0 * check.tight_rtol).max(3.0 * cross);
    let reference_bar = threshold.max(1e4 * check.tight_rtol);
    let (verdict, explanation) = if cross > reference_bar {
        (
            Verdict::NoReliableReference,
            format!(
                "the two tight references disagree by {}: the interpolating adjoint and the tangent-aware {name} gradient at rtol {:e}; the problem may be chaotic over this horizon, stiff or non-smooth, so no verdict can be given (try a shorter horizon or tighter reference tolerances)",
                sci(Some(cross)),
                check.tight_rtol
            ),
        )
    } else if at_user <= threshold {
        (
            Verdict::Converged,
            format!(
                "the {name} gradient at rtol {:e} agrees with the tight adjoint to {} (threshold {}): its steps resolve the sensitivities",
                opts.rtol,
                sci(Some(at_user)),
                sci(Some(threshold))
            ),
        )
    } else if tight_primal_err <= tight_threshold {
        (
            Verdict::ToleranceTooLoose,
            format!(
                "the {name} gradient at rtol {:e} is off by {} (threshold {}), but with primal control it converges as rtol falls ({} at rtol {:e}): tighten rtol, or use ErrorControl::WithTangents ({} at your rtol)",
                opts.rtol,
                sci(Some(at_user)),
                sci(Some(threshold)),
                sci(Some(tight_primal_err)),
                check.tight_rtol,
                sci(Some(with_tangents))
            ),
        )
    } else {
        (
            Verdict::StepsDoNotResolveSensitivities,
            format!(
                "the forward's steps do not resolve the sensitivities: the {name} gradient is the exact derivative of a discrete solve whose steps the state's error alone chose, and it is off by {} at rtol {:e} and still by {} at rtol {:e}, so tightening the tolerance does not help; use ErrorControl::WithTangents (off by {} at your rtol) or an adjoint strategy (interpolating or backsolve)",
                sci(Some(at_user)),
                opts.rtol,
                sci(Some(tight_primal_err)),
                check.tight_rtol,
                sci(Some(with_tangents))
            ),
        )
    };
    Ok(ConvergenceReport {
        verdict,
        explanation,
        threshold,
        rows,
    })
}
