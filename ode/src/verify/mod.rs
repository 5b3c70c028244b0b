//! Gradient verification for a user's dynamics, as library calls that return reports:
//!
//! - [`GradientProblem`]: a solve and a linear loss `L = Σ_i ⟨g_i, h(t_i)⟩` (any loss's
//!   gradient through a solve is determined by its output cotangents `g_i`), with its loss,
//!   its gradient by any [`Strategy`](crate::Strategy), central finite differences, `Dual64` directional
//!   derivatives and Hessian-vector products.
//! - [`adjoint_residual`]: along the trajectory, the residual of the adjoint equation
//!   `da/dt + (∂f/∂h)ᵀ a` (and of its θ and t parts) with the VJPs the tape computes for the
//!   dynamics against Jacobians built from `Dual64` forward runs: it finds a hand-written
//!   `CustomOp` VJP that is wrong.
//! - [`convergence_check`]: whether an exact strategy's gradient is the true derivative or
//!   only the derivative of steps that do not resolve the sensitivities, with a verdict and
//!   what to do.
//! - [`tolerance_study`]: each strategy's gradient error against a tight reference over a
//!   tolerance sweep, with the fitted log–log slope.
//!
//! Every check validates its inputs and returns a typed [`VerifyError`] instead of
//! panicking; every report prints as a table (`Display`) and serialises (`serde`).
//!
//! ```
//! use ad_core::{nalgebra::DMatrix, Result as TapeResult, Scalar, Var};
//! use ode::verify::{GradientProblem, ProblemVector};
//! use ode::{Dynamics, Options, Strategy};
//!
//! /// h' = −k h.
//! #[derive(Clone, Debug)]
//! struct Decay;
//! impl<T: Scalar> Dynamics<T> for Decay {
//!     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
//!         Ok(-(h.mul(p[0])?))
//!     }
//! }
//!
//! let problem = GradientProblem::new(
//!     Decay,
//!     DMatrix::from_row_slice(1, 2, &[1.0, -2.0]),
//!     vec![0.0, 0.5, 1.0],
//!     vec![DMatrix::from_element(1, 1, 0.7)],
//! ); // L = sum of h(1)
//! let opts = Options::default().tolerances(1e-10, 1e-12);
//! let adjoint = problem.gradient(&opts, &Strategy::backsolve())?;
//! // dL/dk = −t Σ h0 e^{−kt} at t = 1
//! let exact = -(1.0 - 2.0) * (-0.7f64).exp();
//! assert!((adjoint.params[0][(0, 0)] - exact).abs() < 1e-8);
//!
//! // The same number from a forward-mode (Dual64) solve, and from finite differences.
//! let dk = ProblemVector::zeros_like(&problem).with_param(0, DMatrix::from_element(1, 1, 1.0))?;
//! assert!((problem.directional_derivative(&opts, &dk)? - exact).abs() < 1e-8);
//! let fd = problem.finite_difference_gradient(&opts, 1e-5)?;
//! assert!(adjoint.relative_error(&fd) < 1e-5);
//! # Ok::<(), ode::verify::VerifyError>(())
//! ```

mod convergence;
mod problem;
mod residual;
mod table;
mod tolerance;

pub use convergence::{
    convergence_check, ConvergenceOptions, ConvergenceReport, ConvergenceRow, Verdict,
};
pub use problem::{GradientProblem, HessianVectorProduct, ProblemVector};
pub use residual::{
    adjoint_residual, AdjointResidualReport, Component, ResidualEntry, ResidualPoint,
    ResidualPoints,
};
pub use tolerance::{
    tolerance_study, AtolRule, Reference, StudyOptions, StudyRow, StudySlope, ToleranceReport,
};

use crate::error::num;

/// Result alias of the verification checks.
pub type Result<T, E = VerifyError> = std::result::Result<T, E>;

/// What a verification check can reject or run into.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A solve (or the tape inside it) failed; the inner error names the cause.
    #[error(transparent)]
    Solve(#[from] crate::Error),
    /// The problem's cotangents are not one per grid time.
    #[error("the problem has {got} cotangents for {grid} grid times: give one `Option` per time (None where the loss does not read h(t_i))")]
    CotangentCount {
        /// Cotangents given.
        got: usize,
        /// Grid times.
        grid: usize,
    },
    /// Every cotangent is `None`, so the loss is identically zero and so is its gradient.
    #[error("no output has a cotangent, so the loss and its gradient are zero and there is nothing to check: set at least one (GradientProblem::with_cotangents)")]
    NoCotangent,
    /// A tensor of the problem (or a direction) has the wrong shape.
    #[error("shape mismatch: {what} is {got:?} but must be {expected:?}")]
    Shape {
        /// Which tensor.
        what: String,
        /// The shape it must have.
        expected: (usize, usize),
        /// The shape it has.
        got: (usize, usize),
    },
    /// A tensor of the problem (or a direction) holds NaN or infinity.
    #[error("{what} holds NaN or infinity: every input of a check must be finite")]
    NonFinite {
        /// Which tensor.
        what: String,
    },
    /// A value of a tolerance sweep or a finite-difference step is unusable.
    #[error("{what} = {} at index {index} is unusable: it must be finite and > 0", num(*value))]
    BadValue {
        /// Which setting (`"rtol"`, `"finite-difference step"`, ...).
        what: &'static str,
        /// Its position in the sweep (0 for a single value).
        index: usize,
        /// The value given.
        value: f64,
    },
    /// A list the check needs (rtols, strategies) is empty.
    #[error("no {what} given: the check needs at least one")]
    Empty {
        /// What is missing.
        what: &'static str,
    },
    /// A check that needs an exact strategy was given a continuous adjoint.
    #[error("`{strategy}` is not an exact strategy: the convergence check is about the derivative of the discrete solve, which taped, aca, checkpointed:K, auto:BYTES and reversible return; the continuous adjoints control their own error")]
    NotExact {
        /// The strategy given.
        strategy: String,
    },
    /// A time asked for lies outside the problem's grid.
    #[error("t = {} lies outside the grid [{}, {}]: the adjoint is only defined between t_0 and t_n", num(*t), num(*t0), num(*tn))]
    OutsideGrid {
        /// The time asked for.
        t: f64,
        /// The grid's first time.
        t0: f64,
        /// The grid's last time.
        tn: f64,
    },
}

impl From<ad_core::Error> for VerifyError {
    fn from(e: ad_core::Error) -> Self {
        VerifyError::Solve(crate::Error::Tape(e))
    }
}

/// `max |a − b|` over matching entries.
fn max_abs_diff(a: &ad_core::nalgebra::DMatrix<f64>, b: &ad_core::nalgebra::DMatrix<f64>) -> f64 {
    a.iter()
        .zip(b.iter())
        .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// `max |a|` over the entries.
fn max_abs(a: &ad_core::nalgebra::DMatrix<f64>) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `d / scale`, or `d` itself when the scale is zero (so an exact zero stays zero).
fn relative(d: f64, scale: f64) -> f64 {
    if scale > 0.0 {
        d / scale
    } else {
        d
    }
}
