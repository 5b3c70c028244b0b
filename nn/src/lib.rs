//! # nn: neural-ODE building blocks on the costate tape
//!
//! Layers ([`Linear`], [`Mlp`], [`Activation`]) hold the architecture; weights live in a
//! [`ParamSet`] that goes onto any tape. [`OdeFunc`] is an MLP vector field and
//! [`NeuralOde`] integrates it with any gradient [`Strategy`] (taped, backsolve,
//! checkpointed, ...). [`Adam`] and [`Sgd`] update
//! parameters; [`Problem`] reads the `costate-problem/1` files of the reference scripts and
//! runs them ([`Problem::gradients`]: loss, gradients and solve statistics for a strategy;
//! [`Problem::record_with`] on a tape of any scalar); [`ReversibleProblem`] reads the
//! `costate-reversible-problem/1` benchmark of reversible solvers (McCallum & Foster's
//! white-dwarf neural ODE, with JAX's gradients); [`weights`] saves and loads
//! parameters; [`json`] holds the helpers both file formats share.
//!
//! Everything runs in `f32` as well: `params.cast::<f32>()?` gives a `ParamSet<f32>`,
//! [`train_step`] and [`train_step_ode`] take a `Tape<f32>`, and
//! [`Problem::gradients_in::<f32>`](Problem::gradients_in) runs a problem file in `f32`.
//!
//! ```
//! use ad_core::{nalgebra::DMatrix, Tape};
//! use nn::{train_step, Activation, Adam, NeuralOde, OdeFunc, Strategy};
//! use nn::rand::SeedableRng;
//!
//! // Learn h' = f(h) so that h(1) from h0 hits a target.
//! let func = OdeFunc::new(2, &[16], Activation::Tanh)?;
//! let mut params = func.mlp.init_params(&mut nn::rand::rngs::StdRng::seed_from_u64(0));
//! let model = NeuralOde::new(func, Strategy::backsolve());
//! let h0 = DMatrix::from_row_slice(2, 2, &[1.0, 0.0, 0.0, 1.0]);
//! let target = DMatrix::from_row_slice(2, 2, &[0.5, 0.5, -0.5, 0.5]);
//! let mut opt = Adam::new(0.05);
//! let tape = Tape::new();
//! let mut losses = Vec::new();
//! for _ in 0..30 {
//!     losses.push(train_step(&tape, &mut params, &mut opt, |tape, p| {
//!         let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
//!         let sol = model.forward(tape, tape.constant(h0.clone()), t, p)?;
//!         Ok(sol.last().mse(tape.constant(target.clone()))?)
//!     })?);
//! }
//! assert!(losses[29] < 0.5 * losses[0]);
//! # Ok::<(), nn::Error>(())
//! ```
#![warn(missing_docs)]

mod error;
pub mod json;
mod layers;
mod odefunc;
mod optim;
mod params;
mod pipeline;
pub mod problem;
pub mod reversible_problem;
pub mod weights;

/// The `nalgebra` of every matrix in the API (from `ad-core`, no version trap).
pub use ad_core::nalgebra;
/// The `num-dual` whose numbers run on a [`ad_core::Tape`] (forward mode, HVPs).
pub use ad_core::num_dual;
pub use error::{Error, ModelPart, Result};
pub use layers::{Activation, Linear, Mlp};
/// The gradient strategies of [`NeuralOde`], from the `ode` crate.
pub use ode::{Backsolve, BackwardStats, ContinuousAdjoint, Strategy, StrategyReport};
pub use odefunc::{Input, NeuralOde, OdeFunc};
pub use optim::{train_step, train_step_ode, Adam, Optimizer, Sgd, StepStats};
pub use params::ParamSet;
pub use pipeline::{Footprint, Forward, Leaf, ProblemGradients, Recorded};
pub use problem::{GradientTensors, Loss, Problem, ProblemFile};
/// The `rand` whose `RngCore` [`Mlp::init_params`] takes (no version trap).
pub use rand;
/// The `rand_distr` behind [`Mlp::normal`].
pub use rand_distr;
pub use reversible_problem::{ReversibleProblem, TimeFirstMlp};
