//! # costate
//!
//! Reverse-mode automatic differentiation for neural ODEs, in Rust. This umbrella crate
//! re-exports the workspace's crates:
//!
//! - [`ad_core`]: a tensor-level reverse-mode tape over `nalgebra` matrices, generic over the
//!   scalar (`f64`, or `num-dual` numbers for forward-over-reverse derivatives).
//! - [`ode`]: one Runge–Kutta engine; taped `odeint` and `odeint_adjoint` (one opaque node).
//! - [`nn`](../nn/index.html): layers, `OdeFunc`, `NeuralOde`, optimisers, problem files.
//!
//! [`heap`] measures peak heap (a counting global allocator and peak scopes); the examples'
//! tables and SVG charts live with them in `examples/support/`, not in this API. `rand`,
//! `nalgebra` and `num_dual` are re-exported in the versions the API's signatures use (no
//! version traps).
//!
//! ```
//! use costate::ad_core::Tape;
//! // `dmatrix!` expands to `nalgebra::` paths: importing the re-export under that name
//! // serves it, so no direct (possibly different) nalgebra dependency is needed.
//! use costate::nalgebra::{self, dmatrix};
//!
//! let tape = Tape::<f64>::new();
//! let x = tape.var(dmatrix![0.5, -1.0]);
//! let loss = x.tanh().square().sum();
//! let grads = tape.backward(loss)?;
//! let g = grads.get(x).unwrap();
//! // d/dx tanh(x)² = 2 tanh(x) (1 − tanh(x)²)
//! let expect = |x: f64| 2.0 * x.tanh() * (1.0 - x.tanh().powi(2));
//! assert!((g[(0, 0)] - expect(0.5)).abs() < 1e-15);
//! assert!((g[(0, 1)] - expect(-1.0)).abs() < 1e-15);
//! # Ok::<(), costate::ad_core::Error>(())
//! ```
#![warn(missing_docs)]

pub use ad_core;
pub use ad_core::heap;
pub use ad_core::{nalgebra, num_dual};
pub use nn;
pub use ode;
/// The `rand` the API's signatures use (`Mlp::init_params` takes its `RngCore`).
pub use rand;

/// The README's code sample, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctest;
