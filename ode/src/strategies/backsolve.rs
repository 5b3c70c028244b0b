//! The backsolve adjoint (Chen et al. 2018; torchdiffeq's `odeint_adjoint`): the whole solve
//! as one opaque tape node whose VJP integrates the adjoint system backwards, resetting `h`
//! to stored forward states (outputs, checkpoints) and measuring the drift there.

use ad_core::nalgebra::DMatrix;
use ad_core::{Mark, Scalar, Tape, Var};

use crate::adjoint_vjp::{field_vjp, Wrt};
use crate::dynamics::Dynamics;
use crate::engine::{SolveStats, State, System};
use crate::error::{Error, Result};
use crate::forward::{forward_controller, forward_keeping, planned_controller};
use crate::input::{direction, SolveInput};
use crate::node::NodeBackward;
use crate::options::{AdjointNorm, Norm, Options};
use crate::scheme::Scheme;
use crate::solution::Solution;
use crate::stepper::{GridTangents, Memory, Start, Stepper};
use crate::strategy::{Backsolve, BackwardStats, Drift, Strategy, StrategyReport};

/// The backsolve strategy (`Strategy::Backsolve`, or `BacksolveCheckpointed` with its
/// stored states; 1: only `h0`), reported under the strategy's own name.
pub(crate) fn backsolve<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    input: &SolveInput<'_, 't, T>,
    f: &F,
    strategy: &Strategy,
) -> Result<Solution<'t, T>> {
    let (settings, checkpoints) = match strategy {
        Strategy::Backsolve(b) => (b, 1),
        Strategy::BacksolveCheckpointed {
            checkpoints,
            backsolve,
        } => (backsolve, *checkpoints),
        _ => {
            return Err(Error::Tape(ad_core::Error::InvalidArgument {
                op: "backsolve",
                message: "called for another strategy; this is a bug in the ode crate".into(),
            }))
        }
    };
    let mut values = input.values()?;
    let (forward, kept) = forward_keeping(
        &mut values,
        f,
        planned_controller(input.opts, input.planned),
        checkpoints,
    )?;
    let stored: Vec<(f64, DMatrix<T>)> = kept.into_iter().map(|c| (c.t, c.y)).collect();
    let report = StrategyReport {
        name: strategy.name(),
        stored_states: stored.len() + 1,
        reason: format!(
            "h reset at output times{}",
            if stored.is_empty() {
                String::new()
            } else {
                format!(" and at {} stored forward states", stored.len())
            }
        ),
    };
    let op = BacksolveOp {
        f: f.clone(),
        grid: values.grid,
        opts: input.opts.clone(),
        settings: settings.clone(),
        checkpoints: stored,
    };
    input.record_node(values.row, forward, op, report)
}

/// The backsolve node's backward: the forward's settings, the backsolve's own, and the
/// stored states it resets `h` to.
struct BacksolveOp<T: Scalar, F> {
    f: F,
    grid: Vec<f64>,
    opts: Options,
    settings: Backsolve,
    /// Forward states at accepted step times, for the backward to reset `h` to.
    checkpoints: Vec<(f64, DMatrix<T>)>,
}

impl<T: Scalar, F: Dynamics<T>> NodeBackward<T> for BacksolveOp<T, F> {
    fn name(&self) -> &'static str {
        "odeint_adjoint"
    }

    fn backward(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
    ) -> Result<(Vec<Option<DMatrix<T>>>, BackwardStats)> {
        self.backsolve(inputs, outputs, cotangents)
    }

    fn grid(&self) -> &[f64] {
        &self.grid
    }

    fn held_bytes(&self) -> usize {
        // The grid and the checkpoints; the outputs are the node's output values, counted
        // by the tape.
        let state_bytes: usize = self
            .checkpoints
            .iter()
            .map(|(_, y)| y.len() * std::mem::size_of::<T>() + std::mem::size_of::<f64>())
            .sum();
        self.grid.len() * std::mem::size_of::<f64>() + state_bytes
    }
}

