//! Terminal events: solve from `h0` until the first root of any of several event functions
//! `g_k(t, h, θ)`, with the event time and the state there as variables on the tape.
//!
//! 1. **Locate** (values only): the forward steps with the options' method; after each
//!    accepted step every `g_k` is evaluated at the step's end, and a sign change in the
//!    function's [`Crossing`] direction brackets a root. Each bracketed root is found on the
//!    step's dense output (the method's own interpolant, else a cubic Hermite) by the
//!    Illinois method (superlinear), to a few ulps of `t`; the earliest root in the step wins.
//! 2. **Differentiate**: the strategy solves again from `t0` to the located `t*` (a fixed
//!    end time, so every strategy runs unchanged), and the event time gets its derivative
//!    from the implicit-function theorem: `t*_var = t* − (g_k(t*, h(t*), θ) − g̃) / D` with
//!    `D = ∂g/∂t + ∂g/∂h · f` at the root held constant and `g̃` the recorded `g`'s value (so
//!    the value stays `t*`): `dt* = −(∂g/∂h dh + ∂g/∂θ dθ) / D`. The state at the event is
//!    `h(t*) + f(t*, h(t*)) (t*_var − t*)`: its total derivative `dh + f dt*`.
//!
//! A root exactly at `t0` is ignored (a crossing needs a strict sign on the step's start).
//! A grazing root, where `g` touches zero without changing sign between step ends, is not
//! detected: no sign change brackets it.

use ad_core::nalgebra::DMatrix;
use ad_core::{Scalar, Tape, Var};

use crate::dynamics::Dynamics;
use crate::error::{Error, Result};
use crate::forward::{forward_controller, FieldSystem};
use crate::scheme::Scheme;
use crate::solution::Solution;
use crate::solve::odeint_with;
use crate::stepper::{GridTangents, Memory, Start, Stepper};
use crate::strategy::Strategy;
use crate::tableau::StepKind;
use crate::tangent_control::DualOf;
use crate::trajectory::{hermite, own_interpolant};
use crate::Options;

/// Which zero crossings of an event function fire it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossing {
    /// From negative to non-negative.
    Rising,
    /// From positive to non-positive.
    Falling,
    /// Either.
    Either,
}

impl Crossing {
    fn fires(self, before: f64, after: f64) -> bool {
        let rising = before < 0.0 && after >= 0.0;
        let falling = before > 0.0 && after <= 0.0;
        match self {
            Crossing::Rising => rising,
            Crossing::Falling => falling,
            Crossing::Either => rising || falling,
        }
    }
}

/// The event functions `g_k(t, h, θ)`, written in tape ops like [`Dynamics`]: one `1 × K`
/// row per evaluation, entry `k` the value of function `k` (`h` is the whole state).
pub trait EventFunctions<T: Scalar> {
    /// `[g_1, …, g_K]` at `(t, h)`; `t` is 1×1.
    fn eval<'t>(
        &self,
        t: Var<'t, T>,
        h: Var<'t, T>,
        params: &[Var<'t, T>],
    ) -> ad_core::Result<Var<'t, T>>;
}

/// The events of a solve: the functions, one [`Crossing`] per function, and the latest time.
pub struct Events<'e, E> {
    /// The event functions.
    pub functions: &'e E,
    /// Which crossings fire each function (its length is `K`).
    pub crossings: Vec<Crossing>,
    /// Solve no further than this.
    pub t_max: f64,
}

/// What ended an event solve.
pub enum EventOutcome<'t, T: Scalar> {
    /// Function `index` fired at `time` (a variable: its derivative is the implicit-function
    /// theorem's), where the state was `state` (with its total derivative).
    Fired {
        /// Which function fired.
        index: usize,
        /// The event time as a number.
        t: f64,
        /// The event time as a 1×1 variable.
        time: Var<'t, T>,
        /// `h(t*)` as a variable.
        state: Var<'t, T>,
    },
    /// No function fired before `t_max`; `state` is `h(t_max)`.
    NotFired {
        /// `h(t_max)`.
        state: Var<'t, T>,
    },
}

