//! The exact replay strategies: store every step (ACA) and K-slot binomial checkpointing.
//! The forward runs untaped and records every accepted step; the backward replays each step
//! on a local tape with its recorded step size and pulls the cotangent back through it,
//! recomputing unstored start states from the nearest stored one (see `crate::schedule`).

use std::cell::RefCell;

use ad_core::nalgebra::DMatrix;
use ad_core::{Mark, Scalar, Tape, Var};

use crate::controller::StepRecord;
use crate::dynamics::Dynamics;
use crate::error::Result;
use crate::forward::{forward_controller, forward_keeping, planned_controller, FieldSystem};
use crate::input::{direction, SolveInput};
use crate::node::NodeBackward;
use crate::options::Options;
use crate::schedule::{min_recomputations, split};
use crate::solution::Solution;
use crate::stepper::{GridTangents, Memory, Start, Stepper};
use crate::strategy::{BackwardStats, Strategy, StrategyReport};

/// The exact strategy with at most `slots` stored states (`None`: every step's).
pub(crate) fn exact<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    input: &SolveInput<'_, 't, T>,
    f: &F,
    slots: Option<usize>,
    reason: String,
) -> Result<Solution<'t, T>> {
    let mut values = input.values()?;
    let (forward, kept) = forward_keeping(
        &mut values,
        f,
        planned_controller(input.opts, input.planned),
        slots.unwrap_or(usize::MAX),
    )?;
    let stored: Vec<(usize, DMatrix<T>)> = kept.into_iter().map(|c| (c.step, c.y)).collect();
    let n_steps = forward.steps.len();
    let strategy = match slots {
        None => Strategy::StoreEveryStep,
        Some(slots) => Strategy::Checkpointed { slots },
    };
    let report = StrategyReport {
        name: strategy.name(),
        stored_states: stored.len() + 1,
        reason: if reason.is_empty() {
            match slots {
                None => format!("all {n_steps} step start states stored"),
                Some(k) => format!(
                    "{} of {n_steps} step start states stored in {k} slots; binomial schedule needs at most {} untaped advances",
                    stored.len() + 1,
                    min_recomputations(n_steps, k)
                ),
            }
        } else {
            reason
        },
    };
    let op = ReplayOp {
        f: f.clone(),
        grid: values.grid,
        opts: input.opts.clone(),
        slots,
        steps: forward.steps.clone(),
        first_output: forward.first_output.clone(),
        stored: RefCell::new(stored),
    };
    input.record_node(values.row, forward, op, report)
}

/// The exact strategies' node backward: the recorded steps, which outputs each one emits,
/// and the stored start states.
struct ReplayOp<T: Scalar, F> {
    f: F,
    grid: Vec<f64>,
    opts: Options,
    slots: Option<usize>,
    steps: Vec<StepRecord>,
    first_output: Vec<usize>,
    /// Start states of the steps with these indices (index 0 is `h0`, an input), until a
    /// backward pass takes them.
    stored: RefCell<Vec<(usize, DMatrix<T>)>>,
}

impl<T: Scalar, F: Dynamics<T>> NodeBackward<T> for ReplayOp<T, F> {
    fn name(&self) -> &'static str {
        match self.slots {
            None => "odeint_store_every_step",
            Some(_) => "odeint_checkpointed",
        }
    }

    fn backward(
        &self,
        inputs: &[&DMatrix<T>],
        _outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
    ) -> Result<(Vec<Option<DMatrix<T>>>, BackwardStats)> {
        let local = Tape::new();
        let mut reverse = Reverse::new(&local, inputs, &cotangents);
        reverse.tangents = GridTangents::of_grid(&self.grid, inputs[1].as_slice());
        reverse.starts = reverse.tangents.step_starts(&self.steps);
        self.run_schedule(&mut reverse, inputs[0])?;
        Ok(reverse.finish(inputs.len() - 2))
    }

    fn grid(&self) -> &[f64] {
        &self.grid
    }

    fn held_bytes(&self) -> usize {
        let states: usize = self
            .stored
            .borrow()
            .iter()
            .map(|(_, y)| y.len() * std::mem::size_of::<T>())
            .sum();
        states
            + self.steps.len() * std::mem::size_of::<StepRecord>()
            + self.first_output.len() * std::mem::size_of::<usize>()
            + self.grid.len() * std::mem::size_of::<f64>()
    }
}

