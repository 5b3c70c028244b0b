//! The adjoint-equation residual of a user's dynamics along its trajectory.
//!
//! The backsolve adjoint integrates `a' = −aᵀ∂f/∂h` (and `a_θ' = −aᵀ∂f/∂θ`,
//! `a_t' = −aᵀ∂f/∂t`) with the vector-Jacobian products the tape computes for `f`, so a wrong
//! VJP anywhere inside `f` (a hand-written `CustomOp`, typically) makes every adjoint
//! gradient wrong while the forward solve stays right. At points along the trajectory this
//! check evaluates the residual `da/dt + (∂f/∂h)ᵀ a` with `da/dt` from the tape's VJP and the
//! Jacobian built column by column from `Dual64` forward runs of the same dynamics (which
//! never call a VJP): it is zero up to rounding exactly when the two agree.

use std::fmt;

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::{Tape, Var};
use serde::Serialize;

use super::problem::GradientProblem;
use super::table::{render, sci};
use super::{max_abs, relative, Result, VerifyError};
use crate::dynamics::Dynamics;
use crate::forward::check_field_output;
use crate::input::{check_grid, direction};
use crate::options::Options;
use crate::solve::{odeint, solve};

/// Where [`adjoint_residual`] evaluates the residual.
#[derive(Clone, Debug, Default)]
pub enum ResidualPoints {
    /// The start and the end of every step the forward solve accepts (and the grid times).
    #[default]
    AcceptedSteps,
    /// These times (and the grid times); each must lie within the grid.
    Times(Vec<f64>),
}

/// Which part of the adjoint system a residual entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// The state adjoint `a`: `aᵀ∂f/∂h`.
    State,
    /// The adjoint of parameter `i`: `aᵀ∂f/∂θ_i`.
    Param(usize),
    /// The time adjoint: `aᵀ∂f/∂t`.
    Time,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::State => f.write_str("h"),
            Component::Param(i) => write!(f, "theta[{i}]"),
            Component::Time => f.write_str("t"),
        }
    }
}

/// One entry of the residual: where it is and the two numbers it compares.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResidualEntry {
    /// The time of the point.
    pub t: f64,
    /// The part of the adjoint system.
    pub component: Component,
    /// Row and column of the entry within that part.
    pub index: (usize, usize),
    /// `(∂f/∂x)ᵀ a − (aᵀ∂f/∂x)_tape`: the residual `da/dt + (∂f/∂x)ᵀ a` with `da/dt` from the
    /// tape.
    pub residual: f64,
    /// The tape's VJP `aᵀ∂f/∂x` at this entry (what the adjoint integrates).
    pub tape_vjp: f64,
    /// `(∂f/∂x)ᵀ a` at this entry with the Jacobian from `Dual64` forward runs.
    pub dual_product: f64,
    /// `|residual|` over the largest `|tape_vjp|` or `|dual_product|` of this part at this
    /// point (`|residual|` itself when both are zero).
    pub relative: f64,
}

/// The residual at one point, per part: the largest absolute and relative entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResidualPoint {
    /// The time.
    pub t: f64,
    /// `max |a(t)|`: a point where the adjoint is zero checks nothing.
    pub adjoint_max_abs: f64,
    /// Largest `|residual|` of the state part.
    pub state_abs: f64,
    /// Largest relative residual of the state part.
    pub state_rel: f64,
    /// Largest `|residual|` over every parameter part (`0` without parameters).
    pub params_abs: f64,
    /// Largest relative residual over every parameter part.
    pub params_rel: f64,
    /// `|residual|` of the time part.
    pub time_abs: f64,
    /// Relative residual of the time part.
    pub time_rel: f64,
}

/// What [`adjoint_residual`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdjointResidualReport {
    /// One summary per point, in the order of the forward solve.
    pub points: Vec<ResidualPoint>,
    /// The largest relative residual over every point and part.
    pub max_relative: f64,
    /// The largest absolute residual over every point and part.
    pub max_abs: f64,
    /// The entry with the largest relative residual (`None` if the adjoint was zero at
    /// every point).
    pub worst: Option<ResidualEntry>,
    /// `Dual64` evaluations of the dynamics (state entries + parameter entries + 1 per point).
    pub dual_evaluations: usize,
}