/// Where the backward solve stops: an output time (whose cotangent is added there) or a
/// checkpoint, or both; `h` is reset to the stored forward state at each.
#[derive(Clone, Copy)]
struct Stop {
    t: f64,
    output: Option<usize>,
    checkpoint: Option<usize>,
}

/// Output stops and checkpoint stops merged in the direction of the forward solve.
fn merge_stops(outputs: &[(usize, f64)], checkpoints: &[f64], dir: f64) -> Vec<Stop> {
    let (mut i, mut j) = (0, 0);
    let mut stops = Vec::with_capacity(outputs.len() + checkpoints.len());
    while i < outputs.len() || j < checkpoints.len() {
        let o = outputs.get(i).copied();
        let c = checkpoints.get(j).copied();
        let stop = match (o, c) {
            (Some((k, to)), Some(tc)) if to == tc => {
                i += 1;
                j += 1;
                Stop {
                    t: to,
                    output: Some(k),
                    checkpoint: Some(j - 1),
                }
            }
            (Some((k, to)), Some(tc)) if (to - tc) * dir < 0.0 => {
                i += 1;
                Stop {
                    t: to,
                    output: Some(k),
                    checkpoint: None,
                }
            }
            (Some((k, to)), None) => {
                i += 1;
                Stop {
                    t: to,
                    output: Some(k),
                    checkpoint: None,
                }
            }
            (_, Some(tc)) => {
                j += 1;
                Stop {
                    t: tc,
                    output: None,
                    checkpoint: Some(j - 1),
                }
            }
            (None, None) => break,
        };
        stops.push(stop);
    }
    stops
}

impl<T: Scalar, F> BacksolveOp<T, F> {
    fn backward_controller(&self, n_params: usize) -> crate::controller::Controller {
        let (o, b) = (&self.opts, &self.settings);
        let method = b.method.unwrap_or(o.method);
        // Components: [h, a, a_θ (n_params), a_t].
        let (norm, mask) = match &b.norm {
            AdjointNorm::Full => (Norm::MaxRms, None),
            AdjointNorm::Seminorm => {
                let mut mask = vec![true; n_params + 3];
                mask[2..2 + n_params].iter_mut().for_each(|m| *m = false);
                (Norm::MaxRms, Some(mask))
            }
            AdjointNorm::Custom(f) => (Norm::Custom(f.clone()), None),
        };
        crate::controller::Controller {
            tableau: method,
            rtol: b.rtol.unwrap_or(o.rtol),
            atol: b.atol.unwrap_or(o.atol),
            fixed_step: if method.b_error.is_none() {
                b.step_size.or(o.step_size)
            } else {
                None
            },
            norm,
            mask,
            // The forward's first step is for the forward; the backward picks its own
            // (and then carries its step size across stops).
            first_step: None,
            scheme: Scheme::of_tableau(method),
            ..forward_controller(o)
        }
    }

