//! Cross-crate properties over random neural ODEs built through `nn`: problem files
//! round-trip exactly, and the adjoint's gradients agree with the taped ones within a bound
//! that shrinks with the tolerance, for every input flavour of `OdeFunc`.

use costate::nalgebra::DMatrix;
use costate::nn::{Input, Loss, Problem, Strategy};
use costate::ode::Options;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A random problem: dim × hidden MLP, flags, h0, grid and loss drawn from `seed`.
fn problem(
    seed: u64,
    dim: usize,
    hidden: usize,
    flags: (bool, bool, bool),
    cotangents: bool,
    tol: f64,
) -> Problem {
    use costate::rand::{Rng, SeedableRng};
    let (cube, time_input, subtract) = flags;
    let mut rng = costate::rand::rngs::StdRng::seed_from_u64(seed);
    let func = costate::nn::OdeFunc::new(dim, &[hidden], costate::nn::Activation::Tanh).unwrap();
    let func = if time_input {
        func.with_time_input()
    } else {
        func
    };
    let func = func.with_input(if cube { Input::Cube } else { Input::State });
    let func = if subtract {
        func.with_subtract_state()
    } else {
        func
    };
    let params = func.mlp.init_params(&mut rng);
    let batch = 3;
    let h0 = DMatrix::from_fn(batch, dim, |_, _| rng.random_range(-1.0..1.0));
    let npts = 4;
    let t: Vec<f64> = (0..npts).map(|i| 0.4 * i as f64).collect();
    let loss = if cotangents {
        Loss::Cotangents(
            (0..npts)
                .map(|_| DMatrix::from_fn(batch, dim, |_, _| rng.random_range(-1.0..1.0)))
                .collect(),
        )
    } else {
        Loss::SumFinal
    };
    let options = Options::default().tolerances(tol, tol);
    Problem::new(func, params, h0, t, options, loss).unwrap()
}

/// dL/dh0, dL/dθ… and dL/dt of one mode, flattened, with the max |entry| for scale.
fn gradients(p: &Problem, mode: Strategy) -> (Vec<f64>, f64) {
    let g = p.gradients(&mode).unwrap();
    let mut flat: Vec<f64> = g.h0.iter().copied().collect();
    for m in &g.params {
        flat.extend(m.iter());
    }
    flat.extend(g.t.iter());
    let scale = flat.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    (flat, scale)
}

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

#[test]
fn random_problem_files_round_trip_exactly() {
    runner(16)
        .run(
            &(
                any::<u64>(),
                1usize..5,
                1usize..8,
                any::<(bool, bool, bool)>(),
                any::<bool>(),
            ),
            |(seed, dim, hidden, flags, cot)| {
                let p = problem(seed, dim, hidden, flags, cot, 1e-7);
                let text = serde_json::to_string(&p.to_file()).unwrap();
                let q = Problem::from_json(&text).unwrap();
                prop_assert_eq!(&q.params, &p.params);
                prop_assert_eq!(&q.h0, &p.h0);
                prop_assert_eq!(&q.t, &p.t);
                prop_assert_eq!(&q.loss, &p.loss);
                prop_assert_eq!(&q.func, &p.func);
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn adjoint_matches_taped_within_a_tolerance_bound_for_every_odefunc_flavour() {
    runner(12)
        .run(
            &(
                any::<u64>(),
                1usize..4,
                2usize..8,
                any::<(bool, bool, bool)>(),
                any::<bool>(),
            ),
            |(seed, dim, hidden, flags, cot)| {
                // The gap between the modes is the solver error of each: it must shrink with the
                // tolerance (a sign error or a missing term would not).
                let mut gaps = Vec::new();
                for tol in [1e-5, 1e-9] {
                    let p = problem(seed, dim, hidden, flags, cot, tol);
                    let (taped, scale) = gradients(&p, Strategy::Taped);
                    let (adjoint, _) = gradients(&p, Strategy::backsolve());
                    let gap = taped
                        .iter()
                        .zip(&adjoint)
                        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
                        / (1.0 + scale);
                    prop_assert!(gap < 20.0 * tol.powf(0.8), "tol {tol}: gap {gap:e}");
                    gaps.push(gap);
                }
                prop_assert!(gaps[1] < gaps[0].max(1e-12), "gap did not shrink: {gaps:?}");
                Ok(())
            },
        )
        .unwrap();
}
