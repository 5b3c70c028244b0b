//! [`gradcheck`]: a function's reverse-mode gradient against `Dual64` forward mode and central
//! finite differences, entry by entry and along random directions.

use std::fmt;

use nalgebra::DMatrix;
use num_dual::Dual64;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use super::compare::{largest_magnitude, number, text, ComparisonTables};
use super::{
    central_step, random_matrix, validate_inputs, CheckError, Comparison, Entry, Run, TapeFunction,
    TapeFunctionF64, Tolerance,
};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};

/// Which entries of each input [`gradcheck`] compares one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Entries {
    /// Every entry: one `Dual64` run (and two finite-difference runs) each.
    All,
    /// At most `per_input` distinct entries of each input, drawn with the settings' seed.
    Sample {
        /// How many entries per input (all of them if the input has fewer).
        per_input: usize,
    },
}

/// How [`gradcheck`] turns the function's output into the scalar whose gradient it checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum OutputReduction {
    /// The output must be 1×1 ([`CheckError::NonScalarOutput`] otherwise).
    Scalar,
    /// An output of any shape is projected onto a fixed cotangent `w` with entries uniform in
    /// `[-1, 1)`, drawn with the settings' seed: the check is of `⟨w, F(x)⟩`, whose gradient
    /// `Jᵀw` the reverse pass computes with [`crate::Tape::vjp`].
    RandomCotangent,
}

/// What [`gradcheck`] compares, and when it passes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GradcheckSettings {
    /// Compare with `Dual64` forward mode (ignored by [`gradcheck_fd`]).
    pub dual: bool,
    /// Compare with central finite differences.
    pub finite_differences: bool,
    /// Which entries are compared one by one.
    pub entries: Entries,
    /// How many random directions `v` (entries uniform in `[-1, 1)`, over every input at once)
    /// to compare `⟨∇f, v⟩` along, besides the entries.
    pub directions: usize,
    /// When a `Dual64` comparison passes.
    pub dual_tolerance: Tolerance,
    /// When a finite-difference comparison passes.
    pub fd_tolerance: Tolerance,
    /// How many of the worst values each comparison keeps.
    pub worst: usize,
    /// How the output becomes a scalar.
    pub output: OutputReduction,
    /// Seed of the sampled entries, directions and output cotangent.
    pub seed: u64,
}

impl Default for GradcheckSettings {
    /// Every entry against both references, [`Tolerance::DUAL`] and
    /// [`Tolerance::FINITE_DIFFERENCES`], no random directions, the 3 worst values kept, a 1×1
    /// output, seed 0.
    fn default() -> Self {
        GradcheckSettings {
            dual: true,
            finite_differences: true,
            entries: Entries::All,
            directions: 0,
            dual_tolerance: Tolerance::DUAL,
            fd_tolerance: Tolerance::FINITE_DIFFERENCES,
            worst: 3,
            output: OutputReduction::Scalar,
            seed: 0,
        }
    }
}

impl GradcheckSettings {
    fn validate(&self) -> Result<(), CheckError> {
        self.dual_tolerance.validate("dual_tolerance")?;
        self.fd_tolerance.validate("fd_tolerance")?;
        if !self.dual && !self.finite_differences {
            return Err(CheckError::InvalidSettings {
                message: "both `dual` and `finite_differences` are off, so nothing would be compared; enable at least one".into(),
            });
        }
        if self.entries == (Entries::Sample { per_input: 0 }) && self.directions == 0 {
            return Err(CheckError::InvalidSettings {
                message: "`Entries::Sample { per_input: 0 }` with no `directions` compares nothing; sample at least one entry per input or ask for directions".into(),
            });
        }
        Ok(())
    }
}

/// How many times a check ran the function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Evaluations {
    /// Runs on `Tape<f64>` followed by a reverse pass (for a custom op: VJPs through the tape).
    pub reverse: usize,
    /// Runs on `Dual64` numbers.
    pub dual: usize,
    /// Runs on `f64` at shifted points, for finite differences.
    pub finite_difference: usize,
}

