//! The one explicit Runge–Kutta engine behind every gradient mode.
//!
//! States are lists of tape `Var`s (one tensor for an ODE, several for the adjoint's
//! augmented state). On the caller's tape every stage is recorded (taped mode); on a
//! no-grad scratch tape the engine rewinds after each accepted step, so memory stays flat
//! (untaped forward, adjoint backward). A step is [`rk_step`]; step-size control is
//! [`Controller`]; dense output is [`interpolate`].

use ad_core::nalgebra::DMatrix;
use ad_core::{Mark, Scalar, Tape, Var};

use crate::error::{Error, Result};
use crate::options::Norm;
use crate::tableau::Tableau;

/// A state: one variable per component.
pub(crate) type State<'t, T> = Vec<Var<'t, T>>;

/// Counts of one solve (or of all segments of an adjoint backward solve).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SolveStats {
    /// Evaluations of the vector field (for the adjoint: of the augmented dynamics, each one
    /// f evaluation plus one VJP).
    pub nfe: usize,
    /// Accepted steps.
    pub accepted: usize,
    /// Rejected steps.
    pub rejected: usize,
}

impl std::ops::AddAssign for SolveStats {
    fn add_assign(&mut self, o: Self) {
        self.nfe += o.nfe;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
    }
}

/// A time as a number (for step control and messages) and as a 1×1 variable (through which
/// taped solves differentiate).
#[derive(Clone, Copy)]
pub(crate) struct Time<'t, T: Scalar> {
    pub at: f64,
    pub var: Var<'t, T>,
}

/// What the engine integrates: `y' = F(t, y)` over a list of tensors.
pub(crate) trait System<'t, T: Scalar> {
    /// `F(t, y)`; `t` is given as a number (for error messages and local tapes) and as a
    /// 1×1 variable (so taped solves differentiate through stage times).
    fn eval(&mut self, t: f64, tv: Var<'t, T>, y: &[Var<'t, T>]) -> Result<State<'t, T>>;

    /// Whether `F` reads component `c` of the state (stage values of the others are skipped).
    fn reads(&self, _c: usize) -> bool {
        true
    }
}

/// Step-size control, separate from the step itself.
#[derive(Clone, Debug)]
pub(crate) struct Controller {
    pub tableau: &'static Tableau,
    pub rtol: f64,
    pub atol: f64,
    pub safety: f64,
    pub ifactor: f64,
    pub dfactor: f64,
    pub min_step: f64,
    pub max_step: f64,
    pub max_num_steps: usize,
    pub fixed_step: Option<f64>,
    pub first_step: Option<f64>,
    pub norm: Norm,
    /// Components that count in the error norm (`None`: all).
    pub mask: Option<Vec<bool>>,
}

fn primal<T: Scalar>(v: &Var<'_, T>) -> Result<DMatrix<f64>> {
    Ok(v.with_value(|m| m.map(|x| x.primal()))?)
}

/// Whether component `c` counts in an error norm restricted by `mask` (`None`: all count).
fn counted(mask: Option<&[bool]>, c: usize) -> bool {
    mask.is_none_or(|m| m.get(c).copied().unwrap_or(true))
}

impl Controller {
    fn counts(&self, c: usize) -> bool {
        counted(self.mask.as_deref(), c)
    }

    /// The configured norm of per-component scaled errors.
    fn norm(&self, scaled: &[DMatrix<f64>]) -> f64 {
        let parts = scaled.iter().enumerate().filter(|(c, _)| self.counts(*c));
        match &self.norm {
            Norm::Rms => {
                let (sum, n) = parts.fold((0.0, 0usize), |(s, n), (_, m)| {
                    (s + m.norm_squared(), n + m.len())
                });
                (sum / n.max(1) as f64).sqrt()
            }
            Norm::MaxRms => parts
                .map(|(_, m)| (m.norm_squared() / m.len().max(1) as f64).sqrt())
                .fold(0.0, f64::max),
            Norm::Custom(f) => {
                let kept: Vec<DMatrix<f64>> = scaled
                    .iter()
                    .enumerate()
                    .map(|(c, m)| {
                        if self.counts(c) {
                            m.clone()
                        } else {
                            DMatrix::zeros(m.nrows(), m.ncols())
                        }
                    })
                    .collect();
                f(&kept)
            }
        }
    }

