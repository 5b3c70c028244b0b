//! The seed workload (issue #3): f = 64→64→64→64 tanh MLP, batch 32, 50 output times in
//! [0, 1], dopri5 at rtol 1e-7 / atol 1e-9, L = sum of h(1). Uses the exact weights the
//! torchdiffeq reference was timed on (`examples/problems/seed.json`, a copy of the anchors' file),
//! so forward NFE and times compare one to one with `bench_problem.py`.
//!
//! `cargo bench --bench seed` (add `-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, Criterion};

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::Tape;
use costate::nn::{Problem, Strategy};
use costate::ode::Dynamics;

fn seed_problem() -> Problem {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/problems/seed.json");
    Problem::load(path).unwrap_or_else(|e| panic!("the seed benchmark needs {path}: {e}"))
}

/// Record the problem on the reset tape and run backward: the timed region is forward +
/// backward only (no gradient extraction, no footprint walk over the tape).
fn fwd_bwd(problem: &Problem, strategy: &Strategy, tape: &Tape<f64>) -> (usize, usize) {
    tape.reset().expect("reset");
    let recorded = problem.record(tape, strategy).expect("record");
    let grads = tape.backward(recorded.loss).expect("backward");
    let solution = &recorded.forward.solution;
    (
        solution.stats.nfe,
        solution.backward_stats(&grads).map_or(0, |s| s.nfe),
    )
}

fn bench(c: &mut Criterion) {
    let problem = seed_problem();
    let tape = Tape::<f64>::new();
    for name in ["taped", "backsolve", "aca", "checkpointed:2"] {
        let strategy: Strategy = name.parse().expect("a strategy name");
        let (fwd, bwd) = fwd_bwd(&problem, &strategy, &tape);
        eprintln!("{name}: forward NFE {fwd}, backward NFE {bwd}");
        c.bench_function(&format!("seed/{name}_fwd_bwd"), |b| {
            b.iter(|| fwd_bwd(&problem, &strategy, &tape))
        });
    }
    // The phases: the untaped forward every opaque strategy starts with, and the taped
    // forward alone (what store-every-step adds to, and what it replays step by step).
    c.bench_function("seed/forward_untaped", |b| {
        b.iter(|| {
            let (out, stats) = costate::ode::solve(
                &problem.func,
                &problem.h0,
                &problem.t,
                problem.params.values(),
                &problem.options,
            )
            .expect("solve");
            (out.len(), stats.nfe)
        })
    });
    c.bench_function("seed/forward_taped", |b| {
        b.iter(|| {
            tape.reset().expect("reset");
            let forward = problem.forward(&tape, &Strategy::Taped).expect("solve");
            forward.solution.stats.nfe
        })
    });
    // One evaluation of f, and one f + VJP w.r.t. h and θ (what each adjoint step costs).
    let h0 = problem.h0.clone();
    let cot = DMatrix::from_element(h0.nrows(), h0.ncols(), 1.0);
    c.bench_function("seed/f_eval_no_grad", |b| {
        b.iter(|| {
            tape.reset().expect("reset");
            let _g = tape.no_grad();
            let p = problem.params.to_tape(&tape);
            let t0 = tape.scalar(0.0);
            problem
                .func
                .eval(t0, tape.constant(h0.clone()), &p)
                .expect("eval")
                .with_value(|m| m[(0, 0)])
                .expect("value")
        })
    });
    c.bench_function("seed/f_eval_vjp", |b| {
        b.iter(|| {
            tape.reset().expect("reset");
            let p = problem.params.to_tape(&tape);
            let h = tape.var(h0.clone());
            let out = problem.func.eval(tape.scalar(0.0), h, &p).expect("eval");
            let mut wrt = vec![h];
            wrt.extend_from_slice(&p);
            tape.vjp_wrt(&[(out, cot.clone())], &wrt)
                .expect("vjp")
                .len()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