/// The comparisons of one input's gradient, entry by entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InputReport {
    /// Which input (its index in the input list).
    pub input: usize,
    /// Its shape.
    pub shape: (usize, usize),
    /// Against `Dual64` forward mode, if compared.
    pub dual: Option<Comparison<Entry>>,
    /// Against central finite differences, if compared.
    pub finite_differences: Option<Comparison<Entry>>,
}

/// The comparisons of `⟨∇f, v⟩` along random directions; a [`super::Mismatch`]'s `at` is the
/// direction's index.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DirectionReport {
    /// Against `⟨∇f, v⟩` from one `Dual64` run per direction, if compared.
    pub dual: Option<Comparison<usize>>,
    /// Against central differences along each direction, if compared.
    pub finite_differences: Option<Comparison<usize>>,
}

/// What [`gradcheck`] found: per input, the gradient against each reference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GradcheckReport {
    /// The checked scalar at the inputs (the output, or its projection).
    #[serde(serialize_with = "number")]
    pub value: f64,
    /// The shape of the function's output.
    pub output_shape: (usize, usize),
    /// One report per input, in order.
    pub inputs: Vec<InputReport>,
    /// The random-direction comparisons, if any directions were asked for.
    pub directions: Option<DirectionReport>,
    /// How many times the function ran.
    pub evaluations: Evaluations,
    /// The settings of the check.
    pub settings: GradcheckSettings,
    /// Caveats the function's code left on its tape ([`Tape::add_note`]): an ODE solve with
    /// an exact strategy notes that its gradient is the derivative of its discrete steps.
    /// `Display` prints them when a finite-difference comparison failed.
    pub notes: Vec<String>,
}

impl GradcheckReport {
    /// Whether the value is finite and every comparison passed.
    pub fn passed(&self) -> bool {
        let inputs = self.inputs.iter().flat_map(|r| {
            [
                r.dual.as_ref().map(|c| c.passed),
                r.finite_differences.as_ref().map(|c| c.passed),
            ]
        });
        let directions = self.directions.iter().flat_map(|d| {
            [
                d.dual.as_ref().map(|c| c.passed),
                d.finite_differences.as_ref().map(|c| c.passed),
            ]
        });
        self.value.is_finite() && inputs.chain(directions).flatten().all(|p| p)
    }

    /// Whether some finite-difference comparison failed.
    pub fn finite_differences_failed(&self) -> bool {
        let inputs = self
            .inputs
            .iter()
            .filter_map(|r| r.finite_differences.as_ref().map(|c| c.passed));
        let directions = self
            .directions
            .iter()
            .filter_map(|d| d.finite_differences.as_ref().map(|c| c.passed));
        inputs.chain(directions).any(|passed| !passed)
    }
}

const DUAL: &str = "Dual64";
const FD: &str = "central FD";

impl fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.evaluations;
        writeln!(
            f,
            "gradcheck {}: f = {} (output {}x{}); runs: {} reverse, {} Dual64, {} finite-difference",
            if self.passed() { "passed" } else { "FAILED" },
            text(self.value),
            self.output_shape.0,
            self.output_shape.1,
            e.reverse,
            e.dual,
            e.finite_difference,
        )?;
        let mut tables = ComparisonTables::new(&["input", "shape"], "entry");
        for r in &self.inputs {
            let labels = [r.input.to_string(), format!("{}x{}", r.shape.0, r.shape.1)];
            for (reference, c) in [(DUAL, &r.dual), (FD, &r.finite_differences)] {
                if let Some(c) = c {
                    tables.add(&labels, reference, c);
                }
            }
        }
        if let Some(d) = &self.directions {
            let labels = ["directions".to_owned(), "-".to_owned()];
            for (reference, c) in [(DUAL, &d.dual), (FD, &d.finite_differences)] {
                if let Some(c) = c {
                    tables.add(&labels, reference, c);
                }
            }
        }
        write!(f, "{tables}")?;
        if self.finite_differences_failed() {
            for note in &self.notes {
                writeln!(f, "note: {note}")?;
            }
        }
        Ok(())
    }
}

