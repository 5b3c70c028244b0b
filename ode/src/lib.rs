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
//! - [`odeint_with`]: any [`Strategy`], among them the exact replays (store every step,
//!   binomial checkpointing), the reversible strategy (the exact gradient of a reversible
//!   solve, [`Options::reversible`] or `reversible_heun`, in O(state + parameters)) and the
//!   Gauss and interpolating adjoints (h read from the forward's dense output: no drift).
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
//!
//! ## Forward mode: `Dual64` solves
//!
//! Every solve is generic over the scalar, so a solve on `Dual64` numbers carries a
//! directional derivative through the whole integration (forward mode, no tape): seed the
//! tangent on the inputs you differentiate along, read it off the outputs. It takes the
//! same steps as the f64 solve, so it agrees with the taped gradient to rounding.
//!
//! ```
//! use ad_core::{nalgebra::DMatrix, num_dual::Dual64, Result as TapeResult, Scalar, Var};
//! use ode::{solve, Dynamics, Options};
//!
//! #[derive(Clone)]
//! struct Decay; // h' = −k h
//! impl<T: Scalar> Dynamics<T> for Decay {
//!     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
//!         Ok(-(h.mul(p[0])?))
//!     }
//! }
//!
//! // d h(1) / dk along a unit tangent on k: −h0 e^{−k}.
//! let h0 = DMatrix::from_element(1, 1, Dual64::from_re(2.0));
//! let k = DMatrix::from_element(1, 1, Dual64::new(0.5, 1.0));
//! let t = [Dual64::from_re(0.0), Dual64::from_re(1.0)];
//! let opts = Options::default().tolerances(1e-10, 1e-12);
//! let (h, _) = solve(&Decay, &h0, &t, &[k], &opts)?;
//! let h1 = h[1][(0, 0)];
//! assert!((h1.re - 2.0 * (-0.5f64).exp()).abs() < 1e-9);
//! assert!((h1.eps + 2.0 * (-0.5f64).exp()).abs() < 1e-9);
//! # Ok::<(), ode::Error>(())
//! ```
//!
//! ## Hessian-vector products through every gradient strategy
//!
//! Forward over reverse: run any [`Strategy`] on a `Tape<Dual64>` whose inputs carry a
//! tangent `v`; the real parts of the gradient are the gradient, the dual parts are `H v`.
//! The exact strategies (taped, `aca`, `checkpointed:K`, `auto`) give the taped HVP to
//! rounding; the backsolve strategies give it to the tolerance, as their gradients.
//! [`verify::GradientProblem::hessian_vector_product`] wraps the same steps.
//!
//! ```
//! use ad_core::{nalgebra::DMatrix, num_dual::Dual64, Result as TapeResult, Scalar, Tape, Var};
//! use ode::{odeint_with, Dynamics, Options, Strategy};
//!
//! #[derive(Clone)]
//! struct Decay; // h' = −k h
//! impl<T: Scalar> Dynamics<T> for Decay {
//!     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
//!         Ok(-(h.mul(p[0])?))
//!     }
//! }
//!
//! // L = h(1) = h0 e^{−k}: dL/dk = −h0 e^{−k}, d²L/dk² = h0 e^{−k}.
//! let opts = Options::default().tolerances(1e-10, 1e-12);
//! let mut hvps = Vec::new();
//! for strategy in ["taped", "backsolve", "backsolve-checkpointed:3", "checkpointed:2", "gauss"] {
//!     let tape = Tape::<Dual64>::new();
//!     let h0 = tape.var(DMatrix::from_element(1, 1, Dual64::from_re(2.0)));
//!     let k = tape.var(DMatrix::from_element(1, 1, Dual64::new(0.5, 1.0))); // v = 1 on k
//!     let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]).map(Dual64::from_re));
//!     let sol = odeint_with(&tape, &Decay, h0, t, &[k], &opts, &strategy.parse()?)?;
//!     let g = tape.backward(sol.last())?;
//!     let dk = g.get(k).unwrap()[(0, 0)];
//!     assert!((dk.re + 2.0 * (-0.5f64).exp()).abs() < 1e-8); // the gradient
//!     assert!((dk.eps - 2.0 * (-0.5f64).exp()).abs() < 1e-8); // H v
//!     hvps.push(dk.eps);
//! }
//! // Exact strategies match the taped HVP to rounding, the adjoints to the tolerance.
//! assert!((hvps[3] - hvps[0]).abs() < 1e-13);
//! assert!((hvps[1] - hvps[0]).abs() < 1e-8 && (hvps[2] - hvps[0]).abs() < 1e-8);
//! assert!((hvps[4] - hvps[0]).abs() < 1e-8);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Exact gradients in O(state + parameters): reversible solves
//!
//! [`Options::reversible`] solves with McCallum & Foster's reversible scheme over the method
//! (the `reversible_heun` method is reversible by itself). [`Strategy::Reversible`] then
//! keeps only the final state pair and the step sizes, and reconstructs every step by
//! inverting it: the gradient is the taped gradient of the same reversible solve, and the
//! backward reports how well the states were reconstructed.
//!
//! ```
//! use ad_core::{nalgebra::DMatrix, Result as TapeResult, Scalar, Tape, Var};
//! use ode::{odeint_with, Dynamics, Options, Strategy};
//!
//! #[derive(Clone)]
//! struct Decay; // h' = −k h
//! impl<T: Scalar> Dynamics<T> for Decay {
//!     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
//!         Ok(-(h.mul(p[0])?))
//!     }
//! }
//!
//! let opts = Options::default().tolerances(1e-8, 1e-10).reversible(0.999);
//! let (mut dk, mut held) = (Vec::new(), Vec::new());
//! for strategy in [Strategy::Taped, Strategy::Reversible { coupling: None }] {
//!     let tape = Tape::<f64>::new();
//!     let h0 = tape.var(DMatrix::from_element(1, 1, 2.0));
//!     let k = tape.var(DMatrix::from_element(1, 1, 0.5));
//!     let t = tape.constant(DMatrix::from_row_slice(1, 3, &[0.0, 0.7, 2.0]));
//!     let sol = odeint_with(&tape, &Decay, h0, t, &[k], &opts, &strategy)?;
//!     held.push(sol.held_bytes()?); // the taped stages, or the pair and the step records
//!     let g = tape.backward(sol.last().sum())?;
//!     dk.push(g.get(k).unwrap()[(0, 0)]);
//!     // Reversible reports how far its reconstruction strayed (taped reconstructs nothing).
//!     if let Some(e) = sol.backward_stats(&g).and_then(|s| s.max_reconstruction_error()) {
//!         assert!(e < 1e-12);
//!     }
//! }
//! assert!(held[1] < held[0]);
//! // The same discrete solve's gradient, to rounding; dh(2)/dk = −2·2·e^{−1}.
//! assert!((dk[1] - dk[0]).abs() < 1e-12 * dk[0].abs());
//! assert!((dk[0] + 4.0 * (-1.0f64).exp()).abs() < 1e-6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Exact means the derivative of the discrete solve: tangent-aware step control
//!
//! The exact strategies differentiate the steps the error control chose. Where the state sits
//! still while its sensitivities move, primal control ([`ErrorControl::Primal`], the default)
//! takes steps far too long for the derivative; [`ErrorControl::WithTangents`] plans the steps
//! with forward-mode tangents beside the state, and the strategy replays them
//! ([`verify::convergence_check`] tells the two cases apart).
//!
//! ```
//! use ad_core::{nalgebra::DMatrix, Result as TapeResult, Scalar, Tape, Var};
//! use ode::{odeint, Dynamics, Options};
//!
//! /// h' = a − h: from h0 = a the state never moves, while dh/da = 1 − e^{−t}.
//! #[derive(Clone)]
//! struct Relax;
//! impl<T: Scalar> Dynamics<T> for Relax {
//!     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
//!         p[0].sub(h)
//!     }
//! }
//!
//! let tape = Tape::<f64>::new();
//! let h0 = tape.var(DMatrix::from_element(1, 1, 1.0));
//! let a = tape.var(DMatrix::from_element(1, 1, 1.0));
//! let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 10.0]));
//! let truth = 1.0 - (-10f64).exp();
//! let opts = Options::default().tolerances(1e-8, 1e-8);
//! for (opts, close) in [(opts.clone(), false), (opts.with_tangents(1), true)] {
//!     let sol = odeint(&tape, &Relax, h0, t, &[a], &opts)?;
//!     let g = tape.backward(sol.last().sum())?.get(a).unwrap()[(0, 0)];
//!     // Primal control: 8 steps and −539.2; with a tangent: within 1e-7 of the truth.
//!     assert_eq!((g - truth).abs() < 1e-7, close, "{g} after {} steps", sol.stats.accepted);
//! }
//! # Ok::<(), ode::Error>(())
//! ```
//!
//! ## Verifying gradients
//!
//! [`verify`] checks a user's dynamics: the adjoint-equation residual along the trajectory
//! (tape VJPs against `Dual64` Jacobians), a tolerance study with fitted slopes, and
//! gradients by finite differences, forward mode and every strategy on one
//! [`verify::GradientProblem`]. With the `proptest` feature, `arbitrary` has strategies for
//! random problems.
#![warn(missing_docs)]