impl<T: Scalar, F: Dynamics<T>> ReplayOp<T, F> {
    /// Reverse all steps that pass a cotangent back: segment by segment between the
    /// forward's stored states (every step's for ACA) on the binomial schedule, or from `h0`
    /// alone when that needs fewer advances. The stored states are handed to this pass and
    /// freed as it leaves them behind, so at most `slots` states are alive at once; a later
    /// backward pass through the same node recomputes from `h0`.
    fn run_schedule(&self, rev: &mut Reverse<'_, '_, T>, h0: &DMatrix<T>) -> Result<()> {
        // Steps after the last one that emits an output with a cotangent pass nothing back.
        let seeded = |k: usize| {
            (self.first_output[k]..self.first_output[k + 1]).any(|i| rev.cotangents[i].is_some())
        };
        let Some(last) = (0..self.steps.len()).rev().find(|&k| seeded(k)) else {
            return Ok(());
        };
        let n = last + 1;
        let slots = self.slots.unwrap_or(usize::MAX);
        let mut taken = std::mem::take(&mut *self.stored.borrow_mut());
        taken.retain(|(k, _)| *k < n);
        // Segment j (from the j-th base to the next) is reversed while bases 0..=j are
        // alive, so with slots − j slots of its own (its base's included).
        let starts: Vec<usize> = std::iter::once(0)
            .chain(taken.iter().map(|s| s.0))
            .collect();
        let ends = starts.iter().skip(1).copied().chain([n]);
        let segmented: usize = starts
            .iter()
            .zip(ends)
            .enumerate()
            .map(|(j, (&a, b))| min_recomputations(b - a, slots - j))
            .sum();
        if min_recomputations(n, slots) < segmented {
            taken.clear();
        }
        let mut end = n;
        while let Some((a, y)) = taken.pop() {
            let j = taken.len() + 1;
            self.reverse(rev, a, end, slots - j, &y)?;
            end = a;
        }
        self.reverse(rev, 0, end, slots, h0)
    }

    /// Reverse steps `a..b` from the start state `base` of step `a`, holding at most
    /// `slots` states (the base's included) on the binomial schedule.
    fn reverse(
        &self,
        rev: &mut Reverse<'_, '_, T>,
        a: usize,
        b: usize,
        slots: usize,
        base: &DMatrix<T>,
    ) -> Result<()> {
        let n = b - a;
        if n == 0 {
            return Ok(());
        }
        if n == 1 {
            return rev.replay(self, a, base);
        }
        if slots >= n {
            // A slot for every step: one sweep keeping each start state, then replay.
            let states = rev.advance(self, a, b - 1, base, true)?;
            for (k, y) in (a + 1..b).zip(states).rev() {
                rev.replay(self, k, &y)?;
                rev.recomputed_states -= 1;
            }
            return rev.replay(self, a, base);
        }
        if slots <= 1 {
            // One slot: advance from the base to every step's start, latest first.
            for k in (a + 1..b).rev() {
                let y = rev.advance(self, a, k, base, false)?;
                rev.replay(self, k, &y[0])?;
                rev.recomputed_states -= 1;
            }
            return rev.replay(self, a, base);
        }
        let m = split(n, slots);
        let mid = rev.advance(self, a, a + m, base, false)?;
        self.reverse(rev, a + m, b, slots - 1, &mid[0])?;
        drop(mid);
        rev.recomputed_states -= 1;
        self.reverse(rev, a, a + m, slots, base)
    }
}

/// The backward pass in progress: the cotangent of the current step's end state and the
/// gradients gathered so far, with a local tape (θ and the grid recorded once, below
/// `local_base`) that replays one step at a time for its VJP, and recomputes states
/// without recording (under `no_grad`) in between.
struct Reverse<'c, 'l, T: Scalar> {
    local: &'l Tape<T>,
    /// The local tape before θ and the grid were copied onto it.
    local_origin: Mark,
    /// States recomputed by [`Reverse::advance`] and still alive (for
    /// [`BackwardStats::peak_bytes`]).
    recomputed_states: usize,
    params: Vec<Var<'l, T>>,
    row: Var<'l, T>,
    local_base: Mark,
    cotangents: &'c [Option<DMatrix<T>>],
    /// dL/dy at the end of the step being reversed.
    a: DMatrix<T>,
    a_theta: Vec<DMatrix<T>>,
    grad_row: DMatrix<T>,
    stats: BackwardStats,
    shape: (usize, usize),
    /// The grid's derivative parts and, from them, those of every step's start time (as
    /// the forward took them: see [`GridTangents`]).
    tangents: GridTangents<T>,
    starts: Vec<Option<T>>,
}

