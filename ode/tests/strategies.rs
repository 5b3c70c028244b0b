//! Every gradient strategy against the taped one: the exact ones (store every step, K-slot
//! checkpointing) to rounding on f64 and on Dual64, Hessian-vector products through every
//! strategy, the binomial schedule's recomputation counts, the backsolve's drift report.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::Tape;
use common::Rng;
use common::*;
use ode::schedule::min_recomputations;
use ode::{odeint_with, Backsolve, BackwardStats, Options, Strategy};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn plain(m: &DMatrix<f64>, _: usize) -> DMatrix<f64> {
    m.clone()
}

fn re(m: &[DMatrix<Dual64>]) -> Vec<DMatrix<f64>> {
    m.iter().map(|m| m.map(|x| x.re)).collect()
}

fn eps(m: &[DMatrix<Dual64>]) -> Vec<DMatrix<f64>> {
    m.iter().map(|m| m.map(|x| x.eps)).collect()
}

/// Every exact strategy the checks cover.
fn exact_strategies() -> Vec<Strategy> {
    vec![
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: 1 },
        Strategy::Checkpointed { slots: 2 },
        Strategy::Checkpointed { slots: 5 },
        Strategy::Checkpointed { slots: 10_000 },
    ]
}

fn random_problem(seed: u64, decay: bool, reversed: bool, all_outputs: bool, n: usize) -> Problem {
    let f = Mlp {
        time: seed.is_multiple_of(2),
        decay,
    };
    Problem::random(&mut Rng::new(seed), f, (3, 2, 5), n, reversed, all_outputs)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0C4E_C4B0),
        ..ProptestConfig::default()
    })]

    /// Random small MLPs (with and without a time input, contracting or not), increasing and
    /// decreasing grids, losses on every output or the last only, several methods: every
    /// exact strategy gives the taped gradient to 1e-12 relative on h0, θ and every t_i.
    #[test]
    fn exact_strategies_equal_taped_on_f64(
        seed in any::<u64>(),
        decay in any::<bool>(),
        reversed in any::<bool>(),
        all_outputs in any::<bool>(),
        n in 2usize..7,
        method in prop::sample::select(vec!["dopri5", "tsit5", "bosh3", "dopri8", "rk4"]),
    ) {
        let p = random_problem(seed, decay, reversed, all_outputs, n);
        let opts = if method == "rk4" {
            Options::fixed("rk4", 0.07).unwrap()
        } else {
            Options::with_method(method).unwrap().tolerances(1e-6, 1e-8)
        };
        let (taped, _, steps) = gradients(&p, &opts, &Strategy::Taped, plain);
        prop_assert!(steps >= 2);
        for s in exact_strategies() {
            let (g, stats, _) = gradients(&p, &opts, &s, plain);
            let err = worst(&g, &taped);
            prop_assert!(err <= 1e-12, "{} with {method}: rel err {err:e}", s.name());
            let stats = stats.expect("an opaque node reports");
            prop_assert_eq!(stats.accepted, steps, "one replay per step");
        }
    }

    /// The same on `Tape<Dual64>` with a random tangent on every input: real parts (the
    /// gradient) and dual parts (its directional derivative, forward-over-reverse) equal the
    /// taped ones to 1e-12 relative.
    #[test]
    fn exact_strategies_equal_taped_on_dual64(
        seed in any::<u64>(),
        reversed in any::<bool>(),
        n in 2usize..5,
    ) {
        let p = random_problem(seed, true, reversed, true, n);
        let opts = Options::default().tolerances(1e-6, 1e-8);
        let lift = |m: &DMatrix<f64>, i: usize| {
            let mut r = Rng::new(seed ^ (i as u64 + 1));
            // The grid's tangent is kept small so that it stays monotonic.
            let scale = if i == 1 { 1e-3 } else { 1.0 };
            m.map(|x| Dual64::new(x, scale * r.range(-1.0, 1.0)))
        };
        let (taped, _, _) = gradients(&p, &opts, &Strategy::Taped, lift);
        for s in exact_strategies() {
            let (g, _, _) = gradients(&p, &opts, &s, lift);
            let (err_re, err_eps) = (worst(&re(&g), &re(&taped)), worst(&eps(&g), &eps(&taped)));
            prop_assert!(err_re <= 1e-12, "{}: real parts rel err {err_re:e}", s.name());
            prop_assert!(err_eps <= 1e-12, "{}: dual parts rel err {err_eps:e}", s.name());
        }
    }
}

