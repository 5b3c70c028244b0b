//! The reversible strategy: its gradient equals the taped gradient of the same reversible
//! solve to rounding (on f64 and on Dual64, over every explicit tableau and reversible Heun,
//! adaptive and fixed-step), forward-mode `Dual64` solves agree with it, the reconstruction
//! report sees the inversion lose digits, and bad input is refused by name.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::Tape;
use common::Rng;
use common::*;
use ode::tableau::ALL;
use ode::{odeint_with, solve, Error, Options, Strategy};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn plain(m: &DMatrix<f64>, _: usize) -> DMatrix<f64> {
    m.clone()
}

fn part(m: &[DMatrix<Dual64>], f: impl Fn(&Dual64) -> f64) -> Vec<DMatrix<f64>> {
    m.iter().map(|m| m.map(|x| f(&x))).collect()
}

fn random_problem(seed: u64, decay: bool, reversed: bool, all_outputs: bool, n: usize) -> Problem {
    let f = Mlp {
        time: seed.is_multiple_of(2),
        decay,
    };
    Problem::random(&mut Rng::new(seed), f, (3, 2, 5), n, reversed, all_outputs)
}

/// Options for `method` over the reversible scheme: constant steps for fixed-step methods
/// (and, when `constant`, for adaptive ones too), else adaptive at rtol 1e-6.
fn reversible_options(method: &str, coupling: f64, constant: bool) -> Options {
    let tab = ode::method_by_name(method).unwrap();
    let base = if tab.b_error.is_none() || constant {
        Options::fixed(method, 0.09).unwrap()
    } else {
        Options::with_method(method).unwrap().tolerances(1e-6, 1e-8)
    };
    if method == "reversible_heun" {
        base
    } else {
        base.reversible(coupling)
    }
}

fn methods() -> Vec<&'static str> {
    ALL.iter()
        .map(|t| t.name)
        .chain(["reversible_heun"])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5E7E_5AB1),
        ..ProptestConfig::default()
    })]

    /// Random small MLPs (time input or not, contracting or not), increasing and decreasing
    /// grids, losses on every output or the last only, every method, adaptive and constant
    /// steps, several couplings near 1 (a small coupling loses digits over many steps, which
    /// the reconstruction test below shows): the reversible strategy gives the taped gradient of the same
    /// reversible solve to 1e-10 relative on h0, θ and every t_i, replays every step once
    /// and reconstructs h0 to rounding.
    #[test]
    fn reversible_equals_taped_reversible_solve(
        seed in any::<u64>(),
        decay in any::<bool>(),
        reversed in any::<bool>(),
        all_outputs in any::<bool>(),
        constant in any::<bool>(),
        n in 2usize..6,
        method in prop::sample::select(methods()),
        coupling in prop::sample::select(vec![0.999, 0.99, 1.0]),
    ) {
        let p = random_problem(seed, decay, reversed, all_outputs, n);
        let opts = reversible_options(method, coupling, constant);
        let (taped, _, steps) = gradients(&p, &opts, &Strategy::Taped, plain);
        let strategy = Strategy::Reversible { coupling: None };
        let (g, stats, rev_steps) = gradients(&p, &opts, &strategy, plain);
        prop_assert_eq!(steps, rev_steps, "the same discrete solve");
        let err = worst(&g, &taped);
        prop_assert!(err <= 1e-10, "{method} (coupling {coupling}): rel err {err:e}");
        let stats = stats.expect("the node reports");
        prop_assert!(stats.accepted <= steps);
        let at_h0 = stats.reconstruction.last().expect("h0 is compared").relative;
        prop_assert!(at_h0 <= 1e-11, "{method}: h0 reconstructed to {at_h0:e}");
    }

    /// On `Tape<Dual64>` with a random tangent on every input (the grid's included): the
    /// real parts (the gradient) and the dual parts (forward over reverse) equal the taped
    /// ones of the same reversible solve to 1e-10.
    #[test]
    fn reversible_equals_taped_on_dual64(
        seed in any::<u64>(),
        reversed in any::<bool>(),
        n in 2usize..5,
        method in prop::sample::select(vec!["dopri5", "rk4", "bosh3", "reversible_heun", "midpoint"]),
    ) {
        let p = random_problem(seed, true, reversed, true, n);
        let opts = reversible_options(method, 0.999, false);
        let lift = |m: &DMatrix<f64>, i: usize| {
            let mut r = Rng::new(seed ^ (i as u64 + 1));
            let scale = if i == 1 { 1e-3 } else { 1.0 };
            m.map(|x| Dual64::new(x, scale * r.range(-1.0, 1.0)))
        };
        let (taped, _, _) = gradients(&p, &opts, &Strategy::Taped, lift);
        let (g, _, _) = gradients(&p, &opts, &Strategy::Reversible { coupling: None }, lift);
        let err_re = worst(&part(&g, |x| x.re), &part(&taped, |x| x.re));
        let err_eps = worst(&part(&g, |x| x.eps), &part(&taped, |x| x.eps));
        prop_assert!(err_re <= 1e-10, "{method}: real parts {err_re:e}");
        prop_assert!(err_eps <= 1e-10, "{method}: dual parts {err_eps:e}");
    }
}

