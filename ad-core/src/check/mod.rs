//! Gradient checks for code written against the tape: [`gradcheck`] for functions, and
//! [`check_custom_op`] for opaque [`crate::CustomOp`] nodes.
//!
//! # What each check proves, and what it costs
//!
//! - [`gradcheck`] compares the reverse-mode gradient of a [`TapeFunction`] (one run on
//!   `Tape<f64>` and one backward pass) with two references:
//!   - **`Dual64` forward mode**: the same function on `Tape<Dual64>`, seeded with `ε = 1` at one
//!     input entry, gives that entry's derivative exactly up to rounding: no step to choose, so
//!     a mismatch far above rounding (the default tolerance is 1e-9 relative) is a wrong VJP,
//!     not noise. It costs one forward run per checked entry: `n` runs for `n` entries.
//!   - **Central finite differences** on `Tape<f64>`: `(f(x + h) − f(x − h)) / (2h)` per entry
//!     with `h = ε_mach^(1/3) · max(1, |x|)` (the step that balances the `O(h²)` truncation
//!     against the `O(ε_mach / h)` rounding; the quotient divides by the rounded points'
//!     difference, the step actually taken). This also covers code that cannot run on dual
//!     numbers ([`gradcheck_fd`] with a [`TapeFunctionF64`]), at two runs per entry and an
//!     accuracy of about 1e-8 relative, so its default tolerance is 1e-5.
//!
//!   Both references differentiate the computation as run, so a reverse pass that is exact
//!   by construction (a taped ODE solve: adaptive step-size control compares real parts, so
//!   `Dual64` takes the same steps) matches `Dual64` to rounding, while one that is approximate
//!   by design (a backsolve adjoint, within its solver tolerances) needs a `dual_tolerance`
//!   loosened to match.
//!
//!   For large inputs, [`Entries::Sample`] checks a seeded random subset of entries and
//!   [`GradcheckSettings::directions`] adds random directions `v`: `⟨∇f, v⟩` against one
//!   `Dual64` run (and two finite-difference runs) per direction, covering every entry at once.
//! - [`check_custom_op`] checks an op's VJP against its own forward: for random seeded pairs
//!   `(u, v)` it compares `⟨u, J v⟩`, with `J v` from one run of the op's forward on `Dual64`
//!   numbers, against `⟨Jᵀ u, v⟩`, with `Jᵀ u` from the op's VJP reached through
//!   [`crate::Tape::vjp_wrt`] on `Tape<f64>` (so the tape's plumbing of its cotangents is
//!   exercised too), one block per (output, input) pair; and the same VJP against central
//!   differences of the `f64` forward along `v`. Per pair it costs one `Dual64` forward and two
//!   `f64` forwards per input, and one VJP per output.
//!
//! # Errors and reports
//!
//! Every check returns a report (printable as an aligned text table with `Display`,
//! serialisable with `serde`, e.g. to JSON; non-finite numbers serialise as the strings
//! `"NaN"`, `"inf"`, `"-inf"`) whose `passed()` says whether every comparison is within its
//! [`Tolerance`]. A NaN or infinite gradient is a failed comparison reported with its location,
//! never a panic. What makes a check impossible (no inputs, a NaN input, a non-scalar output, the
//! function failing) is a [`CheckError`] naming the cause and the fix.
//!
//! # How errors are measured
//!
//! An entry's relative error is `|r − e| / max(|r|, |e|, floor · scale)`, `r` the value under
//! test and `e` the reference, with `floor` from its [`Tolerance`]; `scale` is the largest
//! magnitude among the input's reverse gradient and references for entries, and the sum of the
//! magnitudes of the products for inner products (what their rounding grows with), so entries
//! that are zero up to rounding do not read as large relative errors. It passes when this is at
//! most `tolerance.rel`.

mod compare;
mod custom_op;
mod gradcheck;

use std::fmt;

use serde::Serialize;

use crate::ops::BoxError;
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};

pub use compare::{Comparison, Entry, Mismatch};
pub use custom_op::{
    check_custom_op, BlockReport, CustomOpReport, CustomOpSettings, NonFiniteCotangent, MAX_PAIRS,
};
pub use gradcheck::{
    gradcheck, gradcheck_fd, DirectionReport, Entries, Evaluations, GradcheckReport,
    GradcheckSettings, InputReport, OutputReduction,
};

