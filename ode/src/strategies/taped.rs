//! [`Strategy::Taped`]: every stage on the caller's tape.
//!
//! The steps' VJPs run in the caller's own backward pass, so the solve's inputs go through
//! one identity node ([`InputGuard`]) whose VJP runs after all of them: it checks that the
//! gradients reaching `h0`, the grid and the parameters are finite (as the opaque
//! strategies check theirs) and reports the pass's [`BackwardStats`].

use std::cell::RefCell;
use std::rc::Rc;

use ad_core::nalgebra::DMatrix;
use ad_core::{BoxError, CustomOp, ReportedVjp, Scalar, Var};

use crate::dynamics::Dynamics;
use crate::engine::SolveStats;
use crate::error::{Error, Result};
use crate::forward::{planned_controller, FieldSystem};
use crate::input::{check_h0, direction, grid_row, SolveInput};
use crate::scheme::Scheme;
use crate::solution::Solution;
use crate::stepper::{Accepted, GridTangents, Memory, Start, Stepper};
use crate::strategy::{BackwardStats, Strategy, StrategyReport};

/// The taped solve, calling `on_step` after every accepted step (auto's budget watch).
pub(crate) fn taped<'t, T: Scalar, F: Dynamics<T>>(
    input: &SolveInput<'_, 't, T>,
    f: &F,
    on_step: impl FnMut(&Accepted<'t, T>) -> Result<()>,
) -> Result<Solution<'t, T>> {
    let mark = input.tape.mark();
    let result = taped_recorded(mark, input, f, on_step);
    if result.is_err() {
        // Leave the tape as it was; only rewinding can fail here, and then it is the
        // original error that matters.
        let _ = input.tape.rewind(mark);
    }
    result
}

fn taped_recorded<'t, T: Scalar, F: Dynamics<T>>(
    mark: ad_core::Mark,
    input: &SolveInput<'_, 't, T>,
    f: &F,
    mut on_step: impl FnMut(&Accepted<'t, T>) -> Result<()>,
) -> Result<Solution<'t, T>> {
    let SolveInput {
        tape,
        h0: user_h0,
        t,
        params,
        opts,
        ..
    } = *input;
    let (_, grid) = grid_row(t)?;
    user_h0.with_value(|m| check_h0(m, grid[0]))??;
    let mut guarded = vec![user_h0, t];
    guarded.extend_from_slice(params);
    let report = Rc::new(RefCell::new(BackwardStats::default()));
    let guard = InputGuard {
        t0: grid[0],
        stats: Rc::clone(&report),
    };
    let guarded = tape.custom(guard, &guarded)?;
    let node = guarded[0].requires_grad()?.then_some(guarded[0]);
    let (h0, t, params) = (guarded[0], guarded[1], &guarded[2..]);
    let (row, _) = grid_row(t)?;
    let times: Vec<(f64, Var<'t, T>)> = grid
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, &ti)| Ok((ti, row.slice_cols(i, 1)?)))
        .collect::<Result<_>>()?;
    let sys = FieldSystem {
        f,
        params,
        shape: h0.shape()?,
        nfe: 0,
        work: Default::default(),
        reuse: None,
    };
    let start = Start {
        t0: grid[0],
        t_base: row.slice_cols(0, 1)?,
        t: grid[0],
        y: Scheme::of(opts).initial_state(h0),
        k0: None,
        dt: None,
        dir: direction(&grid),
        tangents: t.with_value(|v| GridTangents::of_grid(&grid, v.as_slice()))?,
    };
    let mut stepper = Stepper::new(
        tape,
        sys,
        planned_controller(opts, input.planned),
        Memory::Taped,
        start,
    )?;
    // h(t_0) is the caller's own h0: a loss that reads it reaches it directly.
    let mut outputs = vec![user_h0];
    let mut steps = Vec::new();
    stepper.run(
        &times,
        false,
        |_, s| {
            outputs.push(s[0]);
            Ok(())
        },
        |acc, _| {
            steps.push(acc.record);
            on_step(acc)
        },
    )?;
    // Keep only what backward reads (and the outputs): e.g. pre-activations that only a
    // tanh consumes are dropped.
    tape.release_unneeded(mark, &outputs)?;
    if node.is_some() {
        let (rows, cols) = h0.shape()?;
        let size = std::mem::size_of::<T>();
        let state = rows * cols * size;
        let param_bytes = params
            .iter()
            .map(|p| p.shape().map(|(r, c)| r * c * size))
            .sum::<ad_core::Result<usize>>()?;
        let method = opts.method;
        let per_step = method.c.len() - usize::from(method.fsal);
        *report.borrow_mut() = BackwardStats {
            // The backward pulls back through every recorded step.
            nfe: steps.len() * per_step + usize::from(method.fsal && !steps.is_empty()),
            accepted: steps.len(),
            // Pending cotangents: a step's stages and its two ends, and the parameters'
            // accumulating gradients with one more term on its way in.
            peak_bytes: (method.c.len() + 2) * state + 2 * param_bytes,
            ..BackwardStats::default()
        };
    }
    Ok(Solution {
        outputs,
        stats: SolveStats {
            nfe: stepper.sys.nfe,
            jacobians: stepper.sys.work.jacobians,
            factorizations: stepper.sys.work.factorizations,
            newton_iterations: stepper.sys.work.newton_iterations,
            newton_failures: stepper.sys.work.newton_failures,
            ..stepper.stats
        },
        steps,
        strategy: StrategyReport {
            name: Strategy::Taped.name(),
            stored_states: 0,
            reason: "every stage on the caller's tape".into(),
        },
        node,
    })
}

/// The identity on a taped solve's inputs `[h0, t, θ…]`: its VJP runs once the caller's
/// backward has pulled back through every recorded step, so it sees the solve's gradients
/// whole.
struct InputGuard {
    t0: f64,
    /// Filled in once the forward has recorded its steps.
    stats: Rc<RefCell<BackwardStats>>,
}

impl<T: Scalar> CustomOp<T> for InputGuard {
    fn name(&self) -> &str {
        "taped solve inputs"
    }

    fn forward(
        &mut self,
        inputs: &[&DMatrix<T>],
    ) -> std::result::Result<Vec<DMatrix<T>>, BoxError> {
        Ok(inputs.iter().map(|m| (*m).clone()).collect())
    }

    fn vjp(
        &self,
        _inputs: &[&DMatrix<T>],
        _outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> std::result::Result<Vec<Option<DMatrix<T>>>, BoxError> {
        for (i, g) in cotangents.iter().enumerate() {
            if g.as_ref().is_some_and(|g| !ad_core::all_finite(g)) {
                let what = match i {
                    0 => "gradient of h0",
                    1 => "gradient of the time grid",
                    _ => "gradient of a parameter",
                };
                return Err(Box::new(Error::NonFinite { what, t: self.t0 }));
            }
        }
        Ok(cotangents)
    }

    fn vjp_with_report(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        wants: &[bool],
    ) -> std::result::Result<ReportedVjp<T>, BoxError> {
        let grads = self.vjp(inputs, outputs, cotangents, wants)?;
        Ok((grads, Some(Box::new(self.stats.borrow().clone()))))
    }

    fn held_bytes(&self) -> usize {
        0
    }
}
