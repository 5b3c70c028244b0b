//! The entry points: [`odeint_with`] (any [`Strategy`]), the taped [`odeint`], the untaped
//! value-only [`solve`], and what every strategy shares: the [`Solution`], grid and input
//! checks, the counting vector-field system and the recording untaped forward.

use ad_core::nalgebra::DMatrix;
use ad_core::{all_finite, Gradients, Precision, Scalar, Tape, Var};

use crate::controller::{Controller, StepRecord};
use crate::dynamics::Dynamics;
use crate::engine::{SolveStats, State, System};
use crate::error::{Error, Result};
use crate::options::{Norm, Options};
use crate::stepper::{Accepted, Memory, Start, Stepper};
use crate::strategy::{BackwardStats, Strategy, StrategyReport};

/// The outputs of a solve: the state at every grid time (`outputs[0]` is `h0`), the
/// forward's counts and accepted steps, and what the gradient strategy did.
pub struct Solution<'t, T: Scalar> {
    /// `h(t_0), …, h(t_n)` on the caller's tape.
    pub outputs: Vec<Var<'t, T>>,
    /// Counts of the forward solve.
    pub stats: SolveStats,
    /// The forward's accepted steps in order: start time, end time, signed step size.
    pub steps: Vec<StepRecord>,
    /// The strategy that ran, the states it stored, and why it was chosen.
    pub strategy: StrategyReport,
    /// The solve's opaque node (its first output), whose VJP reports [`BackwardStats`].
    pub(crate) node: Option<Var<'t, T>>,
}

impl<'t, T: Scalar> Solution<'t, T> {
    /// What the backward pass `grads` did inside this solve's node: backward NFE, steps,
    /// recomputations, drift. `None` for taped solves, and for a pass that did not reach the
    /// node (or ran through [`Tape::vjp_wrt`], which keeps no reports).
    pub fn backward_stats(&self, grads: &Gradients<T>) -> Option<BackwardStats> {
        grads.report::<BackwardStats>(self.node?).cloned()
    }

    /// Accepted step times of the forward: `t_0`, then the end of every accepted step.
    pub fn step_times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self.steps.first().map(|s| s.t).into_iter().collect();
        t.extend(self.steps.iter().map(|s| s.t1));
        t
    }

    /// *Held bytes* as `docs/design.md` defines them: bytes the tape keeps alive for
    /// backward (its [`ad_core::TapeStats::held_bytes`], which includes what an opaque
    /// node stores, e.g. checkpoints) less the outputs `h(t_1..t_n)` themselves. Call it
    /// between forward and backward, before recording the loss.
    pub fn held_bytes(&self) -> Result<usize> {
        let Some(first) = self.outputs.first() else {
            return Ok(0);
        };
        let mut outputs = 0;
        for v in &self.outputs[1..] {
            if v.requires_grad()? {
                let (r, c) = v.shape()?;
                outputs += r * c * std::mem::size_of::<T>();
            }
        }
        Ok(first.tape().stats().held_bytes.saturating_sub(outputs))
    }

    /// The last output, `h(t_n)`.
    pub fn last(&self) -> Var<'t, T> {
        self.outputs[self.outputs.len() - 1]
    }
}

/// Check a time grid's values (at least one, finite, strictly increasing or strictly
/// decreasing, with a span that fits in an f64) and return them as `f64`. A one-point grid
/// asks for `h(t_0) = h0` only.
pub fn check_grid<T: Scalar>(times: &[T]) -> Result<Vec<f64>> {
    let t: Vec<f64> = times.iter().map(|x| x.primal()).collect();
    if t.is_empty() {
        return Err(Error::BadTimeGrid {
            reason: "it has no points".into(),
        });
    }
    if let Some(i) = t.iter().position(|x| !x.is_finite()) {
        return Err(Error::BadTimeGrid {
            reason: format!("t[{i}] = {} is not finite", t[i]),
        });
    }
    if t.len() == 1 {
        return Ok(t);
    }
    let (first, last) = (t[0], t[t.len() - 1]);
    if !(last - first).is_finite() {
        return Err(Error::BadTimeGrid {
            reason: format!(
                "its span t[n−1] − t[0] = {} − ({}) overflows an f64",
                crate::error::num(last),
                crate::error::num(first)
            ),
        });
    }
    let dir = (t[1] - t[0]).signum();
    for i in 1..t.len() {
        if (t[i] - t[i - 1]) * dir <= 0.0 || dir == 0.0 {
            return Err(Error::BadTimeGrid {
                reason: format!(
                    "not strictly monotonic at index {i}: t[{}] = {}, t[{i}] = {}",
                    i - 1,
                    t[i - 1],
                    t[i]
                ),
            });
        }
    }
    Ok(t)
}