/// Check the reverse-mode gradient of `fun` at `inputs` against `Dual64` forward mode and
/// central finite differences, as the settings say (see the [module docs](super) for what each
/// proves and costs: with the defaults, one reverse run, `n` `Dual64` runs and `2n`
/// finite-difference runs for `n` input entries).
///
/// Gradient mismatches are failed comparisons in the report; a [`CheckError`] means the check
/// could not run (no inputs, a non-finite input, a non-scalar output, the function failing in
/// some run, unusable settings).
///
/// A small tanh MLP, `loss = mean((tanh(x W1ᵀ + b1) W2ᵀ − y)²)`, checked in its weights:
///
/// ```
/// use ad_core::nalgebra::{self, dmatrix, DMatrix};
/// use ad_core::{gradcheck, GradcheckSettings, Scalar, Tape, TapeFunction, Var};
///
/// struct Mlp {
///     x: DMatrix<f64>,
///     y: DMatrix<f64>,
/// }
///
/// impl TapeFunction for Mlp {
///     type Error = ad_core::Error;
///     fn eval<'t, T: Scalar>(
///         &self,
///         tape: &'t Tape<T>,
///         p: &[Var<'t, T>],
///     ) -> Result<Var<'t, T>, Self::Error> {
///         let x = tape.constant(self.x.map(T::constant));
///         let y = tape.constant(self.y.map(T::constant));
///         let h = x.matmul_t(p[0])?.add_row(p[1])?.tanh();
///         h.matmul_t(p[2])?.mse(y)
///     }
/// }
///
/// let mlp = Mlp {
///     x: dmatrix![0.5, -1.0; 1.5, 0.25; -0.7, 2.0],
///     y: dmatrix![0.1; -0.3; 0.8],
/// };
/// let w1 = dmatrix![0.3, -0.2; 0.8, 0.5; -0.6, 0.1];
/// let b1 = dmatrix![0.05, -0.1, 0.2];
/// let w2 = dmatrix![0.7, -0.4, 0.9];
/// let report = gradcheck(&mlp, &[w1, b1, w2], &GradcheckSettings::default())?;
/// println!("{report}");
/// assert!(report.passed());
/// assert_eq!(report.evaluations.dual, 6 + 3 + 3); // one Dual64 run per weight
/// let w1_report = &report.inputs[0];
/// assert!(w1_report.dual.as_ref().unwrap().max_rel_error < 1e-12);
/// # Ok::<(), ad_core::CheckError>(())
/// ```
pub fn gradcheck<F: TapeFunction>(
    fun: &F,
    inputs: &[DMatrix<f64>],
    settings: &GradcheckSettings,
) -> Result<GradcheckReport, CheckError> {
    let tape = Tape::<Dual64>::new();
    let dual = |values: Vec<DMatrix<Dual64>>, run: Run| {
        run_on(&tape, values, run, |tape, vars| fun.eval(tape, vars))
    };
    check(fun, inputs, settings, Some(&dual))
}

/// [`gradcheck`] for functions that run on `Tape<f64>` only: the reverse-mode gradient against
/// central finite differences alone (`settings.dual` is ignored; `settings.finite_differences`
/// must be on).
///
/// ```
/// use ad_core::nalgebra::{self, dmatrix};
/// use ad_core::{gradcheck_fd, GradcheckSettings, Tape, TapeFunctionF64, Var};
///
/// /// f(x) = Σ exp(x) · x, written for f64 only.
/// struct Plain;
///
/// impl TapeFunctionF64 for Plain {
///     type Error = ad_core::Error;
///     fn eval_f64<'t>(
///         &self,
///         _tape: &'t Tape<f64>,
///         x: &[Var<'t, f64>],
///     ) -> Result<Var<'t, f64>, Self::Error> {
///         Ok(x[0].exp().mul(x[0])?.sum())
///     }
/// }
///
/// let report = gradcheck_fd(&Plain, &[dmatrix![0.5, -1.0, 2.0]], &GradcheckSettings::default())?;
/// assert!(report.passed());
/// assert!(report.inputs[0].dual.is_none());
/// assert_eq!(report.evaluations.finite_difference, 6);
/// # Ok::<(), ad_core::CheckError>(())
/// ```
pub fn gradcheck_fd<F: TapeFunctionF64>(
    fun: &F,
    inputs: &[DMatrix<f64>],
    settings: &GradcheckSettings,
) -> Result<GradcheckReport, CheckError> {
    if !settings.finite_differences {
        return Err(CheckError::InvalidSettings {
            message: "gradcheck_fd compares with finite differences only, and `finite_differences` is off; turn it on".into(),
        });
    }
    let settings = GradcheckSettings {
        dual: false,
        ..settings.clone()
    };
    check(fun, inputs, &settings, None)
}

