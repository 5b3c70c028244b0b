//! [`Strategy::Auto`](crate::Strategy::Auto): the fastest exact strategy that fits a memory
//! budget. Taped runs while its tape (and what its backward will need on top) fits; it is
//! abandoned, and the tape rewound, before a step that would not fit. Then store-every-step
//! or K-slot checkpointing takes over with as many slots as fit beside one step's replay
//! tape, and backsolve only when not even two states fit (its own peak estimated, and the
//! report saying "over budget" when even that does not fit; the strict form refuses then).
//! A solve over a reversible scheme
//! (which the user chose: it changes the discrete solution) goes to the reversible strategy
//! instead of the replays.

use ad_core::nalgebra::DMatrix;
use ad_core::{Scalar, Tape, Var};

use crate::dynamics::Dynamics;
use crate::error::{Error, Result};
use crate::input::{grid_row, SolveInput};
use crate::scheme::Scheme;
use crate::solution::Solution;
use crate::strategies::{backsolve, interpolating, replay, reversible, taped};
use crate::strategy::{Backsolve, ContinuousAdjoint, Strategy, StrategyReport};

/// Bytes of one f evaluation recorded on a tape, measured on a throwaway tape.
fn eval_bytes<T: Scalar, F: Dynamics<T>>(input: &SolveInput<'_, '_, T>, f: &F) -> Result<usize> {
    let probe = Tape::new();
    let params: Vec<Var<'_, T>> = input
        .params
        .iter()
        .map(|p| Ok(probe.var(p.value()?)))
        .collect::<Result<_>>()?;
    let (row, _) = grid_row(input.t)?;
    let t0 = probe.var(DMatrix::from_element(1, 1, row.with_value(|m| m[0])?));
    let h = probe.var(input.h0.value()?);
    let mark = probe.mark();
    let out = f.eval(t0, h, &params)?;
    let _ = out;
    Ok(probe.bytes_since(mark))
}