mod adjoint_vjp;
#[cfg(feature = "proptest")]
pub mod arbitrary;
mod controller;
mod dynamics;
mod engine;
mod error;
pub mod event;
mod forward;
mod implicit;
mod input;
mod interpolated;
pub mod jacobian;
pub mod newton;
mod node;
mod options;
pub mod schedule;
mod scheme;
mod solution;
mod solve;
mod stepper;
mod strategies;
mod strategy;
pub mod tableau;
mod tangent_control;
mod trajectory;
pub mod verify;

pub use controller::StepRecord;
pub use dynamics::Dynamics;
pub use engine::SolveStats;
pub use error::{Error, Result};
pub use input::check_grid;
pub use options::{
    method_by_name, AdjointNorm, ErrorControl, Norm, NormFn, Options, TangentDirection,
    MAX_TANGENT_DIRECTIONS,
};
pub use solution::Solution;
pub use solve::{odeint, odeint_adjoint, odeint_with, solve};
pub use strategy::{
    Backsolve, BackwardStats, ContinuousAdjoint, Drift, ParseStrategyError, Strategy,
    StrategyReport,
};
pub use tangent_control::DualOf;
pub use verify::{
    adjoint_residual, tolerance_study, AdjointResidualReport, GradientProblem, ProblemVector,
    ToleranceReport, VerifyError,
};