    /// The backward pass of `docs/design.md`: from the latest stop back to t_0, at each
    /// stop measure the drift, reset h to the stored state and add the output's cotangent
    /// g_i to a (recording dL/dt_i = f(t_i, h_i)·g_i), then integrate [h, a, a_θ, a_t] to
    /// the previous stop. Output times without a cotangent are stops only with
    /// `stop_at_all_outputs`.
    fn backsolve(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
    ) -> Result<(Vec<Option<DMatrix<T>>>, BackwardStats)>
    where
        F: Dynamics<T>,
    {
        let n = self.grid.len();
        let n_params = inputs.len() - 2;
        let ctl = self.backward_controller(n_params);
        let dir = direction(&self.grid);

        // The local tape records one evaluation of f at a time for its VJPs.
        let local = Tape::new();
        let local_origin = local.mark();
        let params: Vec<Var<'_, T>> = inputs[2..]
            .iter()
            .map(|p| local.var((*p).clone()))
            .collect();
        let size = std::mem::size_of::<T>();
        let param_len: usize = inputs[2..].iter().map(|p| p.len()).sum();
        let state_len = inputs[0].len();
        // What the engine holds off the tapes during a step (see `crate::engine::rk_step`):
        // the error estimate (f64s, for the components the norm counts) and the quadratures'
        // running sums (a_θ, a_t).
        let counted_len = match &ctl.mask {
            Some(mask) => {
                let lens = [state_len, state_len]
                    .into_iter()
                    .chain(inputs[2..].iter().map(|p| p.len()))
                    .chain([1]);
                lens.zip(mask).filter(|(_, &m)| m).map(|(l, _)| l).sum()
            }
            None => 2 * state_len + param_len + 1,
        };
        let error_bytes = if ctl.tableau.b_error.is_some() {
            counted_len * std::mem::size_of::<f64>()
        } else {
            0
        };
        let mut sys = AugmentedSystem {
            f: &self.f,
            local: &local,
            params: &params,
            base: local.mark(),
            nfe: 0,
            local_origin,
            scratch_origin: None,
            off_tape: error_bytes + (param_len + 1) * size + n * size,
            vjp_out: (state_len + param_len + 1) * size,
            peak: 0,
        };

        let zeros = |m: &DMatrix<T>| DMatrix::zeros(m.nrows(), m.ncols());
        let mut a = zeros(inputs[0]);
        let mut a_theta: Vec<DMatrix<T>> = inputs[2..].iter().map(|p| zeros(p)).collect();
        let mut s = T::zero();
        let mut grad_t = DMatrix::zeros(1, n);
        let mut stats = BackwardStats::default();
        let mut solve_stats = SolveStats::default();
        let mut dt = None;

        // Output i ≥ 1 is the node's output i − 1; h(t_0) = h0 takes its cotangent directly.
        let g = |i: usize| {
            if i == 0 {
                None
            } else {
                cotangents[i - 1].as_ref()
            }
        };
        let h_out = |i: usize| if i == 0 { inputs[0] } else { outputs[i - 1] };
        // Nothing flows back from after the latest output with a cotangent.
        let last = (1..n).rev().find(|&i| g(i).is_some()).unwrap_or(0);
        let output_stops: Vec<(usize, f64)> = (0..=last)
            .filter(|&i| i == 0 || i == last || self.settings.stop_at_all_outputs || g(i).is_some())
            .map(|i| (i, self.grid[i]))
            .collect();
        let checkpoint_times: Vec<f64> = self
            .checkpoints
            .iter()
            .map(|(t, _)| *t)
            .filter(|&t| (t - self.grid[last]) * dir < 0.0)
            .collect();
        let stops = merge_stops(&output_stops, &checkpoint_times, dir);
        let stored = |stop: &Stop| -> &DMatrix<T> {
            match (stop.output, stop.checkpoint) {
                (Some(i), _) => h_out(i),
                (None, Some(c)) => &self.checkpoints[c].1,
                (None, None) => inputs[0],
            }
        };
        // A stop's time as a scalar: an output time is the grid's own entry, a checkpoint's
        // is t_0 + (t − t_0), as the forward's step times (so dual parts carry through).
        let time_of = |stop: &Stop| -> T {
            match stop.output {
                Some(i) => inputs[1][i],
                None => inputs[1][0] + T::constant(stop.t - self.grid[0]),
            }
        };
        let scratch = Tape::new();
        let _no_grad = scratch.no_grad();
        sys.scratch_origin = Some(scratch.mark());
        let mut reconstructed: Option<DMatrix<T>> = None;
        for w in stops.windows(2).rev() {
            let (to, from) = (w[0], w[1]);
            stats.segments += 1;
            let h_stored = stored(&from);
            if let Some(h_rec) = reconstructed.take() {
                stats.drift.push(Drift {
                    t: from.t,
                    relative: relative_drift(&h_rec, h_stored),
                });
            }
            if let Some(g) = from.output.and_then(g) {
                a += g;
            }
            let t_base = scratch.constant(DMatrix::from_element(1, 1, time_of(&from)));
            let t_end = scratch.constant(DMatrix::from_element(1, 1, time_of(&to)));
            // Steps rewind to here, so the segment's start state and first stage go with the
            // first step (the stepper carries its own from then on): never two copies of a_θ.
            let base = scratch.mark();
            let mut y: State<'_, T> = Vec::with_capacity(n_params + 3);
            // Reset h to the stored forward value: backward reconstruction drifts.
            y.push(scratch.constant(h_stored.clone()));
            y.push(scratch.constant(a));
            y.extend(a_theta.into_iter().map(|m| scratch.constant(m)));
            let k0 = sys.eval(from.t, t_base, &y)?;
            // dL/dt_i = f(t_i, h_i) · g_i (the direct part); a_t starts from −Σ of them.
            if let Some(i) = from.output {
                let direct = match g(i) {
                    Some(g) => k0[0].with_value(|f| f.dot(g))?,
                    None => T::zero(),
                };
                grad_t[(0, i)] = direct;
                s -= direct;
            }
            y.push(scratch.constant(DMatrix::from_element(1, 1, s)));
            let start = Start {
                t0: from.t,
                t_base,
                t: from.t,
                y,
                k0: Some(k0),
                dt,
                dir: -dir,
                tangents: GridTangents::none(),
            };
            let mut stepper = Stepper::new(
                &scratch,
                &mut sys,
                ctl.clone(),
                Memory::Scratch(base),
                start,
            )?;
            let mut end = stepper
                .run(&[(to.t, t_end)], true, |_, _| Ok(()), |_, _| Ok(()))?
                .ok_or_else(|| internal("a backward segment took no step"))?;
            solve_stats += stepper.stats;
            dt = Some(end.dt_carry);
            // Step sizes are numbers, so the segment's end moves with its start's tangent
            // only; a tangent on the end time itself enters as y + (t_to − t_reached)·F,
            // whose value part is exactly 0 (so for f64 there is nothing to do).
            let tangent_shift = if ad_core::carries_derivatives::<T>() {
                let span = time_of(&to) - time_of(&from);
                let shift = span - T::constant(span.primal());
                Some((stepper.first_stage_after(&mut end)?, shift))
            } else {
                None
            };
            // The scratch tape records nothing: move the end state out instead of copying it
            // (a_θ is as large as the parameters).
            let mut values: Vec<DMatrix<T>> = end
                .step
                .y1
                .iter()
                .map(|v| v.take_value())
                .collect::<ad_core::Result<_>>()?;
            if let Some((k, shift)) = tangent_shift {
                for (v, kc) in values.iter_mut().zip(&k) {
                    kc.with_value(|k| *v += k * shift)?;
                }
            }
            drop(end);
            s = values[n_params + 2][(0, 0)];
            a_theta = values.drain(2..2 + n_params).collect();
            a = values.swap_remove(1);
            reconstructed = values.into_iter().next();
            scratch.reset()?;
            sys.scratch_origin = Some(scratch.mark());
        }
        if let (Some(h_rec), Some(first)) = (reconstructed, stops.first()) {
            stats.drift.push(Drift {
                t: first.t,
                relative: relative_drift(&h_rec, stored(first)),
            });
        }
        // A cotangent on h0's own output (never a node output) is the caller's; t_0 gets
        // the accumulated time adjoint.
        grad_t[(0, 0)] = s;
        stats.nfe = sys.nfe;
        stats.holding(sys.peak);
        stats.accepted = solve_stats.accepted;
        stats.rejected = solve_stats.rejected;
        let mut grads = Vec::with_capacity(inputs.len());
        grads.push(Some(a));
        grads.push(Some(grad_t));
        grads.extend(a_theta.into_iter().map(Some));
        Ok((grads, stats))
    }
}