/// Forward mode: a `Dual64` solve of the same reversible scheme with a tangent `v` on θ and
/// h0 gives dL/dε = ⟨∇L, v⟩ of the reversible gradient, to rounding.
#[test]
fn reversible_gradient_matches_forward_mode() {
    for method in ["dopri5", "rk4", "reversible_heun", "tsit5"] {
        let p = random_problem(7, false, false, true, 4);
        let opts = reversible_options(method, 0.9, false);
        let (g, _, _) = gradients(&p, &opts, &Strategy::Reversible { coupling: None }, plain);
        let mut r = Rng::new(3);
        let v_h0 = r.matrix(p.h0.nrows(), p.h0.ncols(), 1.0);
        let v_params: Vec<DMatrix<f64>> = p
            .params
            .iter()
            .map(|m| r.matrix(m.nrows(), m.ncols(), 1.0))
            .collect();
        let h0 = p.h0.zip_map(&v_h0, Dual64::new);
        let params: Vec<DMatrix<Dual64>> = p
            .params
            .iter()
            .zip(&v_params)
            .map(|(m, v)| m.zip_map(v, Dual64::new))
            .collect();
        let t: Vec<Dual64> = p.grid.iter().map(|&x| Dual64::from_re(x)).collect();
        let (hs, _) = solve(&p.f, &h0, &t, &params, &opts).unwrap();
        let dl: f64 = hs
            .iter()
            .zip(&p.cots)
            .filter_map(|(h, v)| v.as_ref().map(|v| h.zip_map(v, |a, b| a.eps * b).sum()))
            .sum();
        let mut expected = g[0].dot(&v_h0);
        for (gp, v) in g[2..].iter().zip(&v_params) {
            expected += gp.dot(v);
        }
        let err = (dl - expected).abs() / expected.abs().max(1e-300);
        assert!(
            err <= 1e-10,
            "{method}: forward mode {dl} vs reverse {expected}"
        );
    }
}

/// The reconstruction report: rounding-level on a benign problem with the authors'
/// coupling, growing by about 1/λ per step with a small coupling (the inverse divides by λ),
/// and an overflowing reconstruction is an error naming the cause, the tape usable after.
#[test]
fn reconstruction_error_is_reported_and_overflow_refused() {
    let p = Problem {
        grid: vec![0.0, 2.0],
        ..random_problem(5, true, false, false, 2)
    };
    let run = |opts: &Options| gradients(&p, opts, &Strategy::Reversible { coupling: None }, plain);
    let benign = Options::fixed("rk4", 0.05).unwrap().reversible(0.999);
    let (_, stats, steps) = run(&benign);
    let worst_benign = stats.unwrap().max_reconstruction_error().unwrap();
    assert!(worst_benign < 1e-12, "{worst_benign:e} over {steps} steps");

    let lossy = Options::fixed("rk4", 0.05).unwrap().reversible(0.5);
    let (_, stats, steps) = run(&lossy);
    let worst_lossy = stats.unwrap().max_reconstruction_error().unwrap();
    // 2^steps · ε is the scale of the amplified rounding: 40 steps, 1e-4.
    assert!(
        worst_lossy > 1e-7 && worst_lossy > 1e4 * worst_benign,
        "coupling 0.5 over {steps} steps: {worst_lossy:e}"
    );

    // λ = 1e-3 multiplies the rounding by 1000 per step: 400 steps overflow.
    let q = Problem {
        grid: vec![0.0, 20.0],
        ..random_problem(5, true, false, false, 2)
    };
    let opts = Options::fixed("euler", 0.05).unwrap().reversible(1e-3);
    let tape = Tape::<f64>::new();
    let h0 = tape.var(q.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, 2, &q.grid));
    let params: Vec<_> = q.params.iter().map(|m| tape.var(m.clone())).collect();
    let sol = odeint_with(
        &tape,
        &q.f,
        h0,
        t,
        &params,
        &opts,
        &Strategy::Reversible { coupling: None },
    )
    .unwrap();
    let Err(e) = tape.backward(sol.last().sum()) else {
        panic!("the reconstruction overflows")
    };
    let text = format!("{e} {:?}", e);
    assert!(
        text.contains("reconstruction") && text.contains("coupling"),
        "{text}"
    );
    // The tape still works.
    let sol = odeint_with(
        &tape,
        &q.f,
        h0,
        t,
        &params,
        &Options::default(),
        &Strategy::Taped,
    )
    .unwrap();
    assert!(tape.backward(sol.last().sum()).is_ok());
}

