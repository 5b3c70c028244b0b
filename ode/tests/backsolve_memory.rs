//! Backsolve's peak heap during backward, from a counting global allocator: the augmented
//! solve keeps no stage of the quadratures a_θ and a_t (their weighted sums accumulate as
//! the stages arrive), so the peak stays within two copies of state and parameters plus one
//! evaluation's tape, and does not grow with the horizon. One test, so that no other test
//! allocates meanwhile.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::Tape;
use common::*;
// The library's counting allocator: one definition of peak heap for the whole repository.
use ad_core::heap::CountingAlloc;
use ode::{odeint_with, Dynamics, Options, Strategy};

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

/// Peak heap above the starting point during the backward pass only (the forward's node and
/// outputs are live before it starts), and the forward + backward peak.
fn backward_peak(p: &Problem, opts: &Options, strategy: &Strategy) -> (usize, usize) {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let before_forward = HEAP.start();
    let sol = odeint_with(&tape, &p.f, h0, t, &params, opts, strategy).unwrap();
    let loss = dot_loss(&tape, &sol.outputs, &p.cots).unwrap();
    let before_backward = HEAP.live();
    let forward_peak = HEAP.peak_above(before_forward);
    HEAP.start();
    let grads = tape.backward(loss).unwrap();
    let backward = HEAP.peak_above(before_backward);
    drop(grads);
    (
        backward,
        forward_peak.max(backward + before_backward - before_forward),
    )
}

/// Peak heap of one evaluation of f and one VJP through it on a fresh local tape, with its
/// own copy of the parameters: what one augmented-dynamics evaluation needs.
fn one_evaluation(p: &Problem) -> usize {
    let before = HEAP.start();
    let local = Tape::<f64>::new();
    let params: Vec<_> = p.params.iter().map(|m| local.var(m.clone())).collect();
    let h = local.var(p.h0.clone());
    let t = local.var(DMatrix::from_element(1, 1, 0.0));
    let out = p.f.eval(t, h, &params).unwrap();
    let mut wrt = vec![h];
    wrt.extend_from_slice(&params);
    wrt.push(t);
    let grads = local.vjp_wrt(&[(out, p.h0.clone())], &wrt).unwrap();
    let peak = HEAP.peak_above(before);
    drop(grads);
    peak
}

/// Bytes of a matrix of `n` f64s.
const F64: usize = std::mem::size_of::<f64>();

#[test]
fn backsolve_backward_peak_is_bounded_and_flat_in_the_horizon() {
    let f = Mlp::DECAY;
    let opts = Options {
        rtol: 1e-6,
        atol: 1e-8,
        ..Options::default()
    };
    // dopri5: 7 stages.
    let stages = 7;
    for ((batch, dim, hidden), horizons) in
        [((32, 64, 256), &[1.0, 4.0][..]), ((8, 64, 256), &[1.0])]
    {
        let mut p = Problem::random(&mut Rng::new(11), f, (batch, dim, hidden), 2, false, false);
        let state = batch * dim * F64;
        let params: usize = p.params.iter().map(|m| m.len() * F64).sum();
        // [h, a, a_θ, a_t]: what the backward integrates.
        let augmented = 2 * state + params + F64;
        let eval = one_evaluation(&p);
        // Two copies of the augmented state (the step's start and its running sums) and of
        // the parameters (a_θ's first stage and its error estimate), one evaluation (its own
        // copy of the parameters, its activations and its VJP); the slack is O(s·d): an RK
        // step must keep every stage of h and a (2d each), plus about a dozen d-sized
        // buffers (stage input, error estimate, the evaluation's copies of h and −a, the
        // loss's cotangents), and 32 KiB of bookkeeping.
        let bound = 2 * (augmented + params) + eval + (2 * stages + 16) * state + 32 * 1024;
        let mut peaks = Vec::new();
        for &horizon in horizons {
            p.grid = vec![0.0, horizon];
            let (backsolve, backsolve_total) = backward_peak(&p, &opts, &Strategy::backsolve());
            let (_, taped_total) = backward_peak(&p, &opts, &Strategy::Taped);
            eprintln!(
                "batch {batch}, hidden {hidden}, T = {horizon}: state {state} B, params {params} B, \
                 one evaluation {eval} B; backsolve backward peak {backsolve} B (bound {bound} B), \
                 forward + backward: backsolve {backsolve_total} B, taped {taped_total} B"
            );
            assert!(backsolve <= bound, "T = {horizon}: {backsolve} > {bound}");
            assert!(backsolve_total < taped_total);
            peaks.push(backsolve);
        }
        // Flat in the horizon: four times as many steps, the same peak (within 3%).
        if let [short, long] = peaks[..] {
            assert!(
                long.abs_diff(short) * 100 <= 3 * short,
                "T → 4T: {short} → {long}"
            );
        }
    }
}