impl AdjointResidualReport {
    /// Whether every relative residual is at most `tolerance` (rounding level is about
    /// 1e-13 for well-scaled dynamics; a wrong VJP gives residuals of order 1).
    pub fn is_consistent(&self, tolerance: f64) -> bool {
        self.max_relative <= tolerance
    }
}

impl fmt::Display for AdjointResidualReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<Vec<String>> = self
            .points
            .iter()
            .map(|p| {
                vec![
                    format!("{:.6}", p.t),
                    sci(Some(p.adjoint_max_abs)),
                    sci(Some(p.state_abs)),
                    sci(Some(p.state_rel)),
                    sci(Some(p.params_abs)),
                    sci(Some(p.params_rel)),
                    sci(Some(p.time_abs)),
                    sci(Some(p.time_rel)),
                ]
            })
            .collect();
        f.write_str(&render(
            &[
                "t",
                "max|a|",
                "h abs",
                "h rel",
                "theta abs",
                "theta rel",
                "t abs",
                "t rel",
            ],
            &rows,
        ))?;
        write!(
            f,
            "{} points, {} Dual64 evaluations; max relative residual {}, max absolute {}",
            self.points.len(),
            self.dual_evaluations,
            sci(Some(self.max_relative)),
            sci(Some(self.max_abs))
        )?;
        if let Some(w) = &self.worst {
            write!(
                f,
                "\nworst: {}{:?} at t = {:.6}: tape VJP {:.6e}, Dual64 (∂f/∂x)ᵀa {:.6e}, residual {:.3e}",
                w.component, w.index, w.t, w.tape_vjp, w.dual_product, w.residual
            )?;
        }
        Ok(())
    }
}

