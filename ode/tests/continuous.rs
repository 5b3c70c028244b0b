//! The continuous adjoints that read h from the forward's interpolant (gauss,
//! interpolating, with and without checkpoints): accurate to their tolerances on h0, θ and
//! every t_i, on increasing and decreasing grids; no drift where backsolve drifts; fewer
//! backward evaluations than backsolve there; bad settings refused by name.

mod common;

use ad_core::nalgebra::DMatrix;
use common::Rng;
use common::*;
use ode::{Options, Strategy};

fn plain(m: &DMatrix<f64>, _: usize) -> DMatrix<f64> {
    m.clone()
}

fn random_problem(seed: u64, decay: bool, reversed: bool, all_outputs: bool, n: usize) -> Problem {
    let f = Mlp {
        time: seed.is_multiple_of(2),
        decay,
    };
    Problem::random(&mut Rng::new(seed), f, (3, 2, 5), n, reversed, all_outputs)
}

/// The continuous adjoints (and their checkpointed forms) against a tight taped reference,
/// on increasing and decreasing grids, losses on every output or the last, with and without
/// a time input, methods with their own interpolant and a Hermite one: within 100 × rtol of
/// the largest gradient entry at rtol 1e-8, and ten times closer at rtol 1e-10.
#[test]
fn continuous_adjoints_reach_the_tight_gradient() {
    let names = ["gauss", "interpolating", "gauss:2", "interpolating:3"];
    for (seed, reversed, all) in [
        (1u64, false, true),
        (2, true, true),
        (3, false, false),
        (4, true, false),
    ] {
        let p = random_problem(seed, seed % 3 == 0, reversed, all, 5);
        let tight = Options::default().tolerances(1e-12, 1e-14);
        let (reference, _, _) = gradients(&p, &tight, &Strategy::Taped, plain);
        for method in ["dopri5", "tsit5", "bosh3", "rk4"] {
            for (rtol, bound) in [(1e-8, 1e-6), (1e-10, 1e-8)] {
                let opts = if method == "rk4" {
                    // Constant steps: the error is the discretisation's, far below rtol.
                    Options::fixed("rk4", 0.01).unwrap()
                } else {
                    Options::with_method(method)
                        .unwrap()
                        .tolerances(rtol, rtol * 1e-2)
                };
                for name in names {
                    let s: Strategy = name.parse().unwrap();
                    let (g, stats, _) = gradients(&p, &opts, &s, plain);
                    let err = worst(&g, &reference);
                    assert!(
                        err <= bound,
                        "seed {seed} {method} {name} at rtol {rtol}: {err:e}"
                    );
                    let stats = stats.unwrap();
                    assert!(stats.drift.is_empty() && stats.nfe > 0);
                    if name.contains(':') {
                        assert!(stats.recomputed_steps > 0, "{name} re-solves its stretches");
                    }
                }
            }
        }
    }
}

/// Contracting dynamics (f = mlp(h) − h) over the horizon T = 100 with only the final
/// output in the loss: backsolve's backward reconstruction of h drifts (to ~1e37) and its
/// gradient is useless; the adjoints that read h from the forward's interpolant do not
/// drift, reach the tight gradient to 1e-6 of its scale (closer than the taped gradient of
/// the same solve, whose steps do not resolve the sensitivities), and the Gauss adjoint needs
/// fewer backward evaluations than backsolve.
#[test]
fn no_drift_on_a_long_contracting_horizon() {
    let mut p = random_problem(21, true, false, false, 2);
    p.grid = vec![0.0, 100.0];
    p.h0 *= 2.0;
    let opts = Options::default().tolerances(1e-7, 1e-9);
    let tight = Options::default().tolerances(1e-12, 1e-14);
    let (reference, _, _) = gradients(&p, &tight, &Strategy::Taped, plain);
    let scale = reference.iter().map(max_abs).fold(0.0, f64::max);
    // Every gradient's error against the scale of the whole gradient (dL/dh0 and dL/dt are
    // tiny after T = 100 of contraction).
    let error = |g: &[DMatrix<f64>]| {
        g.iter()
            .zip(&reference)
            .map(|(a, b)| max_diff(a, b))
            .fold(0.0, f64::max)
            / scale
    };
    let (g, back, _) = gradients(&p, &opts, &Strategy::backsolve(), plain);
    let back = back.unwrap();
    assert!(back.max_drift().unwrap() > 1.0 && error(&g) > 1e-2);
    let (taped, _, _) = gradients(&p, &opts, &Strategy::Taped, plain);
    let taped_err = error(&taped);
    for name in ["gauss", "interpolating", "gauss:3", "interpolating:3"] {
        let s: Strategy = name.parse().unwrap();
        let (g, stats, _) = gradients(&p, &opts, &s, plain);
        let err = error(&g);
        let stats = stats.unwrap();
        eprintln!(
            "{name}: err {err:.1e} (taped {taped_err:.1e}), backward NFE {} (backsolve {}, drift {:.1e})",
            stats.nfe,
            back.nfe,
            back.max_drift().unwrap_or(0.0)
        );
        assert!(err <= 1e-6 && err < taped_err, "{name}: {err:e}");
        if name == "gauss" {
            assert!(stats.nfe <= back.nfe, "{} > {}", stats.nfe, back.nfe);
        }
    }
}