/// The grid as a 1×n row variable and its checked values.
pub(crate) fn grid_row<'t, T: Scalar>(t: Var<'t, T>) -> Result<(Var<'t, T>, Vec<f64>)> {
    let (r, c) = t.shape()?;
    if r != 1 && c != 1 {
        return Err(Error::BadTimeGrid {
            reason: format!("it is a {r}x{c} matrix, not a row or a column"),
        });
    }
    let row = if r == 1 { t } else { t.transpose() };
    let values = row.with_value(|m| m.iter().copied().collect::<Vec<T>>())?;
    Ok((row, check_grid(&values)?))
}

/// Refuse a `Var` of another tape before anything is recorded: the solve rewinds only
/// `tape` on error, so it must not write to the other one either.
pub(crate) fn check_tape<'a, 't: 'a, T: Scalar>(
    tape: &'t Tape<T>,
    op: &'static str,
    vars: impl IntoIterator<Item = &'a Var<'t, T>>,
) -> Result<()> {
    for v in vars {
        if !std::ptr::eq(v.tape(), tape) {
            return Err(Error::Tape(ad_core::Error::ForeignVar { op }));
        }
    }
    Ok(())
}

/// Check that the initial state is finite.
pub(crate) fn check_h0<T: Scalar>(h0: &DMatrix<T>, t0: f64) -> Result<()> {
    if h0.is_empty() {
        return Err(Error::EmptyState {
            rows: h0.nrows(),
            cols: h0.ncols(),
        });
    }
    if !all_finite(h0) {
        return Err(Error::NonFinite {
            what: "state",
            t: t0,
        });
    }
    Ok(())
}

/// The forward controller from options.
pub(crate) fn forward_controller(opts: &Options) -> Controller {
    Controller {
        tableau: opts.method,
        rtol: opts.rtol,
        atol: opts.atol,
        safety: opts.safety,
        ifactor: opts.ifactor,
        dfactor: opts.dfactor,
        min_step: opts.min_step,
        max_step: opts.max_step,
        max_num_steps: opts.max_num_steps,
        fixed_step: if opts.method.b_error.is_none() {
            opts.step_size
        } else {
            None
        },
        first_step: opts.first_step,
        norm: opts.norm.clone(),
        mask: None,
        replay: None,
    }
}

/// `h' = f(t, h)` as an engine system: counts evaluations, checks shape and finiteness.
pub(crate) struct FieldSystem<'a, 't, T: Scalar, F: Dynamics<T>> {
    pub f: &'a F,
    pub params: &'a [Var<'t, T>],
    pub shape: (usize, usize),
    pub nfe: usize,
}

impl<'t, T: Scalar, F: Dynamics<T>> System<'t, T> for FieldSystem<'_, 't, T, F> {
    fn eval(&mut self, t: f64, tv: Var<'t, T>, y: &[Var<'t, T>]) -> Result<State<'t, T>> {
        self.nfe += 1;
        let tape = tv.tape();
        // On a tape that is not recording (the untaped forward, recomputations), f's
        // intermediate values are dropped as soon as it returns: otherwise every stage's
        // activations would stay until the step ends (the forward's peak heap).
        let compact = (!tape.is_grad_enabled()).then(|| tape.mark());
        let out = self.f.eval(tv, y[0], self.params)?;
        check_field_output(out, self.shape, t)?;
        match compact {
            Some(mark) => Ok(tape.rewind_keep(mark, &[out])?),
            None => Ok(vec![out]),
        }
    }
}