pub(crate) fn solve<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    input: &SolveInput<'_, 't, T>,
    f: &F,
    budget: usize,
    strict: bool,
) -> Result<Solution<'t, T>> {
    let size = std::mem::size_of::<T>();
    let (rows, cols) = input.h0.shape()?;
    let state = rows * cols * size;
    let params: usize = input
        .params
        .iter()
        .map(|p| p.shape().map(|(r, c)| r * c * size))
        .sum::<ad_core::Result<usize>>()?;
    let stages = input.opts.method.c.len();
    let eval = eval_bytes(input, f)?;
    // One step recorded in full (stages, their inputs, the combinations), and its backward's
    // cotangents of about the same size: the replay strategies' per-step peak.
    let step_estimate = stages * (eval + 2 * state) + 4 * state;
    // The backward's own buffers on top of any tape: the gradients it returns, a few states.
    let transient = 2 * params + 4 * state;

    // Taped, while it fits: after each accepted step, the tape so far plus the next step
    // (as large as the largest so far) plus the backward's cotangents (as large as the
    // largest step's values) must fit.
    let mark = input.tape.mark();
    let mut released_total = 0usize;
    let mut largest_step = step_estimate;
    let mut previous: Option<ad_core::Mark> = None;
    let mut abandoned_at: Option<(usize, usize)> = None;
    let mut steps = 0usize;
    let first = 2 * step_estimate + transient;
    let fits_first = first + first / 4 <= budget;
    if fits_first {
        let result = taped::taped(input, f, |acc| {
            let this_step = input.tape.bytes_since(acc.mark());
            if let Some(prev) = previous {
                released_total += input.tape.bytes_since(prev).saturating_sub(this_step);
            }
            previous = Some(acc.mark());
            largest_step = largest_step.max(this_step);
            steps += 1;
            let needed = released_total + this_step + 2 * largest_step + transient;
            // A quarter in reserve for what the estimate does not see: the arena's vectors
            // grow by doubling, and outputs are recorded beside the steps.
            if needed + needed / 4 > budget {
                abandoned_at = Some((steps, needed + needed / 4));
                return Err(Error::Tape(ad_core::Error::InvalidArgument {
                    op: "auto",
                    message: "taped solve over budget".into(),
                }));
            }
            Ok(())
        });
        match (result, abandoned_at) {
            (Ok(mut sol), _) => {
                let held = input.tape.bytes_since(mark);
                sol.strategy = StrategyReport {
                    name: "taped".into(),
                    stored_states: 0,
                    reason: format!(
                        "auto: the taped solve's {} steps held {} bytes, within the budget of {budget} with room for its backward",
                        sol.steps.len(),
                        held
                    ),
                };
                return Ok(sol);
            }
            (Err(_), Some(_)) => {}
            (Err(e), None) => return Err(e),
        }
    }
    let taped_note = match abandoned_at {
        Some((k, needed)) => {
            format!("taped would need {needed} bytes, a quarter of it in reserve, after {k} steps (budget {budget})")
        }
        None => format!("taped needs about {first} bytes for its first step (budget {budget})"),
    };
    // A reversible solve (the user chose the scheme, so its solution is the one asked for)
    // is reversed in O(d + |θ|): no stored state at all.
    if Scheme::of(input.opts).is_reversible() {
        let reason = format!(
            "auto: {taped_note}; the solve is reversible, so its states are reconstructed by inverting the steps, with none stored"
        );
        let strategy = Strategy::Reversible { coupling: None };
        return reversible::reversible(input, f, &strategy, reason);
    }
    // Replay strategies: slots·state + one step's replay tape + the backward's buffers.
    let step_peak = 2 * largest_step.max(step_estimate);
    let room = budget.saturating_sub(step_peak + transient + 2 * state);
    let slots = room / state.max(1);
    if slots >= 2 {
        let reason = format!(
            "auto: {taped_note}; {slots} states of {state} bytes fit beside one step's replay ({step_peak} bytes)"
        );
        let mut sol = replay::exact(input, f, Some(slots), reason)?;
        if sol.strategy.stored_states >= sol.steps.len() {
            sol.strategy.name = "aca".into();
        }
        return Ok(sol);
    }
    // The smallest exact strategy: two slots beside one step's replay.
    let checkpointed_2 = step_peak + transient + 4 * state;
    if Scheme::of(input.opts).is_implicit() {
        if strict {
            return Err(Error::OverBudget {
                budget,
                strategy: "checkpointed:2".into(),
                needed: checkpointed_2,
            });
        }
        // Backsolve would integrate h backwards through the stiff field: the interpolating
        // adjoint reads h from the forward's dense output instead (O(N·d), not exact).
        let settings = ContinuousAdjoint::default();
        let strategy = Strategy::Interpolating(settings.clone());
        let mut sol = interpolating::interpolating(input, f, &settings, &strategy)?;
        sol.strategy.reason = format!(
            "auto: over budget: {taped_note}; not even two states of {state} bytes fit beside one step's replay ({step_peak} bytes), and backsolve is unstable through a stiff field, so the interpolating adjoint (not exact), whose dense output of {} steps is more than two states",
            sol.steps.len()
        );
        return Ok(sol);
    }
    let backsolve_peak = backsolve_estimate(input, eval, state, params, transient);
    let fits = if backsolve_peak <= budget {
        format!("backsolve's own peak, about {backsolve_peak} bytes, fits")
    } else if strict {
        let (strategy, needed) = if backsolve_peak <= checkpointed_2 {
            ("backsolve", backsolve_peak)
        } else {
            ("checkpointed:2", checkpointed_2)
        };
        return Err(Error::OverBudget {
            budget,
            strategy: strategy.into(),
            needed,
        });
    } else {
        format!("over budget: backsolve's own peak is about {backsolve_peak} bytes, above the budget of {budget} (auto-strict:{budget} would refuse)")
    };
    let mut sol = backsolve::backsolve(input, f, &Strategy::Backsolve(Backsolve::default()))?;
    sol.strategy.reason = format!(
        "auto: {taped_note}; not even two states of {state} bytes fit beside one step's replay ({step_peak} bytes), so backsolve (not exact): {fits}"
    );
    Ok(sol)
}

/// Backsolve's estimated peak: the augmented state `[h, a, a_θ, a_t]` in its backward
/// method's stages, the step's two ends and error estimate, plus one evaluation's tape and
/// the VJP's cotangents through it, plus the gradient buffers.
fn backsolve_estimate<T: Scalar>(
    input: &SolveInput<'_, '_, T>,
    eval: usize,
    state: usize,
    params: usize,
    transient: usize,
) -> usize {
    let stages = input.opts.method.c.len();
    let augmented = 2 * state + params + std::mem::size_of::<T>();
    (stages + 3) * augmented + 2 * eval + params + transient
}
