//! `costate-reversible-problem/1` files: McCallum & Foster's fixed-step benchmark of
//! reversible solvers (arXiv 2410.11648), as written by the Diffrax reference script. One
//! neural ODE `y' = mlp([t, y])` (time first), its weights, `y0`, a constant step `dt` over
//! `nsteps` steps with an output at every step, a mean-squared loss against per-solver data,
//! and per base solver (`rk4`, `midpoint`, `dopri5`) JAX's gradients of the plain solve
//! (`checkpointed`) and of McCallum & Foster's reversible scheme over it (`reversible`).
//!
//! ```
//! use nn::reversible_problem::{ReversibleProblem, Scheme};
//! use nn::Strategy;
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/problems/white_dwarf.json");
//! let problem = ReversibleProblem::load(path)?;
//! let midpoint = problem.solver("midpoint")?;
//! let g = problem.gradients(midpoint, Scheme::Reversible, &Strategy::Reversible { coupling: None })?;
//! let reference = midpoint.reference(Scheme::Reversible);
//! assert!((g.loss - reference.loss).abs() < 1e-10 * reference.loss);
//! # Ok::<(), nn::Error>(())
//! ```

use ad_core::nalgebra::DMatrix;
use ad_core::{Result as TapeResult, Scalar, Tape, Var};
use ode::tableau::{Tableau, ALL};
use ode::{odeint_with, Dynamics, Options, Solution, Strategy};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ModelPart, Result};
use crate::json::{matrix, parse_json, read_text, row};
use crate::layers::{Activation, Mlp};
use crate::params::ParamSet;
use crate::pipeline::{check_fits, Forward, ProblemGradients};
use crate::problem::{at_model_key, layer_gradients, layer_params, GradientTensors, LayerSpec};

/// The format tag these files carry.
pub const REVERSIBLE_PROBLEM_FORMAT: &str = "costate-reversible-problem/1";

/// What `model.input` must begin with: the time column first, then the state.
const TIME_FIRST_INPUT: &str = "concat([t], y)";

/// A `costate-reversible-problem/1` file as stored (numbers as nested lists). Unknown keys
/// (`ode_true`, `step_times`, the solvers' `diffrax_runs`, ...) are ignored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReversibleProblemFile {
    /// Must be `costate-reversible-problem/1`.
    pub format: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The vector field and its weights.
    pub model: TimeFirstModelSpec,
    /// Initial state, one row.
    pub y0: Vec<f64>,
    /// Start time.
    pub t0: f64,
    /// End time, `t0 + nsteps·dt`.
    pub t1: f64,
    /// The constant step.
    pub dt: f64,
    /// Steps from `t0` to `t1`; there is an output at every step's end.
    pub nsteps: usize,
    /// The loss.
    pub loss: StepLossSpec,
    /// The reversible scheme's setting.
    pub reversible_scheme: ReversibleSchemeSpec,
    /// Per base solver (`rk4`, `midpoint`, `dopri5`): tableau, data and reference gradients.
    pub solvers: std::collections::BTreeMap<String, BaseSolverSpec>,
    /// How the file was made (kept as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<serde_json::Value>,
}

/// The vector field of the file: an MLP reading `[t, y]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TimeFirstModelSpec {
    /// Must be `mlp`.
    pub kind: String,
    /// Nonlinearity between layers.
    pub activation: String,
    /// Must begin with `concat([t], y)`: the absolute time as the first input column.
    pub input: String,
    /// Layers, input first (`weight` out × in, `bias` of length out).
    pub layers: Vec<LayerSpec>,
}

/// The loss of the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepLossSpec {
    /// Must be `mse_steps`: the mean over steps `n = 1..nsteps` and state entries `j` of
    /// `(y_j(t_n) − data[n−1][j])²`.
    pub kind: String,
}

/// The reversible scheme of the file (McCallum & Foster's, over each base solver).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReversibleSchemeSpec {
    /// The coupling λ ∈ (0, 1] ([`ode::Options::coupling`]).
    pub coupling: f64,
}