impl<'t, T: Scalar, S: System<'t, T>> System<'t, T> for &mut S {
    fn eval(&mut self, t: f64, tv: Var<'t, T>, y: &[Var<'t, T>]) -> Result<State<'t, T>> {
        (**self).eval(t, tv, y)
    }

    fn reads(&self, c: usize) -> bool {
        (**self).reads(c)
    }
}

pub(crate) fn check_field_output<T: Scalar>(
    out: Var<'_, T>,
    shape: (usize, usize),
    t: f64,
) -> Result<()> {
    let got = out.shape()?;
    if got != shape {
        return Err(Error::Shape {
            what: "f(t, h)".into(),
            expected: shape,
            got,
        });
    }
    if !out.with_value(all_finite)? {
        return Err(Error::NonFinite {
            what: "derivative",
            t,
        });
    }
    Ok(())
}

/// Solve with any gradient [`Strategy`]: the one entry point behind [`odeint`] (taped) and
/// [`crate::odeint_adjoint`] (backsolve).
///
/// `t` is a 1×n (or n×1) grid, strictly increasing or decreasing; `params` are the
/// variables the dynamics read, in the order `f` expects them. Gradients reach `h0`, every
/// parameter and every time in `t`. The opaque strategies clone `f` into their node, so it
/// must be `Clone + 'static` (keep weights in `params`). On error the tape is left as it was.
///
/// ```
/// use ad_core::{nalgebra::DMatrix, Result as TapeResult, Scalar, Tape, Var};
/// use ode::{odeint_with, Dynamics, Options, Strategy};
///
/// /// h' = −k h.
/// #[derive(Clone)]
/// struct Decay;
/// impl<T: Scalar> Dynamics<T> for Decay {
///     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
///         Ok(-(h.mul(p[0].broadcast(h.shape()?.0, h.shape()?.1)?)?))
///     }
/// }
///
/// let tape = Tape::<f64>::new();
/// let h0 = tape.var(DMatrix::from_element(1, 3, 2.0));
/// let k = tape.var(DMatrix::from_element(1, 1, 0.5));
/// let t = tape.constant(DMatrix::from_row_slice(1, 3, &[0.0, 1.0, 4.0]));
/// let mut grads = Vec::new();
/// for strategy in ["taped", "aca", "checkpointed:2", "backsolve", "auto:100000"] {
///     let strategy: Strategy = strategy.parse()?;
///     let sol = odeint_with(&tape, &Decay, h0, t, &[k], &Options::default(), &strategy)?;
///     let g = tape.backward(sol.last().sum())?;
///     grads.push(g.get(k).unwrap()[(0, 0)]);
///     if let Some(b) = sol.backward_stats(&g) {
///         println!("{}: backward NFE {}, {} recomputed", sol.strategy.name, b.nfe, b.recomputed_steps);
///     }
/// }
/// // The exact strategies agree with the taped gradient to rounding.
/// assert!((grads[1] - grads[0]).abs() < 1e-12 * grads[0].abs());
/// assert!((grads[2] - grads[0]).abs() < 1e-12 * grads[0].abs());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn odeint_with<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    tape: &'t Tape<T>,
    f: &F,
    h0: Var<'t, T>,
    t: Var<'t, T>,
    params: &[Var<'t, T>],
    opts: &Options,
    strategy: &Strategy,
) -> Result<Solution<'t, T>> {
    let input = SolveInput::checked("odeint_with", strategy, tape, h0, t, params, opts)?;
    if let Some(sol) = input.without_steps(strategy)? {
        return Ok(sol);
    }
    match strategy {
        Strategy::Taped => taped(&input, f, |_| Ok(())),
        Strategy::Backsolve(b) => crate::adjoint::backsolve(&input, f, b, 1),
        Strategy::BacksolveCheckpointed {
            checkpoints,
            backsolve,
        } => crate::adjoint::backsolve(&input, f, backsolve, *checkpoints),
        Strategy::StoreEveryStep => crate::checkpoint::exact(&input, f, None, String::new()),
        Strategy::Checkpointed { slots } => {
            crate::checkpoint::exact(&input, f, Some(*slots), String::new())
        }
        Strategy::Auto { budget_bytes } => crate::auto::solve(&input, f, *budget_bytes),
    }
}