/// A `Dual64` run of the function under test: input values in, output value out.
type DualRun<'a> = dyn Fn(Vec<DMatrix<Dual64>>, Run) -> Result<DMatrix<Dual64>, CheckError> + 'a;

/// Record the inputs as leaves on `tape`, run `eval`, return the output's value and rewind the
/// tape for the next run.
fn run_on<'a, T: Scalar, E: std::error::Error + Send + Sync + 'static>(
    tape: &'a Tape<T>,
    values: Vec<DMatrix<T>>,
    run: Run,
    eval: impl FnOnce(&'a Tape<T>, &[Var<'a, T>]) -> Result<Var<'a, T>, E>,
) -> Result<DMatrix<T>, CheckError> {
    let mark = tape.mark();
    let vars: Vec<Var<'a, T>> = values.into_iter().map(|v| tape.var(v)).collect();
    let value = eval(tape, &vars)
        .map_err(|e| CheckError::Function {
            run,
            source: Box::new(e),
        })
        .and_then(|out| {
            out.value()
                .map_err(|source| CheckError::Tape { run, source })
        });
    tape.rewind(mark)
        .map_err(|source| CheckError::Tape { run, source })?;
    value
}

/// `⟨w, value⟩`, or [`CheckError::OutputShapeChanged`] if the value's shape is not `w`'s.
fn project(w: &DMatrix<f64>, value: &DMatrix<f64>, run: Run) -> Result<f64, CheckError> {
    if value.shape() != w.shape() {
        return Err(CheckError::OutputShapeChanged {
            output: 0,
            expected: w.shape(),
            found: value.shape(),
            run,
        });
    }
    Ok(w.dot(value))
}

/// The gradient under test: one run on `Tape<f64>` and one reverse pass.
struct Reverse {
    value: f64,
    output_shape: (usize, usize),
    cotangent: DMatrix<f64>,
    gradients: Vec<DMatrix<f64>>,
    notes: Vec<String>,
}

fn reverse<F: TapeFunctionF64>(
    fun: &F,
    inputs: &[DMatrix<f64>],
    output: OutputReduction,
    rng: &mut StdRng,
) -> Result<Reverse, CheckError> {
    let run = Run::Reverse;
    let tape_error = |source| CheckError::Tape { run, source };
    let tape = Tape::<f64>::new();
    let vars: Vec<Var<'_, f64>> = inputs.iter().map(|x| tape.var(x.clone())).collect();
    let out = fun
        .eval_f64(&tape, &vars)
        .map_err(|e| CheckError::Function {
            run,
            source: Box::new(e),
        })?;
    let value = out.value().map_err(tape_error)?;
    let output_shape = value.shape();
    let cotangent = match output {
        OutputReduction::Scalar if output_shape != (1, 1) => {
            return Err(CheckError::NonScalarOutput {
                shape: output_shape,
                run,
            })
        }
        OutputReduction::Scalar => DMatrix::from_element(1, 1, 1.0),
        OutputReduction::RandomCotangent => random_matrix(rng, output_shape),
    };
    let mut grads = tape.vjp(out, cotangent.clone()).map_err(tape_error)?;
    let gradients = vars
        .iter()
        .map(|v| grads.take_or_zeros(*v))
        .collect::<crate::Result<Vec<_>>>()
        .map_err(tape_error)?;
    Ok(Reverse {
        value: cotangent.dot(&value),
        output_shape,
        cotangent,
        gradients,
        notes: tape.notes(),
    })
}

