//! McCallum & Foster's white-dwarf benchmark (`examples/problems/white_dwarf.json`, JAX's
//! gradients from the Diffrax reference script): for each base solver, the taped gradient of
//! the plain solve is JAX's `checkpointed` one, and the reversible strategy's gradient of the
//! reversible scheme — and the taped gradient of that same scheme — is JAX's `reversible`
//! one, with the states reconstructed to rounding.

use costate::nn::reversible_problem::{BaseSolver, ReferenceGradients, ReversibleProblem, Scheme};
use costate::nn::{ProblemGradients, Strategy};

const FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/problems/white_dwarf.json"
);

/// Bounds a little above the measured worst (loss or gradient, relative to max |reference|,
/// over the three solvers): 3.9e-14 (the steps accumulate t += dt, so outputs at n·dt are
/// read from the dense output a few ulps from the step ends; midpoint's and rk4's reversible
/// schemes, without dense output, land on them: 4.8e-15), reconstruction 2.0e-14
/// (midpoint). JAX's two references differ by up to 1.5e-10, so these tell the solves apart.
const PLAIN_BOUND: f64 = 1e-13;
const REVERSIBLE_BOUND: f64 = 1e-13;
const RECONSTRUCTION_BOUND: f64 = 1e-13;

/// The loss's relative error and the worst gradient error over dL/dy0 and every dL/dθ
/// tensor, each relative to the reference tensor's max |entry|.
fn errors(g: &ProblemGradients, r: &ReferenceGradients) -> (f64, f64) {
    let loss = (g.loss - r.loss).abs() / r.loss.abs();
    let ours = std::iter::once(&g.h0).chain(&g.params);
    let theirs = std::iter::once(&r.gradients.h0).chain(&r.gradients.params);
    let mut worst = 0.0f64;
    for (a, b) in ours.zip(theirs) {
        assert_eq!(a.shape(), b.shape());
        worst = worst.max((a - b).abs().max() / b.abs().max());
    }
    assert_eq!(g.params.len(), r.gradients.params.len());
    (loss, worst)
}

fn check(
    problem: &ReversibleProblem,
    solver: &BaseSolver,
    scheme: Scheme,
    strategy: &Strategy,
    bound: f64,
) -> ProblemGradients {
    let g = problem.gradients(solver, scheme, strategy).unwrap();
    let (loss, grad) = errors(&g, solver.reference(scheme));
    eprintln!(
        "{:>8} {scheme:?} {:>10}: loss {loss:.2e}, gradients {grad:.2e}",
        solver.name,
        strategy.name()
    );
    assert!(
        loss <= bound && grad <= bound,
        "{} {scheme:?} {}: loss {loss:e}, gradients {grad:e} (bound {bound:e})",
        solver.name,
        strategy.name()
    );
    g
}

#[test]
fn gradients_match_jax_for_every_base_solver() {
    let problem = ReversibleProblem::load(FILE).unwrap();
    let names: Vec<&str> = problem.solvers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["dopri5", "midpoint", "rk4"]);
    let methods: Vec<&str> = problem.solvers.iter().map(|s| s.method.name).collect();
    assert_eq!(methods, ["dopri5", "midpoint", "rk4_classic"]);
    for solver in &problem.solvers {
        // (a) the plain solve, taped.
        check(
            &problem,
            solver,
            Scheme::Base,
            &Strategy::Taped,
            PLAIN_BOUND,
        );
        // (b) the reversible scheme by the reversible strategy.
        let strategy = Strategy::Reversible { coupling: None };
        let reversible = check(
            &problem,
            solver,
            Scheme::Reversible,
            &strategy,
            REVERSIBLE_BOUND,
        );
        // A reversible scheme lands on every output time: one step per output.
        assert_eq!(reversible.forward.accepted, problem.nsteps);
        // (c) the same reversible solve, taped.
        check(
            &problem,
            solver,
            Scheme::Reversible,
            &Strategy::Taped,
            REVERSIBLE_BOUND,
        );
        // (d) every step inverted to rounding.
        let stats = reversible.backward.expect("the reversible node reports");
        assert_eq!(stats.accepted, problem.nsteps);
        // Every output but the last compared with its reconstruction (at a step's start or
        // through the dense output), and y0 at t_0.
        assert!(stats.reconstruction.len() >= problem.nsteps);
        let worst = stats.max_reconstruction_error().unwrap();
        eprintln!("{:>8} reconstruction {worst:.2e}", solver.name);
        assert!(worst <= RECONSTRUCTION_BOUND, "{}: {worst:e}", solver.name);
    }
}

/// The two references differ (by 1.5e-10 relative for midpoint): the tests above tell the
/// two discrete solves apart, so a strategy that solved the plain method where the
/// reversible scheme was asked for would fail.
#[test]
fn the_reversible_scheme_is_a_different_solve() {
    let problem = ReversibleProblem::load(FILE).unwrap();
    let midpoint = problem.solver("midpoint").unwrap();
    let plain = problem
        .gradients(midpoint, Scheme::Base, &Strategy::Taped)
        .unwrap();
    let (_, against_reversible) = errors(&plain, &midpoint.reversible);
    let (_, against_plain) = errors(&plain, &midpoint.checkpointed);
    eprintln!("midpoint plain: {against_plain:.2e} from checkpointed, {against_reversible:.2e} from reversible");
    assert!(against_reversible > 100.0 * against_plain);
}