/// What every strategy is handed: the caller's tape, the inputs and the forward options.
pub(crate) struct SolveInput<'a, 't, T: Scalar> {
    pub tape: &'t Tape<T>,
    pub h0: Var<'t, T>,
    pub t: Var<'t, T>,
    pub params: &'a [Var<'t, T>],
    pub opts: &'a Options,
}

/// An opaque strategy's node inputs as values: the grid as a row and as checked times,
/// `h0` and the parameters.
pub(crate) struct NodeInputs<'t, T: Scalar> {
    pub row: Var<'t, T>,
    pub grid: Vec<f64>,
    pub times: Vec<T>,
    pub h0: DMatrix<T>,
    pub params: Vec<DMatrix<T>>,
}

impl<'a, 't, T: Scalar> SolveInput<'a, 't, T> {
    /// Validate the options, then the strategy's settings, and refuse Vars of another tape
    /// before anything is recorded (`op` names the entry point in the error).
    pub fn checked(
        op: &'static str,
        strategy: &Strategy,
        tape: &'t Tape<T>,
        h0: Var<'t, T>,
        t: Var<'t, T>,
        params: &'a [Var<'t, T>],
        opts: &'a Options,
    ) -> Result<Self> {
        opts.validate()?;
        strategy.validate(opts)?;
        check_precision::<T>(opts, strategy)?;
        check_tape(tape, op, [&h0, &t].into_iter().chain(params))?;
        Ok(Self {
            tape,
            h0,
            t,
            params,
            opts,
        })
    }

    /// The solution of a one-point grid, which asks for `h(t_0) = h0` only (torchdiffeq
    /// returns it too): no step, no node. `None` for longer grids.
    pub fn without_steps(&self, strategy: &Strategy) -> Result<Option<Solution<'t, T>>> {
        let (_, grid) = grid_row(self.t)?;
        if grid.len() > 1 {
            return Ok(None);
        }
        self.h0.with_value(|m| check_h0(m, grid[0]))??;
        Ok(Some(Solution {
            outputs: vec![self.h0],
            stats: SolveStats::default(),
            steps: Vec::new(),
            strategy: StrategyReport {
                name: strategy.name(),
                stored_states: 0,
                reason: "a one-point grid: h(t_0) is h0, nothing to integrate".into(),
            },
            node: None,
        }))
    }

    /// Check the inputs and read their values for an opaque strategy's untaped forward.
    pub fn values(&self) -> Result<NodeInputs<'t, T>> {
        let (row, grid) = grid_row(self.t)?;
        let h0 = self.h0.value()?;
        check_h0(&h0, grid[0])?;
        let times: Vec<T> = row.with_value(|m| m.iter().copied().collect())?;
        let params: Vec<DMatrix<T>> = self
            .params
            .iter()
            .map(|p| p.value())
            .collect::<ad_core::Result<_>>()?;
        Ok(NodeInputs {
            row,
            grid,
            times,
            h0,
            params,
        })
    }

    /// Record an opaque strategy's node, inputs `[h0, t (1×n), θ…]` and outputs
    /// `h(t_1), …, h(t_n)` from `forward` (`h(t_0)` is `h0` itself), and wrap it in a
    /// [`Solution`].
    pub fn record_node<B: NodeBackward<T> + 'static>(
        &self,
        row: Var<'t, T>,
        forward: Forward<T>,
        backward: B,
        strategy: StrategyReport,
    ) -> Result<Solution<'t, T>> {
        let mut inputs = vec![self.h0, row];
        inputs.extend_from_slice(self.params);
        let node = SolveNode {
            outputs: forward.outputs,
            backward,
        };
        let node_outputs = self.tape.custom(node, &inputs).map_err(Error::from_tape)?;
        let mut outputs = vec![self.h0];
        outputs.extend_from_slice(&node_outputs);
        Ok(Solution {
            outputs,
            stats: forward.stats,
            steps: forward.steps,
            strategy,
            node: node_outputs.first().copied(),
        })
    }
}