/// An event solve: the outcome, and the trajectory at the requested times before it.
pub struct EventSolution<'t, T: Scalar> {
    /// The event (or its absence).
    pub outcome: EventOutcome<'t, T>,
    /// The requested output times before the event (all of them if none fired), `t0` first.
    pub times: Vec<f64>,
    /// `h` at `times`.
    pub outputs: Vec<Var<'t, T>>,
    /// The strategy's solve from `t0` to the event time (or `t_max`): its counts and report.
    pub solution: Solution<'t, T>,
}

/// Solve `h' = f(t, h)` from `h0` at `t0` (1×1; a variable, so a chained event's start
/// carries its derivative) until the first event (or `events.t_max`), differentiably under
/// `strategy`. `times` are extra output times after `t0` (those before
/// the event are returned). Refused: `t_max` not after `t0`, output times out of order, a
/// reversible scheme; an event function of the wrong width or not finite; a root where
/// `∂g/∂t + ∂g/∂h · f = 0` ([`Error::EventTimeUndefined`]).
///
/// ```
/// use ad_core::{nalgebra::DMatrix, Result, Scalar, Tape, Var};
/// use ode::event::{odeint_event, Crossing, EventFunctions, EventOutcome, Events};
/// use ode::{Dynamics, Options, Strategy};
///
/// /// Free fall: h = [height, velocity], h' = [v, −g] with g = p[0].
/// #[derive(Clone)]
/// struct Fall;
/// impl<T: Scalar> Dynamics<T> for Fall {
///     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> Result<Var<'t, T>> {
///         h.tape().concat_cols(&[h.slice_cols(1, 1)?, -p[0]])
///     }
/// }
/// /// The height.
/// struct Floor;
/// impl<T: Scalar> EventFunctions<T> for Floor {
///     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> Result<Var<'t, T>> {
///         h.slice_cols(0, 1)
///     }
/// }
///
/// let tape = Tape::<f64>::new();
/// let h0 = tape.var(DMatrix::from_row_slice(1, 2, &[2.0, 0.0]));
/// let g = tape.var(DMatrix::from_element(1, 1, 9.81));
/// let events = Events { functions: &Floor, crossings: vec![Crossing::Falling], t_max: 10.0 };
/// let opts = Options::default();
/// let t0 = tape.constant(DMatrix::from_element(1, 1, 0.0));
/// let sol = odeint_event(&tape, &Fall, h0, t0, &[], &[g], &events, &opts, &Strategy::Taped)?;
/// let EventOutcome::Fired { t, time, .. } = sol.outcome else { panic!("no bounce") };
/// assert!((t - (2.0 * 2.0 / 9.81f64).sqrt()).abs() < 1e-9);
/// let grads = tape.backward(time)?;
/// // dt*/dH = 1 / sqrt(2 H g)
/// let dh = grads.get(h0).unwrap()[(0, 0)];
/// assert!((dh - 1.0 / (2.0 * 2.0 * 9.81f64).sqrt()).abs() < 1e-7);
/// # Ok::<(), ode::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn odeint_event<'t, T, F, E>(
    tape: &'t Tape<T>,
    f: &F,
    h0: Var<'t, T>,
    t0: Var<'t, T>,
    times: &[f64],
    params: &[Var<'t, T>],
    events: &Events<'_, E>,
    opts: &Options,
    strategy: &Strategy,
) -> Result<EventSolution<'t, T>>
where
    T: Scalar,
    F: Dynamics<T> + Dynamics<DualOf<T>> + Clone + 'static,
    E: EventFunctions<T>,
{
    let t0_var = t0;
    if t0_var.shape()? != (1, 1) {
        return Err(Error::Shape {
            what: "odeint_event's t0".into(),
            expected: (1, 1),
            got: t0_var.shape()?,
        });
    }
    let t0 = t0_var.scalar_value()?.primal();
    if !t0.is_finite() {
        return Err(Error::BadOption {
            name: "t0",
            value: t0,
            expected: "a finite start time",
        });
    }
    if !(events.t_max.is_finite() && events.t_max > t0) {
        return Err(Error::BadOption {
            name: "Events::t_max",
            value: events.t_max,
            expected: "a finite time after t0 (events are located forward in time)",
        });
    }
    if events.crossings.is_empty() {
        return Err(Error::BadOption {
            name: "Events::crossings",
            value: 0.0,
            expected: "one Crossing per event function (at least one)",
        });
    }
    let mut previous = t0;
    for &t in times {
        if !(t.is_finite() && t > previous) {
            return Err(Error::BadOption {
                name: "odeint_event times",
                value: t,
                expected: "finite output times after t0, strictly increasing",
            });
        }
        previous = t;
    }
    let scheme = Scheme::of(opts);
    if scheme.is_reversible() {
        return Err(Error::SchemeNotSupported {
            strategy: strategy.name(),
            scheme: scheme.describe(opts.method),
            fix: "events locate roots on the plain method's dense output: solve without Options::coupling",
        });
    }
    opts.validate()?;
    let h0_value = h0.value()?;
    let param_values: Vec<DMatrix<T>> = params
        .iter()
        .map(|p| p.value())
        .collect::<ad_core::Result<_>>()?;
    let located = locate(f, events, t0, &h0_value, &param_values, opts)?;
    let end = located.as_ref().map_or(events.t_max, |l| l.t);
    let mut grid = vec![t0];
    grid.extend(times.iter().copied().filter(|&t| t < end));
    grid.push(end);
    // t0 + offsets: the solve's times move with t0 (a chained event's start).
    let offsets: Vec<T> = grid.iter().map(|&t| T::constant(t - t0)).collect();
    let t_row = t0_var
        .broadcast(1, grid.len())?
        .add(tape.constant(DMatrix::from_row_slice(1, grid.len(), &offsets)))?;
    let solution = odeint_with(tape, f, h0, t_row, params, opts, strategy)?;
    let last = solution.last();
    let outputs = solution.outputs[..grid.len() - 1].to_vec();
    grid.pop();
    let outcome = match located {
        None => EventOutcome::NotFired { state: last },
        Some(located) => {
            let (time, state) = differentiate(tape, f, events, &located, t0_var, t0, last, params)?;
            EventOutcome::Fired {
                index: located.index,
                t: located.t,
                time,
                state,
            }
        }
    };
    Ok(EventSolution {
        outcome,
        times: grid,
        outputs,
        solution,
    })
}

