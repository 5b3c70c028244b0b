//! Solves on `f32`: every method and gradient strategy against the same solve on `f64` (to
//! what `f32` can hold), `Dual32` forward mode against `f32` reverse mode, and tolerances
//! finer than a precision can resolve refused with a typed error.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual32;
use ad_core::Tape;
use common::*;
use ode::{odeint_with, Backsolve, Error, Options, Strategy};

fn strategies() -> Vec<Strategy> {
    vec![
        Strategy::Taped,
        Strategy::backsolve(),
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: 2 },
        Strategy::backsolve_checkpointed(2),
        "gauss".parse().unwrap(),
        "interpolating:2".parse().unwrap(),
        Strategy::Reversible { coupling: None },
    ]
}

fn problem(seed: u64) -> Problem {
    Problem::random(&mut Rng::new(seed), Mlp::TIMED, (3, 2, 5), 4, false, true)
}

fn options(method: &str, fixed: bool) -> Options {
    if fixed {
        Options::fixed(method, 0.05).unwrap()
    } else {
        Options::with_method(method).unwrap().tolerances(1e-5, 1e-7)
    }
}

/// `max |a − b| / max(max |b|, 1e-3)` over all tensors of a gradient list.
fn worst_relative(a: &[DMatrix<f64>], b: &[DMatrix<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| max_diff(a, b) / max_abs(b).max(1e-3))
        .fold(0.0, f64::max)
}

#[test]
fn every_method_and_strategy_on_f32_matches_f64_to_f32_accuracy() {
    let p = problem(7);
    let mut worst = (0.0, String::new());
    for (names, fixed) in [(&FIXED[..], true), (&ADAPTIVE[..], false)] {
        for &method in names {
            let opts = options(method, fixed);
            for strategy in strategies() {
                let continuous =
                    matches!(strategy, Strategy::Gauss(_) | Strategy::Interpolating(_));
                if continuous && method == "dopri8" {
                    // Refused: no dense output of its own (ode/tests/continuous.rs).
                    continue;
                }
                let (g64, _, _) = gradients(&p, &opts, &strategy, |m, _| m.clone());
                let (g32, _, _) = gradients(&p, &opts, &strategy, |m, _| m.map(|v| v as f32));
                let g32: Vec<DMatrix<f64>> = g32.iter().map(|m| m.map(f64::from)).collect();
                let gap = worst_relative(&g32, &g64);
                let label = format!("{method} / {}", strategy.name());
                // f32 rounding (2⁻²⁴ per operation over tens of steps) and, for adaptive
                // methods, a step sequence chosen from f32 error estimates at rtol 1e-5.
                assert!(gap < 2e-3, "{label}: f32 gradients are {gap:.1e} off f64");
                if gap > worst.0 {
                    worst = (gap, label);
                }
            }
        }
    }
    eprintln!(
        "worst f32 vs f64 gradient gap: {:.2e} ({})",
        worst.0, worst.1
    );
    // The comparison sees f32's rounding: the two precisions do not agree to f64 accuracy.
    assert!(
        worst.0 > 1e-9,
        "f32 and f64 agree too closely: {:.1e}",
        worst.0
    );
}

#[test]
fn dual32_forward_mode_matches_f32_reverse_mode_through_every_strategy() {
    let p = problem(11);
    let opts = options("dopri5", false);
    let mut rng = Rng::new(5);
    let inputs = 2 + p.params.len();
    let shapes: Vec<(usize, usize)> = (0..inputs)
        .map(|i| match i {
            0 => p.h0.shape(),
            1 => (1, p.grid.len()),
            k => p.params[k - 2].shape(),
        })
        .collect();
    let direction: Vec<DMatrix<f64>> = shapes
        .iter()
        .map(|&(r, c)| rng.matrix(r, c, 1.0).map(|v| f64::from(v as f32)))
        .collect();
    for strategy in strategies() {
        let (reverse, _, _) = gradients(&p, &opts, &strategy, |m, _| m.map(|v| v as f32));
        // The same loss on Dual32: its ε part is dL(v).
        let tape = Tape::<Dual32>::new();
        let lift = |m: &DMatrix<f64>, i: usize| {
            tape.var(m.zip_map(&direction[i], |v, d| Dual32::new(v as f32, d as f32)))
        };
        let h0 = lift(&p.h0, 0);
        let t = lift(&DMatrix::from_row_slice(1, p.grid.len(), &p.grid), 1);
        let params: Vec<_> = p
            .params
            .iter()
            .enumerate()
            .map(|(i, m)| lift(m, i + 2))
            .collect();
        let sol = odeint_with(&tape, &p.f, h0, t, &params, &opts, &strategy).unwrap();
        let forward = f64::from(
            dot_loss(&tape, &sol.outputs, &p.cots)
                .unwrap()
                .scalar_value()
                .unwrap()
                .eps,
        );
        let along: f64 = reverse
            .iter()
            .zip(&direction)
            .map(|(g, d)| g.map(f64::from).dot(d))
            .sum();
        let scale: f64 = reverse
            .iter()
            .zip(&direction)
            .map(|(g, d)| g.map(f64::from).abs().dot(&d.abs()))
            .sum();
        let label = strategy.name();
        // Taped and the exact strategies differentiate the f32 solve itself (reversible: the
        // reversible solve, forward and reverse alike): agreement to f32 rounding. The
        // adjoints' gradient is that of the ODE, within their tolerance.
        let bound = if !strategy.is_exact() { 1e-3 } else { 1e-5 };
        assert!(
            (along - forward).abs() <= bound * scale,
            "{label}: reverse {along} vs forward {forward} (scale {scale})"
        );
        eprintln!(
            "{label}: |reverse − forward| / scale = {:.1e}",
            (along - forward).abs() / scale
        );
    }
}

