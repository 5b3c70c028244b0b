//! The library's own account of a backward pass's peak heap
//! ([`ode::BackwardStats::peak_bytes`]) against a counting global allocator's measurement,
//! for every strategy with a backward of its own, on a parameter-heavy and a state-heavy
//! problem. One test, so that no other test allocates meanwhile.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::Tape;
use common::*;
// The library's counting allocator: one definition of peak heap for the whole repository.
use ad_core::heap::CountingAlloc;
use ode::{odeint_with, Options, Strategy};

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

/// The measured peak above the live bytes when backward starts, the reported peak, and the
/// strategy that ran.
fn measured_and_reported(
    p: &Problem,
    opts: &Options,
    strategy: &Strategy,
) -> (usize, usize, String) {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let sol = odeint_with(&tape, &p.f, h0, t, &params, opts, strategy).unwrap();
    let loss = dot_loss(&tape, &sol.outputs, &p.cots).unwrap();
    let before = HEAP.start();
    let grads = tape.backward(loss).unwrap();
    let measured = HEAP.peak_above(before);
    let reported = sol.backward_stats(&grads).map_or(0, |b| b.peak_bytes);
    (measured, reported, sol.strategy.name.clone())
}

#[test]
fn reported_backward_peak_matches_the_counting_allocator() {
    let f = Mlp::DECAY;
    let opts = Options {
        rtol: 1e-6,
        atol: 1e-8,
        ..Options::default()
    };
    let strategies = [
        Strategy::backsolve(),
        Strategy::Backsolve(ode::Backsolve::default().norm(ode::AdjointNorm::Seminorm)),
        Strategy::backsolve_checkpointed(4),
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: 2 },
        Strategy::Auto {
            budget_bytes: 4 << 20,
            strict: false,
        },
        Strategy::Reversible { coupling: None },
        "gauss".parse().unwrap(),
        "gauss:2".parse().unwrap(),
        "interpolating".parse().unwrap(),
        "interpolating:2".parse().unwrap(),
    ];
    let mut ran = Vec::new();
    // Parameter-heavy (a_θ dominates) and state-heavy (the stages dominate).
    for (shape, grid) in [
        ((32, 64, 256), vec![0.0, 0.5, 1.0]),
        ((128, 16, 32), vec![0.0, 1.5]),
    ] {
        let mut p = Problem::random(&mut Rng::new(5), f, shape, grid.len(), false, true);
        p.grid = grid;
        for s in &strategies {
            let (measured, reported, name) = measured_and_reported(&p, &opts, s);
            let ratio = measured as f64 / reported as f64;
            eprintln!(
                "{shape:?} {} (ran {name}): measured {measured} B, reported {reported} B, ratio {ratio:.3}",
                s.name()
            );
            // The account samples where the peak lies and estimates only the VJP's own
            // working set, so it agrees closely; a missed allocation would show here.
            assert!(
                (0.85..=1.15).contains(&ratio),
                "{shape:?} {}: measured {measured} B, reported {reported} B",
                s.name()
            );
            ran.push(name);
        }
    }
    // Taped: the backward is the caller's own, so the account is an estimate of the
    // cotangents pending at once, not a sample.
    for shape in [(32, 64, 256), (128, 16, 32)] {
        let p = Problem::random(&mut Rng::new(5), f, shape, 3, false, true);
        let (measured, reported, name) = measured_and_reported(&p, &opts, &Strategy::Taped);
        let ratio = measured as f64 / reported as f64;
        eprintln!("{shape:?} taped (ran {name}): measured {measured} B, reported {reported} B, ratio {ratio:.3}");
        assert!((0.5..=2.0).contains(&ratio), "{shape:?} taped: {ratio}");
    }
    // Auto ran both a backsolve and an exact strategy.
    assert!(ran.iter().filter(|n| *n == "aca").count() >= 2, "{ran:?}");
}