/// `max |h_rec − h_stored| / max |h_stored|` (absolute when the stored state is zero).
fn relative_drift<T: Scalar>(h_rec: &DMatrix<T>, h_stored: &DMatrix<T>) -> f64 {
    let diff = h_rec
        .iter()
        .zip(h_stored.iter())
        .map(|(a, b)| (a.primal() - b.primal()).abs())
        .fold(0.0, f64::max);
    let scale = h_stored
        .iter()
        .map(|b| b.primal().abs())
        .fold(0.0, f64::max);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

fn internal(message: &str) -> Error {
    Error::Tape(ad_core::Error::InvalidArgument {
        op: "odeint_adjoint",
        message: format!("{message}; this is a bug in the ode crate"),
    })
}

/// The augmented dynamics, in forward time:
/// `[h, a, a_θ, a_t]' = [f, −aᵀ∂f/∂h, −aᵀ∂f/∂θ, −aᵀ∂f/∂t]`.
/// One evaluation records f once on the local tape and pulls `−a` back through it.
struct AugmentedSystem<'a, 'l, T: Scalar, F> {
    f: &'a F,
    local: &'l Tape<T>,
    params: &'a [Var<'l, T>],
    base: Mark,
    nfe: usize,
    /// The local tape before θ was copied onto it.
    local_origin: Mark,
    /// The scratch tape (the augmented states and stages) at its start.
    scratch_origin: Option<Mark>,
    /// Bytes the step holds off the tapes (error estimate, running sums, the time adjoint).
    off_tape: usize,
    /// Bytes of the gradients a VJP returns (h, θ, t).
    vjp_out: usize,
    /// The most bytes held at once so far ([`BackwardStats::peak_bytes`]).
    peak: usize,
}