impl<'c, 'l, T: Scalar> Reverse<'c, 'l, T> {
    fn new(
        local: &'l Tape<T>,
        inputs: &[&DMatrix<T>],
        cotangents: &'c [Option<DMatrix<T>>],
    ) -> Self {
        let zeros = |m: &DMatrix<T>| DMatrix::zeros(m.nrows(), m.ncols());
        let local_origin = local.mark();
        let params = inputs[2..]
            .iter()
            .map(|p| local.var((*p).clone()))
            .collect();
        let row = local.var(inputs[1].clone());
        Self {
            local,
            local_origin,
            recomputed_states: 0,
            params,
            row,
            local_base: local.mark(),
            cotangents,
            a: zeros(inputs[0]),
            a_theta: inputs[2..].iter().map(|p| zeros(p)).collect(),
            grad_row: zeros(inputs[1]),
            stats: BackwardStats::default(),
            shape: inputs[0].shape(),
            tangents: GridTangents::none(),
            starts: Vec::new(),
        }
    }

    /// The start state of step `to` from that of step `from` (`y`), by untaped replay of the
    /// recorded steps in between; with `every`, the start states of all steps
    /// `from + 1 ..= to`, in order.
    fn advance<F: Dynamics<T>>(
        &mut self,
        op: &ReplayOp<T, F>,
        from: usize,
        to: usize,
        y: &DMatrix<T>,
        every: bool,
    ) -> Result<Vec<DMatrix<T>>> {
        let scratch = self.local;
        scratch.rewind(self.local_base)?;
        let _no_grad = scratch.no_grad();
        let t_base = self.row.slice_cols(0, 1)?;
        let y0 = scratch.constant(y.clone());
        let base = scratch.mark();
        let sys = FieldSystem {
            f: &op.f,
            params: &self.params,
            shape: self.shape,
            nfe: 0,
            work: Default::default(),
            reuse: None,
        };
        let ctl = forward_controller(&op.opts).replaying(op.steps[from..to].iter().copied());
        let start = Start {
            t0: op.grid[0],
            t_base,
            t: op.steps[from].t,
            y: vec![y0],
            k0: None,
            dt: None,
            dir: direction(&op.grid),
            tangents: self.tangents.starting(self.starts.get(from)),
        };
        let mut stepper = Stepper::new(scratch, sys, ctl, Memory::Scratch(base), start)?;
        let mut states = Vec::with_capacity(if every { to - from } else { 1 });
        for k in from..to {
            let acc = stepper.step(0.0, false)?;
            stepper.advance(acc, &[])?;
            if every || k + 1 == to {
                states.push(stepper.y()[0].value()?);
            }
            let held = self.held(states.len(), 0);
            self.stats.holding(held);
        }
        self.stats.recomputed_steps += to - from;
        self.stats.nfe += stepper.sys.nfe;
        self.recomputed_states += states.len();
        drop(stepper);
        scratch.rewind(self.local_base)?;
        Ok(states)
    }