#[test]
fn tolerances_finer_than_the_precision_are_refused_with_the_fix() {
    let p = problem(3);
    let run32 = |opts: &Options, strategy: &Strategy| {
        let tape = Tape::<f32>::new();
        let h0 = tape.var(p.h0.map(|v| v as f32));
        let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid).map(|v| v as f32));
        let params: Vec<_> = p
            .params
            .iter()
            .map(|m| tape.var(m.map(|v| v as f32)))
            .collect();
        odeint_with(&tape, &p.f, h0, t, &params, opts, strategy).map(|s| s.outputs.len())
    };
    let fine = Options::with_method("dopri5")
        .unwrap()
        .tolerances(1e-9, 1e-12);
    let err = run32(&fine, &Strategy::Taped).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ToleranceBelowPrecision {
                name: "rtol",
                precision: "f32",
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("f32") && message.contains("f64"),
        "{message}"
    );
    // The unit roundoff of f32 (6e-8) itself is resolvable; 1e-7 (torchdiffeq's default) runs.
    let default = Options::with_method("dopri5")
        .unwrap()
        .tolerances(1e-7, 1e-9);
    assert_eq!(run32(&default, &Strategy::Taped).unwrap(), p.grid.len());
    // The backward tolerance is checked too.
    let backward = Strategy::Backsolve(Backsolve {
        rtol: Some(1e-10),
        ..Backsolve::default()
    });
    let err = run32(&default, &backward).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ToleranceBelowPrecision {
                name: "Backsolve::rtol",
                ..
            }
        ),
        "{err}"
    );
    // f64 has its own floor.
    let below = Options::with_method("dopri5")
        .unwrap()
        .tolerances(1e-17, 1e-20);
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let err = odeint_with(&tape, &p.f, h0, t, &params, &below, &Strategy::Taped)
        .map(|s| s.outputs.len())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ToleranceBelowPrecision {
                precision: "f64",
                ..
            }
        ),
        "{err}"
    );
    // The tape stays usable after the refusal.
    assert!(tape.backward(h0.sum()).is_ok());
}

#[test]
fn an_f32_solve_that_overflows_stops_with_a_typed_error_and_leaves_the_tape_usable() {
    // h' = −k h with k = −1e6: h grows like e^(1e6 t) and leaves f32's range (3.4e38) at
    // t ≈ 9e-5, long before t = 1, where f64 (1.8e308) would still hold it up to 7e-4.
    for strategy in strategies() {
        let tape = Tape::<f32>::new();
        let h0 = tape.var(DMatrix::from_element(2, 2, 1.0f32));
        let k = tape.var(DMatrix::from_element(1, 1, -1e6f32));
        let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0f32, 1.0]));
        let opts = Options::with_method("dopri5")
            .unwrap()
            .tolerances(1e-5, 1e-7);
        let result =
            odeint_with(&tape, &Decay, h0, t, &[k], &opts, &strategy).map(|s| s.outputs.len());
        let err = result.expect_err(strategy.name().as_str());
        eprintln!("{}: {err}", strategy.name());
        assert!(
            matches!(err, Error::NonFinite { .. }),
            "{}: {err}",
            strategy.name()
        );
        let g = tape.backward(h0.sum()).unwrap();
        assert_eq!(g.get(h0).unwrap()[(0, 0)], 1.0);
    }
}