/// The backward pass of an opaque strategy's node: from the inputs `[h0, t (1×n), θ…]`,
/// the outputs `h(t_1..t_n)` and their cotangents to the inputs' cotangents and a report.
pub(crate) trait NodeBackward<T: Scalar> {
    /// The node's name in tape statistics and errors.
    fn name(&self) -> &'static str;

    fn backward(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
    ) -> Result<(Vec<Option<DMatrix<T>>>, BackwardStats)>;

    /// Bytes kept for the backward beyond the node's inputs and outputs.
    fn held_bytes(&self) -> usize;

    /// The solve's time grid (output `i` of the node is at `grid[i + 1]`).
    fn grid(&self) -> &[f64];
}

/// An opaque strategy's node on the caller's tape: the untaped forward's outputs (handed
/// over when the node is recorded) and the strategy's backward.
struct SolveNode<T: Scalar, B> {
    outputs: Vec<DMatrix<T>>,
    backward: B,
}

impl<T: Scalar, B: NodeBackward<T>> ad_core::CustomOp<T> for SolveNode<T, B> {
    fn name(&self) -> &str {
        self.backward.name()
    }

    fn forward(
        &mut self,
        _inputs: &[&DMatrix<T>],
    ) -> std::result::Result<Vec<DMatrix<T>>, ad_core::BoxError> {
        Ok(std::mem::take(&mut self.outputs))
    }

    fn vjp(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        wants: &[bool],
    ) -> std::result::Result<Vec<Option<DMatrix<T>>>, ad_core::BoxError> {
        Ok(self.vjp_with_report(inputs, outputs, cotangents, wants)?.0)
    }

    fn vjp_with_report(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> std::result::Result<ad_core::ReportedVjp<T>, ad_core::BoxError> {
        // A NaN cotangent would surface as a NaN state deep in the backward solve: name it.
        for (i, g) in cotangents.iter().enumerate() {
            if let Some(g) = g {
                if !ad_core::all_finite(g) {
                    let t = self.backward.grid().get(i + 1).copied().unwrap_or(f64::NAN);
                    return Err(Box::new(Error::NonFiniteCotangent { output: i + 1, t }));
                }
            }
        }
        let (grads, stats) = self.backward.backward(inputs, outputs, cotangents)?;
        Ok((grads, Some(Box::new(stats))))
    }

    fn held_bytes(&self) -> usize {
        self.backward.held_bytes()
    }
}

/// Taped solve: every stage is recorded on `tape`, so `tape.backward` differentiates the
/// discrete solution exactly (accepted step sizes are constants, as in torchdiffeq and
/// Diffrax) with respect to `h0`, every parameter and every time in `t`.
///
/// `t` is a 1×n (or n×1) grid, strictly increasing or decreasing; `params` are the
/// variables the dynamics read, handed over in the order `f` expects them. Memory grows
/// with the number of steps; see [`odeint_with`] for the other strategies. On error the
/// tape is rewound to where it was, so it stays usable.
pub fn odeint<'t, T: Scalar, F: Dynamics<T>>(
    tape: &'t Tape<T>,
    f: &F,
    h0: Var<'t, T>,
    t: Var<'t, T>,
    params: &[Var<'t, T>],
    opts: &Options,
) -> Result<Solution<'t, T>> {
    let input = SolveInput::checked("odeint", &Strategy::Taped, tape, h0, t, params, opts)?;
    if let Some(sol) = input.without_steps(&Strategy::Taped)? {
        return Ok(sol);
    }
    taped(&input, f, |_| Ok(()))
}