/// The adjoint-equation residual `da/dt + (∂f/∂h)ᵀ a` (and its θ and t parts) of
/// `problem`'s dynamics along its trajectory, for the problem's loss.
///
/// The forward solve runs from point to point (`points`, plus the grid times); the adjoint
/// `a(t)` at each point is pulled back from the output cotangents through taped solves of
/// the segments. At each point the tape's VJPs `aᵀ∂f/∂h`, `aᵀ∂f/∂θ`, `aᵀ∂f/∂t` (recorded on
/// a local `Tape<f64>`, as the backsolve adjoint does) are compared entry by entry with
/// `(∂f/∂·)ᵀ a` from `Dual64` forward runs, one per entry of h, θ and t. Cost per point:
/// one taped evaluation and `d + |θ| + 1` `Dual64` evaluations of f (d = batch × dim), on
/// top of one forward and one taped backward solve.
///
/// A dynamics with a hand-written op whose VJP has a sign flipped (a `CustomOp` inside
/// the dynamics must be generic over the scalar, so that the `Dual64` runs can use it too):
///
/// ```
/// use ad_core::nalgebra::DMatrix;
/// use ad_core::{BoxError, CustomOp, Result as TapeResult, Scalar, Var};
/// use ode::verify::{adjoint_residual, Component, GradientProblem, ResidualPoints};
/// use ode::{Dynamics, Options};
///
/// /// tanh with a hand-written VJP, optionally wrong.
/// struct Tanh { flipped: bool }
/// impl<T: Scalar> CustomOp<T> for Tanh {
///     fn name(&self) -> &str { "tanh" }
///     fn forward(&mut self, x: &[&DMatrix<T>]) -> Result<Vec<DMatrix<T>>, BoxError> {
///         Ok(vec![x[0].map(|x| x.tanh())])
///     }
///     fn vjp(&self, _x: &[&DMatrix<T>], y: &[&DMatrix<T>], g: Vec<Option<DMatrix<T>>>, _w: &[bool])
///         -> Result<Vec<Option<DMatrix<T>>>, BoxError> {
///         let sign = T::constant(if self.flipped { -1.0 } else { 1.0 });
///         let g = g[0].as_ref().ok_or("no cotangent")?;
///         Ok(vec![Some(g.zip_map(y[0], |g, y| sign * g * (T::one() - y * y)))])
///     }
///     fn held_bytes(&self) -> usize { 0 }
/// }
///
/// /// h' = tanh(h Wᵀ).
/// #[derive(Clone, Debug)]
/// struct Field { flipped: bool }
/// impl<T: Scalar> Dynamics<T> for Field {
///     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
///         let z = h.matmul_t(p[0])?;
///         Ok(h.tape().custom(Tanh { flipped: self.flipped }, &[z])?[0])
///     }
/// }
///
/// let w = DMatrix::from_row_slice(2, 2, &[0.5, -1.0, 1.0, 0.3]);
/// let h0 = DMatrix::from_row_slice(1, 2, &[0.4, -0.7]);
/// let opts = Options::default();
/// for flipped in [false, true] {
///     let problem = GradientProblem::new(Field { flipped }, h0.clone(), vec![0.0, 1.0], vec![w.clone()]);
///     let report = adjoint_residual(&problem, &opts, &ResidualPoints::AcceptedSteps)?;
///     println!("{report}");
///     if flipped {
///         // The tape's VJP is −(∂f/∂·)ᵀa, in h and in W alike: a relative residual of 2.
///         assert!((report.max_relative - 2.0).abs() < 1e-9);
///         let worst = report.worst.unwrap().component;
///         assert!(worst == Component::State || worst == Component::Param(0));
///     } else {
///         assert!(report.is_consistent(1e-12));
///     }
/// }
/// # Ok::<(), ode::verify::VerifyError>(())
/// ```
pub fn adjoint_residual<F>(
    problem: &GradientProblem<F>,
    opts: &Options,
    points: &ResidualPoints,
) -> Result<AdjointResidualReport>
where
    F: Dynamics<f64> + Dynamics<Dual64> + Clone + 'static,
{
    problem.validate()?;
    opts.validate()?;
    let grid = check_grid(&problem.grid)?;
    let times = residual_times(problem, opts, &grid, points)?;
    let f = &problem.dynamics;

    // Forward, point to point.
    let mut states = vec![problem.h0.clone()];
    for w in times.windows(2) {
        let h = states.last().cloned().unwrap_or_else(|| problem.h0.clone());
        let (outputs, _) = solve(f, &h, &[w[0].t, w[1].t], &problem.params, opts)?;
        states.push(outputs.into_iter().next_back().unwrap_or(h));
    }

    // Backward: a at each point, after adding that point's output cotangent.
    let cotangent = |p: &TimePoint| p.output.and_then(|i| problem.cotangents[i].as_ref());
    let zeros = DMatrix::zeros(problem.h0.nrows(), problem.h0.ncols());
    let mut adjoints = vec![zeros.clone(); times.len()];
    let last = times.len() - 1;
    if let Some(g) = cotangent(&times[last]) {
        adjoints[last] += g;
    }
    for j in (0..last).rev() {
        let pulled = if adjoints[j + 1].iter().all(|&x| x == 0.0) {
            zeros.clone()
        } else {
            segment_vjp(
                f,
                &states[j],
                [times[j].t, times[j + 1].t],
                &problem.params,
                opts,
                &adjoints[j + 1],
            )?
        };
        adjoints[j] = pulled;
        if let Some(g) = cotangent(&times[j]) {
            adjoints[j] += g;
        }
    }

    let mut report = AdjointResidualReport {
        points: Vec::with_capacity(times.len()),
        max_relative: 0.0,
        max_abs: 0.0,
        worst: None,
        dual_evaluations: 0,
    };
    for ((p, h), a) in times.iter().zip(&states).zip(&adjoints) {
        let (point, worst, evaluations) = residual_at(f, p.t, h, a, &problem.params)?;
        report.dual_evaluations += evaluations;
        report.max_abs = report
            .max_abs
            .max(point.state_abs.max(point.params_abs).max(point.time_abs));
        if let Some(w) = worst {
            if report
                .worst
                .as_ref()
                .is_none_or(|b| w.relative > b.relative)
            {
                report.max_relative = w.relative;
                report.worst = Some(w);
            }
        }
        report.points.push(point);
    }
    Ok(report)
}

/// A point of the residual check: its time and, for a grid time, the output index.
#[derive(Clone, Copy, Debug)]
struct TimePoint {
    t: f64,
    output: Option<usize>,
}