    /// `‖err / (atol + rtol·max(|y₀|, |y₁|))‖` with the error estimate `err = h Σ e_i k_i`
    /// (numbers only: step control is not differentiated); accept the step when ≤ 1. One
    /// pass over each component, no temporary tensors (except for a custom norm).
    fn error_ratio<T: Scalar>(&self, err: &[Vec<f64>], step: &Step<'_, T>) -> Result<f64> {
        let custom = matches!(self.norm, Norm::Custom(_));
        let mut parts: Vec<(f64, usize)> = Vec::with_capacity(step.y1.len());
        let mut scaled: Vec<DMatrix<f64>> = Vec::new();
        for (c, e) in err.iter().enumerate() {
            let (r, cols) = step.y1[c].shape()?;
            if !self.counts(c) {
                parts.push((0.0, 0));
                if custom {
                    scaled.push(DMatrix::zeros(r, cols));
                }
                continue;
            }
            let vars = [step.y0[c], step.y1[c]];
            let (sum, m) = Var::with_values(&vars, |v| {
                let (y0, y1) = (v[0].as_slice(), v[1].as_slice());
                let mut scaled_err: Vec<f64> = e
                    .iter()
                    .zip(y0.iter().zip(y1))
                    .map(|(e, (a, b))| {
                        e / (self.atol + self.rtol * a.primal().abs().max(b.primal().abs()))
                    })
                    .collect();
                let sum = sum_of_squares(&scaled_err);
                (
                    sum,
                    custom.then(|| DMatrix::from_vec(r, cols, std::mem::take(&mut scaled_err))),
                )
            })?;
            parts.push((sum, r * cols));
            scaled.extend(m);
        }
        let r = match &self.norm {
            Norm::Rms => {
                let (sum, n) = parts
                    .iter()
                    .fold((0.0, 0), |(s, n), &(ps, pn)| (s + ps, n + pn));
                (sum / n.max(1) as f64).sqrt()
            }
            Norm::MaxRms => parts
                .iter()
                .filter(|p| p.1 > 0)
                .map(|&(s, n)| (s / n as f64).sqrt())
                .fold(0.0, f64::max),
            Norm::Custom(f) => f(&scaled),
        };
        Ok(if r.is_nan() { f64::INFINITY } else { r })
    }

    /// The next step size after a step of size `dt` with this error ratio (torchdiffeq's
    /// rule: no shrinking after an accepted step).
    fn next_step(&self, dt: f64, ratio: f64) -> f64 {
        if ratio == 0.0 {
            return dt * self.ifactor;
        }
        let dfactor = if ratio < 1.0 { 1.0 } else { self.dfactor };
        let factor = (self.safety / ratio.powf(1.0 / f64::from(self.tableau.order)))
            .max(dfactor)
            .min(self.ifactor);
        dt * factor
    }