/// `[g_1 … g_K]` at `(t, h)` as numbers, on a throwaway tape; refused when not `1 × K` or
/// not finite.
fn event_values<T: Scalar, E: EventFunctions<T>>(
    events: &Events<'_, E>,
    t: f64,
    h: &DMatrix<T>,
    params: &[DMatrix<T>],
) -> Result<Vec<f64>> {
    let local = Tape::<T>::new();
    let _no_grad = local.no_grad();
    let tv = local.constant(DMatrix::from_element(1, 1, T::constant(t)));
    let hv = local.constant(h.clone());
    let pv: Vec<_> = params.iter().map(|p| local.constant(p.clone())).collect();
    let g = events.functions.eval(tv, hv, &pv)?;
    let k = events.crossings.len();
    let got = g.shape()?;
    if got != (1, k) {
        return Err(Error::Shape {
            what: "the event functions' value (one row, one column per Crossing)".into(),
            expected: (1, k),
            got,
        });
    }
    let values: Vec<f64> = g.value()?.iter().map(|x| x.primal()).collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "event function",
            t,
        });
    }
    Ok(values)
}

/// A located root.
struct Located {
    /// Which function.
    index: usize,
    /// Where.
    t: f64,
    /// `|g|` at the bracketing step's start over the step's length: the slope a transversal
    /// crossing has, against which `D = ∂g/∂t + ∂g/∂h·f` is judged zero.
    slope: f64,
}