/// The linear (column-major) indices of the entries of a `len`-entry input to compare.
fn selected(entries: Entries, len: usize, rng: &mut StdRng) -> Vec<usize> {
    match entries {
        Entries::All => (0..len).collect(),
        Entries::Sample { per_input } => {
            let mut picked = rand::seq::index::sample(rng, len, per_input.min(len)).into_vec();
            picked.sort_unstable();
            picked
        }
    }
}

/// The reference runs of one check: each returns the checked scalar's derivative (`Dual64`)
/// or value (shifted `f64` runs), and is counted.
struct Runs<'a, F> {
    fun: &'a F,
    /// The output cotangent that makes the output a scalar.
    w: &'a DMatrix<f64>,
    dual: Option<&'a DualRun<'a>>,
    fd_tape: Tape<f64>,
    evaluations: Evaluations,
}

impl<F: TapeFunctionF64> Runs<'_, F> {
    /// `⟨w, ε part of the output⟩` of a `Dual64` run by `run_dual` (this check's `dual`).
    fn dual(
        &mut self,
        run_dual: &DualRun<'_>,
        values: Vec<DMatrix<Dual64>>,
        run: Run,
    ) -> Result<f64, CheckError> {
        let out = run_dual(values, run)?;
        self.evaluations.dual += 1;
        project(self.w, &out.map(|d| d.eps), run)
    }

    /// `⟨w, output⟩` of an `f64` run at shifted inputs.
    fn shifted(&mut self, values: Vec<DMatrix<f64>>, run: Run) -> Result<f64, CheckError> {
        let fun = self.fun;
        let value = run_on(&self.fd_tape, values, run, |tape, vars| {
            fun.eval_f64(tape, vars)
        })?;
        self.evaluations.finite_difference += 1;
        project(self.w, &value, run)
    }
}

/// The shared body of [`gradcheck`] and [`gradcheck_fd`]; `dual` runs the function on
/// `Dual64` numbers when there is a generic version of it.
fn check<F: TapeFunctionF64>(
    fun: &F,
    inputs: &[DMatrix<f64>],
    settings: &GradcheckSettings,
    dual: Option<&DualRun<'_>>,
) -> Result<GradcheckReport, CheckError> {
    settings.validate()?;
    validate_inputs(inputs)?;
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let base = reverse(fun, inputs, settings.output, &mut rng)?;
    let mut runs = Runs {
        fun,
        w: &base.cotangent,
        dual: dual.filter(|_| settings.dual),
        fd_tape: Tape::new(),
        evaluations: Evaluations {
            reverse: 1,
            ..Evaluations::default()
        },
    };
    let mut reports = Vec::with_capacity(inputs.len());
    for (input, g) in base.gradients.iter().enumerate() {
        let picked = selected(settings.entries, g.len(), &mut rng);
        reports.push(input_report(
            &mut runs, inputs, input, g, &picked, settings,
        )?);
    }
    let directions = match settings.directions {
        0 => None,
        _ => Some(direction_report(
            &mut runs,
            inputs,
            &base.gradients,
            settings,
            &mut rng,
        )?),
    };
    Ok(GradcheckReport {
        value: base.value,
        output_shape: base.output_shape,
        inputs: reports,
        directions,
        evaluations: runs.evaluations,
        settings: settings.clone(),
        notes: base.notes.clone(),
    })
}

