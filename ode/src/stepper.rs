//! A resumable stepper: one accepted step at a time, from any state (a stored checkpoint
//! included), choosing step sizes adaptively or replaying recorded ones, and the output
//! emission that turns accepted steps into `h(t_i)`.
//!
//! Every strategy drives the same [`Stepper`]: the taped solve on the caller's tape, the
//! untaped forward and the adjoint's backward on scratch tapes, the checkpointed strategies'
//! replays on a local tape. What differs is the [`Memory`] policy and what the strategy does
//! with each accepted step (see `docs/design.md`).

use std::rc::Rc;

use ad_core::nalgebra::DMatrix;
use ad_core::{carries_derivatives, Mark, Scalar, Tape, Var};

use crate::controller::{Controller, StepRecord};
use crate::engine::{interpolate, Method, SolveStats, State, Step, System, Time};
use crate::error::{Error, Result};
use crate::scheme::{coupled_dense_output, Scheme};

/// What happens to the tape behind an accepted step.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Memory {
    /// Keep what backward reads (the taped solve): values no VJP reads are released.
    Taped,
    /// Keep everything (a local tape that replays a single step for its VJP).
    Keep,
    /// Rewind to this mark, keeping only the state and the next first stage (values only).
    Scratch(Mark),
}

/// Where a stepper starts.
pub(crate) struct Start<'t, T: Scalar> {
    /// The solve's start time, as a number and as the 1×1 variable every step time is taken
    /// relative to (so taped solves differentiate with respect to it).
    pub t0: f64,
    pub t_base: Var<'t, T>,
    /// The time of `y` (`t0` unless restarting from a stored state).
    pub t: f64,
    pub y: State<'t, T>,
    /// `F(t, y)` if already known.
    pub k0: Option<State<'t, T>>,
    /// The step magnitude to try first (carried over from an earlier solve or segment).
    pub dt: Option<f64>,
    /// `+1` forward in time, `−1` backward.
    pub dir: f64,
    /// The grid times' derivative parts, for steps that land on them.
    pub tangents: GridTangents<T>,
}

/// The derivative parts (real part 0) of the output times a solve may land on, relative to
/// its start: on dual numbers a step shortened to land on grid time `t_i` has size
/// `t_i − t`, and every step after it starts at `t_i + (t − t_i)`, so their sizes and stage
/// times carry `t_i`'s tangent (second derivatives along grid times are then those of the
/// discrete solve). Empty for plain numbers and for solves whose steps keep constant sizes.
#[derive(Clone)]
pub(crate) struct GridTangents<T: Scalar> {
    /// `(t_i, tangent of t_i − t_0)` in grid order (for `i ≥ 1`).
    anchors: Rc<[(f64, T)]>,
    /// The tangent of `t − t_0` at the stepper's start (`None`: zero).
    start: Option<T>,
}

impl<T: Scalar> GridTangents<T> {
    /// No tangents: step sizes and times are constants relative to the start variable.
    pub fn none() -> Self {
        Self {
            anchors: Rc::from(Vec::new()),
            start: None,
        }
    }

    /// The tangents of a grid whose entries are `values` (as scalars) and `grid` (as
    /// numbers), for a stepper starting at `t_0`.
    pub fn of_grid(grid: &[f64], values: &[T]) -> Self {
        if !carries_derivatives::<T>() || values.len() != grid.len() || grid.is_empty() {
            return Self::none();
        }
        let anchors: Vec<(f64, T)> = grid
            .iter()
            .zip(values)
            .skip(1)
            .map(|(&t, &v)| {
                let d = v - values[0];
                (t, d - T::constant(d.primal()))
            })
            .collect();
        Self {
            anchors: Rc::from(anchors),
            start: None,
        }
    }

    /// The tangent of `t_i − t_0` if `t` is a grid time `t_i` (`None` otherwise).
    fn at(&self, t: f64) -> Option<T> {
        if self.anchors.is_empty() {
            return None;
        }
        let increasing = self.anchors.len() < 2 || self.anchors[0].0 < self.anchors[1].0;
        let i = self
            .anchors
            .partition_point(|&(a, _)| if increasing { a < t } else { a > t });
        self.anchors
            .get(i)
            .filter(|&&(a, _)| a == t)
            .map(|&(_, tan)| tan)
    }

    /// The tangent of `t − t_0` at the start of each of `steps` (taken in order from
    /// `t_0`): a step that landed on a grid time passes that time's tangent on.
    pub fn step_starts(&self, steps: &[StepRecord]) -> Vec<Option<T>> {
        if self.anchors.is_empty() {
            return Vec::new();
        }
        let mut current = self.start;
        steps
            .iter()
            .map(|r| {
                let here = current;
                if r.landed {
                    if let Some(tan) = self.at(r.t1) {
                        current = Some(tan);
                    }
                }
                here
            })
            .collect()
    }