/// The positions the forward keeps with `slots` slots over `n` steps: multiples of a stride
/// that doubles whenever they overflow (a model of the library's thinning).
fn kept_positions(n: usize, slots: usize) -> Vec<usize> {
    let mut stride = 1;
    let mut kept = vec![0];
    for k in 1..n {
        if k % stride == 0 {
            kept.push(k);
            if kept.len() > slots {
                stride *= 2;
                kept.retain(|&p| p.is_multiple_of(stride));
            }
        }
    }
    kept
}

/// Fixed steps make N known: the recomputations counted by the backward equal the
/// schedule's cost — t(N, K) from h0 alone, or the binomial schedule between the forward's
/// kept states when that is cheaper — and never exceed t(N, K). With K = 1 it is
/// N(N − 1)/2; with K ≥ N none (the forward kept every state).
#[test]
fn recomputations_follow_the_binomial_schedule() {
    let p = random_problem(7, true, false, false, 2);
    let span = p.grid[1] - p.grid[0];
    for n in [1usize, 2, 3, 5, 8, 13, 21, 40] {
        let opts = Options::fixed("rk4", span / n as f64 * (1.0 + 1e-9)).unwrap();
        let (taped, _, steps) = gradients(&p, &opts, &Strategy::Taped, plain);
        assert!(steps == n || steps == n + 1, "{steps} steps for n = {n}");
        let n = steps;
        for k in [1usize, 2, 3, 4, 6, 10, 50] {
            let (g, stats, _) = gradients(&p, &opts, &Strategy::Checkpointed { slots: k }, plain);
            let stats = stats.unwrap();
            assert!(worst(&g, &taped) <= 1e-12, "N {n}, K {k}");
            let kept = kept_positions(n, k);
            let ends: Vec<usize> = kept.iter().skip(1).copied().chain([n]).collect();
            let segmented: usize = kept
                .iter()
                .zip(&ends)
                .enumerate()
                .map(|(j, (&a, &b))| min_recomputations(b - a, k - j))
                .sum();
            let expected = segmented.min(min_recomputations(n, k));
            assert_eq!(stats.recomputed_steps, expected, "N {n}, K {k}");
            assert!(stats.recomputed_steps <= min_recomputations(n, k));
            if k == 1 {
                assert_eq!(stats.recomputed_steps, n * (n - 1) / 2);
            }
            if k >= n {
                assert_eq!(stats.recomputed_steps, 0);
            }
        }
    }
}

