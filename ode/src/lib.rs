//! # ode: Runge–Kutta solvers on the ad-core tape
//!
//! One explicit Runge–Kutta engine driven by Butcher tableaux ([`tableau`]) serves every
//! gradient mode:
//!
//! - [`odeint`]: taped. Every stage is recorded; the gradient is exact for the discrete
//!   solve; memory grows with the number of steps.
//! - [`odeint_adjoint`]: one opaque node on the tape. Its VJP integrates the adjoint system
//!   backwards; memory is O(state + parameters), gradients are accurate to the tolerance.
//! - [`solve`]: values only (no tape), e.g. for inference.
//!
//! ```
//! use ad_core::{nalgebra::DMatrix, Result as TapeResult, Scalar, Tape, Var};
//! use ode::{odeint, odeint_adjoint, Dynamics, Options};
//!
//! /// h' = −k h, with k the only parameter.
//! #[derive(Clone)]
//! struct Decay;
//! impl<T: Scalar> Dynamics<T> for Decay {
//!     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
//!         Ok(-(h.mul(p[0])?)) // the 1×1 k broadcasts
//!     }
//! }
//!
//! let tape = Tape::<f64>::new();
//! let h0 = tape.var(DMatrix::from_element(1, 1, 2.0));
//! let k = tape.var(DMatrix::from_element(1, 1, 0.5));
//! let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
//! for adjoint in [false, true] {
//!     let sol = if adjoint {
//!         odeint_adjoint(&tape, &Decay, h0, t, &[k], &Options::default())?
//!     } else {
//!         odeint(&tape, &Decay, h0, t, &[k], &Options::default())?
//!     };
//!     let h1 = sol.last().scalar_value()?;
//!     assert!((h1 - 2.0 * (-0.5f64).exp()).abs() < 1e-7);
//!     // dh1/dk = −t h0 e^{−kt} = −2 e^{−0.5}
//!     let g = tape.backward(sol.last())?;
//!     assert!((g.get(k).unwrap()[(0, 0)] + 2.0 * (-0.5f64).exp()).abs() < 1e-6);
//! }
//! # Ok::<(), ode::Error>(())
//! ```
#![warn(missing_docs)]

mod adjoint;
mod auto;
mod checkpoint;
mod controller;
mod dynamics;
mod engine;
mod error;
mod options;
pub mod schedule;
mod solve;
mod stepper;
mod strategy;
pub mod tableau;

pub use adjoint::odeint_adjoint;
pub use controller::StepRecord;
pub use dynamics::Dynamics;
pub use engine::SolveStats;
pub use error::{Error, Result};
pub use options::{method_by_name, AdjointNorm, Norm, NormFn, Options};
pub use solve::{check_grid, odeint, odeint_with, solve, Solution};
pub use strategy::{Backsolve, BackwardStats, Drift, ParseStrategyError, Strategy, StrategyReport};