    /// Hairer's initial step (Hairer, Nørsett & Wanner, Solving ODEs I, II.4), as torchdiffeq
    /// does it: one extra evaluation of F.
    fn initial_step<'t, T: Scalar, S: System<'t, T>>(
        &self,
        tape: &'t Tape<T>,
        sys: &mut S,
        t0: Time<'t, T>,
        dir: f64,
        y0: &[Var<'t, T>],
        f0: &[Var<'t, T>],
    ) -> Result<f64> {
        let y0p: Vec<DMatrix<f64>> = y0.iter().map(primal).collect::<Result<_>>()?;
        let f0p: Vec<DMatrix<f64>> = f0.iter().map(primal).collect::<Result<_>>()?;
        let scale = |m: &DMatrix<f64>, y: &DMatrix<f64>| {
            m.zip_map(y, |v, y| v / (self.atol + self.rtol * y.abs()))
        };
        let d0 = self.norm(&y0p.iter().map(|y| scale(y, y)).collect::<Vec<_>>());
        let d1 = self.norm(
            &f0p.iter()
                .zip(&y0p)
                .map(|(f, y)| scale(f, y))
                .collect::<Vec<_>>(),
        );
        let h0 = if d0 < 1e-5 || d1 < 1e-5 {
            1e-6
        } else {
            0.01 * d0 / d1
        };
        let mark = tape.mark();
        let y1 = combine(tape, y0, dir * h0, &[1.0], &[f0.to_vec()])?;
        let f1 = sys.eval(t0.at + dir * h0, t0.var.add_scalar(T::cst(dir * h0)), &y1)?;
        let f1p: Vec<DMatrix<f64>> = f1.iter().map(primal).collect::<Result<_>>()?;
        tape.rewind(mark)?;
        let d2 = self.norm(
            &f1p.iter()
                .zip(&f0p)
                .zip(&y0p)
                .map(|((f1, f0), y)| scale(&(f1 - f0), y))
                .collect::<Vec<_>>(),
        ) / h0;
        let h1 = if d1 <= 1e-15 && d2 <= 1e-15 {
            (h0 * 1e-3).max(1e-6)
        } else {
            (0.01 / d1.max(d2)).powf(1.0 / f64::from(self.tableau.order))
        };
        Ok((100.0 * h0).min(h1))
    }
}

/// `Σ x²` with eight independent partial sums, so that the loop vectorises (one running
/// sum would chain every addition on the previous one).
fn sum_of_squares(x: &[f64]) -> f64 {
    let mut acc = [0.0; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `y + h Σ_j w_j k_j` per component, one `lin_comb` node per component; zero weights skipped.
fn combine<'t, T: Scalar>(
    tape: &'t Tape<T>,
    y: &[Var<'t, T>],
    h: f64,
    w: &[f64],
    k: &[State<'t, T>],
) -> Result<State<'t, T>> {
    combine_where(tape, y, h, w, k, |_| true)
}

/// [`combine`] for the components where `wanted(c)`; the others are left as `y[c]`.
fn combine_where<'t, T: Scalar>(
    tape: &'t Tape<T>,
    y: &[Var<'t, T>],
    h: f64,
    w: &[f64],
    k: &[State<'t, T>],
    wanted: impl Fn(usize) -> bool,
) -> Result<State<'t, T>> {
    let mut out = Vec::with_capacity(y.len());
    let mut terms = Vec::with_capacity(w.len() + 1);
    for (c, &yc) in y.iter().enumerate() {
        terms.clear();
        terms.push((T::one(), yc));
        if wanted(c) {
            for (&wj, kj) in w.iter().zip(k) {
                if wj != 0.0 {
                    terms.push((T::cst(h * wj), kj[c]));
                }
            }
        }
        out.push(if terms.len() == 1 {
            yc
        } else {
            tape.lin_comb(&terms)?
        });
    }
    Ok(out)
}

/// The stages of one step and its result.
pub(crate) struct Step<'t, T: Scalar> {
    /// The state at the step's start.
    pub y0: State<'t, T>,
    /// `k_i`, one state per stage (`k[0]` is F at the step's start).
    pub k: Vec<State<'t, T>>,
    /// The propagated solution at `t + h`.
    pub y1: State<'t, T>,
    /// The error estimate `h Σ e_i k_i` per component (empty where the norm skips the
    /// component; `None` for fixed-step methods).
    pub err: Option<Vec<Vec<f64>>>,
}

/// One Runge–Kutta step from `(t, y)` with `k0 = F(t, y)`: a pure function of (t, y, h)
/// up to the nodes it records.
pub(crate) fn rk_step<'t, T: Scalar, S: System<'t, T>>(
    tape: &'t Tape<T>,
    sys: &mut S,
    method: Method<'_>,
    t: Time<'t, T>,
    y: &[Var<'t, T>],
    k0: State<'t, T>,
    h: f64,
) -> Result<Step<'t, T>> {
    let tab = method.tableau;
    let s = tab.c.len();
    let mut k: Vec<State<'t, T>> = Vec::with_capacity(s);
    // The error estimate h Σ e_i k_i accumulates as each stage arrives, while its values are
    // still in cache (numbers only: step control is not differentiated).
    let mut err: Option<Vec<Vec<f64>>> = match tab.b_error {
        Some(_) => Some(
            y.iter()
                .enumerate()
                .map(|(c, v)| {
                    Ok(if method.counts(c) {
                        vec![0.0; v.shape()?.0 * v.shape()?.1]
                    } else {
                        Vec::new()
                    })
                })
                .collect::<Result<_>>()?,
        ),
        None => None,
    };
    let mut add_stage = |i: usize, ki: &State<'t, T>| -> Result<()> {
        let (Some(err), Some(e)) = (err.as_mut(), tab.b_error) else {
            return Ok(());
        };
        let w = h * e[i];
        if w == 0.0 {
            return Ok(());
        }
        for (acc, v) in err.iter_mut().zip(ki).filter(|(acc, _)| !acc.is_empty()) {
            v.with_value(|m| {
                for (a, x) in acc.iter_mut().zip(m.as_slice()) {
                    *a += w * x.primal();
                }
            })?;
        }
        Ok(())
    };
    add_stage(0, &k0)?;
    k.push(k0);
    let mut last_input = None;
    for i in 1..s {
        // Stage values only for the components F reads (the adjoint's a_θ and a_t are
        // integrated but never read, so their stage values would be wasted work).
        let yi = combine_where(tape, y, h, tab.a[i], &k, |c| sys.reads(c))?;
        let ti = t.var.add_scalar(T::cst(tab.c[i] * h));
        let ki = sys.eval(t.at + tab.c[i] * h, ti, &yi)?;
        add_stage(i, &ki)?;
        k.push(ki);
        last_input = Some(yi);
    }
    let y1 = match (tab.fsal, last_input) {
        // FSAL: the last stage was evaluated at y₁ itself (for the components F reads).
        (true, Some(y_last)) => {
            let rest = combine_where(tape, y, h, tab.b, &k, |c| !sys.reads(c))?;
            (0..y.len())
                .map(|c| if sys.reads(c) { y_last[c] } else { rest[c] })
                .collect()
        }
        _ => combine(tape, y, h, tab.b, &k)?,
    };
    Ok(Step {
        y0: y.to_vec(),
        k,
        y1,
        err,
    })
}

/// A method as the step sees it: its tableau, and which components its error estimate
/// covers (`None`: all).
#[derive(Clone, Copy)]
pub(crate) struct Method<'a> {
    pub tableau: &'a Tableau,
    pub error_mask: Option<&'a [bool]>,
}

impl Method<'_> {
    fn counts(&self, c: usize) -> bool {
        counted(self.error_mask, c)
    }
}