    /// Replay step `k` from its start state `y` on the local tape, with its outputs, and
    /// pull the cotangents of its end state and outputs back to `y`, θ and the grid.
    fn replay<F: Dynamics<T>>(
        &mut self,
        op: &ReplayOp<T, F>,
        k: usize,
        y: &DMatrix<T>,
    ) -> Result<()> {
        let size = std::mem::size_of::<T>();
        let (first, last) = (op.first_output[k], op.first_output[k + 1]);
        let outputs_seeded = (first..last).any(|i| self.cotangents[i].is_some());
        // Dual numbers compare by their real part: a zero may carry a derivative.
        let end_seeded =
            ad_core::carries_derivatives::<T>() || self.a.iter().any(|v| v.primal() != 0.0);
        if !outputs_seeded && !end_seeded {
            // Nothing flows back through this step.
            return Ok(());
        }
        self.stats.accepted += 1;
        let local = self.local;
        local.rewind(self.local_base)?;
        let (row, params) = (self.row, &self.params);
        let y_leaf = local.var(y.clone());
        let t_base = row.slice_cols(0, 1)?;
        // Output i (of t_1..t_n) is grid time i + 1; only this step's are read.
        let mut times: Vec<(f64, Var<'_, T>)> = op.grid[1..].iter().map(|&t| (t, t_base)).collect();
        for (i, time) in times.iter_mut().enumerate().take(last).skip(first) {
            time.1 = row.slice_cols(i + 1, 1)?;
        }
        let sys = FieldSystem {
            f: &op.f,
            params,
            shape: self.shape,
            nfe: 0,
            work: Default::default(),
            reuse: None,
        };
        let ctl = forward_controller(&op.opts).replaying([op.steps[k]]);
        let start = Start {
            t0: op.grid[0],
            t_base,
            t: op.steps[k].t,
            y: vec![y_leaf],
            k0: None,
            dt: None,
            dir: direction(&op.grid),
            tangents: self.tangents.starting(self.starts.get(k)),
        };
        let mut stepper = Stepper::new(local, sys, ctl, Memory::Keep, start)?;
        // Nothing continues from this step, and outputs without a cotangent are not
        // rebuilt: without them, an FSAL method's last stage is not read.
        stepper.final_stage = outputs_seeded;
        let mut acc = stepper.step(0.0, false)?;
        let mut next = first;
        let mut seeds: Vec<(Var<'_, T>, DMatrix<T>)> = Vec::new();
        let cotangents = self.cotangents;
        let wanted = |i: usize| cotangents[i].is_some();
        stepper.emit_outputs(&mut acc, &times, false, &mut next, wanted, |i, h| {
            if let Some(g) = &cotangents[i] {
                seeds.push((h[0], g.clone()));
            }
            Ok(())
        })?;
        if end_seeded {
            if !ad_core::all_finite(&self.a) {
                // The gradient blew up in the steps after this one.
                return Err(crate::error::Error::NonFinite {
                    what: "adjoint (the gradient of a step's end state)",
                    t: op.steps[k].t1,
                });
            }
            seeds.push((
                acc.step.y1[0],
                std::mem::replace(&mut self.a, DMatrix::zeros(0, 0)),
            ));
        }
        let mut wrt = Vec::with_capacity(params.len() + 2);
        wrt.push(y_leaf);
        wrt.push(row);
        wrt.extend_from_slice(params);
        // The VJP about to run sweeps the step's evaluations latest first: it holds the
        // cotangents of one evaluation's values and of every stage, the seeds and the
        // gradients it returns (as large as y, the grid and θ).
        let evaluations = stepper.sys.nfe.max(1);
        let one_evaluation = local.bytes_since(self.local_base) / evaluations;
        let stage_cotangents = evaluations * y.len() * size;
        let seed_bytes: usize = seeds.iter().map(|(_, g)| g.len()).sum::<usize>() * size;
        let returned = (y.len() + self.grad_row.len()) * size + self.theta_bytes();
        let held = self.held(0, one_evaluation + stage_cotangents + seed_bytes + returned);
        self.stats.holding(held);
        let mut grads = local.vjp_wrt(&seeds, &wrt)?.into_iter();
        self.stats.nfe += stepper.sys.nfe;
        drop(acc);
        drop(stepper);
        if let Some(g) = grads.next() {
            self.a = g;
        }
        if let Some(g) = grads.next() {
            self.grad_row += g;
        }
        for (acc, g) in self.a_theta.iter_mut().zip(grads) {
            *acc += g;
        }
        local.rewind(self.local_base)?;
        Ok(())
    }

    /// Bytes of the gradient accumulators for θ.
    fn theta_bytes(&self) -> usize {
        self.a_theta.iter().map(|m| m.len()).sum::<usize>() * std::mem::size_of::<T>()
    }

    /// The bytes this pass holds now, with `fresh` more states just recomputed and `extra`
    /// working bytes: the local tape, the recomputed states alive, the adjoint and the
    /// gradient accumulators.
    fn held(&self, fresh: usize, extra: usize) -> usize {
        let size = std::mem::size_of::<T>();
        let state = self.shape.0 * self.shape.1 * size;
        self.local.bytes_since(self.local_origin)
            + (self.recomputed_states + fresh) * state
            + (self.a.len() + self.grad_row.len()) * size
            + self.theta_bytes()
            + extra
    }

    fn finish(self, n_params: usize) -> (Vec<Option<DMatrix<T>>>, BackwardStats) {
        let mut grads = Vec::with_capacity(n_params + 2);
        grads.push(Some(self.a));
        grads.push(Some(self.grad_row));
        grads.extend(self.a_theta.into_iter().map(Some));
        (grads, self.stats)
    }
}
