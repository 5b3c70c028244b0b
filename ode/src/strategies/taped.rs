//! [`Strategy::Taped`]: every stage on the caller's tape.

use ad_core::{Scalar, Var};

use crate::dynamics::Dynamics;
use crate::engine::SolveStats;
use crate::error::Result;
use crate::forward::{planned_controller, FieldSystem};
use crate::input::{check_h0, direction, grid_row, SolveInput};
use crate::scheme::Scheme;
use crate::solution::Solution;
use crate::stepper::{Accepted, GridTangents, Memory, Start, Stepper};
use crate::strategy::{Strategy, StrategyReport};

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
        h0,
        t,
        params,
        opts,
        ..
    } = *input;
    let (row, grid) = grid_row(t)?;
    h0.with_value(|m| check_h0(m, grid[0]))??;
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
    let mut outputs = vec![h0];
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
        node: None,
    })
}
