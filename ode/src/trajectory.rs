//! The forward solution as a continuous function of time, for the adjoints that read `h(t)`
//! instead of reconstructing it: each accepted step's dense output, held as values.
//!
//! A method with its own continuous extension (dopri5, tsit5, ...) keeps its step's start
//! state and every stage, `(s + 1)·d` numbers per step, and interpolates with it; any other
//! method keeps the start state and `F(t, y)` and interpolates a cubic Hermite on
//! `(y₀, F₀, y₁, F₁)` (`2·d` per step; `y₁, F₁` are the next step's). With checkpoints only
//! `K` start states are kept, and the steps between two of them are re-solved (replayed
//! with their recorded sizes, untaped) when the backward pass enters that stretch.

use std::ops::Range;

use ad_core::nalgebra::DMatrix;
use ad_core::{Scalar, Tape, Var};

use crate::controller::StepRecord;
use crate::dynamics::Dynamics;
use crate::error::{Error, Result};
use crate::forward::{forward_controller, FieldSystem};
use crate::input::direction;
use crate::options::Options;
use crate::stepper::{Accepted, GridTangents, Memory, Start, Stepper};
use crate::tableau::Tableau;

/// One accepted step's dense output data.
pub(crate) struct StepData<T: Scalar> {
    /// The start state `y₀`.
    y0: DMatrix<T>,
    /// Every stage (own interpolant), or `[F(t₀, y₀)]` (Hermite).
    k: Vec<DMatrix<T>>,
    /// `(y₁, F(t₁, y₁))` when the next step's start is not at hand (Hermite only).
    end: Option<(DMatrix<T>, DMatrix<T>)>,
}

impl<T: Scalar> StepData<T> {
    /// The data of an accepted step on a scratch tape (values copied off it).
    pub fn of(acc: &Accepted<'_, T>, tableau: &Tableau) -> Result<Self> {
        let k = if tableau.interpolant.is_some() {
            acc.step
                .k
                .iter()
                .map(|k| k[0].value())
                .collect::<ad_core::Result<_>>()?
        } else {
            vec![acc.step.k[0][0].value()?]
        };
        Ok(Self {
            y0: acc.step.y0[0].value()?,
            k,
            end: None,
        })
    }

    fn bytes(&self) -> usize {
        let n = self.y0.len() * (1 + self.k.len() + 2 * usize::from(self.end.is_some()));
        n * std::mem::size_of::<T>()
    }
}

/// The forward solution's dense output over all its steps, or over the stretch between two
/// checkpoints that the backward pass is in.
pub(crate) struct Trajectory<T: Scalar> {
    tableau: &'static Tableau,
    steps: Vec<StepRecord>,
    /// Start states kept for re-solving (step index, state); empty when every step's data
    /// is kept. Step 0's is `h0`, held by the caller.
    checkpoints: Vec<(usize, DMatrix<T>)>,
    /// The steps whose data are in `data`.
    loaded: Range<usize>,
    data: Vec<StepData<T>>,
    /// `(y_N, F(t_N, y_N))`: the last step's end, for a Hermite interpolant.
    last: Option<(DMatrix<T>, DMatrix<T>)>,
    /// `y_N` until `last` is formed.
    end_state: Option<DMatrix<T>>,
    /// Steps re-solved so far.
    pub resolved_steps: usize,
    /// Evaluations the re-solves made.
    pub resolve_nfe: usize,
}

impl<T: Scalar> Trajectory<T> {
    /// Every step's data, kept by the forward.
    pub fn whole(
        tableau: &'static Tableau,
        steps: Vec<StepRecord>,
        data: Vec<StepData<T>>,
    ) -> Self {
        let n = steps.len();
        Self {
            tableau,
            steps,
            checkpoints: Vec::new(),
            loaded: 0..n,
            data,
            last: None,
            end_state: None,
            resolved_steps: 0,
            resolve_nfe: 0,
        }
    }

    /// Start states at these step indices (0, whose state is `h0`, implied), the stretches
    /// between them re-solved on demand.
    pub fn checkpointed(
        tableau: &'static Tableau,
        steps: Vec<StepRecord>,
        checkpoints: Vec<(usize, DMatrix<T>)>,
    ) -> Self {
        Self {
            tableau,
            steps,
            checkpoints,
            loaded: 0..0,
            data: Vec::new(),
            last: None,
            end_state: None,
            resolved_steps: 0,
            resolve_nfe: 0,
        }
    }

    /// Whether every step's data is kept (no checkpoints).
    pub fn is_whole(&self) -> bool {
        self.checkpoints.is_empty() && self.loaded.len() == self.steps.len()
    }