/// A function recorded on a tape, generic over the scalar, so that [`gradcheck`] can run the
/// same code on `Tape<f64>` (reverse mode, finite differences) and on `Tape<Dual64>` (forward
/// mode).
///
/// `inputs` are the points of the check, recorded as gradient-requiring leaves, one per input
/// matrix, in order. Data the function needs besides (batches, targets, settings) lives in
/// `self`; lift it with `T::constant`. The output is 1×1, or any shape with
/// [`OutputReduction::RandomCotangent`].
///
/// ```
/// use ad_core::{Scalar, Tape, TapeFunction, Var};
///
/// /// f(x) = Σ sin(x)².
/// struct SumSinSquared;
///
/// impl TapeFunction for SumSinSquared {
///     type Error = ad_core::Error;
///     fn eval<'t, T: Scalar>(
///         &self,
///         _tape: &'t Tape<T>,
///         inputs: &[Var<'t, T>],
///     ) -> Result<Var<'t, T>, Self::Error> {
///         Ok(inputs[0].sin().square().sum())
///     }
/// }
/// ```
pub trait TapeFunction {
    /// What the function fails with (e.g. [`crate::Error`], or an ODE crate's error that wraps
    /// it).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Record the function on `tape` at `inputs` and return its output.
    fn eval<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        inputs: &[Var<'t, T>],
    ) -> Result<Var<'t, T>, Self::Error>;
}

/// A function recorded on `Tape<f64>` only, for code that cannot run on dual numbers: checked
/// against finite differences by [`gradcheck_fd`]. Every [`TapeFunction`] is one.
pub trait TapeFunctionF64 {
    /// What the function fails with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Record the function on `tape` at `inputs` and return its output (see
    /// [`TapeFunction::eval`]).
    fn eval_f64<'t>(
        &self,
        tape: &'t Tape<f64>,
        inputs: &[Var<'t, f64>],
    ) -> Result<Var<'t, f64>, Self::Error>;
}

impl<F: TapeFunction> TapeFunctionF64 for F {
    type Error = F::Error;

    fn eval_f64<'t>(
        &self,
        tape: &'t Tape<f64>,
        inputs: &[Var<'t, f64>],
    ) -> Result<Var<'t, f64>, Self::Error> {
        self.eval(tape, inputs)
    }
}

/// When a comparison passes: relative error (see the [module docs](self)) at most `rel`, with
/// denominators at least `floor · scale`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    /// Largest relative error that passes.
    pub rel: f64,
    /// Smallest denominator of the relative error, as a fraction of the comparison's scale.
    pub floor: f64,
}

impl Tolerance {
    /// For `Dual64` references, exact up to rounding: `rel = 1e-9`, `floor = 1e-6`. Rounding
    /// differences are near 1e-14; a VJP wrong by 1e-6 relative fails.
    pub const DUAL: Tolerance = Tolerance {
        rel: 1e-9,
        floor: 1e-6,
    };

    /// For central finite differences (accurate to about 1e-8 relative with the default step):
    /// `rel = 1e-5`, `floor = 1e-3`.
    pub const FINITE_DIFFERENCES: Tolerance = Tolerance {
        rel: 1e-5,
        floor: 1e-3,
    };

    /// Error unless both numbers are finite and non-negative.
    fn validate(&self, name: &str) -> Result<(), CheckError> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if ok(self.rel) && ok(self.floor) {
            Ok(())
        } else {
            Err(CheckError::InvalidSettings {
                message: format!(
                    "{name} is {self:?}; its `rel` and `floor` must be finite and non-negative (e.g. Tolerance::DUAL)"
                ),
            })
        }
    }
}

/// Which evaluation of a check failed, for [`CheckError`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Run {
    /// The run on `Tape<f64>` whose reverse pass is under test (for a custom op: its forward
    /// on the tape and the VJPs through it).
    Reverse,
    /// A `Dual64` run seeded at one entry of one input.
    DualEntry {
        /// The input.
        input: usize,
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
    },
    /// A finite-difference run with one entry of one input shifted by `step`.
    ShiftedEntry {
        /// The input.
        input: usize,
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The signed shift.
        step: f64,
    },
    /// A `Dual64` run along random direction `index` (for a custom op: pair `index`, nonzero
    /// on `input` only).
    DualDirection {
        /// The direction (or pair).
        index: usize,
        /// The one input the direction is nonzero on, if it is not all of them.
        input: Option<usize>,
    },
    /// A finite-difference run shifted by `step` times random direction `index`.
    ShiftedDirection {
        /// The direction (or pair).
        index: usize,
        /// The one input the direction is nonzero on, if it is not all of them.
        input: Option<usize>,
        /// The signed step along the direction.
        step: f64,
    },
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |input: &Option<usize>| match input {
            Some(i) => format!(" on input {i}"),
            None => String::new(),
        };
        match self {
            Run::Reverse => f.write_str("the reverse-mode run on Tape<f64>"),
            Run::DualEntry { input, row, col } => {
                write!(f, "the Dual64 run seeded at input {input} entry ({row}, {col})")
            }
            Run::ShiftedEntry {
                input,
                row,
                col,
                step,
            } => write!(
                f,
                "the finite-difference run with input {input} entry ({row}, {col}) shifted by {step:e}"
            ),
            Run::DualDirection { index, input } => {
                write!(f, "the Dual64 run along direction {index}{}", on(input))
            }
            Run::ShiftedDirection { index, input, step } => write!(
                f,
                "the finite-difference run shifted by {step:e} along direction {index}{}",
                on(input)
            ),
        }
    }
}