/// One base solver of the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BaseSolverSpec {
    /// Its Butcher tableau, which must be one of `ode`'s.
    pub tableau: TableauSpec,
    /// The loss's targets: `data[n−1]` is compared with `y(t_n)`, `nsteps` rows.
    pub data: Vec<Vec<f64>>,
    /// Gradients of the plain solve with this method.
    pub checkpointed: ReferenceGradientSpec,
    /// Gradients of the reversible scheme over this method.
    pub reversible: ReferenceGradientSpec,
}

/// A Butcher tableau as stored: stage times, coupling rows (`a[i]` has `i` entries), weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TableauSpec {
    /// Stage times.
    pub c: Vec<f64>,
    /// Lower-triangular coupling rows.
    pub a: Vec<Vec<f64>>,
    /// Solution weights.
    pub b: Vec<f64>,
}

/// Reference gradients as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReferenceGradientSpec {
    /// The loss value.
    pub loss: f64,
    /// dL/dW and dL/db per layer.
    pub grad_layers: Vec<LayerSpec>,
    /// dL/dy0.
    pub grad_y0: Vec<f64>,
    /// Which implementation produced them.
    #[serde(default)]
    pub source: String,
}

/// `f(t, y) = mlp([t, y])`: the absolute time as the first input column, then the state
/// (the white-dwarf model). Implements [`ode::Dynamics`] for every scalar type.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeFirstMlp {
    /// The network: `dim + 1` inputs, `dim` outputs.
    pub mlp: Mlp,
}

impl TimeFirstMlp {
    /// The field of `mlp`, which must read one column more than it outputs (else
    /// [`Error::Model`] at the first layer's weight).
    pub fn new(mlp: Mlp) -> Result<Self> {
        mlp.check_layers()?;
        let dim = mlp.out_features();
        if mlp.in_features() != dim + 1 {
            return Err(Error::model(
                ModelPart::Weight(0),
                format!(
                    "reads {} features (columns) but f needs {}: the time column and the \
                     state's {dim}",
                    mlp.in_features(),
                    dim + 1
                ),
            ));
        }
        Ok(Self { mlp })
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        self.mlp.out_features()
    }
}

impl<T: Scalar> Dynamics<T> for TimeFirstMlp {
    fn eval<'t>(
        &self,
        t: Var<'t, T>,
        y: Var<'t, T>,
        params: &[Var<'t, T>],
    ) -> TapeResult<Var<'t, T>> {
        let column = t.broadcast(y.shape()?.0, 1)?;
        let x = y.tape().concat_cols(&[column, y])?;
        self.mlp.forward(x, params)
    }
}

/// Which discrete solve of a base solver: its plain steps, or McCallum & Foster's
/// reversible scheme over them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Constant steps of the base method.
    Base,
    /// The reversible scheme with the file's coupling over the base method.
    Reversible,
}

/// A reference loss and its gradients as tensors (`t` is `None`: the file has no dL/dt).
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceGradients {
    /// The loss value.
    pub loss: f64,
    /// dL/dy0 (as `h0`) and dL/dθ in [`ParamSet`] order.
    pub gradients: GradientTensors,
}

/// A validated base solver: `ode`'s tableau for it, its data and its reference gradients.
#[derive(Clone, Debug)]
pub struct BaseSolver {
    /// Its key in the file (`rk4`, `midpoint`, `dopri5`).
    pub name: String,
    /// `ode`'s tableau with the file's c, a and b (the file's `rk4` is the classic method,
    /// `ode`'s `rk4_classic`; a trailing FSAL stage of weight 0 is not stored in the file).
    pub method: &'static Tableau,
    /// `data[n−1]`, 1 × dim, is the target of `y(t_n)`.
    pub data: Vec<DMatrix<f64>>,
    /// JAX's gradients of the plain solve.
    pub checkpointed: ReferenceGradients,
    /// JAX's gradients of the reversible scheme.
    pub reversible: ReferenceGradients,
}

impl BaseSolver {
    /// The reference gradients of `scheme`'s solve.
    pub fn reference(&self, scheme: Scheme) -> &ReferenceGradients {
        match scheme {
            Scheme::Base => &self.checkpointed,
            Scheme::Reversible => &self.reversible,
        }
    }
}

