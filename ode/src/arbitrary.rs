//! `proptest` strategies for random ODE problems (feature `proptest`): small tanh-MLP
//! dynamics ([`MlpField`]) with random weights, bounded states, increasing time grids,
//! output cotangents, and whole [`GradientProblem`]s, so a property over "any small
//! problem" takes a few lines.
//!
//! proptest's `Strategy` trait and this crate's [`crate::Strategy`] share a name: import
//! the trait anonymously (`use proptest::strategy::Strategy as _`) when you need its
//! methods, as below.
//!
//! "The backsolve adjoint's gradient matches the taped gradient within C · rtol":
//!
//! ```
//! use ode::arbitrary::{mlp_problems, MlpProblemShape};
//! use ode::{Options, Strategy};
//! use proptest::prelude::{prop_assert, ProptestConfig};
//! use proptest::test_runner::{RngSeed, TestRunner};
//!
//! // A fixed seed: the same 8 problems on every run (drop it to explore new ones).
//! let config = ProptestConfig {
//!     cases: 8,
//!     rng_seed: RngSeed::Fixed(7),
//!     failure_persistence: None,
//!     ..ProptestConfig::default()
//! };
//! let mut runner = TestRunner::new(config);
//! let rtol = 1e-8;
//! let opts = Options::default().tolerances(rtol, rtol * 1e-2);
//! runner
//!     .run(&mlp_problems(MlpProblemShape::default()), |problem| {
//!         let taped = problem.gradient(&opts, &Strategy::Taped).unwrap();
//!         let adjoint = problem.gradient(&opts, &Strategy::backsolve()).unwrap();
//!         let err = adjoint.relative_error(&taped);
//!         // Both gradients are off the true one by the global error, which grows to a few
//!         // hundred times rtol on these problems: C = 1000.
//!         prop_assert!(err <= 1e3 * rtol, "relative error {err:e}");
//!         Ok(())
//!     })
//!     .unwrap();
//! ```

use std::ops::{Range, RangeInclusive};

use ad_core::nalgebra::DMatrix;
use ad_core::{Result as TapeResult, Scalar, Var};
use proptest::prelude::{any, prop, Just};
use proptest::strategy::{BoxedStrategy, Strategy as PropStrategy};

use crate::dynamics::Dynamics;
use crate::verify::GradientProblem;

/// `f(t, h) = tanh([h, t] W1ᵀ + b1) W2ᵀ + b2`, minus `h` if `decay`, with the parameters
/// `[W1 (hidden × (dim + time input)), b1 (1 × hidden), W2 (dim × hidden), b2 (1 × dim)]`.
/// Implements [`Dynamics`] for every scalar (f64, `Dual64`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpField {
    /// Append `t` to the input (non-autonomous dynamics).
    pub time_input: bool,
    /// Subtract `h`: contracting dynamics, bounded over long horizons.
    pub decay: bool,
}

impl MlpField {
    /// The shapes of `[W1, b1, W2, b2]` for a `dim`-dimensional state and `hidden` units.
    pub fn param_shapes(&self, dim: usize, hidden: usize) -> [(usize, usize); 4] {
        [
            (hidden, dim + usize::from(self.time_input)),
            (1, hidden),
            (dim, hidden),
            (1, dim),
        ]
    }
}

impl<T: Scalar> Dynamics<T> for MlpField {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let x = if self.time_input {
            let rows = h.shape()?.0;
            h.tape().concat_cols(&[h, t.broadcast(rows, 1)?])?
        } else {
            h
        };
        let out = x
            .matmul_t(p[0])?
            .add_row(p[1])?
            .tanh()
            .matmul_t(p[2])?
            .add_row(p[3])?;
        if self.decay {
            out.sub(h)
        } else {
            Ok(out)
        }
    }
}

/// `rows × cols` matrices with entries uniform in `[−bound, bound)`: states, weights,
/// cotangents.
pub fn matrices(rows: usize, cols: usize, bound: f64) -> BoxedStrategy<DMatrix<f64>> {
    prop::collection::vec(-bound..bound, rows * cols)
        .prop_map(move |v| DMatrix::from_vec(rows, cols, v))
        .boxed()
}