/// Hessian-vector products, forward over reverse: gradients on `Tape<Dual64>` with the
/// parameters' tangent `v` give H·v. Through every strategy they match central differences
/// of that strategy's own f64 gradient to 1e-6 (fixed steps, so the discrete map is
/// smooth), the exact strategies' match the taped HVP to rounding, and at rtol 1e-10 the
/// backsolve strategies' match the taped HVP to 1e-8.
#[test]
fn hessian_vector_products_through_every_strategy() {
    let p = random_problem(11, true, false, true, 4);
    let opts = Options::fixed("rk4", 0.05).unwrap();
    let direction: Vec<DMatrix<f64>> = {
        let mut r = Rng::new(99);
        p.params
            .iter()
            .map(|m| DMatrix::from_fn(m.nrows(), m.ncols(), |_, _| r.range(-1.0, 1.0)))
            .collect()
    };
    let strategies = [
        Strategy::Taped,
        Strategy::backsolve(),
        Strategy::backsolve_checkpointed(3),
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: 2 },
        Strategy::Auto {
            budget_bytes: 1 << 30,
            strict: false,
        },
        Strategy::Auto {
            budget_bytes: 40_000,
            strict: false,
        },
    ];
    let lift = |m: &DMatrix<f64>, i: usize| -> DMatrix<Dual64> {
        match i.checked_sub(2) {
            Some(k) => m.zip_map(&direction[k], Dual64::new),
            None => m.map(Dual64::from_re),
        }
    };
    let mut taped_hvp = None;
    for s in &strategies {
        let (g, _, _) = gradients(&p, &opts, s, lift);
        let hvp = eps(&g);
        let delta = 1e-5;
        let shifted = |sign: f64| {
            let mut q = random_problem(11, true, false, true, 4);
            for (m, d) in q.params.iter_mut().zip(&direction) {
                *m += d * (sign * delta);
            }
            gradients(&q, &opts, s, plain).0
        };
        let (plus, minus) = (shifted(1.0), shifted(-1.0));
        let fd: Vec<DMatrix<f64>> = plus
            .iter()
            .zip(&minus)
            .map(|(a, b)| (a - b) / (2.0 * delta))
            .collect();
        let err = worst(&hvp, &fd);
        eprintln!("{}: HVP vs central differences {err:.1e}", s.name());
        assert!(
            err <= 1e-6,
            "{}: HVP vs finite differences {err:e}",
            s.name()
        );
        assert!(hvp.iter().any(|m| max_abs(m) > 1e-3), "a nonzero HVP");
        match (&taped_hvp, s.is_exact()) {
            (None, _) => taped_hvp = Some(hvp),
            (Some(t), true) => {
                let e = worst(&hvp, t);
                assert!(e <= 1e-12, "{}: HVP vs taped {e:e}", s.name());
            }
            (Some(_), false) => {}
        }
    }

    // The non-exact strategies at rtol 1e-10 (adaptive, so the backward solve is accurate
    // to its tolerance): their HVP is the taped one to 1e-8 relative.
    let tight = Options::default().tolerances(1e-10, 1e-12);
    let taped = eps(&gradients(&p, &tight, &Strategy::Taped, lift).0);
    for s in [Strategy::backsolve(), Strategy::backsolve_checkpointed(3)] {
        let hvp = eps(&gradients(&p, &tight, &s, lift).0);
        let e = worst(&hvp, &taped);
        eprintln!("{}: HVP vs taped at rtol 1e-10 {e:.1e}", s.name());
        assert!(e <= 1e-8, "{}: HVP vs taped {e:e}", s.name());
    }
}

/// A tangent on the grid (and on h0) goes through every strategy: the dual parts of the
/// gradient (second derivatives mixing the times with everything else) of the exact
/// strategies equal the taped ones to rounding, and the backsolve's approach them to the
/// discretisation error of its backward solve.
#[test]
fn grid_tangents_reach_every_strategy() {
    let p = random_problem(12, false, false, true, 4);
    // Dense output, not landing (landed outputs: tests/landed_hvp.rs).
    let opts = Options::default().tolerances(1e-10, 1e-10);
    let lift = |m: &DMatrix<f64>, i: usize| -> DMatrix<Dual64> {
        let mut r = Rng::new(40 + i as u64);
        let scale = if i == 1 { 0.3 } else { 1.0 };
        m.map(|x| Dual64::new(x, scale * r.range(-1.0, 1.0)))
    };
    let taped = eps(&gradients(&p, &opts, &Strategy::Taped, lift).0);
    for s in [
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: 2 },
        Strategy::backsolve(),
        Strategy::backsolve_checkpointed(4),
    ] {
        let g = eps(&gradients(&p, &opts, &s, lift).0);
        let err = worst(&g, &taped);
        eprintln!("{}: dual parts vs taped {err:.1e}", s.name());
        let bound = if s.is_exact() { 1e-12 } else { 1e-4 };
        assert!(err <= bound, "{}: {err:e}", s.name());
    }
}