/// A validated `costate-reversible-problem/1` file.
#[derive(Clone, Debug)]
pub struct ReversibleProblem {
    /// The vector field.
    pub field: TimeFirstMlp,
    /// Its weights.
    pub params: ParamSet,
    /// Initial state, 1 × dim.
    pub y0: DMatrix<f64>,
    /// The constant step.
    pub dt: f64,
    /// Steps (and outputs after `y0`).
    pub nsteps: usize,
    /// The reversible scheme's coupling.
    pub coupling: f64,
    /// The base solvers, in the file's key order.
    pub solvers: Vec<BaseSolver>,
    /// The file as read.
    pub file: ReversibleProblemFile,
}

impl ReversibleProblem {
    /// Read and validate a file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let text = read_text(path.as_ref())?;
        Self::from_json(&text)
    }

    /// Parse and validate a file's text.
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_file(parse_json(text)?)
    }

    /// Validate a parsed file: names known, shapes consistent, numbers finite, the grid
    /// `t0 + n·dt` ending at `t1`, every tableau one of `ode`'s. Errors are
    /// [`Error::Format`] naming the key.
    pub fn from_file(file: ReversibleProblemFile) -> Result<Self> {
        if file.format != REVERSIBLE_PROBLEM_FORMAT {
            return Err(Error::format(
                "format",
                format!(
                    "is {:?}, expected {REVERSIBLE_PROBLEM_FORMAT:?}",
                    file.format
                ),
            ));
        }
        let m = &file.model;
        if m.kind != "mlp" {
            return Err(Error::format(
                "model.kind",
                format!("is {:?}; only \"mlp\" is supported", m.kind),
            ));
        }
        if !m.input.starts_with(TIME_FIRST_INPUT) {
            return Err(Error::format(
                "model.input",
                format!(
                    "is {:?}; only {TIME_FIRST_INPUT:?} (time first) is supported",
                    m.input
                ),
            ));
        }
        let activation: Activation = m.activation.parse().map_err(at_model_key)?;
        let params = layer_params(&m.layers)?;
        let mlp = Mlp::from_params(&params, activation).map_err(at_model_key)?;
        let field = TimeFirstMlp::new(mlp).map_err(at_model_key)?;
        let y0 = row(&file.y0, "y0")?;
        let dim = field.dim();
        if y0.ncols() != dim {
            return Err(Error::format(
                "y0",
                format!(
                    "has {} entries but the model's output has {dim}",
                    y0.ncols()
                ),
            ));
        }
        for (key, v) in [("t0", file.t0), ("t1", file.t1), ("dt", file.dt)] {
            if !v.is_finite() {
                return Err(Error::format(key, "is not a finite number"));
            }
        }
        if file.dt <= 0.0 {
            return Err(Error::format(
                "dt",
                format!("is {}; it must be > 0", file.dt),
            ));
        }
        if file.nsteps == 0 {
            return Err(Error::format("nsteps", "is 0; it must be at least 1"));
        }
        let end = file.t0 + file.nsteps as f64 * file.dt;
        // The file's t1 is written from the generator's own sum: allow rounding, not a step.
        if (end - file.t1).abs() > 1e-9 * end.abs().max(file.dt) {
            return Err(Error::format(
                "t1",
                format!(
                    "is {} but t0 + nsteps·dt = {end}: the steps must end at t1",
                    file.t1
                ),
            ));
        }
        ode::check_grid(&grid(file.t0, file.dt, file.nsteps)).map_err(|e| match e {
            ode::Error::BadTimeGrid { reason } => Error::format("dt", reason),
            other => Error::Ode(other),
        })?;
        if file.loss.kind != "mse_steps" {
            return Err(Error::format(
                "loss.kind",
                format!("is {:?}; only \"mse_steps\" is supported", file.loss.kind),
            ));
        }
        let coupling = file.reversible_scheme.coupling;
        Options::fixed("euler", file.dt)
            .map(|o| o.reversible(coupling))
            .and_then(|o| o.validate())
            .map_err(|e| Error::format("reversible_scheme.coupling", e.to_string()))?;
        if file.solvers.is_empty() {
            return Err(Error::format(
                "solvers",
                "is empty: it needs at least one solver",
            ));
        }
        let mut solvers = Vec::with_capacity(file.solvers.len());
        for (name, spec) in &file.solvers {
            let base = format!("solvers.{name}");
            let method = ode_tableau(&spec.tableau, &format!("{base}.tableau"))?;
            let data = matrix(&spec.data, &format!("{base}.data"))?;
            if data.shape() != (file.nsteps, dim) {
                return Err(Error::format(
                    format!("{base}.data"),
                    format!(
                        "is {:?} but the file has {} steps of a state of {dim}",
                        data.shape(),
                        file.nsteps
                    ),
                ));
            }
            let reference = |which: &str, g: &ReferenceGradientSpec| -> Result<_> {
                let key = format!("{base}.{which}");
                if !g.loss.is_finite() {
                    return Err(Error::format(
                        format!("{key}.loss"),
                        "is not a finite number",
                    ));
                }
                let y0_key = format!("{key}.grad_y0");
                let gy = row(&g.grad_y0, &y0_key)?;
                if gy.shape() != y0.shape() {
                    return Err(Error::format(
                        y0_key,
                        format!("has {} entries but y0 has {dim}", gy.ncols()),
                    ));
                }
                Ok(ReferenceGradients {
                    loss: g.loss,
                    gradients: GradientTensors {
                        h0: gy,
                        params: layer_gradients(&g.grad_layers, &params, &key)?,
                        t: None,
                    },
                })
            };
            solvers.push(BaseSolver {
                name: name.clone(),
                method,
                data: (0..data.nrows())
                    .map(|n| data.rows(n, 1).into_owned())
                    .collect(),
                checkpointed: reference("checkpointed", &spec.checkpointed)?,
                reversible: reference("reversible", &spec.reversible)?,
            });
        }
        Ok(Self {
            field,
            params,
            y0,
            dt: file.dt,
            nsteps: file.nsteps,
            coupling,
            solvers,
            file,
        })
    }

    /// The base solver called `name` in the file ([`Error::Mismatch`] listing the others if
    /// there is none).
    pub fn solver(&self, name: &str) -> Result<&BaseSolver> {
        self.solvers.iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.solvers.iter().map(|s| s.name.as_str()).collect();
            Error::Mismatch(format!(
                "the file has no solver {name:?}; it has {}",
                names.join(", ")
            ))
        })
    }

    /// The output times `t0 + n·dt`, n = 0..=nsteps (each computed from n, so no rounding
    /// accumulates).
    pub fn grid(&self) -> Vec<f64> {
        grid(self.file.t0, self.dt, self.nsteps)
    }

    /// The solver options of `scheme` with `solver`'s method: constant steps of `dt`
    /// ([`Options::fixed`]), plus the file's coupling for [`Scheme::Reversible`].
    pub fn options(&self, solver: &BaseSolver, scheme: Scheme) -> Result<Options> {
        let base = Options::fixed(solver.method.name, self.dt)?;
        Ok(match scheme {
            Scheme::Base => base,
            Scheme::Reversible => base.reversible(self.coupling),
        })
    }

    /// Solve from `y0` (a var on `tape`) with the field's `params` over [`Self::grid`]
    /// (a constant: the grid is not differentiated).
    pub fn solve<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        y0: Var<'t, T>,
        params: &[Var<'t, T>],
        options: &Options,
        strategy: &Strategy,
    ) -> Result<Solution<'t, T>> {
        let t = self.grid_on(tape);
        Ok(odeint_with(
            tape,
            &self.field,
            y0,
            t,
            params,
            options,
            strategy,
        )?)
    }

    /// [`Self::grid`] as a 1 × (nsteps + 1) constant on `tape`.
    fn grid_on<'t, T: Scalar>(&self, tape: &'t Tape<T>) -> Var<'t, T> {
        let t = self.grid();
        tape.constant(DMatrix::from_row_slice(1, t.len(), &t).map(T::constant))
    }

    /// The file's loss of a solve's `outputs` (`y(t_0), …, y(t_nsteps)`) against `solver`'s
    /// data: the mean over n = 1..nsteps and every entry j of `(y_j(t_n) − data[n−1][j])²`.
    pub fn loss<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        solver: &BaseSolver,
        outputs: &[Var<'t, T>],
    ) -> Result<Var<'t, T>> {
        if outputs.len() != solver.data.len() + 1 {
            return Err(Error::Mismatch(format!(
                "{} outputs for {} data rows (the loss needs y0 and one output per row)",
                outputs.len(),
                solver.data.len()
            )));
        }
        let weight = T::constant(1.0 / (solver.data.len() * self.field.dim()) as f64);
        let mut terms = Vec::with_capacity(solver.data.len());
        for (y, d) in outputs[1..].iter().zip(&solver.data) {
            let residual = y.sub(tape.constant(d.map(T::constant)))?;
            terms.push((weight, residual.square().sum()));
        }
        Ok(tape.fixed_weighted_sum(&terms)?)
    }

    /// The loss and its gradients with respect to `y0` (as `h0`) and every weight and bias
    /// for `scheme`'s solve with `solver`'s method, by `strategy`, on a fresh `f64` tape.
    pub fn gradients(
        &self,
        solver: &BaseSolver,
        scheme: Scheme,
        strategy: &Strategy,
    ) -> Result<ProblemGradients> {
        self.gradients_on(
            &Tape::new(),
            solver,
            &self.options(solver, scheme)?,
            strategy,
        )
    }

    /// The loss and its gradients (`y0` as `h0`, every parameter; `t` is zeros, the grid
    /// being a constant) with any `options` and `strategy` on `tape` of any scalar, which is
    /// reset first; the footprint is measured between forward and loss, as
    /// [`crate::Problem::gradients_on`] does. A value that would overflow `T`'s precision is
    /// an [`Error::Overflow`].
    pub fn gradients_on<T: Scalar>(
        &self,
        tape: &Tape<T>,
        solver: &BaseSolver,
        options: &Options,
        strategy: &Strategy,
    ) -> Result<ProblemGradients<T>> {
        check_fits::<T::Primitive>(&self.params, &[("y0", &self.y0)])?;
        tape.reset()?;
        let params = self
            .params
            .to_tape_with(tape, |_, value| value.map(T::constant))?;
        let y0 = tape.var(self.y0.map(T::constant));
        let t = self.grid_on(tape);
        let solution = odeint_with(tape, &self.field, y0, t, &params, options, strategy)?;
        let forward = Forward {
            h0: y0,
            params,
            t,
            solution,
        };
        let footprint = forward.footprint()?;
        let loss = self.loss(tape, solver, &forward.solution.outputs)?;
        let mut gradients = forward.with_loss(loss).backward()?;
        gradients.footprint = Some(footprint);
        Ok(gradients)
    }
}