    /// The times at which a re-solved stretch begins (checkpoint step starts), for the
    /// backward to stop at, so that each of its segments lies in one stretch.
    pub fn stretch_starts(&self) -> Vec<f64> {
        self.checkpoints
            .iter()
            .map(|(k, _)| self.steps[*k].t)
            .collect()
    }

    /// Bytes held: kept data or checkpoints, the step records.
    pub fn held_bytes(&self) -> usize {
        let size = std::mem::size_of::<T>();
        self.data.iter().map(StepData::bytes).sum::<usize>()
            + self
                .checkpoints
                .iter()
                .map(|(_, y)| y.len() * size)
                .sum::<usize>()
            + self.steps.len() * std::mem::size_of::<StepRecord>()
    }

    /// The bytes of the dense data in memory now.
    pub fn loaded_bytes(&self) -> usize {
        self.data.iter().map(StepData::bytes).sum()
    }

    /// Keep the forward's final state `y_N`, when every step's data is kept and the
    /// interpolant is a Hermite (whose last step reads `(y_N, F(t_N, y_N))`).
    pub fn set_end_state(&mut self, y: DMatrix<T>) {
        if self.is_whole() && self.tableau.interpolant.is_none() {
            self.end_state = Some(y);
        }
    }

    /// `y_N` while `F(t_N, y_N)` is still to be evaluated ([`Trajectory::finish_end`]).
    pub fn end_state(&self) -> Option<DMatrix<T>> {
        match self.last {
            Some(_) => None,
            None => self.end_state.clone(),
        }
    }

    /// Complete the last step's end with `F(t_N, y_N)`.
    pub fn finish_end(&mut self, f: DMatrix<T>) {
        if let Some(y) = self.end_state.take() {
            self.last = Some((y, f));
        }
    }

    /// The index of the step whose closed interval holds `t` (the latest such step).
    fn step_at(&self, t: f64) -> usize {
        let dir = direction_of(&self.steps);
        // Steps are ordered in the direction of the solve; find the last starting at or
        // before t.
        let k = self.steps.partition_point(|s| (s.t - t) * dir <= 0.0);
        k.saturating_sub(1).min(self.steps.len() - 1)
    }

    /// Make the data of the stretch holding `t` (by the step starting at or before it)
    /// available, re-solving it from its checkpoint if needed. `t` must lie in the stretch
    /// the backward segment is in, so a stretch is loaded once per backward pass.
    pub fn load_around<F: Dynamics<T>>(
        &mut self,
        t: f64,
        f: &F,
        params: &[DMatrix<T>],
        t0: T,
        opts: &Options,
    ) -> Result<()> {
        if self.is_whole() {
            return Ok(());
        }
        let k = self.step_at(t);
        if self.loaded.contains(&k) {
            return Ok(());
        }
        let j = self.checkpoints.partition_point(|(s, _)| *s <= k);
        let (a, b) = (
            if j == 0 { 0 } else { self.checkpoints[j - 1].0 },
            self.checkpoints.get(j).map_or(self.steps.len(), |c| c.0),
        );
        let start = if j == 0 {
            None
        } else {
            Some(&self.checkpoints[j - 1].1)
        };
        // Free the stretch left behind before re-solving the next.
        self.data = Vec::new();
        let (data, nfe) = resolve(f, params, t0, opts, &self.steps[a..b], start, self.tableau)?;
        self.data = data;
        self.resolved_steps += b - a;
        self.resolve_nfe += nfe;
        self.loaded = a..b;
        Ok(())
    }

    /// Re-solving from `h0` needs it: the stretch starting at step 0 is held by the caller.
    pub fn set_h0(&mut self, h0: DMatrix<T>) {
        self.checkpoints.insert(0, (0, h0));
    }

    /// `h(t)` from the interpolant of the step holding `t`. A time outside the loaded
    /// stretch (only the backward's first-step heuristic probes one) reads the nearest end of
    /// it: step sizes are all it informs.
    pub fn at(&self, t: f64) -> Result<DMatrix<T>> {
        if self.loaded.is_empty() {
            return Err(internal(
                "the interpolant was read before a stretch was loaded",
            ));
        }
        let k = self
            .step_at(t)
            .clamp(self.loaded.start, self.loaded.end - 1);
        let rec = self.steps[k];
        let d = &self.data[k - self.loaded.start];
        let theta = ((t - rec.t) / rec.dt).clamp(0.0, 1.0);
        match self.tableau.interpolant {
            Some(p) => Ok(own_interpolant(p, rec.dt, theta, &d.y0, &d.k)),
            None => {
                let (y1, f1) = match (&d.end, self.data.get(k + 1 - self.loaded.start)) {
                    (Some((y, f)), _) => (y, f),
                    (None, Some(next)) => (&next.y0, &next.k[0]),
                    (None, None) => match &self.last {
                        Some((y, f)) => (y, f),
                        None => return Err(internal("the Hermite interpolant has no end")),
                    },
                };
                Ok(hermite(rec.dt, theta, &d.y0, &d.k[0], y1, f1))
            }
        }
    }
}