/// Strictly increasing grids with a point count in `points` (at least 2 is sensible), a
/// first time in `start` and gaps in `gap` (which must be positive).
pub fn increasing_grids(
    points: RangeInclusive<usize>,
    start: Range<f64>,
    gap: Range<f64>,
) -> BoxedStrategy<Vec<f64>> {
    (start, points)
        .prop_flat_map(move |(t0, n)| {
            prop::collection::vec(gap.clone(), n.saturating_sub(1)).prop_map(move |gaps| {
                let mut t = vec![t0];
                for g in gaps {
                    let last = t[t.len() - 1];
                    t.push(last + g);
                }
                t
            })
        })
        .boxed()
}

/// One cotangent per output time for states of `shape`: the last output always has one,
/// each earlier output has one with probability 1/2 (entries uniform in `[−1, 1)`).
pub fn cotangents(
    shape: (usize, usize),
    points: usize,
) -> BoxedStrategy<Vec<Option<DMatrix<f64>>>> {
    let (r, c) = shape;
    let earlier = prop::collection::vec(
        prop::option::of(matrices(r, c, 1.0)),
        points.saturating_sub(1),
    );
    (earlier, matrices(r, c, 1.0))
        .prop_map(|(mut all, last)| {
            all.push(Some(last));
            all
        })
        .boxed()
}

/// Parameters `[W1, b1, W2, b2]` of `field` with entries uniform in `[−bound, bound)`.
pub fn mlp_params(
    field: MlpField,
    dim: usize,
    hidden: usize,
    bound: f64,
) -> BoxedStrategy<Vec<DMatrix<f64>>> {
    let [a, b, c, d] = field.param_shapes(dim, hidden);
    (
        matrices(a.0, a.1, bound),
        matrices(b.0, b.1, bound),
        matrices(c.0, c.1, bound),
        matrices(d.0, d.1, bound),
    )
        .prop_map(|(w1, b1, w2, b2)| vec![w1, b1, w2, b2])
        .boxed()
}

/// The sizes and ranges [`mlp_problems`] draws from.
#[derive(Clone, Debug)]
pub struct MlpProblemShape {
    /// Batch sizes (rows of h0).
    pub batch: RangeInclusive<usize>,
    /// State dimensions.
    pub dim: RangeInclusive<usize>,
    /// Hidden units.
    pub hidden: RangeInclusive<usize>,
    /// Grid points (≥ 2).
    pub points: RangeInclusive<usize>,
    /// Gaps between grid times.
    pub gap: Range<f64>,
    /// Bound of the initial state's entries.
    pub state_bound: f64,
    /// Bound of the weights' entries.
    pub weight_bound: f64,
}

impl Default for MlpProblemShape {
    /// Batch 1–3, dim 1–3, hidden 2–6, 2–4 grid points with gaps in [0.2, 0.6), states in
    /// [−1, 1), weights in [−0.9, 0.9): problems that solve in a few dozen steps.
    fn default() -> Self {
        Self {
            batch: 1..=3,
            dim: 1..=3,
            hidden: 2..=6,
            points: 2..=4,
            gap: 0.2..0.6,
            state_bound: 1.0,
            weight_bound: 0.9,
        }
    }
}

/// Whole random problems: an [`MlpField`] (with or without a time input, contracting or
/// not), its weights, h0, an increasing grid starting in [−0.5, 0.5) and output cotangents.
pub fn mlp_problems(shape: MlpProblemShape) -> BoxedStrategy<GradientProblem<MlpField>> {
    let MlpProblemShape {
        batch,
        dim,
        hidden,
        points,
        gap,
        state_bound,
        weight_bound,
    } = shape;
    (batch, dim, hidden, points, any::<bool>(), any::<bool>())
        .prop_flat_map(move |(batch, dim, hidden, n, time_input, decay)| {
            let field = MlpField { time_input, decay };
            (
                Just(field),
                matrices(batch, dim, state_bound),
                increasing_grids(n..=n, -0.5..0.5, gap.clone()),
                mlp_params(field, dim, hidden, weight_bound),
                cotangents((batch, dim), n),
            )
        })
        .prop_map(|(field, h0, grid, params, cotangents)| {
            GradientProblem::new(field, h0, grid, params).with_cotangents(cotangents)
        })
        .boxed()
}