/// Why a check could not be carried out. Mismatching gradients are not errors: they are
/// failed comparisons in the report.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The input list is empty.
    #[error("no inputs were given; pass at least one input matrix (the point at which derivatives are checked)")]
    NoInputs,
    /// The inputs (or the entries the settings select) hold nothing to compare.
    #[error("there is nothing to check: {reason}; give at least one input with entries (not 0 x n), or enable a comparison")]
    NothingToCheck {
        /// Why nothing would be compared.
        reason: &'static str,
    },
    /// An input has a NaN or infinite entry.
    #[error("input {input} has a non-finite entry ({value}) at ({row}, {col}) (row, column); derivatives are checked at finite points: replace it")]
    NonFiniteInput {
        /// The input.
        input: usize,
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The entry.
        value: f64,
    },
    /// The function's output is not 1×1 and the settings ask for a scalar.
    #[error("the function returned a {shape:?} output (rows x columns) in {run}, and gradcheck needs a 1x1 one: reduce it (sum(), mean()), or set `output: OutputReduction::RandomCotangent` to check a seeded random projection of it")]
    NonScalarOutput {
        /// The output's shape.
        shape: (usize, usize),
        /// The run that returned it.
        run: Run,
    },
    /// An output's shape (or a custom op's number of outputs) differs from the first run's.
    #[error("output {output} is {found:?} (rows x columns) in {run} but was {expected:?} in the first run; a checked function must return the same shapes at nearby points")]
    OutputShapeChanged {
        /// Which output.
        output: usize,
        /// Its shape in the first run (`(0, 0)` if it did not exist there).
        expected: (usize, usize),
        /// Its shape in this run (`(0, 0)` if it is missing).
        found: (usize, usize),
        /// The run that returned it.
        run: Run,
    },
    /// The function under test (or the custom op's forward, called directly) failed.
    #[error("the checked function failed in {run}: {source}")]
    Function {
        /// The run that failed.
        run: Run,
        /// The function's own error.
        source: BoxError,
    },
    /// A tape operation of the check itself failed (reading the output, the backward pass,
    /// recording a custom op).
    #[error("the tape failed in {run}: {source}")]
    Tape {
        /// The run that failed.
        run: Run,
        /// The tape's error.
        source: crate::Error,
    },
    /// The settings are unusable.
    #[error("invalid check settings: {message}")]
    InvalidSettings {
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Error unless there is at least one input and every entry is finite.
fn validate_inputs(inputs: &[nalgebra::DMatrix<f64>]) -> Result<(), CheckError> {
    if inputs.is_empty() {
        return Err(CheckError::NoInputs);
    }
    for (input, x) in inputs.iter().enumerate() {
        if let Some(at) = x.iter().position(|v| !v.is_finite()) {
            let rows = x.nrows();
            return Err(CheckError::NonFiniteInput {
                input,
                row: at % rows,
                col: at / rows,
                value: x[at],
            });
        }
    }
    if inputs.iter().all(|x| x.is_empty()) {
        return Err(CheckError::NothingToCheck {
            reason: "every input is empty",
        });
    }
    Ok(())
}

/// The central-difference step for a point of magnitude `scale`: `ε^(1/3) · max(1, scale)`.
fn central_step(scale: f64) -> f64 {
    f64::EPSILON.cbrt() * scale.max(1.0)
}

/// A matrix of entries uniform in `[-1, 1)`: directions, cotangents and pairs.
fn random_matrix(
    rng: &mut rand::rngs::StdRng,
    (rows, cols): (usize, usize),
) -> nalgebra::DMatrix<f64> {
    use rand::Rng;
    nalgebra::DMatrix::from_fn(rows, cols, |_, _| rng.random_range(-1.0..1.0))
}