    /// The same tangents for a stepper starting where the tangent of `t − t_0` is `start`
    /// (an entry of [`GridTangents::step_starts`]; out of range: `None`).
    pub fn starting(&self, start: Option<&Option<T>>) -> Self {
        Self {
            anchors: self.anchors.clone(),
            start: start.copied().flatten(),
        }
    }
}

/// One accepted step with its stages still on the tape.
pub(crate) struct Accepted<'t, T: Scalar> {
    pub record: StepRecord,
    /// The step's start time as a variable.
    pub t_var: Var<'t, T>,
    /// The derivative parts of the step's size (see [`GridTangents`]).
    pub dt_tangent: Option<T>,
    /// The derivative parts of `t1 − t_0`.
    pub t1_tangent: Option<T>,
    pub step: Step<'t, T>,
    /// `F(t1, y1)` once computed (by output emission or by [`Stepper::advance`]).
    pub k_next: Option<State<'t, T>>,
    /// The step magnitude to try next.
    pub dt_carry: f64,
    mark: Mark,
}

impl<T: Scalar> Accepted<'_, T> {
    /// The tape position where the step began recording.
    pub fn mark(&self) -> Mark {
        self.mark
    }
}

/// A Runge–Kutta solve that advances one accepted step per [`Stepper::step`] call.
pub(crate) struct Stepper<'t, T: Scalar, S> {
    pub tape: &'t Tape<T>,
    pub sys: S,
    pub ctl: Controller,
    t0: f64,
    t_base: Var<'t, T>,
    t: f64,
    /// The derivative parts of `t − t_0` (see [`GridTangents`]).
    t_tangent: Option<T>,
    tangents: GridTangents<T>,
    y: State<'t, T>,
    k0: State<'t, T>,
    dt: f64,
    dir: f64,
    memory: Memory,
    /// Accepted and rejected steps so far (evaluations are counted by the system).
    pub stats: SolveStats,
    /// Evaluate an FSAL method's last stage in replayed steps (default). A replay that
    /// emits no output in its step and is not continued can leave it out.
    pub final_stage: bool,
}