/// The grid times and the asked-for points, merged in the solve's direction; points that
/// coincide with a grid time (to 1e-12 of the span) are that grid time.
fn residual_times<F: Dynamics<f64> + Dynamics<Dual64> + Clone + 'static>(
    problem: &GradientProblem<F>,
    opts: &Options,
    grid: &[f64],
    points: &ResidualPoints,
) -> Result<Vec<TimePoint>> {
    let (t0, tn) = (grid[0], grid[grid.len() - 1]);
    let extra: Vec<f64> = match points {
        ResidualPoints::AcceptedSteps => {
            if grid.len() < 2 {
                Vec::new()
            } else {
                let tape = Tape::<f64>::new();
                let h0 = tape.constant(problem.h0.clone());
                let t = tape.constant(DMatrix::from_row_slice(1, grid.len(), grid));
                let params: Vec<_> = problem
                    .params
                    .iter()
                    .map(|p| tape.constant(p.clone()))
                    .collect();
                let _no_grad = tape.no_grad();
                let (lo, hi) = (t0.min(tn), t0.max(tn));
                // The last step may overshoot t_n (its output is interpolated): keep the
                // step times within the grid.
                odeint(&tape, &problem.dynamics, h0, t, &params, opts)?
                    .step_times()
                    .into_iter()
                    .filter(|t| (lo..=hi).contains(t))
                    .collect()
            }
        }
        ResidualPoints::Times(ts) => {
            let (lo, hi) = (t0.min(tn), t0.max(tn));
            for &t in ts {
                if !(t.is_finite() && (lo..=hi).contains(&t)) {
                    return Err(VerifyError::OutsideGrid { t, t0, tn });
                }
            }
            ts.clone()
        }
    };
    let dir = direction(grid);
    let mut all: Vec<TimePoint> = grid
        .iter()
        .enumerate()
        .map(|(i, &t)| TimePoint { t, output: Some(i) })
        .chain(extra.into_iter().map(|t| TimePoint { t, output: None }))
        .collect();
    // Grid times first among equals, so they survive the merge below.
    all.sort_by(|a, b| {
        (dir * a.t)
            .total_cmp(&(dir * b.t))
            .then(b.output.is_some().cmp(&a.output.is_some()))
    });
    let close = 1e-12 * (tn - t0).abs().max(f64::MIN_POSITIVE);
    let mut merged: Vec<TimePoint> = Vec::with_capacity(all.len());
    for p in all {
        match merged.last_mut() {
            Some(q) if (p.t - q.t).abs() <= close => {
                if q.output.is_none() {
                    *q = p;
                }
            }
            _ => merged.push(p),
        }
    }
    Ok(merged)
}

/// The adjoint pulled back over one segment: `(∂h(t1)/∂h(t0))ᵀ a1` through a taped solve.
fn segment_vjp<F: Dynamics<f64> + Dynamics<Dual64>>(
    f: &F,
    h: &DMatrix<f64>,
    [t0, t1]: [f64; 2],
    params: &[DMatrix<f64>],
    opts: &Options,
    a1: &DMatrix<f64>,
) -> Result<DMatrix<f64>> {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(h.clone());
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[t0, t1]));
    let params: Vec<_> = params.iter().map(|p| tape.constant(p.clone())).collect();
    let sol = odeint(&tape, f, h0, t, &params, opts)?;
    let mut grads = tape.vjp_wrt(&[(sol.last(), a1.clone())], &[h0])?;
    Ok(grads.pop().unwrap_or_else(|| a1.clone()))
}

/// One part's comparison at a point: tape VJP against the Dual64 product.
struct Part {
    component: Component,
    tape: DMatrix<f64>,
    dual: DMatrix<f64>,
}