/// Every refusal names its cause: couplings outside (0, 1] as a strategy name, a strategy
/// setting or an option; two couplings that disagree; a coupling on reversible_heun; a
/// strategy that cannot differentiate a reversible solve. The tape stays usable.
#[test]
fn bad_reversible_input_is_refused() {
    for name in [
        "reversible:0",
        "reversible:1.5",
        "reversible:-0.5",
        "reversible:nan",
        "reversible:inf",
        "reversible:x",
        "reversible:",
    ] {
        let e = name
            .parse::<Strategy>()
            .err()
            .unwrap_or_else(|| panic!("{name} parsed"));
        assert!(e.to_string().contains("COUPLING"), "{e}");
    }
    assert!(matches!(
        "reversible:0.25".parse::<Strategy>(),
        Ok(Strategy::Reversible { coupling: Some(c) }) if c == 0.25
    ));

    let p = random_problem(1, true, false, true, 3);
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let mark = tape.stats().nodes;
    let attempt = |opts: &Options, s: &Strategy| {
        odeint_with(&tape, &p.f, h0, t, &params, opts, s)
            .err()
            .expect("refused")
    };
    let coupling_error = |e: &Error| {
        matches!(
            e,
            Error::BadOption {
                name: "coupling",
                ..
            }
        )
    };
    for c in [0.0, -1.0, 1.0 + 1e-12, f64::NAN, f64::INFINITY] {
        let e = attempt(
            &Options::default(),
            &Strategy::Reversible { coupling: Some(c) },
        );
        assert!(coupling_error(&e), "{c}: {e}");
        let e = attempt(&Options::default().reversible(c), &Strategy::Taped);
        assert!(coupling_error(&e), "{c}: {e}");
    }
    let e = attempt(
        &Options::default().reversible(0.9),
        &Strategy::Reversible {
            coupling: Some(0.8),
        },
    );
    assert!(
        coupling_error(&e) && e.to_string().contains("one place"),
        "{e}"
    );
    let heun = Options::with_method("reversible_heun").unwrap();
    let e = attempt(
        &heun,
        &Strategy::Reversible {
            coupling: Some(0.9),
        },
    );
    assert!(
        coupling_error(&e) && e.to_string().contains("reversible_heun"),
        "{e}"
    );
    let e = attempt(&heun.clone().reversible(0.9), &Strategy::Taped);
    assert!(coupling_error(&e), "{e}");
    for s in [
        "aca",
        "checkpointed:3",
        "backsolve",
        "backsolve-checkpointed:2",
    ] {
        let s: Strategy = s.parse().unwrap();
        for opts in [heun.clone(), Options::default().reversible(0.999)] {
            let e = attempt(&opts, &s);
            assert!(
                matches!(&e, Error::SchemeNotSupported { .. })
                    && e.to_string().contains("`reversible`"),
                "{}: {e}",
                s.name()
            );
        }
    }
    assert_eq!(
        tape.stats().nodes,
        mark,
        "nothing recorded by a refused solve"
    );
    let sol = odeint_with(
        &tape,
        &p.f,
        h0,
        t,
        &params,
        &heun,
        &Strategy::Reversible { coupling: None },
    )
    .unwrap();
    assert!(tape.backward(sol.last().sum()).is_ok());
}