/// Dense output at `t_out` inside the step `[t_n, t_n + h]`: the method's own interpolant,
/// or a cubic Hermite on `(y, F(t_n, y), y₁, F(t_n + h, y₁))`. Differentiable in `t_out`.
pub(crate) fn interpolate<'t, T: Scalar>(
    tape: &'t Tape<T>,
    tab: &Tableau,
    t_n: Var<'t, T>,
    h: f64,
    t_out: Var<'t, T>,
    step: &Step<'t, T>,
    k_next: Option<&State<'t, T>>,
) -> Result<State<'t, T>> {
    // weights(θ) = [1, θ, …, θ^K] · C, over the terms listed below.
    let (coeffs, terms): (DMatrix<T>, Vec<&State<'t, T>>) = match (tab.interpolant, k_next) {
        (Some(p), _) => {
            let kmax = p.iter().map(|row| row.len()).max().unwrap_or(0);
            let mut c = DMatrix::zeros(kmax + 1, p.len() + 1);
            c[(0, 0)] = T::one();
            for (i, row) in p.iter().enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    c[(k + 1, i + 1)] = T::cst(h * v);
                }
            }
            let mut terms: Vec<&State<'t, T>> = Vec::with_capacity(p.len() + 1);
            terms.push(&step.y0);
            terms.extend(step.k.iter());
            (c, terms)
        }
        (None, Some(f1)) => {
            #[rustfmt::skip]
            let c = DMatrix::from_row_slice(4, 4, &[
                // y       h·f0        y1        h·f1
                1.0,       0.0,        0.0,      0.0,
                0.0,       h,          0.0,      0.0,
                -3.0,      -2.0 * h,   3.0,      -h,
                2.0,       h,          -2.0,     h,
            ]).map(T::cst);
            (c, vec![&step.y0, &step.k[0], &step.y1, f1])
        }
        (None, None) => unreachable_interp()?,
    };
    // Terms whose weight polynomial is identically zero (dopri5's k₂) are left out.
    let used: Vec<usize> = (0..coeffs.ncols())
        .filter(|&j| coeffs.column(j).iter().any(|v| *v != T::zero()))
        .collect();
    let coeffs = coeffs.select_columns(&used);
    let terms: Vec<&State<'t, T>> = used.iter().map(|&j| terms[j]).collect();
    let theta = t_out.sub(t_n)?.scale(T::cst(1.0 / h));
    let weights = theta
        .powers(coeffs.nrows() - 1)?
        .matmul(tape.constant(coeffs))?;
    (0..step.y0.len())
        .map(|c| {
            let vars: Vec<Var<'t, T>> = terms.iter().map(|s| s[c]).collect();
            Ok(tape.weighted_sum(weights, &vars)?)
        })
        .collect()
}

fn unreachable_interp<T>() -> Result<T> {
    Err(Error::Tape(ad_core::Error::InvalidArgument {
        op: "interpolate",
        message: "Hermite interpolation needs F at the step's end; this is a bug in the ode crate"
            .into(),
    }))
}