/// The taped solve, calling `on_step` after every accepted step (auto's budget watch).
pub(crate) fn taped<'t, T: Scalar, F: Dynamics<T>>(
    input: &SolveInput<'_, 't, T>,
    f: &F,
    on_step: impl FnMut(&Accepted<'t, T>) -> Result<()>,
) -> Result<Solution<'t, T>> {
    let mark = input.tape.mark();
    let result = taped_recorded(mark, input, f, on_step);
    if result.is_err() {
        // Leave the tape as it was; only rewinding can fail here, and then it is the
        // original error that matters.
        let _ = input.tape.rewind(mark);
    }
    result
}

fn taped_recorded<'t, T: Scalar, F: Dynamics<T>>(
    mark: ad_core::Mark,
    input: &SolveInput<'_, 't, T>,
    f: &F,
    mut on_step: impl FnMut(&Accepted<'t, T>) -> Result<()>,
) -> Result<Solution<'t, T>> {
    let SolveInput {
        tape,
        h0,
        t,
        params,
        opts,
    } = *input;
    let (row, grid) = grid_row(t)?;
    h0.with_value(|m| check_h0(m, grid[0]))??;
    let times: Vec<(f64, Var<'t, T>)> = grid
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, &ti)| Ok((ti, row.slice_cols(i, 1)?)))
        .collect::<Result<_>>()?;
    let sys = FieldSystem {
        f,
        params,
        shape: h0.shape()?,
        nfe: 0,
    };
    let start = Start {
        t0: grid[0],
        t_base: row.slice_cols(0, 1)?,
        t: grid[0],
        y: vec![h0],
        k0: None,
        dt: None,
        dir: direction(&grid),
    };
    let mut stepper = Stepper::new(tape, sys, forward_controller(opts), Memory::Taped, start)?;
    let mut outputs = vec![h0];
    let mut steps = Vec::new();
    stepper.run(
        &times,
        false,
        |_, s| {
            outputs.push(s[0]);
            Ok(())
        },
        |acc, _| {
            steps.push(acc.record);
            on_step(acc)
        },
    )?;
    // Keep only what backward reads (and the outputs): e.g. pre-activations that only a
    // tanh consumes are dropped.
    tape.release_unneeded(mark, &outputs)?;
    Ok(Solution {
        outputs,
        stats: SolveStats {
            nfe: stepper.sys.nfe,
            ..stepper.stats
        },
        steps,
        strategy: StrategyReport {
            name: Strategy::Taped.name(),
            stored_states: 0,
            reason: "every stage on the caller's tape".into(),
        },
        node: None,
    })
}

/// `+1` for an increasing grid, `−1` for a decreasing one.
pub(crate) fn direction(grid: &[f64]) -> f64 {
    if grid.last() >= grid.first() {
        1.0
    } else {
        -1.0
    }
}

/// Refuse relative tolerances below the unit roundoff of `T`'s real type (an `f32` solve at
/// rtol 1e-10 would run to its step limit or report accuracy it does not have).
fn check_precision<T: Scalar>(opts: &Options, strategy: &Strategy) -> Result<()> {
    let unit_roundoff = <T::Primitive as Precision>::EPSILON / 2.0;
    let backsolve = match strategy {
        Strategy::Backsolve(b) => Some(b),
        Strategy::BacksolveCheckpointed { backsolve, .. } => Some(backsolve),
        _ => None,
    };
    let rtols = [
        ("rtol", Some(opts.rtol)),
        ("Backsolve::rtol", backsolve.and_then(|b| b.rtol)),
    ];
    for (name, value) in rtols {
        if let Some(value) = value.filter(|&v| v < unit_roundoff) {
            return Err(Error::ToleranceBelowPrecision {
                name,
                value,
                precision: <T::Primitive as Precision>::NAME,
                unit_roundoff,
            });
        }
    }
    Ok(())
}