/// The first event, or `None` if none fires before `t_max`.
fn locate<T: Scalar, F: Dynamics<T>, E: EventFunctions<T>>(
    f: &F,
    events: &Events<'_, E>,
    t0: f64,
    h0: &DMatrix<T>,
    params: &[DMatrix<T>],
    opts: &Options,
) -> Result<Option<Located>> {
    let scratch = Tape::<T>::new();
    let _no_grad = scratch.no_grad();
    let pv: Vec<Var<'_, T>> = params.iter().map(|p| scratch.constant(p.clone())).collect();
    let t_base = scratch.constant(DMatrix::from_element(1, 1, T::constant(t0)));
    let y0 = scratch.constant(h0.clone());
    let base = scratch.mark();
    let sys = FieldSystem {
        f,
        params: &pv,
        shape: h0.shape(),
        nfe: 0,
        work: Default::default(),
        reuse: None,
    };
    let ctl = forward_controller(opts);
    let tableau = ctl.tableau;
    let start = Start {
        t0,
        t_base,
        t: t0,
        y: vec![y0],
        k0: None,
        dt: None,
        dir: 1.0,
        tangents: GridTangents::none(),
    };
    let mut stepper = Stepper::new(&scratch, sys, ctl, Memory::Scratch(base), start)?;
    let mut g_start = event_values(events, t0, h0, params)?;
    loop {
        let mut acc = stepper.step(events.t_max, true)?;
        let (t, t1, dt) = (acc.record.t, acc.record.t1, acc.record.dt);
        let y1 = acc.step.y1[0].value()?;
        let g_end = event_values(events, t1, &y1, params)?;
        let fired: Vec<usize> = (0..g_end.len())
            .filter(|&k| events.crossings[k].fires(g_start[k], g_end[k]))
            .collect();
        if !fired.is_empty() {
            // The step's dense output: the method's interpolant, else a cubic Hermite from
            // F at both ends.
            let y0 = acc.step.y0[0].value()?;
            let k: Vec<DMatrix<T>> = acc
                .step
                .k
                .iter()
                .map(|k| k[0].value())
                .collect::<ad_core::Result<_>>()?;
            let first_is_f0 = !matches!(
                tableau.step,
                StepKind::DiagonallyImplicit {
                    explicit_first: false,
                    ..
                }
            );
            let hermite_ends = match tableau.interpolant {
                Some(_) => None,
                None => {
                    let f1 = stepper.first_stage_after(&mut acc)?[0].value()?;
                    let f0 = if first_is_f0 {
                        k[0].clone()
                    } else {
                        field_value(f, t, &y0, params)?
                    };
                    Some((f0, f1))
                }
            };
            let at = |theta: f64| -> DMatrix<T> {
                match (tableau.interpolant, &hermite_ends) {
                    (Some(p), _) => own_interpolant(p, dt, theta, &y0, &k),
                    (None, Some((f0, f1))) => hermite(dt, theta, &y0, f0, &y1, f1),
                    (None, None) => y1.clone(),
                }
            };
            let mut best: Option<Located> = None;
            for &idx in &fired {
                let phi = |theta: f64| -> Result<f64> {
                    Ok(event_values(events, t + theta * dt, &at(theta), params)?[idx])
                };
                let theta = illinois(phi, g_start[idx], g_end[idx])?;
                let root = if theta >= 1.0 { t1 } else { t + theta * dt };
                if best.as_ref().is_none_or(|b| root < b.t) {
                    best = Some(Located {
                        index: idx,
                        t: root,
                        slope: g_start[idx].abs() / dt,
                    });
                }
            }
            return Ok(best);
        }
        if acc.record.landed && t1 >= events.t_max {
            return Ok(None);
        }
        g_start = g_end;
        stepper.advance(acc, &[])?;
    }
}

/// `f(t, h)` as values.
fn field_value<T: Scalar, F: Dynamics<T>>(
    f: &F,
    t: f64,
    h: &DMatrix<T>,
    params: &[DMatrix<T>],
) -> Result<DMatrix<T>> {
    let local = Tape::<T>::new();
    let _no_grad = local.no_grad();
    let tv = local.constant(DMatrix::from_element(1, 1, T::constant(t)));
    let hv = local.constant(h.clone());
    let pv: Vec<_> = params.iter().map(|p| local.constant(p.clone())).collect();
    Ok(f.eval(tv, hv, &pv)?.value()?)
}