/// One integration from `t0` through a list of output times.
pub(crate) struct Segment<'a, 't, T: Scalar> {
    /// Start time.
    pub t0: f64,
    /// The start time as a 1×1 variable (its derivative parts flow into stage times).
    pub t_base: Var<'t, T>,
    /// Initial state.
    pub y0: State<'t, T>,
    /// `F(t0, y0)` if already known.
    pub k0: Option<State<'t, T>>,
    /// Output times after `t0`, strictly monotonic in the direction of integration, with
    /// their variables.
    pub outputs: &'a [(f64, Var<'t, T>)],
    /// Land exactly on the last output time (no interpolation; the adjoint's segments).
    pub land: bool,
    /// Initial step magnitude (carried over from a previous segment).
    pub dt: Option<f64>,
    /// Scratch mode: rewind the tape to this mark after every accepted step, keeping only
    /// the state and the next first stage.
    pub scratch: Option<Mark>,
}

/// Where a segment ended.
pub(crate) struct SegmentEnd<'t, T: Scalar> {
    /// The state at the end of the last step.
    pub y: State<'t, T>,
    /// The step size the controller proposes next.
    pub dt_next: f64,
    /// Accepted and rejected steps (NFE is counted by the system).
    pub stats: SolveStats,
}

/// Integrate `sys` over `seg`, calling `emit(i, state)` at each output time in order.
pub(crate) fn integrate<'t, T: Scalar, S: System<'t, T>>(
    tape: &'t Tape<T>,
    sys: &mut S,
    ctl: &Controller,
    seg: Segment<'_, 't, T>,
    mut emit: impl FnMut(usize, &State<'t, T>) -> Result<()>,
) -> Result<SegmentEnd<'t, T>> {
    let tab = ctl.tableau;
    let Some(&(t_end, _)) = seg.outputs.last() else {
        return Ok(SegmentEnd {
            y: seg.y0,
            dt_next: seg.dt.unwrap_or(0.0),
            stats: SolveStats::default(),
        });
    };
    let dir = if t_end >= seg.t0 { 1.0 } else { -1.0 };
    let mut stats = SolveStats::default();
    let mut y = seg.y0;
    let mut k0 = match seg.k0 {
        Some(k0) => k0,
        None => sys.eval(seg.t0, seg.t_base, &y)?,
    };
    let mut dt = match (ctl.fixed_step, seg.dt, ctl.first_step) {
        (Some(h), _, _) => h,
        (None, Some(h), _) | (None, None, Some(h)) => h,
        (None, None, None) => {
            let t0 = Time {
                at: seg.t0,
                var: seg.t_base,
            };
            ctl.initial_step(tape, sys, t0, dir, &y, &k0)?
        }
    };
    let mut t = seg.t0;
    let mut next_out = 0;
    let mut emitted: Vec<Var<'t, T>> = Vec::new();
    // A method without its own interpolant gets a cubic Hermite, O(h⁴) locally: far below a
    // high-order adaptive method's accuracy at its large steps (dopri8 at rtol 1e-8: errors
    // of 1e-4). Such methods step onto every output time instead.
    let land_all = tab.interpolant.is_none() && tab.b_error.is_some() && tab.order > 4;
    loop {
        if stats.accepted + stats.rejected >= ctl.max_num_steps {
            return Err(Error::TooManySteps {
                max_num_steps: ctl.max_num_steps,
                t,
            });
        }
        dt = dt.min(ctl.max_step);
        let target = if land_all {
            seg.outputs[next_out].0
        } else {
            t_end
        };
        let remaining = (target - t) * dir;
        let landing = (seg.land || land_all) && dt >= remaining * (1.0 - 1e-12);
        let h = if landing { remaining * dir } else { dt * dir };
        if t + h == t || !h.is_finite() {
            return Err(Error::StepSizeUnderflow {
                t,
                dt: h.abs(),
                min_step: ctl.min_step,
            });
        }
        let step_mark = tape.mark();
        let t_var = seg.t_base.add_scalar(T::cst(t - seg.t0));
        let method = Method {
            tableau: tab,
            error_mask: ctl.mask.as_deref(),
        };
        let step = rk_step(
            tape,
            sys,
            method,
            Time { at: t, var: t_var },
            &y,
            k0.clone(),
            h,
        )?;
        let (accept, dt_next) = match &step.err {
            Some(err) => {
                let ratio = ctl.error_ratio(err, &step)?;
                (ratio <= 1.0, ctl.next_step(h.abs(), ratio))
            }
            None => (true, dt),
        };
        if !accept {
            stats.rejected += 1;
            tape.rewind(step_mark)?;
            if dt_next < ctl.min_step {
                return Err(Error::StepSizeUnderflow {
                    t,
                    dt: dt_next,
                    min_step: ctl.min_step,
                });
            }
            dt = dt_next;
            continue;
        }
        stats.accepted += 1;
        let t1 = if landing { target } else { t + h };
        for yc in &step.y1 {
            if !yc.with_value(ad_core::all_finite)? {
                return Err(Error::NonFinite {
                    what: "state",
                    t: t1,
                });
            }
        }
        // Outputs inside this step.
        let mut k_next: Option<State<'t, T>> = None;
        while next_out < seg.outputs.len() {
            let (t_out, t_out_var) = seg.outputs[next_out];
            let inside = (t_out - t1) * dir <= 0.0;
            if !inside {
                break;
            }
            let value = if landing && (land_all || next_out + 1 == seg.outputs.len()) {
                if seg.land {
                    step.y1.clone()
                } else {
                    // y₁ + (t_out − t₁)·F(t₁, y₁): the value is y₁, and the output time
                    // keeps its derivative dh/dt = F, as through an interpolant. t₁ is a
                    // variable (it moves with t_0, like every step time), and the shift is
                    // computed as (t_out − t_0) − (t₁ − t_0) so that it is exactly 0.
                    let k = next_first_stage(
                        tab,
                        sys,
                        &step,
                        t1,
                        seg.t_base.add_scalar(T::cst(t1 - seg.t0)),
                    )?;
                    let shift = t_out_var
                        .sub(seg.t_base)?
                        .add_scalar(T::cst(-(t1 - seg.t0)));
                    let one = tape.constant(DMatrix::from_element(1, 1, T::one()));
                    let weights = tape.concat_cols(&[one, shift])?;
                    let value = step
                        .y1
                        .iter()
                        .zip(&k)
                        .map(|(&y1, &k)| Ok(tape.weighted_sum(weights, &[y1, k])?))
                        .collect::<Result<State<'t, T>>>()?;
                    k_next = Some(k);
                    value
                }
            } else {
                if tab.interpolant.is_none() && k_next.is_none() {
                    k_next = Some(next_first_stage(
                        tab,
                        sys,
                        &step,
                        t1,
                        seg.t_base.add_scalar(T::cst(t1 - seg.t0)),
                    )?);
                }
                interpolate(tape, tab, t_var, h, t_out_var, &step, k_next.as_ref())?
            };
            emit(next_out, &value)?;
            emitted.extend_from_slice(&value);
            next_out += 1;
        }
        if next_out == seg.outputs.len() {
            return Ok(SegmentEnd {
                y: step.y1,
                dt_next: if landing { dt.max(dt_next) } else { dt_next },
                stats,
            });
        }
        let k_next = match k_next {
            Some(k) => k,
            None => next_first_stage(
                tab,
                sys,
                &step,
                t1,
                seg.t_base.add_scalar(T::cst(t1 - seg.t0)),
            )?,
        };
        let carried: Vec<Var<'t, T>> = step.y1.iter().chain(&k_next).copied().collect();
        let n = y.len();
        let mut carried = match seg.scratch {
            Some(mark) => tape.rewind_keep(mark, &carried)?,
            None => {
                // Taped: later steps read only y₁ and F(t₁, y₁) of this one, so whatever
                // else of it backward never reads can go now (keeps peak memory down too).
                let mut keep = carried.clone();
                keep.extend_from_slice(&emitted);
                tape.release_unneeded(step_mark, &keep)?;
                carried
            }
        };
        emitted.clear();
        k0 = carried.split_off(n);
        y = carried;
        t = t1;
        // A step shortened to land on an output does not shrink the next one.
        dt = if landing { dt.max(dt_next) } else { dt_next }.max(ctl.min_step);
    }
}

/// `F(t₁, y₁)`: the last stage for FSAL methods, one more evaluation otherwise.
fn next_first_stage<'t, T: Scalar, S: System<'t, T>>(
    tab: &Tableau,
    sys: &mut S,
    step: &Step<'t, T>,
    t1: f64,
    t1_var: Var<'t, T>,
) -> Result<State<'t, T>> {
    match (tab.fsal, step.k.last()) {
        (true, Some(k)) => Ok(k.clone()),
        _ => sys.eval(t1, t1_var, &step.y1),
    }
}