/// On `Tape<Dual64>` the continuous adjoints give the f64 gradient in their real parts and a
/// Hessian-vector product in their dual parts that agrees with the taped one to the
/// tolerance.
#[test]
fn continuous_adjoints_run_forward_over_reverse() {
    use ad_core::num_dual::Dual64;
    let p = random_problem(8, true, false, true, 4);
    let opts = Options::default().tolerances(1e-10, 1e-12);
    let mut r = Rng::new(5);
    let tangents: Vec<DMatrix<f64>> = p
        .params
        .iter()
        .map(|m| r.matrix(m.nrows(), m.ncols(), 1.0))
        .collect();
    let lift = |m: &DMatrix<f64>, i: usize| -> DMatrix<Dual64> {
        match i.checked_sub(2) {
            Some(k) => m.zip_map(&tangents[k], Dual64::new),
            None => m.map(Dual64::from_re),
        }
    };
    let eps = |g: &[DMatrix<Dual64>]| -> Vec<DMatrix<f64>> {
        g.iter().map(|m| m.map(|x| x.eps)).collect()
    };
    let re = |g: &[DMatrix<Dual64>]| -> Vec<DMatrix<f64>> {
        g.iter().map(|m| m.map(|x| x.re)).collect()
    };
    let (taped, _, _) = gradients(&p, &opts, &Strategy::Taped, lift);
    for name in ["gauss", "interpolating:2"] {
        let s: Strategy = name.parse().unwrap();
        let (g, _, _) = gradients(&p, &opts, &s, lift);
        let (plain_g, _, _) = gradients(&p, &opts, &s, plain);
        assert!(worst(&re(&g), &plain_g) <= 1e-12, "{name}: real parts");
        let e = worst(&eps(&g), &eps(&taped));
        assert!(e <= 1e-6, "{name}: HVP vs taped {e:e}");
    }
}

/// Bad settings are refused by name before anything is recorded: zero checkpoints (as a
/// name or a setting), non-finite backward tolerances, a forward method without dense
/// output of its own, a reversible solve. The tape stays usable.
#[test]
fn bad_continuous_settings_are_refused() {
    use ad_core::Tape;
    use ode::{odeint_with, ContinuousAdjoint, Error};
    for name in ["gauss:0", "interpolating:0", "gauss:x", "interpolating:-1"] {
        assert!(name.parse::<Strategy>().is_err(), "{name}");
    }
    let p = random_problem(2, true, false, true, 3);
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let nodes = tape.stats().nodes;
    let refused = |opts: &Options, s: Strategy| {
        let Err(e) = odeint_with(&tape, &p.f, h0, t, &params, opts, &s) else {
            panic!("{} was not refused", s.name())
        };
        e
    };
    let e = refused(
        &Options::default(),
        Strategy::Gauss(ContinuousAdjoint::checkpointed(0)),
    );
    assert!(
        matches!(
            e,
            Error::BadOption {
                name: "checkpoints",
                ..
            }
        ),
        "{e}"
    );
    for v in [f64::NAN, -1.0, 0.0, f64::INFINITY] {
        let s = Strategy::Interpolating(ContinuousAdjoint::default().tolerances(v, 1e-9));
        let e = refused(&Options::default(), s);
        assert!(
            matches!(
                e,
                Error::BadOption {
                    name: "ContinuousAdjoint::rtol",
                    ..
                }
            ),
            "{e}"
        );
    }
    let e = refused(
        &Options::with_method("dopri8").unwrap(),
        "gauss".parse().unwrap(),
    );
    assert!(
        matches!(e, Error::SchemeNotSupported { .. }) && e.to_string().contains("dopri5"),
        "{e}"
    );
    let e = refused(
        &Options::default().reversible(0.999),
        "interpolating".parse().unwrap(),
    );
    assert!(matches!(e, Error::SchemeNotSupported { .. }), "{e}");
    assert_eq!(tape.stats().nodes, nodes);
    let sol = odeint_with(
        &tape,
        &p.f,
        h0,
        t,
        &params,
        &Options::default(),
        &"gauss:2".parse().unwrap(),
    )
    .unwrap();
    assert!(tape.backward(sol.last().sum()).is_ok());
}
