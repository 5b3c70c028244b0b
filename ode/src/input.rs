//! What every strategy is handed, checked before anything is recorded: the time grid, the
//! initial state, the tape the inputs live on, the tolerances against the scalar's precision.

use ad_core::nalgebra::DMatrix;
use ad_core::{all_finite, Precision, Scalar, Tape, Var};

use crate::controller::StepRecord;
use crate::engine::SolveStats;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::solution::Solution;
use crate::strategy::{Strategy, StrategyReport};

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
        let at = h0.iter().position(|x| !x.primal().is_finite()).unwrap_or(0);
        return Err(Error::NonFiniteInitialState {
            row: at % h0.nrows(),
            col: at / h0.nrows(),
            value: h0[at].primal(),
            t: t0,
        });
    }
    Ok(())
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
pub(crate) fn check_precision<T: Scalar>(opts: &Options, strategy: &Strategy) -> Result<()> {
    let unit_roundoff = <T::Primitive as Precision>::EPSILON / 2.0;
    let backward = match strategy {
        Strategy::Backsolve(b) => ("Backsolve::rtol", b.rtol),
        Strategy::BacksolveCheckpointed { backsolve, .. } => ("Backsolve::rtol", backsolve.rtol),
        Strategy::Gauss(c) | Strategy::Interpolating(c) => ("ContinuousAdjoint::rtol", c.rtol),
        _ => ("", None),
    };
    let rtols = [("rtol", Some(opts.rtol)), backward];
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

/// What every strategy is handed: the caller's tape, the inputs and the forward options.
pub(crate) struct SolveInput<'a, 't, T: Scalar> {
    pub tape: &'t Tape<T>,
    pub h0: Var<'t, T>,
    pub t: Var<'t, T>,
    pub params: &'a [Var<'t, T>],
    pub opts: &'a Options,
    /// The steps a tangent-aware planning solve chose (`ErrorControl::WithTangents`): the
    /// strategy's forward takes exactly these. `None`: its own controller chooses.
    pub planned: Option<&'a [StepRecord]>,
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
            planned: None,
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
}