/// Auto over a reversible solve whose tape does not fit picks the reversible strategy and
/// says why; its gradient is the taped one.
#[test]
fn auto_picks_reversible_for_a_reversible_solve() {
    let p = random_problem(9, true, false, true, 4);
    let opts = Options::default().tolerances(1e-6, 1e-8).reversible(0.999);
    let (taped, _, _) = gradients(&p, &opts, &Strategy::Taped, plain);
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let auto = Strategy::Auto {
        budget_bytes: 2_000,
        strict: false,
    };
    let sol = odeint_with(&tape, &p.f, h0, t, &params, &opts, &auto).unwrap();
    assert_eq!(sol.strategy.name, "reversible");
    assert!(
        sol.strategy.reason.contains("reversible"),
        "{}",
        sol.strategy.reason
    );
    let (g, _, _) = gradients(&p, &opts, &auto, plain);
    assert!(worst(&g, &taped) <= 1e-10);
}

/// Held bytes do not grow with the horizon beyond the step records: 2 states and O(N)
/// numbers, against the taped solve's O(N) tapes.
#[test]
fn held_bytes_are_flat_in_the_horizon() {
    let held = |t1: f64, strategy: &Strategy| {
        let p = Problem {
            grid: vec![0.0, t1],
            ..random_problem(4, true, false, false, 2)
        };
        let opts = Options::fixed("rk4", 0.05).unwrap().reversible(0.999);
        let tape = Tape::<f64>::new();
        let h0 = tape.var(p.h0.clone());
        let t = tape.var(DMatrix::from_row_slice(1, 2, &p.grid));
        let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
        let sol = odeint_with(&tape, &p.f, h0, t, &params, &opts, strategy).unwrap();
        (sol.held_bytes().unwrap(), sol.steps.len())
    };
    let rev = Strategy::Reversible { coupling: None };
    let (short, n_short) = held(1.0, &rev);
    let (long, n_long) = held(20.0, &rev);
    let per_step = (long - short) as f64 / (n_long - n_short) as f64;
    // A step record (4 numbers) and an output index: no state per step.
    assert!(per_step <= 48.0, "{per_step} bytes per step");
    let (taped_long, _) = held(20.0, &Strategy::Taped);
    assert!(
        taped_long > 20 * long,
        "taped {taped_long} vs reversible {long}"
    );
}

/// The coupled scheme over a method with its own interpolant has a dense output: outputs
/// between steps are interpolated, not stepped onto, and are as accurate as the steps.
/// h' = −k h from h0 = 2 at 40 output times in [0, 4]: fewer steps than outputs, every output
/// within 1e-6 of 2e^(−kt); reversible Heun and a method without an interpolant step onto
/// every output instead.
#[test]
fn reversible_outputs_between_steps_come_from_a_dense_output() {
    let grid: Vec<f64> = (0..=40).map(|i| i as f64 * 0.1).collect();
    let k = 0.7;
    for (method, dense) in [
        ("dopri5", true),
        ("tsit5", true),
        ("rk4", false),
        ("reversible_heun", false),
    ] {
        let opts = match method {
            "rk4" => Options::fixed("rk4", 0.05).unwrap().reversible(0.999),
            "reversible_heun" => Options::fixed("reversible_heun", 0.002).unwrap(),
            m => Options::with_method(m)
                .unwrap()
                .tolerances(1e-8, 1e-10)
                .reversible(0.999),
        };
        let tape = Tape::<f64>::new();
        let h0 = tape.var(DMatrix::from_element(1, 1, 2.0));
        let kv = tape.var(DMatrix::from_element(1, 1, k));
        let t = tape.constant(DMatrix::from_row_slice(1, grid.len(), &grid));
        let sol = odeint_with(
            &tape,
            &Decay,
            h0,
            t,
            &[kv],
            &opts,
            &Strategy::Reversible { coupling: None },
        )
        .unwrap();
        let worst = sol
            .outputs
            .iter()
            .zip(&grid)
            .map(|(h, &ti)| (h.scalar_value().unwrap() - 2.0 * (-k * ti).exp()).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "{method}: outputs off by {worst:e}");
        let steps = sol.steps.len();
        if dense {
            assert!(
                steps + 5 < grid.len(),
                "{method}: {steps} steps for {} outputs",
                grid.len()
            );
        } else {
            let landed = sol.steps.iter().filter(|s| s.landed).count();
            assert!(landed >= grid.len() - 1, "{method}: {landed} landed steps");
        }
    }
}
