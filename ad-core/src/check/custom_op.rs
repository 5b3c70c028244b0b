//! [`check_custom_op`]: a custom op's VJP against `Dual64` JVPs of its own forward, and against
//! central differences of its `f64` forward, block by block (output × input).

use std::fmt;

use nalgebra::DMatrix;
use num_dual::Dual64;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use super::compare::{largest_magnitude, ComparisonTables, Table};
use super::{
    central_step, random_matrix, validate_inputs, CheckError, Comparison, Entry, Evaluations, Run,
    Tolerance,
};
use crate::ops::CustomOp;
use crate::tape::{Tape, Var};

/// The most pairs [`check_custom_op`] compares: random pairs beyond a few dozen add no
/// evidence, and a count near `usize::MAX` would preallocate past memory.
pub const MAX_PAIRS: usize = 100_000;

/// What [`check_custom_op`] compares, and when it passes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CustomOpSettings {
    /// How many random pairs `(u, v)` (entries uniform in `[-1, 1)`) to compare.
    pub pairs: usize,
    /// Also compare the VJP with central differences of the `f64` forward along `v`.
    pub finite_differences: bool,
    /// When a `Dual64` comparison passes.
    pub dual_tolerance: Tolerance,
    /// When a finite-difference comparison passes.
    pub fd_tolerance: Tolerance,
    /// How many of the worst pairs each comparison keeps.
    pub worst: usize,
    /// Seed of the pairs.
    pub seed: u64,
}

impl Default for CustomOpSettings {
    /// 3 pairs, finite differences on, [`Tolerance::DUAL`] and
    /// [`Tolerance::FINITE_DIFFERENCES`], the 3 worst pairs kept, seed 0.
    fn default() -> Self {
        CustomOpSettings {
            pairs: 3,
            finite_differences: true,
            dual_tolerance: Tolerance::DUAL,
            fd_tolerance: Tolerance::FINITE_DIFFERENCES,
            worst: 3,
            seed: 0,
        }
    }
}

/// The comparisons of one block of the op's Jacobian, `∂ output / ∂ input`: per pair,
/// `⟨(Jᵀu)_input, v_input⟩` (reverse) against `⟨u_output, J v_input⟩` (reference); a
/// [`super::Mismatch`]'s `at` is the pair's index.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockReport {
    /// The output.
    pub output: usize,
    /// The input.
    pub input: usize,
    /// Against `J v` from the op's forward on `Dual64` numbers.
    pub dual: Comparison<usize>,
    /// Against central differences of the `f64` forward, if compared.
    pub finite_differences: Option<Comparison<usize>>,
}

/// A NaN or infinite entry of a cotangent the op's VJP returned.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct NonFiniteCotangent {
    /// The pair whose `u` was pulled back.
    pub pair: usize,
    /// The output `u` was the cotangent of.
    pub output: usize,
    /// The input whose cotangent has the entry.
    pub input: usize,
    /// The first non-finite entry (column-major order).
    pub entry: Entry,
}

/// What [`check_custom_op`] found: one [`BlockReport`] per (output, input).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CustomOpReport {
    /// The op's name.
    pub op: String,
    /// The shapes of its inputs.
    pub input_shapes: Vec<(usize, usize)>,
    /// The shapes of its outputs.
    pub output_shapes: Vec<(usize, usize)>,
    /// Every block, output-major.
    pub blocks: Vec<BlockReport>,
    /// Where the VJP returned NaN or infinite cotangents (at most one entry per pair, output
    /// and input).
    pub non_finite_cotangents: Vec<NonFiniteCotangent>,
    /// How many times the op ran: `reverse` counts VJPs through the tape.
    pub evaluations: Evaluations,
    /// The settings of the check.
    pub settings: CustomOpSettings,
}

impl CustomOpReport {
    /// Whether every block passed (and so every cotangent was finite).
    pub fn passed(&self) -> bool {
        self.non_finite_cotangents.is_empty()
            && self
                .blocks
                .iter()
                .all(|b| b.dual.passed && b.finite_differences.as_ref().is_none_or(|c| c.passed))
    }
}