/// `t0 + n·dt` for n = 0..=nsteps.
fn grid(t0: f64, dt: f64, nsteps: usize) -> Vec<f64> {
    (0..=nsteps).map(|n| t0 + n as f64 * dt).collect()
}

/// `ode`'s explicit tableau with `spec`'s c, a and b, to a few ulps; `ode`'s may have
/// trailing stages of weight 0 that the file leaves out (dopri5's FSAL stage). Errors name
/// `key`.
fn ode_tableau(spec: &TableauSpec, key: &str) -> Result<&'static Tableau> {
    let s = spec.c.len();
    if s == 0 {
        return Err(Error::format(format!("{key}.c"), "is empty"));
    }
    if spec.a.len() != s || spec.b.len() != s {
        return Err(Error::format(
            key,
            format!(
                "has {s} stage times, {} rows of a and {} weights; they must agree",
                spec.a.len(),
                spec.b.len()
            ),
        ));
    }
    let close = |x: f64, y: f64| (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(1.0);
    let rows_equal = |ours: &[f64], theirs: &[f64]| {
        // Missing entries on either side are zeros (lower-triangular rows may be cut short).
        (0..ours.len().max(theirs.len())).all(|j| {
            close(
                ours.get(j).copied().unwrap_or(0.0),
                theirs.get(j).copied().unwrap_or(0.0),
            )
        })
    };
    let same = |t: &Tableau| {
        t.c.len() >= s
            && t.b[s..].iter().all(|&w| w == 0.0)
            && t.c.iter().zip(&spec.c).all(|(&x, &y)| close(x, y))
            && t.b.iter().zip(&spec.b).all(|(&x, &y)| close(x, y))
            && t.a.iter().zip(&spec.a).all(|(x, y)| rows_equal(x, y))
    };
    ALL.iter().copied().find(|t| same(t)).ok_or_else(|| {
        Error::format(
            key,
            "matches none of ode's explicit tableaux in c, a and b; add the method to \
             ode::tableau first",
        )
    })
}