impl<'t, T: Scalar, S: System<'t, T>> Stepper<'t, T, S> {
    /// A stepper at `start`; evaluates `F(t, y)` if not given and picks the first step.
    pub fn new(
        tape: &'t Tape<T>,
        mut sys: S,
        ctl: Controller,
        memory: Memory,
        start: Start<'t, T>,
    ) -> Result<Self> {
        // Only the explicit scheme's steps take a landed step's tangent (the others keep
        // constant step sizes; see docs/design.md).
        let tangents = if matches!(ctl.scheme, Scheme::Explicit) {
            start.tangents
        } else {
            GridTangents::none()
        };
        let t_tangent = tangents.start;
        let t_var = time_var_at(start.t_base, start.t0, start.t, t_tangent);
        let field_input = ctl.scheme.field_input(&start.y);
        let k0 = match start.k0 {
            Some(k0) => k0,
            None => sys.eval(start.t, t_var, field_input)?,
        };
        let dt = match (ctl.is_replaying(), ctl.fixed_step, start.dt, ctl.first_step) {
            (true, ..) => 0.0,
            (false, Some(dt), _, _) => dt,
            (false, None, Some(dt), _) | (false, None, None, Some(dt)) => dt,
            (false, None, None, None) => {
                let t = Time {
                    at: start.t,
                    var: t_var,
                    step_tangent: None,
                };
                ctl.initial_step(tape, &mut sys, t, start.dir, field_input, &k0)?
            }
        };
        // Adaptive steps never start below min_step either.
        let dt = if ctl.fixed_step.is_none() {
            dt.max(ctl.min_step)
        } else {
            dt
        };
        Ok(Self {
            tape,
            sys,
            ctl,
            t0: start.t0,
            t_base: start.t_base,
            t: start.t,
            t_tangent,
            tangents,
            y: start.y,
            k0,
            dt,
            dir: start.dir,
            memory,
            stats: SolveStats::default(),
            final_stage: true,
        })
    }

    /// The current state.
    pub fn y(&self) -> &State<'t, T> {
        &self.y
    }

    /// A method without its own interpolant gets a cubic Hermite, O(dt⁴) locally: far below
    /// a high-order adaptive method's accuracy at its large steps (dopri8 at rtol 1e-8:
    /// errors of 1e-4). Such methods step onto every output time instead.
    /// A reversible scheme without a dense output lands on every output instead.
    pub fn lands_on_every_output(&self) -> bool {
        let tab = self.ctl.tableau;
        !self.ctl.scheme.has_dense_output(tab)
            || (tab.interpolant.is_none() && tab.b_error.is_some() && tab.order > 4)
    }

    /// Take one accepted step towards `target` (rejected attempts are retried inside);
    /// with `land`, a step that would reach or pass `target` is shortened to end on it. In
    /// replay mode the next recorded step is taken instead, whatever `target` says.
    pub fn step(&mut self, target: f64, land: bool) -> Result<Accepted<'t, T>> {
        let tab = self.ctl.tableau;
        loop {
            if self.stats.accepted + self.stats.rejected >= self.ctl.max_num_steps {
                return Err(Error::TooManySteps {
                    max_num_steps: self.ctl.max_num_steps,
                    t: self.t,
                });
            }
            let replayed = self.ctl.next_replayed();
            let (dt, landed) = match replayed {
                Some(r) => {
                    if r.t != self.t {
                        return Err(internal(format!(
                            "a replayed step starts at t = {} but the stepper is at t = {}",
                            r.t, self.t
                        )));
                    }
                    (r.dt, r.landed)
                }
                None if self.ctl.is_replaying() => {
                    return Err(internal("replay ran out of recorded steps".into()));
                }
                None => {
                    self.dt = self.dt.min(self.ctl.max_step);
                    let remaining = (target - self.t) * self.dir;
                    // A fixed step never passes the end: the last one is shortened onto it.
                    let lands = land || self.ctl.fixed_step.is_some();
                    // Time accumulated step by step drifts by ulps: a leftover that only this
                    // rounding made is not a step of its own (1000 steps of 0.005 reach
                    // 4.994999999999916, leaving 0.005 + 8.4e-14 to t = 5).
                    let slack = 100.0 * f64::EPSILON * self.t.abs().max(target.abs());
                    let landing = lands
                        && (self.dt >= remaining * (1.0 - 1e-12) || remaining - self.dt <= slack);
                    let dt = if landing {
                        remaining * self.dir
                    } else {
                        self.dt * self.dir
                    };
                    if self.t + dt == self.t || !dt.is_finite() {
                        return Err(Error::StepSizeUnderflow {
                            t: self.t,
                            dt: dt.abs(),
                            min_step: self.ctl.min_step,
                        });
                    }
                    (dt, landing)
                }
            };
            let mark = self.tape.mark();
            let t_var = time_var_at(self.t_base, self.t0, self.t, self.t_tangent);
            // A step landed on a grid time t_i has size t_i − t: its derivative parts are
            // t_i's less t's.
            let end = match replayed {
                Some(r) => r.t1,
                None => target,
            };
            let landed_tangent = if landed { self.tangents.at(end) } else { None };
            let dt_tangent = landed_tangent.map(|tan| match self.t_tangent {
                Some(start) => tan - start,
                None => tan,
            });
            let method = Method {
                tableau: tab,
                // Constant steps leave an adaptive method's error estimate unused.
                estimate_error: replayed.is_none() && self.ctl.fixed_step.is_none(),
                error_mask: self.ctl.mask.as_deref(),
                final_stage: self.final_stage,
                tolerances: (self.ctl.rtol, self.ctl.atol),
                newton_blocks: self.ctl.blocks.max(1),
            };
            let time = Time {
                at: self.t,
                var: t_var,
                step_tangent: dt_tangent,
            };
            let step = self.ctl.scheme.step(
                self.tape,
                &mut self.sys,
                method,
                time,
                &self.y,
                self.k0.clone(),
                dt,
            )?;
            let (mut accept, dt_next) = match &step.err {
                Some(err) => {
                    let ratio = self.ctl.error_ratio(err, &step)?;
                    (ratio <= 1.0, self.ctl.next_step(dt.abs(), ratio))
                }
                None => (true, self.dt),
            };
            if !accept && self.ctl.min_step > 0.0 && dt.abs() <= self.ctl.min_step {
                // Already at min_step: accept the step as it is (as torchdiffeq and Diffrax
                // do), and count it.
                self.stats.clamped += 1;
                accept = true;
            }
            if !accept {
                self.stats.rejected += 1;
                self.tape.rewind(mark)?;
                // Never ask for less than min_step; the retry is then clamped to it.
                self.dt = dt_next.max(self.ctl.min_step);
                continue;
            }
            self.stats.accepted += 1;
            let step = self
                .ctl
                .scheme
                .finish(self.tape, &mut self.sys, tab, time, step, dt)?;
            let t1 = match replayed {
                Some(r) => r.t1,
                None if landed => target,
                None => self.t + dt,
            };
            for yc in &step.y1 {
                if !yc.with_value(ad_core::all_finite)? {
                    return Err(Error::NonFinite {
                        what: "state",
                        t: t1,
                    });
                }
            }
            // A step shortened to land on an output does not shrink the next one.
            let dt_carry = if landed {
                self.dt.max(dt_next)
            } else {
                dt_next
            };
            return Ok(Accepted {
                record: StepRecord {
                    t: self.t,
                    t1,
                    dt,
                    landed,
                },
                t_var,
                dt_tangent,
                t1_tangent: landed_tangent.or(self.t_tangent),
                step,
                k_next: None,
                dt_carry,
                mark,
            });
        }
    }

    /// `F(t1, y1)` of an accepted step: its last stage for FSAL methods, one more
    /// evaluation otherwise. Computed once per step.
    pub fn first_stage_after(&mut self, acc: &mut Accepted<'t, T>) -> Result<State<'t, T>> {
        if let Some(k) = &acc.k_next {
            return Ok(k.clone());
        }
        // Reversible Heun's last stage is F(t₁, z₁); the coupled scheme's stages are those
        // of the step from z₀, so F(t₁, z₁) is a fresh evaluation.
        let last_stage_is_next = match self.ctl.scheme {
            Scheme::Explicit => self.ctl.tableau.fsal && acc.step.complete,
            Scheme::ReversibleHeun => true,
            // An implicit stage's slope is f(t₁, y₁) only to the Newton tolerance.
            Scheme::Coupled(_) | Scheme::DiagonallyImplicit => false,
        };
        let k = match (last_stage_is_next, acc.step.k.last()) {
            (true, Some(k)) => k.clone(),
            _ => {
                let t1 = acc.record.t1;
                let t1_var = time_var_at(self.t_base, self.t0, t1, acc.t1_tangent);
                let input = self.ctl.scheme.field_input(&acc.step.y1);
                self.sys.eval(t1, t1_var, input)?
            }
        };
        acc.k_next = Some(k.clone());
        Ok(k)
    }

    /// Move to the end of an accepted step, applying the memory policy (`keep`: further
    /// variables of the step that must survive it, e.g. emitted outputs).
    pub fn advance(&mut self, mut acc: Accepted<'t, T>, keep: &[Var<'t, T>]) -> Result<()> {
        let k_next = self.first_stage_after(&mut acc)?;
        let n = acc.step.y1.len();
        let carried: Vec<Var<'t, T>> = acc.step.y1.iter().chain(&k_next).copied().collect();
        let mut carried = match self.memory {
            Memory::Scratch(mark) => self.tape.rewind_keep(mark, &carried)?,
            Memory::Keep => carried,
            Memory::Taped => {
                // Later steps read only y₁ and F(t₁, y₁) of this one, so whatever else of it
                // backward never reads can go now (keeps peak memory down too).
                let mut kept = carried.clone();
                kept.extend_from_slice(keep);
                self.tape.release_unneeded(acc.mark, &kept)?;
                carried
            }
        };
        self.k0 = carried.split_off(n);
        self.y = carried;
        self.t = acc.record.t1;
        self.t_tangent = acc.t1_tangent;
        self.dt = acc.dt_carry.max(self.ctl.min_step);
        Ok(())
    }

    /// Dense output of every output time inside the accepted step, from `*next` on, in
    /// order: `emit(i, h(t_i))` for each that is `wanted(i)` (the others are passed over
    /// without being computed). `times` are all output times after the start; with
    /// `land_end` the last one is the step's end itself. Returns the emitted variables.
    pub fn emit_outputs(
        &mut self,
        acc: &mut Accepted<'t, T>,
        times: &[(f64, Var<'t, T>)],
        land_end: bool,
        next: &mut usize,
        wanted: impl Fn(usize) -> bool,
        mut emit: impl FnMut(usize, &State<'t, T>) -> Result<()>,
    ) -> Result<Vec<Var<'t, T>>> {
        let tab = self.ctl.tableau;
        let land_all = self.lands_on_every_output();
        let t1 = acc.record.t1;
        let dt = acc.record.dt;
        let mut emitted = Vec::new();
        while *next < times.len() {
            let (t_out, t_out_var) = times[*next];
            if (t_out - t1) * self.dir > 0.0 {
                break;
            }
            if !wanted(*next) {
                *next += 1;
                continue;
            }
            if !acc.step.complete {
                return Err(internal(
                    "dense output from a step whose last stage was left out".into(),
                ));
            }
            let value = if acc.record.landed && (land_all || *next + 1 == times.len()) {
                if land_end {
                    acc.step.y1.clone()
                } else {
                    // y₁ + (t_out − t₁)·F(t₁, y₁): the value is y₁, and the output time keeps
                    // its derivative dh/dt = F, as through an interpolant. t₁ is a variable
                    // (it moves with t_0, like every step time), and the shift is computed as
                    // (t_out − t_0) − (t₁ − t_0) so that it is exactly 0 (its derivative parts
                    // too: t₁ carries t_out's tangent, and y₁ and F(t₁, y₁) the landed step
                    // size's, so the second derivatives in t_out are the discrete solve's).
                    let k = self.first_stage_after(acc)?;
                    let mut offset = T::constant(-(t1 - self.t0));
                    if let Some(tan) = acc.t1_tangent {
                        offset -= tan;
                    }
                    let shift = t_out_var.sub(self.t_base)?.add_scalar(offset);
                    let one = self.tape.constant(DMatrix::from_element(1, 1, T::one()));
                    let weights = self.tape.concat_cols(&[one, shift])?;
                    acc.step
                        .y1
                        .iter()
                        .zip(&k)
                        .map(|(&y1, &k)| Ok(self.tape.weighted_sum(weights, &[y1, k])?))
                        .collect::<Result<State<'t, T>>>()?
                }
            } else if let Scheme::Coupled(coupling) = self.ctl.scheme {
                let (y0, z0) = (acc.step.y0[0], acc.step.y0[1]);
                vec![coupled_dense_output(
                    self.tape,
                    tab,
                    coupling,
                    acc.t_var,
                    dt,
                    t_out_var,
                    (y0, z0),
                    &acc.step.k,
                )?]
            } else {
                let k_next = if tab.interpolant.is_none() {
                    Some(self.first_stage_after(acc)?)
                } else {
                    None
                };
                interpolate(
                    self.tape,
                    tab,
                    acc.t_var,
                    dt,
                    acc.dt_tangent,
                    t_out_var,
                    &acc.step,
                    k_next.as_ref(),
                )?
            };
            emit(*next, &value)?;
            emitted.extend_from_slice(&value);
            *next += 1;
        }
        Ok(emitted)
    }

    /// Step through every time in `times` (strictly monotonic, after the start), emitting
    /// `h(t_i)` as it goes and calling `on_step(step, outputs)` for each accepted step
    /// (`outputs`: the indices into `times` emitted inside it). With `land_end` the last
    /// step ends exactly on the last time. Returns the step magnitude to try next and the
    /// last accepted step, still on the tape (its `y1` is the final state).
    pub fn run(
        &mut self,
        times: &[(f64, Var<'t, T>)],
        land_end: bool,
        mut emit: impl FnMut(usize, &State<'t, T>) -> Result<()>,
        mut on_step: impl FnMut(&Accepted<'t, T>, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<Option<Accepted<'t, T>>> {
        let Some(&(t_end, _)) = times.last() else {
            return Ok(None);
        };
        let land_all = self.lands_on_every_output();
        let mut next = 0;
        loop {
            let target = if land_all { times[next].0 } else { t_end };
            let mut acc = self.step(target, land_end || land_all)?;
            let first = next;
            let emitted =
                self.emit_outputs(&mut acc, times, land_end, &mut next, |_| true, &mut emit)?;
            on_step(&acc, first..next)?;
            if next == times.len() {
                return Ok(Some(acc));
            }
            self.advance(acc, &emitted)?;
        }
    }
}

/// The time `t` as a variable relative to the solve's start: `t_base + (t − t0)`.
pub(crate) fn time_var<'t, T: Scalar>(t_base: Var<'t, T>, t0: f64, t: f64) -> Var<'t, T> {
    time_var_at(t_base, t0, t, None)
}

/// [`time_var`] with the derivative parts `tangent` of `t − t0` (see [`GridTangents`]).
pub(crate) fn time_var_at<'t, T: Scalar>(
    t_base: Var<'t, T>,
    t0: f64,
    t: f64,
    tangent: Option<T>,
) -> Var<'t, T> {
    match tangent {
        None if t == t0 => t_base,
        None => t_base.add_scalar(T::constant(t - t0)),
        Some(tan) => t_base.add_scalar(T::constant(t - t0) + tan),
    }
}

fn internal(message: String) -> Error {
    Error::Tape(ad_core::Error::InvalidArgument {
        op: "stepper",
        message: format!("{message}; this is a bug in the ode crate"),
    })
}
