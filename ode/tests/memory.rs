//! Peak heap of the checkpointed strategies and of `Auto`, from a counting global allocator:
//! K-slot checkpointing stays within K states + one step's tape + O(N) numbers, and `Auto`
//! never exceeds its budget. One test, so that no other test allocates meanwhile.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::Tape;
use common::*;
// The library's counting allocator: one definition of peak heap for the whole repository.
use ad_core::heap::CountingAlloc;
use ode::{odeint_with, Options, StepRecord, Strategy};

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

/// Peak heap above the starting point during forward + backward of `strategy` (inputs and
/// parameters are on the tape before the measurement starts), and the strategy that ran.
fn peak(p: &Problem, opts: &Options, strategy: &Strategy) -> (usize, String, usize) {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let before = HEAP.start();
    let sol = odeint_with(&tape, &p.f, h0, t, &params, opts, strategy).unwrap();
    let loss = dot_loss(&tape, &sol.outputs, &p.cots).unwrap();
    let grads = tape.backward(loss).unwrap();
    let peak = HEAP.peak_above(before);
    drop(grads);
    (peak, sol.strategy.name.clone(), sol.steps.len())
}

#[test]
fn checkpointing_and_auto_stay_within_their_memory() {
    let (batch, dim, hidden) = (16, 32, 32);
    let f = Mlp::DECAY;
    let mut p = Problem::random(&mut Rng::new(4), f, (batch, dim, hidden), 2, false, false);
    p.grid = vec![0.0, 4.0];
    let state = batch * dim * 8;
    // Fixed steps: every step's tape is the same size.
    let opts = Options::fixed("rk4", 0.1).unwrap();
    let one_step = {
        let mut q = Problem::random(&mut Rng::new(4), f, (batch, dim, hidden), 2, false, false);
        q.grid = vec![0.0, 0.1];
        peak(&q, &opts, &Strategy::StoreEveryStep).0
    };
    let (taped, _, n) = peak(&p, &opts, &Strategy::Taped);
    let per_step = std::mem::size_of::<StepRecord>() + 2 * std::mem::size_of::<usize>();
    eprintln!("N = {n}, state {state} B, one step's fwd+bwd {one_step} B, taped {taped} B");
    for k in [1usize, 2, 5, 10] {
        let (got, _, _) = peak(&p, &opts, &Strategy::Checkpointed { slots: k });
        // K stored states, the state being advanced, one step's replay, the step records.
        let bound = k * state + 2 * state + one_step + n * per_step;
        eprintln!("checkpointed:{k}: peak {got} B, bound {bound} B");
        assert!(got <= bound, "K = {k}: {got} > {bound}");
        assert!(got < taped / 4, "K = {k}: {got} vs taped {taped}");
    }
    let (aca, _, _) = peak(&p, &opts, &Strategy::StoreEveryStep);
    assert!(aca <= n * state + 2 * state + one_step + n * per_step);

    // Auto over a sweep of budgets from a little more than one step's replay (below that no
    // exact strategy fits, and Auto falls back to backsolve, saying so) to more than taped
    // needs.
    let mut chosen = Vec::new();
    let lowest = one_step * 13 / 10;
    let highest = 3 * taped;
    let sweep = 14;
    for i in 0..sweep {
        let budget = (lowest as f64
            * (highest as f64 / lowest as f64).powf(i as f64 / (sweep - 1) as f64))
            as usize;
        let (got, name, _) = peak(
            &p,
            &opts,
            &Strategy::Auto {
                budget_bytes: budget,
                strict: false,
            },
        );
        eprintln!("auto:{budget}: {name}, peak {got} B");
        assert!(
            got <= budget,
            "auto:{budget} chose {name} and peaked at {got}"
        );
        chosen.push(name);
    }
    assert_eq!(
        chosen.last().map(String::as_str),
        Some("taped"),
        "{chosen:?}"
    );
    assert!(
        chosen.iter().any(|c| c.starts_with("checkpointed")),
        "{chosen:?}"
    );
    assert!(chosen.iter().any(|c| c == "aca"), "{chosen:?}");

    // Below what any exact strategy needs, auto falls back to backsolve and estimates
    // backsolve's own peak: "over budget" when even that does not fit, and the strict form
    // refuses then, naming the estimate.
    let (backsolve, _, _) = peak(&p, &opts, &Strategy::backsolve());
    let tiny = Strategy::Auto {
        budget_bytes: 1_000,
        strict: false,
    };
    let reason = auto_reason(&p, &opts, &tiny).unwrap();
    eprintln!("auto:1000 -> {reason}; backsolve's measured peak {backsolve} B");
    assert!(reason.contains("over budget"), "{reason}");
    let strict = Strategy::Auto {
        budget_bytes: 1_000,
        strict: true,
    };
    let estimate = match auto_reason(&p, &opts, &strict) {
        Err(ode::Error::OverBudget {
            budget,
            strategy,
            needed,
        }) => {
            assert_eq!((budget, strategy.as_str()), (1_000, "backsolve"));
            // The estimate is within a factor of 2 of the measured peak either way.
            assert!(
                needed >= backsolve / 2 && needed <= 2 * backsolve,
                "estimate {needed} B against measured {backsolve} B"
            );
            needed
        }
        other => panic!("auto-strict:1000 gave {other:?}"),
    };
    // A budget above backsolve's estimate but below one step's replay: backsolve, within it.
    // (Halfway between the two, so that the case is always exercised.)
    assert!(
        estimate < lowest,
        "estimate {estimate} B, one step's replay {lowest} B"
    );
    let roomy = estimate + (lowest - estimate) / 2;
    for strict in [false, true] {
        let s = Strategy::Auto {
            budget_bytes: roomy,
            strict,
        };
        let reason = auto_reason(&p, &opts, &s).unwrap();
        assert!(
            reason.contains("fits") && !reason.contains("over budget"),
            "{reason}"
        );
    }
}

/// The reason auto gives for its choice, or the error it refuses with.
fn auto_reason(p: &Problem, opts: &Options, strategy: &Strategy) -> Result<String, ode::Error> {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let sol = odeint_with(&tape, &p.f, h0, t, &params, opts, strategy)?;
    Ok(sol.strategy.reason)
}
