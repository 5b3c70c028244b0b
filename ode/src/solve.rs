//! Solves on the tape: the taped `odeint` and the untaped value-only `solve`, plus what they
//! share with the adjoint (grid checks, the counting vector-field system, the controller).

use ad_core::nalgebra::DMatrix;
use ad_core::{all_finite, Scalar, Tape, Var};

use crate::dynamics::Dynamics;
use crate::engine::{integrate, Controller, Segment, SolveStats, State, System};
use crate::error::{Error, Result};
use crate::options::{Norm, Options};

/// The outputs of a solve: the state at every grid time (`outputs[0]` is `h0`), and counts.
pub struct Solution<'t, T: Scalar> {
    /// `h(t_0), …, h(t_n)` on the caller's tape.
    pub outputs: Vec<Var<'t, T>>,
    /// Counts of the forward solve.
    pub stats: SolveStats,
    pub(crate) backward: Option<std::rc::Rc<std::cell::Cell<Option<SolveStats>>>>,
}

impl<'t, T: Scalar> Solution<'t, T> {
    /// Counts of the adjoint's backward solve, once a backward pass has run through it
    /// (`None` for taped solves and before backward).
    pub fn backward_stats(&self) -> Option<SolveStats> {
        self.backward.as_ref().and_then(|c| c.get())
    }

    /// *Held bytes* as the design notes define them: bytes the tape keeps alive for backward
    /// (its [`ad_core::TapeStats::held_bytes`]) less the outputs `h(t_1..t_n)` themselves.
    /// Call it between forward and backward, before recording the loss.
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

/// Check a time grid's values (at least two, finite, strictly increasing or strictly
/// decreasing) and return them as `f64`.
pub fn check_grid<T: Scalar>(times: &[T]) -> Result<Vec<f64>> {
    let t: Vec<f64> = times.iter().map(|x| x.primal()).collect();
    if t.len() < 2 {
        return Err(Error::BadTimeGrid {
            reason: format!("it has {} point(s)", t.len()),
        });
    }
    if let Some(i) = t.iter().position(|x| !x.is_finite()) {
        return Err(Error::BadTimeGrid {
            reason: format!("t[{i}] = {} is not finite", t[i]),
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
        return Err(Error::Shape {
            what: "h0".into(),
            expected: (1, 1),
            got: h0.shape(),
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
        let out = self.f.eval(tv, y[0], self.params)?;
        check_field_output(out, self.shape, t)?;
        Ok(vec![out])
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

/// Taped solve: every stage is recorded on `tape`, so `tape.backward` differentiates the
/// discrete solution exactly (accepted step sizes are constants, as in torchdiffeq and
/// Diffrax) with respect to `h0`, every parameter and every time in `t`.
///
/// `t` is a 1×n (or n×1) grid, strictly increasing or decreasing; `params` are the
/// variables the dynamics read, handed over in the order `f` expects them. Memory grows
/// with the number of steps; see [`crate::odeint_adjoint`] for the constant-memory mode.
/// On error the tape is rewound to where it was, so it stays usable.
pub fn odeint<'t, T: Scalar, F: Dynamics<T>>(
    tape: &'t Tape<T>,
    f: &F,
    h0: Var<'t, T>,
    t: Var<'t, T>,
    params: &[Var<'t, T>],
    opts: &Options,
) -> Result<Solution<'t, T>> {
    opts.validate()?;
    check_tape(tape, "odeint", [&h0, &t].into_iter().chain(params))?;
    let mark = tape.mark();
    let result = odeint_recorded(mark, tape, f, h0, t, params, opts);
    if result.is_err() {
        // Leave the tape as it was; only rewinding can fail here, and then it is the
        // original error that matters.
        let _ = tape.rewind(mark);
    }
    result
}

fn odeint_recorded<'t, T: Scalar, F: Dynamics<T>>(
    mark: ad_core::Mark,
    tape: &'t Tape<T>,
    f: &F,
    h0: Var<'t, T>,
    t: Var<'t, T>,
    params: &[Var<'t, T>],
    opts: &Options,
) -> Result<Solution<'t, T>> {
    let (row, grid) = grid_row(t)?;
    h0.with_value(|m| check_h0(m, grid[0]))??;
    let times: Vec<(f64, Var<'t, T>)> = grid
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, &ti)| Ok((ti, row.slice_cols(i, 1)?)))
        .collect::<Result<_>>()?;
    let mut sys = FieldSystem {
        f,
        params,
        shape: h0.shape()?,
        nfe: 0,
    };
    let mut outputs = vec![h0];
    let seg = Segment {
        t0: grid[0],
        t_base: row.slice_cols(0, 1)?,
        y0: vec![h0],
        k0: None,
        outputs: &times,
        land: false,
        dt: None,
        scratch: None,
    };
    let end = integrate(tape, &mut sys, &forward_controller(opts), seg, |_, s| {
        outputs.push(s[0]);
        Ok(())
    })?;
    // Keep only what backward reads (and the outputs): e.g. pre-activations that only a
    // tanh consumes are dropped.
    tape.release_unneeded(mark, &outputs)?;
    Ok(Solution {
        outputs,
        stats: SolveStats {
            nfe: sys.nfe,
            ..end.stats
        },
        backward: None,
    })
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
    let grid = check_grid(t)?;
    check_h0(h0, grid[0])?;
    let scratch = Tape::new();
    let _no_grad = scratch.no_grad();
    let params: Vec<Var<'_, T>> = params.iter().map(|p| scratch.constant(p.clone())).collect();
    let times: Vec<(f64, Var<'_, T>)> = grid
        .iter()
        .zip(t)
        .skip(1)
        .map(|(&g, &tv)| (g, scratch.constant(DMatrix::from_element(1, 1, tv))))
        .collect();
    let t_base = scratch.constant(DMatrix::from_element(1, 1, t[0]));
    let y0 = scratch.constant(h0.clone());
    let base = scratch.mark();
    let mut sys = FieldSystem {
        f,
        params: &params,
        shape: h0.shape(),
        nfe: 0,
    };
    let mut outputs = Vec::with_capacity(t.len());
    outputs.push(h0.clone());
    let seg = Segment {
        t0: grid[0],
        t_base,
        y0: vec![y0],
        k0: None,
        outputs: &times,
        land: false,
        dt: None,
        scratch: Some(base),
    };
    let end = integrate(
        &scratch,
        &mut sys,
        &forward_controller(opts),
        seg,
        |_, s| {
            outputs.push(s[0].value()?);
            Ok(())
        },
    )?;
    Ok((
        outputs,
        SolveStats {
            nfe: sys.nfe,
            ..end.stats
        },
    ))
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