/// The residual at `(t, h)` with adjoint `a`: the point's summary, its worst entry, and
/// the number of Dual64 evaluations.
fn residual_at<F: Dynamics<f64> + Dynamics<Dual64>>(
    f: &F,
    t: f64,
    h: &DMatrix<f64>,
    a: &DMatrix<f64>,
    params: &[DMatrix<f64>],
) -> Result<(ResidualPoint, Option<ResidualEntry>, usize)> {
    let shape = h.shape();
    // The tape's VJPs, as the backsolve adjoint computes them.
    let local = Tape::<f64>::new();
    let hv = local.var(h.clone());
    let tv = local.var(DMatrix::from_element(1, 1, t));
    let pv: Vec<Var<'_, f64>> = params.iter().map(|p| local.var(p.clone())).collect();
    let out = f.eval(tv, hv, &pv)?;
    check_field_output(out, shape, t)?;
    let mut wrt = vec![hv];
    wrt.extend_from_slice(&pv);
    wrt.push(tv);
    let mut vjps = local.vjp_wrt(&[(out, a.clone())], &wrt)?.into_iter();

    // Jacobian columns from Dual64 forward runs (no VJP involved).
    let dual = Tape::<Dual64>::new();
    let _no_grad = dual.no_grad();
    let base = dual.mark();
    let mut evaluations = 0;
    let mut product = |seed: Seed| -> Result<f64> {
        evaluations += 1;
        // The input `here` with a unit tangent on the seeded entry, if the seed is on it.
        let lift = |m: &DMatrix<f64>, here: SeedPart| {
            DMatrix::from_fn(m.nrows(), m.ncols(), |r, c| {
                let on = seed.part == here && seed.entry == (r, c);
                Dual64::new(m[(r, c)], if on { 1.0 } else { 0.0 })
            })
        };
        let h = dual.constant(lift(h, SeedPart::State));
        let tv = dual.constant(lift(&DMatrix::from_element(1, 1, t), SeedPart::Time));
        let pv: Vec<Var<'_, Dual64>> = params
            .iter()
            .enumerate()
            .map(|(i, p)| dual.constant(lift(p, SeedPart::Param(i))))
            .collect();
        let out = f.eval(tv, h, &pv)?;
        check_field_output(out, shape, t)?;
        let column = out.with_value(|m| m.map(|x| x.eps))?;
        dual.rewind(base)?;
        Ok(column.dot(a))
    };
    let mut parts = Vec::with_capacity(params.len() + 2);
    let mut dual_part = |part: SeedPart, (rows, cols): (usize, usize)| -> Result<DMatrix<f64>> {
        let mut m = DMatrix::zeros(rows, cols);
        for c in 0..cols {
            for r in 0..rows {
                m[(r, c)] = product(Seed {
                    part,
                    entry: (r, c),
                })?;
            }
        }
        Ok(m)
    };
    let missing = || VerifyError::from(crate::Error::Tape(missing_vjp()));
    parts.push(Part {
        component: Component::State,
        tape: vjps.next().ok_or_else(missing)?,
        dual: dual_part(SeedPart::State, shape)?,
    });
    for (i, p) in params.iter().enumerate() {
        parts.push(Part {
            component: Component::Param(i),
            tape: vjps.next().ok_or_else(missing)?,
            dual: dual_part(SeedPart::Param(i), p.shape())?,
        });
    }
    parts.push(Part {
        component: Component::Time,
        tape: vjps.next().ok_or_else(missing)?,
        dual: dual_part(SeedPart::Time, (1, 1))?,
    });

    let mut point = ResidualPoint {
        t,
        adjoint_max_abs: max_abs(a),
        state_abs: 0.0,
        state_rel: 0.0,
        params_abs: 0.0,
        params_rel: 0.0,
        time_abs: 0.0,
        time_rel: 0.0,
    };
    let mut worst: Option<ResidualEntry> = None;
    for part in &parts {
        let scale = max_abs(&part.tape).max(max_abs(&part.dual));
        let mut part_abs = 0.0f64;
        for c in 0..part.tape.ncols() {
            for r in 0..part.tape.nrows() {
                let (tape, dual) = (part.tape[(r, c)], part.dual[(r, c)]);
                let residual = dual - tape;
                let entry = ResidualEntry {
                    t,
                    component: part.component,
                    index: (r, c),
                    residual,
                    tape_vjp: tape,
                    dual_product: dual,
                    relative: relative(residual.abs(), scale),
                };
                part_abs = part_abs.max(residual.abs());
                if worst.as_ref().is_none_or(|w| entry.relative > w.relative) {
                    worst = Some(entry);
                }
            }
        }
        let part_rel = relative(part_abs, scale);
        let (abs, rel) = match part.component {
            Component::State => (&mut point.state_abs, &mut point.state_rel),
            Component::Param(_) => (&mut point.params_abs, &mut point.params_rel),
            Component::Time => (&mut point.time_abs, &mut point.time_rel),
        };
        *abs = abs.max(part_abs);
        *rel = rel.max(part_rel);
    }
    // With a zero adjoint there is nothing to compare.
    if point.adjoint_max_abs == 0.0 {
        worst = None;
    }
    Ok((point, worst, evaluations))
}

/// Which input a Dual64 run seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeedPart {
    State,
    Param(usize),
    Time,
}

/// One Dual64 run's seed: a unit tangent on one entry of one input.
#[derive(Clone, Copy, Debug)]
struct Seed {
    part: SeedPart,
    entry: (usize, usize),
}

fn missing_vjp() -> ad_core::Error {
    ad_core::Error::InvalidArgument {
        op: "adjoint_residual",
        message: "the tape returned fewer VJPs than inputs; this is a bug in the ode crate".into(),
    }
}
