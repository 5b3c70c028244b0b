//! The untaped forward every opaque strategy runs first: the counting vector-field system,
//! the forward controller, and the recording forward solve on a scratch tape (with the
//! evenly spread stored states of the checkpointed strategies).

use ad_core::nalgebra::DMatrix;
use std::rc::Rc;

use ad_core::{all_finite, Precision, Scalar, Tape, Var};

use crate::controller::{Controller, StepRecord};
use crate::dynamics::Dynamics;
use crate::engine::{SolveStats, State, System};
use crate::error::{Error, Result};
use crate::input::{check_grid, check_h0, direction, NodeInputs};
use crate::jacobian::{jacobian_by_vjps, Jacobian};
use crate::newton::IterationMatrix;
use crate::options::Options;
use crate::scheme::Scheme;
use crate::stepper::{Accepted, GridTangents, Memory, Start, Stepper};

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
        fixed_step: if opts.method.b_error.is_none() || opts.constant_steps {
            opts.step_size
        } else {
            None
        },
        first_step: opts.first_step,
        norm: opts.norm.clone(),
        mask: None,
        replay: None,
        scheme: Scheme::of(opts),
        blocks: 1,
    }
}

/// The forward controller of a strategy's forward solve: replaying `planned` steps (chosen
/// by a tangent-aware planning solve) when there are any.
pub(crate) fn planned_controller(opts: &Options, planned: Option<&[StepRecord]>) -> Controller {
    match planned {
        Some(steps) => forward_controller(opts).replaying(steps.iter().copied()),
        None => forward_controller(opts),
    }
}

/// `h' = f(t, h)` as an engine system: counts evaluations, checks shape and finiteness.
pub(crate) struct FieldSystem<'a, 't, T: Scalar, F: Dynamics<T>> {
    pub f: &'a F,
    pub params: &'a [Var<'t, T>],
    pub shape: (usize, usize),
    pub nfe: usize,
    /// Jacobians, factorisations and Newton iterations of implicit steps.
    pub work: SolveStats,
    /// `Some` in a values-only solve: the Jacobian kept across implicit steps while Newton
    /// converges well ([`System::newton_matrix`]); `None`: every step computes its own.
    pub reuse: Option<KeptJacobian<T::Primitive>>,
}

/// A Jacobian kept across implicit steps, and its iteration matrix for the last `c`.
pub(crate) struct KeptJacobian<P: Precision> {
    jacobian: Option<Jacobian<P>>,
    matrix: Option<Rc<IterationMatrix<P>>>,
}

impl<P: Precision> Default for KeptJacobian<P> {
    fn default() -> Self {
        Self {
            jacobian: None,
            matrix: None,
        }
    }
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