/// The root in `θ ∈ (0, 1]` of `phi` with `phi(0) = a`, `phi(1) = b` of opposite signs (or
/// `b = 0`), by the Illinois variant of regula falsi (superlinear; Dahlquist & Björck), to
/// a few ulps of the step.
fn illinois(mut phi: impl FnMut(f64) -> Result<f64>, a: f64, b: f64) -> Result<f64> {
    if b == 0.0 {
        return Ok(1.0);
    }
    let (mut lo, mut hi, mut f_lo, mut f_hi) = (0.0f64, 1.0f64, a, b);
    let mut side = 0;
    for _ in 0..200 {
        if hi - lo <= 4.0 * f64::EPSILON {
            break;
        }
        let mut x = (lo * f_hi - hi * f_lo) / (f_hi - f_lo);
        if !(x > lo && x < hi) {
            x = 0.5 * (lo + hi);
        }
        let fx = phi(x)?;
        if fx == 0.0 {
            return Ok(x);
        }
        if (fx < 0.0) == (f_lo < 0.0) {
            lo = x;
            f_lo = fx;
            if side == -1 {
                f_hi *= 0.5;
            }
            side = -1;
        } else {
            hi = x;
            f_hi = fx;
            if side == 1 {
                f_lo *= 0.5;
            }
            side = 1;
        }
    }
    // The bracket's end on the far side of the root: the event has happened by then.
    Ok(hi)
}

/// The event time and state as variables (see the module docs).
#[allow(clippy::too_many_arguments)]
fn differentiate<'t, T: Scalar, F: Dynamics<T>, E: EventFunctions<T>>(
    tape: &'t Tape<T>,
    f: &F,
    events: &Events<'_, E>,
    located: &Located,
    t0_var: Var<'t, T>,
    t0: f64,
    h_star: Var<'t, T>,
    params: &[Var<'t, T>],
) -> Result<(Var<'t, T>, Var<'t, T>)> {
    let (index, t_star) = (located.index, located.t);
    let h_value = h_star.value()?;
    let param_values: Vec<DMatrix<T>> = params
        .iter()
        .map(|p| p.value())
        .collect::<ad_core::Result<_>>()?;
    // D = ∂g/∂t + ∂g/∂h · f at the root, on a local tape.
    let local = Tape::<T>::new();
    let tv = local.var(DMatrix::from_element(1, 1, T::constant(t_star)));
    let hv = local.var(h_value.clone());
    let pv: Vec<_> = param_values
        .iter()
        .map(|p| local.constant(p.clone()))
        .collect();
    let g = events.functions.eval(tv, hv, &pv)?.slice_cols(index, 1)?;
    let grads = local.vjp_wrt(&[(g, DMatrix::from_element(1, 1, T::one()))], &[tv, hv])?;
    let slope = field_value(f, t_star, &h_value, &param_values)?;
    let d = grads[0][(0, 0)] + grads[1].dot(&slope);
    // A transversal crossing has |D| about the bracket's slope; a stationary one has D → 0
    // (with the root found to ~ε^{1/3} of a cubic's, |D| ~ 1e-10 of it).
    if !(d.primal().is_finite() && d.primal().abs() > 1e-8 * located.slope) {
        return Err(Error::EventTimeUndefined {
            t: t_star,
            event: index,
        });
    }
    let tc = t0_var.add_scalar(T::constant(t_star - t0));
    let g = events
        .functions
        .eval(tc, h_star, params)?
        .slice_cols(index, 1)?;
    // Its real value only: on dual numbers the dual part of g is the derivative's source.
    let g_value = g.value()?.map(|x| T::constant(x.primal()));
    let shift = g.sub(tape.constant(g_value))?.scale(-T::one() / d);
    let time = tc.add(shift)?;
    let state = h_star.add(tape.constant(slope).mul(shift)?)?;
    Ok((time, state))
}