/// Contracting dynamics (f = mlp(h) − h) at T = 20 with only the final output in the loss:
/// backsolve reconstructs h backwards, and the reconstruction drifts. Its drift report says
/// so where it steps through outputs, and says it is small where it resets often; K
/// checkpoints bound the drift and give a gradient at least as good as plain backsolve.
#[test]
fn backsolve_drift_is_reported_and_bounded_by_checkpoints() {
    let mut p = random_problem(5, true, false, false, 2);
    p.grid = (0..21).map(|i| i as f64).collect();
    p.cots = (0..21)
        .map(|i| (i == 20).then(|| DMatrix::from_element(3, 2, 1.0)))
        .collect();
    let opts = Options::default().tolerances(1e-6, 1e-8);
    let reference = gradients(
        &p,
        &Options::with_method("dopri8")
            .unwrap()
            .tolerances(1e-12, 1e-12),
        &Strategy::Taped,
        plain,
    )
    .0;
    let through = Backsolve {
        stop_at_all_outputs: false,
        ..Backsolve::default()
    };
    let run = |s: Strategy| {
        let (g, stats, _) = gradients(&p, &opts, &s, plain);
        (worst(&g[..1], &reference[..1]), stats.unwrap())
    };
    let (err_through, through_stats) = run(Strategy::Backsolve(through.clone()));
    let (err_stop, stop_stats) = run(Strategy::backsolve());
    let (err_ckpt, ckpt_stats) = run(Strategy::BacksolveCheckpointed {
        checkpoints: 20,
        backsolve: through,
    });
    let drift = |s: &BackwardStats| s.max_drift().unwrap();
    eprintln!(
        "dL/dh0 error: stepping through {err_through:.1e} (drift {:.1e}), stopping at outputs \
         {err_stop:.1e} (drift {:.1e}), 20 checkpoints {err_ckpt:.1e} (drift {:.1e}, {} resets)",
        drift(&through_stats),
        drift(&stop_stats),
        drift(&ckpt_stats),
        ckpt_stats.drift.len()
    );
    // Stepping through 20 time units, the reconstruction of h0 is far off ...
    assert_eq!(through_stats.drift.len(), 1, "one reset, at t_0");
    assert!(drift(&through_stats) > 1e-2, "{:?}", through_stats.drift);
    // ... resetting every time unit keeps it near the tolerance ...
    assert_eq!(stop_stats.drift.len(), 20);
    assert!(drift(&stop_stats) < 1e-3);
    assert!(drift(&stop_stats) < 1e-2 * drift(&through_stats));
    // ... and so do checkpoints at evenly spread steps, with a gradient no worse.
    assert!(ckpt_stats.drift.len() >= 10, "{:?}", ckpt_stats.drift);
    assert!(drift(&ckpt_stats) < 1e-2 * drift(&through_stats));
    assert!(err_ckpt <= err_through, "{err_ckpt:e} > {err_through:e}");
    assert!(err_stop < err_through);
    // Drift is a relative measure: every entry is finite and ≥ 0, latest time first.
    for s in [&through_stats, &stop_stats, &ckpt_stats] {
        assert!(s
            .drift
            .iter()
            .all(|d| d.relative.is_finite() && d.relative >= 0.0));
        assert!(s.drift.windows(2).all(|w| w[0].t > w[1].t));
    }
}

/// Auto picks taped when the budget is generous, a replay strategy in between, backsolve
/// when not even two states fit, and always says why.
#[test]
fn auto_reports_its_choice() {
    let p = random_problem(3, true, false, true, 5);
    let opts = Options::default().tolerances(1e-7, 1e-9);
    let (taped, _, _) = gradients(&p, &opts, &Strategy::Taped, plain);
    let mut names = Vec::new();
    for budget in [usize::MAX, 40_000, 0] {
        let tape = Tape::<f64>::new();
        let h0 = tape.var(p.h0.clone());
        let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
        let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
        let s = Strategy::Auto {
            budget_bytes: budget,
            strict: false,
        };
        let sol = odeint_with(&tape, &p.f, h0, t, &params, &opts, &s).unwrap();
        assert!(
            sol.strategy.reason.starts_with("auto"),
            "{:?}",
            sol.strategy
        );
        let (g, _, _) = gradients(&p, &opts, &s, plain);
        let err = worst(&g, &taped);
        eprintln!(
            "budget {budget}: {} ({})",
            sol.strategy.name, sol.strategy.reason
        );
        if sol.strategy.name != "backsolve" {
            assert!(err <= 1e-12, "{}: {err:e}", sol.strategy.name);
        }
        names.push(sol.strategy.name.clone());
    }
    assert_eq!(names[0], "taped");
    assert!(
        names[1] == "aca" || names[1].starts_with("checkpointed"),
        "{names:?}"
    );
    assert_eq!(names[2], "backsolve");
}

