//! The stiff problem files the `stiff` example runs (`examples/problems/stiff/`), against
//! their references (Kvaerno5 at rtol 1e-12, checked against Radau's forward sensitivities
//! or the exact solution): the implicit solve's loss, and the exact strategies' gradients
//! with tangent-aware step control.

#[path = "../examples/support/stiff.rs"]
#[allow(dead_code)] // the example reads the rest of the file
mod stiff;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::Tape;
use costate::ode::{odeint_with, Options, Strategy};
use stiff::StiffProblem;

fn load(name: &str) -> StiffProblem {
    let path = format!(
        "{}/examples/problems/stiff/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    StiffProblem::load(&path).unwrap()
}

/// The loss and the reference-keyed gradient under `strategy`.
fn gradient(p: &StiffProblem, opts: &Options, strategy: &Strategy) -> (f64, (f64, f64), usize) {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.y0.clone());
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let t = tape.constant(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let sol = odeint_with(&tape, &p.field, h0, t, &params, opts, strategy).unwrap();
    let loss = p.loss(&sol.outputs).unwrap();
    let value = loss.value().unwrap()[(0, 0)];
    let mut g = tape.backward(loss).unwrap();
    let gy0 = g.take_or_zeros(h0).unwrap();
    let gp: Vec<_> = params
        .iter()
        .map(|v| g.take_or_zeros(*v).unwrap())
        .collect();
    (value, p.errors(&p.keyed(&gy0, &gp)), sol.stats.accepted)
}

#[test]
fn robertson_gradients_reach_the_reference_with_tangent_control() {
    let p = load("robertson");
    let opts = Options {
        max_num_steps: 100_000,
        ..Options::with_method("kvaerno5")
            .unwrap()
            .tolerances(1e-8, 1e-10)
    };
    // Primal control: the state to the tolerance, the gradient only to ~2.5e-4.
    let (loss, (primal, _), primal_steps) = gradient(&p, &opts, &Strategy::Taped);
    assert!((loss - p.reference_loss).abs() < 1e-6 * p.reference_loss);
    assert!(
        primal > 1e-5,
        "primal control already resolves it: {primal:e}"
    );
    // With one tangent direction the steps resolve the gradient too (measured 7.7e-7).
    let tangents = opts.with_tangents(1);
    let (_, (taped, _), steps) = gradient(&p, &tangents, &Strategy::Taped);
    assert!(taped < 3e-6, "taped with tangents: {taped:e}");
    assert!(steps > primal_steps);
    let (_, (replayed, _), _) = gradient(&p, &tangents, &"checkpointed:4".parse().unwrap());
    assert!(
        (replayed - taped).abs() < 1e-3 * taped,
        "{replayed:e} vs {taped:e}"
    );
}

#[test]
fn the_stiff_linear_system_gradient_matches_its_reference() {
    // 20 states, eigenvalues down to −1e6, the gradient w.r.t. all 400 entries of A.
    let p = load("linear");
    let opts = Options {
        max_num_steps: 100_000,
        ..Options::with_method("kvaerno5")
            .unwrap()
            .tolerances(1e-8, 1e-10)
    };
    let (loss, (rel, _), steps) = gradient(&p, &opts, &Strategy::Taped);
    assert!((loss - p.reference_loss).abs() < 1e-7 * p.reference_loss.abs());
    assert!(rel < 2e-8, "{rel:e}");
    assert!(steps < 500, "{steps} steps");
}