    fn jacobian(
        &mut self,
        t: f64,
        tv: Var<'t, T>,
        y: &[Var<'t, T>],
    ) -> Result<Jacobian<T::Primitive>> {
        self.work.jacobians += 1;
        let params: Vec<DMatrix<T>> = self
            .params
            .iter()
            .map(|p| p.value())
            .collect::<ad_core::Result<_>>()?;
        let h = y[0].value()?;
        if let Some(jac) = self.f.jacobian(t, &h, &params) {
            return jac;
        }
        let (jac, sweeps) = jacobian_by_vjps(self.f, t, &tv.value()?, &h, &params)?;
        self.nfe += sweeps;
        Ok(jac)
    }

    fn count(&mut self, work: SolveStats) {
        self.work += work;
    }

    fn newton_matrix(
        &mut self,
        t: f64,
        tv: Var<'t, T>,
        y: &[Var<'t, T>],
        c: f64,
    ) -> Result<(Rc<IterationMatrix<T::Primitive>>, bool)> {
        let kept = match self.reuse.as_mut().and_then(|k| k.jacobian.take()) {
            Some(jac) => Some(jac),
            None if self.reuse.is_some() => None,
            None => {
                let jac = self.jacobian(t, tv, y)?;
                self.work.factorizations += 1;
                return Ok((Rc::new(IterationMatrix::new(&jac, c)?), false));
            }
        };
        let (jac, reused) = match kept {
            Some(jac) => (jac, true),
            None => (self.jacobian(t, tv, y)?, false),
        };
        let Some(reuse) = self.reuse.as_mut() else {
            return Err(Error::from_tape(ad_core::Error::InvalidArgument {
                op: "implicit step",
                message: "Jacobian reuse lost its cache; this is a bug in the ode crate".into(),
            }));
        };
        let matrix = match reuse.matrix.take() {
            Some(m) if reused && m.c == c => m,
            _ => {
                self.work.factorizations += 1;
                match IterationMatrix::new(&jac, c) {
                    Ok(m) => Rc::new(m),
                    Err(e) => {
                        // Keep J: a smaller step may factorise.
                        reuse.jacobian = Some(jac);
                        return Err(e);
                    }
                }
            }
        };
        reuse.jacobian = Some(jac);
        reuse.matrix = Some(matrix.clone());
        Ok((matrix, reused))
    }

    fn drop_jacobian(&mut self) {
        if let Some(reuse) = self.reuse.as_mut() {
            *reuse = KeptJacobian::default();
        }
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
    /// The stepper's final state: `[h(t_n)]`, or `[y_N, z_N]` for a reversible scheme.
    pub last: Vec<DMatrix<T>>,
}

/// The untaped forward: values only on a scratch tape rewound after every step (the
/// parameter values are moved onto it, not copied: they are as large as θ), calling
/// `keep(k, step)` with every accepted step (its start state and stages still on the scratch
/// tape) so the strategy can store
/// what it needs.
pub(crate) fn forward_values<T: Scalar, F: Dynamics<T>>(
    f: &F,
    h0: &DMatrix<T>,
    t: &[T],
    params: Vec<DMatrix<T>>,
    ctl: Controller,
    mut keep: impl FnMut(usize, &Accepted<'_, T>) -> Result<()>,
) -> Result<Forward<T>> {
    forward_landing(f, h0, t, params, ctl, false, false, &mut keep)
}

/// [`forward_values`], with `land_end`: the last step is shortened to end on the last
/// output time instead of stepping past it and interpolating back; and `reuse_jacobians`:
/// implicit steps keep their Jacobian while Newton converges well (values-only solves:
/// a replaying strategy needs every step to be a pure function of `(t, y, dt)`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_landing<T: Scalar, F: Dynamics<T>>(
    f: &F,
    h0: &DMatrix<T>,
    t: &[T],
    params: Vec<DMatrix<T>>,
    ctl: Controller,
    land_end: bool,
    reuse_jacobians: bool,
    mut keep: impl FnMut(usize, &Accepted<'_, T>) -> Result<()>,
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
    let scheme = ctl.scheme;
    let base = scratch.mark();
    let sys = FieldSystem {
        f,
        params: &params,
        shape: h0.shape(),
        nfe: 0,
        work: Default::default(),
        reuse: reuse_jacobians.then(KeptJacobian::default),
    };
    let start = Start {
        t0: grid[0],
        t_base,
        t: grid[0],
        y: scheme.initial_state(y0),
        k0: None,
        dt: None,
        dir: direction(&grid),
        tangents: GridTangents::of_grid(&grid, t),
    };
    let mut stepper = Stepper::new(&scratch, sys, ctl, Memory::Scratch(base), start)?;
    let mut outputs = Vec::with_capacity(t.len() - 1);
    let mut steps = Vec::new();
    let mut first_output = Vec::new();
    let last = stepper.run(
        &times,
        land_end,
        |_, s| {
            // Emitted values are read once, here: move them out of the scratch tape (a landed
            // last output is y₁ itself, which the end state below still reads).
            outputs.push(if land_end {
                s[0].value()?
            } else {
                s[0].take_value()?
            });
            Ok(())
        },
        |acc, emitted| {
            keep(steps.len(), acc)?;
            steps.push(acc.record);
            first_output.push(emitted.start);
            Ok(())
        },
    )?;
    first_output.push(outputs.len());
    // The emitted outputs are nodes of their own (y₁ plus a zero shift), so the end state is
    // still there; the strategies that reconstruct states read it.
    let last = match last {
        Some(acc) => acc
            .step
            .y1
            .iter()
            .map(|v| v.value())
            .collect::<ad_core::Result<_>>()?,
        None => Vec::new(),
    };
    Ok(Forward {
        outputs,
        steps,
        first_output,
        last,
        stats: SolveStats {
            nfe: stepper.sys.nfe,
            jacobians: stepper.sys.work.jacobians,
            factorizations: stepper.sys.work.factorizations,
            newton_iterations: stepper.sys.work.newton_iterations,
            newton_failures: stepper.sys.work.newton_failures,
            ..stepper.stats
        },
    })
}

/// Keeps at most `slots` states of a forward solve, evenly spread over its accepted steps
/// without knowing their number: states at multiples of a stride, which doubles (dropping
/// every other state) whenever the slots overflow. The initial state (index 0) is always
/// kept and takes one slot; it is not copied (the caller has it).
pub(crate) struct Thinning<T: Scalar> {
    slots: usize,
    stride: usize,
    kept: Vec<(usize, f64, Option<DMatrix<T>>)>,
}

impl<T: Scalar> Thinning<T> {
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            stride: 1,
            kept: vec![(0, f64::NAN, None)],
        }
    }

    /// Whether the state at accepted step `k` would be kept.
    pub fn wants(&self, k: usize) -> bool {
        k.is_multiple_of(self.stride)
    }

    pub fn push(&mut self, k: usize, t: f64, y: DMatrix<T>) {
        self.kept.push((k, t, Some(y)));
        if self.kept.len() > self.slots {
            self.stride *= 2;
            let stride = self.stride;
            self.kept.retain(|e| e.0.is_multiple_of(stride));
        }
    }

    /// The kept states after the initial one: (step index, time, state).
    pub fn into_states(self) -> Vec<(usize, f64, DMatrix<T>)> {
        self.kept
            .into_iter()
            .filter_map(|(k, t, y)| y.map(|y| (k, t, y)))
            .collect()
    }
}

/// A stored forward state: its step index, its time and its value.
pub(crate) struct Checkpoint<T: Scalar> {
    pub step: usize,
    pub t: f64,
    pub y: DMatrix<T>,
}

/// The untaped forward of an opaque strategy, keeping at most `slots` step start states
/// (the initial one, not copied, included) evenly spread by [`Thinning`]. Takes the
/// parameter values out of `values`.
pub(crate) fn forward_keeping<T: Scalar, F: Dynamics<T>>(
    values: &mut NodeInputs<'_, T>,
    f: &F,
    ctl: Controller,
    slots: usize,
) -> Result<(Forward<T>, Vec<Checkpoint<T>>)> {
    let mut thinning = Thinning::new(slots);
    let forward = forward_values(
        f,
        &values.h0,
        &values.times,
        // The forward is their only reader: moved, not copied.
        std::mem::take(&mut values.params),
        ctl,
        |k, acc| {
            if k > 0 && thinning.wants(k) {
                thinning.push(k, acc.record.t, acc.step.y0[0].value()?);
            }
            Ok(())
        },
    )?;
    let kept = thinning
        .into_states()
        .into_iter()
        .map(|(step, t, y)| Checkpoint { step, t, y })
        .collect();
    Ok((forward, kept))
}