/// Every strategy's report is named as `Strategy::name` spells it (backsolve with one
/// checkpoint was reported as plain `backsolve`).
#[test]
fn strategy_reports_carry_the_strategy_name() {
    let tape = ad_core::Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_element(1, 1, 1.0));
    let k = tape.var(DMatrix::from_element(1, 1, 0.5));
    let t = tape.constant(DMatrix::from_row_slice(1, 3, &[0.0, 0.5, 1.0]));
    for name in [
        "backsolve",
        "backsolve-checkpointed:1",
        "backsolve-checkpointed:3",
        "aca",
        "gauss",
    ] {
        let strategy: Strategy = name.parse().unwrap();
        let sol = ode::odeint_with(
            &tape,
            &common::Decay,
            h0,
            t,
            &[k],
            &ode::Options::default(),
            &strategy,
        )
        .unwrap();
        assert_eq!(sol.strategy.name, strategy.name(), "{name}");
    }
}

/// `auto-strict:BYTES` parses, names itself, refuses a budget nothing fits with a typed
/// error, and leaves the tape usable: the same solve then runs under a roomy budget.
#[test]
fn strict_auto_refuses_and_leaves_the_tape_usable() {
    let strict: Strategy = "auto-strict:10".parse().unwrap();
    assert_eq!(strict.name(), "auto-strict:10");
    assert!(matches!(
        strict,
        Strategy::Auto {
            budget_bytes: 10,
            strict: true
        }
    ));
    assert!("auto-strict".parse::<Strategy>().is_err());
    let p = random_problem(3, true, false, true, 5);
    let opts = Options::default().tolerances(1e-7, 1e-9);
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let nodes = tape.len();
    let err = odeint_with(&tape, &p.f, h0, t, &params, &opts, &strict).err();
    match &err {
        Some(ode::Error::OverBudget { budget: 10, .. }) => {}
        other => panic!("{other:?}"),
    }
    let message = err.unwrap().to_string();
    assert!(message.contains("raise the budget"), "{message}");
    assert_eq!(tape.len(), nodes);
    let roomy: Strategy = "auto-strict:1000000000".parse().unwrap();
    let sol = odeint_with(&tape, &p.f, h0, t, &params, &opts, &roomy).unwrap();
    assert_eq!(sol.strategy.name, "taped");
    let g = tape.backward(sol.last().sum()).unwrap();
    assert!(g.get(h0).is_some());
}

/// A taped solve reports its backward too: the VJPs through its recorded evaluations and
/// steps (it read `None`, and the pipeline counted 0 backward evaluations).
#[test]
fn taped_backward_reports_its_vjps() {
    let p = random_problem(3, true, false, true, 5);
    for (method, per_step) in [("dopri5", 6), ("rk4", 4)] {
        let opts = if method == "rk4" {
            Options::fixed(method, 0.1).unwrap()
        } else {
            Options::default().tolerances(1e-7, 1e-9)
        };
        let tape = Tape::<f64>::new();
        let h0 = tape.var(p.h0.clone());
        let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
        let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
        let sol = odeint_with(&tape, &p.f, h0, t, &params, &opts, &Strategy::Taped).unwrap();
        let g = tape.backward(sol.last().sum()).unwrap();
        let b = sol.backward_stats(&g).expect("taped reports its backward");
        let n = sol.steps.len();
        assert_eq!(b.accepted, n, "{method}");
        // dopri5: six new stages per step and the shared one once; rk4: four per step.
        let fsal = usize::from(method == "dopri5");
        assert_eq!(b.nfe, n * per_step + fsal, "{method}");
        assert!(b.nfe <= sol.stats.nfe, "{method}");
        assert!(b.peak_bytes > 0);
    }
}