/// `y₀ + dt Σ_i b_i(θ) k_i` with `b_i(θ) = Σ_k p[i][k] θ^(k+1)`: a method's own dense output.
pub(crate) fn own_interpolant<T: Scalar>(
    p: &[&[f64]],
    dt: f64,
    theta: f64,
    y0: &DMatrix<T>,
    k: &[DMatrix<T>],
) -> DMatrix<T> {
    let mut y = y0.clone();
    for (row, ki) in p.iter().zip(k) {
        let mut b = 0.0;
        let mut power = theta;
        for &c in row.iter() {
            b += c * power;
            power *= theta;
        }
        if b != 0.0 {
            y.zip_apply(ki, |a, x| *a += T::constant(dt * b) * x);
        }
    }
    y
}

/// The cubic Hermite on `(y₀, F₀, y₁, F₁)` over a step of size `dt`, at `θ ∈ [0, 1]`.
pub(crate) fn hermite<T: Scalar>(
    dt: f64,
    theta: f64,
    y0: &DMatrix<T>,
    f0: &DMatrix<T>,
    y1: &DMatrix<T>,
    f1: &DMatrix<T>,
) -> DMatrix<T> {
    let (t2, t3) = (theta * theta, theta * theta * theta);
    let w = [
        2.0 * t3 - 3.0 * t2 + 1.0,
        dt * (t3 - 2.0 * t2 + theta),
        -2.0 * t3 + 3.0 * t2,
        dt * (t3 - t2),
    ]
    .map(T::constant);
    let mut y = y0 * w[0];
    y.zip_apply(f0, |a, x| *a += w[1] * x);
    y.zip_apply(y1, |a, x| *a += w[2] * x);
    y.zip_apply(f1, |a, x| *a += w[3] * x);
    y
}

/// Replay `steps` untaped from `start` (`None`: the caller's `h0`, which must then be the
/// first checkpoint) and keep each step's dense output data.
fn resolve<T: Scalar, F: Dynamics<T>>(
    f: &F,
    params: &[DMatrix<T>],
    t0: T,
    opts: &Options,
    steps: &[StepRecord],
    start: Option<&DMatrix<T>>,
    tableau: &'static Tableau,
) -> Result<(Vec<StepData<T>>, usize)> {
    let Some(start) = start else {
        return Err(internal("a stretch was re-solved without its start state"));
    };
    let scratch = Tape::new();
    let _no_grad = scratch.no_grad();
    let params: Vec<Var<'_, T>> = params.iter().map(|p| scratch.constant(p.clone())).collect();
    let t_base = scratch.constant(DMatrix::from_element(1, 1, t0));
    let y0 = scratch.constant(start.clone());
    let base = scratch.mark();
    let sys = FieldSystem {
        f,
        params: &params,
        shape: start.shape(),
        nfe: 0,
        work: Default::default(),
        reuse: None,
    };
    let first = steps[0];
    let ctl = forward_controller(opts).replaying(steps.iter().copied());
    let dir = direction_of(steps);
    let start = Start {
        t0: t0.primal(),
        t_base,
        t: first.t,
        y: vec![y0],
        k0: None,
        dt: None,
        dir,
        tangents: GridTangents::none(),
    };
    let mut stepper = Stepper::new(&scratch, sys, ctl, Memory::Scratch(base), start)?;
    let mut data = Vec::with_capacity(steps.len());
    stepper.final_stage = true;
    for k in 0..steps.len() {
        let mut acc = stepper.step(0.0, false)?;
        let mut d = StepData::of(&acc, tableau)?;
        if k + 1 == steps.len() && tableau.interpolant.is_none() {
            let f1 = stepper.first_stage_after(&mut acc)?;
            d.end = Some((acc.step.y1[0].value()?, f1[0].value()?));
        }
        data.push(d);
        stepper.advance(acc, &[])?;
    }
    Ok((data, stepper.sys.nfe))
}

/// `+1` when the steps go forward in time, `−1` otherwise.
fn direction_of(steps: &[StepRecord]) -> f64 {
    match steps.first() {
        Some(s) => direction(&[s.t, s.t1]),
        None => 1.0,
    }
}

fn internal(message: &str) -> Error {
    Error::Tape(ad_core::Error::InvalidArgument {
        op: "trajectory",
        message: format!("{message}; this is a bug in the ode crate"),
    })
}