impl fmt::Display for CustomOpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shapes = |s: &[(usize, usize)]| {
            s.iter()
                .map(|(r, c)| format!("{r}x{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let e = &self.evaluations;
        writeln!(
            f,
            "check_custom_op `{}` {}: inputs [{}], outputs [{}], {} pairs; runs: {} VJP, {} Dual64, {} finite-difference",
            self.op,
            if self.passed() { "passed" } else { "FAILED" },
            shapes(&self.input_shapes),
            shapes(&self.output_shapes),
            self.settings.pairs,
            e.reverse,
            e.dual,
            e.finite_difference,
        )?;
        let mut tables = ComparisonTables::new(&["output", "input"], "pair");
        for b in &self.blocks {
            let labels = [b.output.to_string(), b.input.to_string()];
            tables.add(&labels, "Dual64 JVP", &b.dual);
            if let Some(c) = &b.finite_differences {
                tables.add(&labels, "central FD", c);
            }
        }
        write!(f, "{tables}")?;
        if !self.non_finite_cotangents.is_empty() {
            writeln!(f, "non-finite VJP cotangents:")?;
            let mut table = Table::new(&["pair", "output", "input", "first entry"]);
            for n in &self.non_finite_cotangents {
                table.row(vec![
                    n.pair.to_string(),
                    n.output.to_string(),
                    n.input.to_string(),
                    n.entry.to_string(),
                ]);
            }
            write!(f, "{table}")?;
        }
        Ok(())
    }
}

/// Check a custom op's VJP at `inputs` (see the [module docs](super)): for each random pair
/// `(u, v)` and each block (output `k`, input `i`), `⟨(J_kᵀ u_k)_i, v_i⟩` from the op's VJP,
/// reached through [`Tape::vjp_wrt`] on `Tape<f64>` with only output `k` seeded, against
/// `⟨u_k, J_ki v_i⟩` from the op's forward on `Dual64` numbers `x + v_i ε`, and against central
/// differences of its `f64` forward along `v_i` (step `ε^(1/3) · max(1, max|x_i|)`).
///
/// `make_op` builds a fresh op: one goes on the tape, one runs the `Dual64` forwards and one
/// the `f64` forwards for the differences. Every input is a gradient-requiring leaf. Per pair it
/// costs one VJP per output, and one `Dual64` and two `f64` forwards per input.
///
/// The `x ↦ x³` op of [`CustomOp`]'s docs, written once for every scalar:
///
/// ```
/// use ad_core::nalgebra::{self, dmatrix, DMatrix};
/// use ad_core::{check_custom_op, BoxError, CustomOp, CustomOpSettings, Scalar};
///
/// struct Cube;
///
/// impl<T: Scalar> CustomOp<T> for Cube {
///     fn name(&self) -> &str { "cube" }
///     fn forward(&mut self, inputs: &[&DMatrix<T>]) -> Result<Vec<DMatrix<T>>, BoxError> {
///         Ok(vec![inputs[0].map(|x| x * x * x)])
///     }
///     fn vjp(
///         &self,
///         inputs: &[&DMatrix<T>],
///         _outputs: &[&DMatrix<T>],
///         cotangents: Vec<Option<DMatrix<T>>>,
///         _wants: &[bool],
///     ) -> Result<Vec<Option<DMatrix<T>>>, BoxError> {
///         let Some(g) = &cotangents[0] else { return Ok(vec![None]) };
///         Ok(vec![Some(g.zip_map(inputs[0], |g, x| x * x * g * T::constant(3.0)))])
///     }
///     fn held_bytes(&self) -> usize { 0 }
/// }
///
/// let report = check_custom_op(|| Cube, &[dmatrix![0.5, -2.0; 1.5, 3.0]], &CustomOpSettings::default())?;
/// println!("{report}");
/// assert!(report.passed());
/// assert!(report.blocks[0].dual.max_rel_error < 1e-12);
/// # Ok::<(), ad_core::CheckError>(())
/// ```
pub fn check_custom_op<O, M>(
    mut make_op: M,
    inputs: &[DMatrix<f64>],
    settings: &CustomOpSettings,
) -> Result<CustomOpReport, CheckError>
where
    O: CustomOp<f64> + CustomOp<Dual64> + 'static,
    M: FnMut() -> O,
{
    settings.dual_tolerance.validate("dual_tolerance")?;
    settings.fd_tolerance.validate("fd_tolerance")?;
    if settings.pairs == 0 {
        return Err(CheckError::InvalidSettings {
            message: "`pairs` is 0, so nothing would be compared; ask for at least one pair".into(),
        });
    }
    if settings.pairs > MAX_PAIRS {
        return Err(CheckError::InvalidSettings {
            message: format!(
                "`pairs` is {}, more than the {MAX_PAIRS} a check can use (each pair is a taped run, a dual run and finite differences); ask for fewer",
                settings.pairs
            ),
        });
    }
    validate_inputs(inputs)?;
    let run = Run::Reverse;
    let tape_error = |source| CheckError::Tape { run, source };

    let taped = make_op();
    let name = CustomOp::<f64>::name(&taped).to_owned();
    let tape = Tape::<f64>::new();
    let vars: Vec<Var<'_, f64>> = inputs.iter().map(|x| tape.var(x.clone())).collect();
    let outputs = tape.custom(taped, &vars).map_err(tape_error)?;
    let output_shapes = outputs
        .iter()
        .map(|o| o.shape())
        .collect::<crate::Result<Vec<_>>>()
        .map_err(tape_error)?;
    let mut dual_op = make_op();
    let mut fd_op = settings.finite_differences.then(&mut make_op);

    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut evaluations = Evaluations::default();
    let mut non_finite_cotangents = Vec::new();
    // Per block (output-major): (pair, reverse, reference, scale) items of each reference.
    let blocks = output_shapes.len() * inputs.len();
    let mut dual_items = vec![Vec::with_capacity(settings.pairs); blocks];
    let mut fd_items = vec![Vec::with_capacity(settings.pairs); blocks];
    for pair in 0..settings.pairs {
        let u: Vec<DMatrix<f64>> = output_shapes
            .iter()
            .map(|&s| random_matrix(&mut rng, s))
            .collect();
        let v: Vec<DMatrix<f64>> = inputs
            .iter()
            .map(|x| random_matrix(&mut rng, x.shape()))
            .collect();
        // Reverse: one VJP per output k gives (J_kᵀ u_k)_i for every input i.
        let mut pulled = Vec::with_capacity(outputs.len());
        for (k, (out, u_k)) in outputs.iter().zip(&u).enumerate() {
            let cotangents = tape
                .vjp_wrt(&[(*out, u_k.clone())], &vars)
                .map_err(tape_error)?;
            evaluations.reverse += 1;
            for (i, g) in cotangents.iter().enumerate() {
                if let Some(at) = g.iter().position(|x| !x.is_finite()) {
                    non_finite_cotangents.push(NonFiniteCotangent {
                        pair,
                        output: k,
                        input: i,
                        entry: Entry {
                            row: at % g.nrows(),
                            col: at / g.nrows(),
                        },
                    });
                }
            }
            pulled.push(cotangents);
        }
        for (i, v_i) in v.iter().enumerate() {
            let dual_run = Run::DualDirection {
                index: pair,
                input: Some(i),
            };
            let tangent: Vec<DMatrix<Dual64>> = inputs
                .iter()
                .enumerate()
                .map(|(j, x)| {
                    if j == i {
                        x.zip_map(v_i, Dual64::new)
                    } else {
                        x.map(Dual64::from)
                    }
                })
                .collect();
            let jv: Vec<DMatrix<f64>> = forward(&mut dual_op, &tangent, &output_shapes, dual_run)?
                .iter()
                .map(|y| y.map(|d| d.eps))
                .collect();
            evaluations.dual += 1;
            let differences = match &mut fd_op {
                Some(op) => {
                    let h = central_step(largest_magnitude(inputs[i].iter().copied()));
                    let mut at = |step: f64| {
                        let mut shifted = inputs.to_vec();
                        shifted[i] += v_i * step;
                        evaluations.finite_difference += 1;
                        let run = Run::ShiftedDirection {
                            index: pair,
                            input: Some(i),
                            step,
                        };
                        forward(op, &shifted, &output_shapes, run)
                    };
                    let (up, down) = (at(h)?, at(-h)?);
                    let quotients = up
                        .iter()
                        .zip(&down)
                        .map(|(a, b)| (a - b) / (2.0 * h))
                        .collect::<Vec<_>>();
                    Some(quotients)
                }
                None => None,
            };
            for (k, u_k) in u.iter().enumerate() {
                let block = k * inputs.len() + i;
                let g = &pulled[k][i];
                let reverse = g.dot(v_i);
                let reverse_scale = g.zip_map(v_i, |a, b| (a * b).abs()).sum();
                let dual_scale = u_k.zip_map(&jv[k], |a, b| (a * b).abs()).sum();
                dual_items[block].push((
                    pair,
                    reverse,
                    u_k.dot(&jv[k]),
                    reverse_scale.max(dual_scale),
                ));
                if let Some(d) = &differences {
                    let fd_scale = u_k.zip_map(&d[k], |a, b| (a * b).abs()).sum();
                    fd_items[block].push((
                        pair,
                        reverse,
                        u_k.dot(&d[k]),
                        reverse_scale.max(fd_scale),
                    ));
                }
            }
        }
    }
    let blocks = dual_items
        .into_iter()
        .zip(fd_items)
        .enumerate()
        .map(|(block, (dual, fd))| BlockReport {
            output: block / inputs.len(),
            input: block % inputs.len(),
            dual: Comparison::new(dual, settings.dual_tolerance, settings.worst),
            finite_differences: settings
                .finite_differences
                .then(|| Comparison::new(fd, settings.fd_tolerance, settings.worst)),
        })
        .collect();
    Ok(CustomOpReport {
        op: name,
        input_shapes: inputs.iter().map(DMatrix::shape).collect(),
        output_shapes,
        blocks,
        non_finite_cotangents,
        evaluations,
        settings: settings.clone(),
    })
}

/// Run the op's forward directly (off the tape) on `values`, as `run`, and check that it returns
/// outputs of the shapes the taped forward did.
fn forward<T, O>(
    op: &mut O,
    values: &[DMatrix<T>],
    shapes: &[(usize, usize)],
    run: Run,
) -> Result<Vec<DMatrix<T>>, CheckError>
where
    T: crate::Scalar,
    O: CustomOp<T>,
{
    let refs: Vec<&DMatrix<T>> = values.iter().collect();
    let outputs = op
        .forward(&refs)
        .map_err(|source| CheckError::Function { run, source })?;
    let found: Vec<(usize, usize)> = outputs.iter().map(DMatrix::shape).collect();
    // A missing output reads as (0, 0) in the error.
    if let Some(k) = (0..shapes.len().max(found.len())).find(|&k| shapes.get(k) != found.get(k)) {
        return Err(CheckError::OutputShapeChanged {
            output: k,
            expected: shapes.get(k).copied().unwrap_or((0, 0)),
            found: found.get(k).copied().unwrap_or((0, 0)),
            run,
        });
    }
    Ok(outputs)
}