/// Untaped solve on values: `h(t_0), …, h(t_n)` and the counts. Runs on a scratch tape that
/// is rewound after every step, so memory does not grow with the number of steps. With a
/// dual-number `T` it also propagates forward-mode derivatives through the solve.
pub fn solve<T: Scalar, F: Dynamics<T>>(
    f: &F,
    h0: &DMatrix<T>,
    t: &[T],
    params: &[DMatrix<T>],
    opts: &Options,
) -> Result<(Vec<DMatrix<T>>, SolveStats)> {
    opts.validate()?;
    check_precision::<T>(opts, &Strategy::Taped)?;
    if check_grid(t)?.len() == 1 {
        check_h0(h0, t[0].primal())?;
        return Ok((vec![h0.clone()], SolveStats::default()));
    }
    let forward = forward_values(f, h0, t, params.to_vec(), opts, |_, _, _| Ok(()))?;
    let mut outputs = Vec::with_capacity(t.len());
    outputs.push(h0.clone());
    outputs.extend(forward.outputs);
    Ok((outputs, forward.stats))
}

/// What the untaped forward of an opaque strategy hands its node.
pub(crate) struct Forward<T: Scalar> {
    /// `h(t_1), …, h(t_n)`.
    pub outputs: Vec<DMatrix<T>>,
    /// Every accepted step.
    pub steps: Vec<StepRecord>,
    /// `first_output[k]`: the index into `outputs` of the first output inside step `k`
    /// (one entry per step, then `n − 1`): step `k` emits `first_output[k]..first_output[k + 1]`.
    pub first_output: Vec<usize>,
    pub stats: SolveStats,
}

/// The untaped forward: values only on a scratch tape rewound after every step (the
/// parameter values are moved onto it, not copied: they are as large as θ), calling
/// `keep(k, step, y_k)` with every accepted step's start state so the strategy can store
/// what it needs.
pub(crate) fn forward_values<T: Scalar, F: Dynamics<T>>(
    f: &F,
    h0: &DMatrix<T>,
    t: &[T],
    params: Vec<DMatrix<T>>,
    opts: &Options,
    mut keep: impl FnMut(usize, &StepRecord, &Var<'_, T>) -> Result<()>,
) -> Result<Forward<T>> {
    let grid = check_grid(t)?;
    check_h0(h0, grid[0])?;
    let scratch = Tape::new();
    let _no_grad = scratch.no_grad();
    let params: Vec<Var<'_, T>> = params.into_iter().map(|p| scratch.constant(p)).collect();
    let times: Vec<(f64, Var<'_, T>)> = grid
        .iter()
        .zip(t)
        .skip(1)
        .map(|(&g, &tv)| (g, scratch.constant(DMatrix::from_element(1, 1, tv))))
        .collect();
    let t_base = scratch.constant(DMatrix::from_element(1, 1, t[0]));
    let y0 = scratch.constant(h0.clone());
    let base = scratch.mark();
    let sys = FieldSystem {
        f,
        params: &params,
        shape: h0.shape(),
        nfe: 0,
    };
    let start = Start {
        t0: grid[0],
        t_base,
        t: grid[0],
        y: vec![y0],
        k0: None,
        dt: None,
        dir: direction(&grid),
    };
    let mut stepper = Stepper::new(
        &scratch,
        sys,
        forward_controller(opts),
        Memory::Scratch(base),
        start,
    )?;
    let mut outputs = Vec::with_capacity(t.len() - 1);
    let mut steps = Vec::new();
    let mut first_output = Vec::new();
    stepper.run(
        &times,
        false,
        |_, s| {
            // Emitted values are read once, here: move them out of the scratch tape.
            outputs.push(s[0].take_value()?);
            Ok(())
        },
        |acc, emitted| {
            keep(steps.len(), &acc.record, &acc.step.y0[0])?;
            steps.push(acc.record);
            first_output.push(emitted.start);
            Ok(())
        },
    )?;
    first_output.push(outputs.len());
    Ok(Forward {
        outputs,
        steps,
        first_output,
        stats: SolveStats {
            nfe: stepper.sys.nfe,
            ..stepper.stats
        },
    })
}

impl Norm {
    /// The norm's name, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Norm::Rms => "rms",
            Norm::MaxRms => "max_rms",
            Norm::Custom(_) => "custom",
        }
    }
}