/// Input `input`'s gradient `g` at the `picked` entries (column-major indices) against each
/// reference.
fn input_report<F: TapeFunctionF64>(
    runs: &mut Runs<'_, F>,
    inputs: &[DMatrix<f64>],
    input: usize,
    g: &DMatrix<f64>,
    picked: &[usize],
    settings: &GradcheckSettings,
) -> Result<InputReport, CheckError> {
    let x = &inputs[input];
    let rows = x.nrows();
    let entry = |k: usize| Entry {
        row: k % rows,
        col: k / rows,
    };
    let dual_refs = match runs.dual {
        Some(run_dual) => {
            let lifted: Vec<DMatrix<Dual64>> = inputs.iter().map(|x| x.map(Dual64::from)).collect();
            let mut refs = Vec::with_capacity(picked.len());
            for &k in picked {
                let Entry { row, col } = entry(k);
                let mut values = lifted.clone();
                values[input][k].eps = 1.0;
                refs.push(runs.dual(run_dual, values, Run::DualEntry { input, row, col })?);
            }
            Some(refs)
        }
        None => None,
    };
    let fd_refs = match settings.finite_differences {
        true => {
            let mut refs = Vec::with_capacity(picked.len());
            for &k in picked {
                let Entry { row, col } = entry(k);
                let h = central_step(x[k].abs());
                let (up, down) = (x[k] + h, x[k] - h);
                let mut at = |value: f64, step: f64| {
                    let mut values = inputs.to_vec();
                    values[input][k] = value;
                    let run = Run::ShiftedEntry {
                        input,
                        row,
                        col,
                        step,
                    };
                    runs.shifted(values, run)
                };
                let (f_up, f_down) = (at(up, h)?, at(down, -h)?);
                // Divide by the step actually taken: `up − down` is exact, `2h` may not be.
                refs.push((f_up - f_down) / (up - down));
            }
            Some(refs)
        }
        false => None,
    };
    let compare = |refs: Option<Vec<f64>>, tolerance: Tolerance| {
        refs.map(|refs| {
            let scale = largest_magnitude(g.iter().chain(&refs).copied());
            let items = picked
                .iter()
                .zip(refs)
                .map(|(&k, r)| (entry(k), g[k], r, scale));
            Comparison::new(items, tolerance, settings.worst)
        })
    };
    Ok(InputReport {
        input,
        shape: x.shape(),
        dual: compare(dual_refs, settings.dual_tolerance),
        finite_differences: compare(fd_refs, settings.fd_tolerance),
    })
}

/// `⟨∇f, v⟩` along `settings.directions` random directions against each reference.
fn direction_report<F: TapeFunctionF64>(
    runs: &mut Runs<'_, F>,
    inputs: &[DMatrix<f64>],
    gradients: &[DMatrix<f64>],
    settings: &GradcheckSettings,
    rng: &mut StdRng,
) -> Result<DirectionReport, CheckError> {
    let h = central_step(largest_magnitude(inputs.iter().flatten().copied()));
    let mut dual_items = Vec::new();
    let mut fd_items = Vec::new();
    for index in 0..settings.directions {
        let v: Vec<DMatrix<f64>> = inputs
            .iter()
            .map(|x| random_matrix(rng, x.shape()))
            .collect();
        let reverse: f64 = gradients.iter().zip(&v).map(|(g, v)| g.dot(v)).sum();
        let magnitude: f64 = gradients
            .iter()
            .zip(&v)
            .map(|(g, v)| g.zip_map(v, |a, b| (a * b).abs()).sum())
            .sum();
        if let Some(run_dual) = runs.dual {
            let values = inputs
                .iter()
                .zip(&v)
                .map(|(x, v)| x.zip_map(v, Dual64::new))
                .collect();
            let run = Run::DualDirection { index, input: None };
            let reference = runs.dual(run_dual, values, run)?;
            dual_items.push((index, reverse, reference, magnitude));
        }
        if settings.finite_differences {
            let mut at = |step: f64| {
                let values = inputs.iter().zip(&v).map(|(x, v)| x + v * step).collect();
                let run = Run::ShiftedDirection {
                    index,
                    input: None,
                    step,
                };
                runs.shifted(values, run)
            };
            let reference = (at(h)? - at(-h)?) / (2.0 * h);
            fd_items.push((index, reverse, reference, magnitude));
        }
    }
    Ok(DirectionReport {
        dual: runs
            .dual
            .map(|_| Comparison::new(dual_items, settings.dual_tolerance, settings.worst)),
        finite_differences: settings
            .finite_differences
            .then(|| Comparison::new(fd_items, settings.fd_tolerance, settings.worst)),
    })
}