impl<T: Scalar, F> AugmentedSystem<'_, '_, T, F> {
    /// The bytes held with one evaluation recorded and its VJP about to run: both tapes,
    /// the VJP's cotangent for every value the evaluation recorded and the gradients it
    /// returns, the seed −a, and the step's buffers off the tapes.
    fn holding(&self, scratch: &Tape<T>, seed: usize) -> usize {
        let scratch_bytes = self.scratch_origin.map_or(0, |m| scratch.bytes_since(m));
        self.local.bytes_since(self.local_origin)
            + self.local.bytes_since(self.base)
            + self.vjp_out
            + seed
            + scratch_bytes
            + self.off_tape
    }
}

impl<'t, T: Scalar, F: Dynamics<T>> System<'t, T> for AugmentedSystem<'_, '_, T, F> {
    /// Only h and a feed the dynamics; a_θ and a_t are pure quadratures.
    fn reads(&self, c: usize) -> bool {
        c < 2
    }

    fn eval(&mut self, t: f64, tv: Var<'t, T>, y: &[Var<'t, T>]) -> Result<State<'t, T>> {
        self.nfe += 1;
        let scratch = tv.tape();
        let neg_a = y[1].with_value(|a| -a)?;
        let seed_bytes = neg_a.len() * std::mem::size_of::<T>();
        let mut peak = self.peak;
        // The time's value, not just `t`: its dual part (a tangent on the grid) must reach f.
        let time = (t, tv.value()?[(0, 0)]);
        let vjp = field_vjp(
            self.f,
            self.local,
            self.base,
            self.params,
            time,
            y[0].value()?,
            neg_a,
            Wrt::All,
            || peak = peak.max(self.holding(scratch, seed_bytes)),
        )?;
        self.peak = peak;
        let mut k = Vec::with_capacity(y.len());
        k.push(scratch.constant(vjp.field));
        k.extend(vjp.grads.into_iter().map(|g| scratch.constant(g)));
        Ok(k)
    }
}
