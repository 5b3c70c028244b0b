//! Hessian-vector products along grid-time directions when outputs are landed on a step's
//! end (issue 20, section 3): forward over reverse (gradients on `Tape<Dual64>` with the
//! direction in the inputs' dual parts) against central differences of the same strategy's
//! f64 gradient, whose convergence is checked by comparing two difference steps.
//!
//! A landed step's size is `t_i − t_k`: it moves with the grid time it lands on, and so
//! does everything after it. Fixed-step rk4 and dopri5 land the last output; dopri8 (no
//! interpolant of its own) lands every output, the middle ones included.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use common::Rng;
use common::*;
use ode::{Options, Strategy};

/// A time-dependent tanh MLP on a 1×3 state (hidden 4), outputs at t₀ = 0.1, 0.37, 0.83,
/// 1.29 with a cotangent on every one: with steps of 0.1 none of them is a multiple of the
/// step from t₀, so the last step is shortened to land on 1.29 (to 0.09, far from the
/// landing threshold, so a difference step of 1e-5 takes the same steps).
fn problem() -> Problem {
    let mut p = Problem::random(&mut Rng::new(20), Mlp::TIMED, (1, 3, 4), 4, false, true);
    p.grid = vec![0.1, 0.37, 0.83, 1.29];
    p
}

/// The input tangents, by input index (0: h0, 1: the grid, 2…: parameters): on the grid
/// only, or on the grid, h0 and θ together.
fn direction(p: &Problem, mixed: bool) -> Vec<DMatrix<f64>> {
    let mut r = Rng::new(7);
    let mut v = vec![
        DMatrix::zeros(p.h0.nrows(), p.h0.ncols()),
        DMatrix::from_fn(1, p.grid.len(), |_, _| r.range(-1.0, 1.0)),
    ];
    v.extend(
        p.params
            .iter()
            .map(|m| DMatrix::zeros(m.nrows(), m.ncols())),
    );
    if mixed {
        v[0] = r.matrix(p.h0.nrows(), p.h0.ncols(), 1.0);
        for m in &mut v[2..] {
            *m = r.matrix(m.nrows(), m.ncols(), 1.0);
        }
    }
    v
}

/// `p` moved by `s·v`.
fn shifted(p: &Problem, v: &[DMatrix<f64>], s: f64) -> Problem {
    let mut q = Problem {
        f: p.f,
        h0: &p.h0 + &v[0] * s,
        params: p.params.clone(),
        grid: p.grid.clone(),
        cots: p.cots.clone(),
    };
    for (t, dv) in q.grid.iter_mut().zip(v[1].iter()) {
        *t += dv * s;
    }
    for (m, dv) in q.params.iter_mut().zip(&v[2..]) {
        *m += dv * s;
    }
    q
}

/// Central differences of the f64 gradient along `v` with step `delta`.
fn central(
    p: &Problem,
    v: &[DMatrix<f64>],
    opts: &Options,
    s: &Strategy,
    delta: f64,
) -> Vec<DMatrix<f64>> {
    let plus = gradients(&shifted(p, v, delta), opts, s, plain).0;
    let minus = gradients(&shifted(p, v, -delta), opts, s, plain).0;
    plus.iter()
        .zip(&minus)
        .map(|(a, b)| (a - b) / (2.0 * delta))
        .collect()
}

/// `(HVP vs central differences, central differences at 1e-5 vs at 2e-5)`, relative to
/// each gradient tensor's largest entry, worst over the tensors; the real parts of the
/// dual solve are checked to be the f64 gradient.
fn hvp_error(p: &Problem, v: &[DMatrix<f64>], opts: &Options, s: &Strategy) -> (f64, f64) {
    let lift = |m: &DMatrix<f64>, i: usize| m.zip_map(&v[i], Dual64::new);
    let (g, _, _) = gradients(p, opts, s, lift);
    let (f64_grad, _, _) = gradients(p, opts, s, plain);
    assert!(
        worst(&real_parts(&g), &f64_grad) <= 1e-13,
        "{}: real parts",
        s.name()
    );
    let hvp = dual_parts(&g);
    let fd = central(p, v, opts, s, 1e-5);
    let fd2 = central(p, v, opts, s, 2e-5);
    assert!(hvp.iter().any(|m| max_abs(m) > 1e-3), "a nonzero HVP");
    (worst(&hvp, &fd), worst(&fd2, &fd))
}

fn exact_strategies() -> [Strategy; 4] {
    [
        Strategy::Taped,
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: 2 },
        Strategy::Auto {
            budget_bytes: 1 << 30,
            strict: false,
        },
    ]
}

/// Fixed steps landing the last output (rk4, dopri5 at constant steps) and every output
/// (dopri8 at constant steps): the HVP along grid times, and along grid times mixed with
/// h0 and θ, matches central differences of the f64 gradient under every exact strategy.
#[test]
fn landed_outputs_give_exact_grid_time_hvps() {
    let p = problem();
    let mut failures = Vec::new();
    // 12 steps, the last landed on 1.29; dopri8 lands on 0.37 and 0.83 too: 3 + 5 + 5.
    for (method, steps) in [("rk4", 12), ("dopri5", 12), ("dopri8", 13)] {
        let opts = Options::fixed(method, 0.1).unwrap();
        let (_, _, taken) = gradients(&p, &opts, &Strategy::Taped, plain);
        assert_eq!(taken, steps, "{method}");
        for mixed in [false, true] {
            let v = direction(&p, mixed);
            for s in exact_strategies() {
                let (err, fd_err) = hvp_error(&p, &v, &opts, &s);
                let along = if mixed { "grid+h0+θ" } else { "grid" };
                eprintln!(
                    "{method} {} along {along}: HVP vs central differences {err:.1e} \
                     (differences at two steps agree to {fd_err:.1e})",
                    s.name()
                );
                assert!(fd_err <= 1e-7, "central differences converge: {fd_err:e}");
                if err > 1e-7 {
                    failures.push(format!("{method} {} along {along}: {err:.1e}", s.name()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "HVPs off: {failures:#?}");
}

/// Controls: backsolve (its backward is a continuous adjoint, whose landed time enters as
/// f(t_i, h_i)) on fixed rk4 steps, against central differences of its own gradient; and
/// adaptive dopri5, which steps past the last output and interpolates back (nothing landed),
/// against the taped HVP at a tolerance where the step-size control's own dependence on the
/// inputs is small.
#[test]
fn backsolve_and_interpolated_outputs_stay_right() {
    let p = problem();
    let opts = Options::fixed("rk4", 0.1).unwrap();
    for mixed in [false, true] {
        let v = direction(&p, mixed);
        let (err, fd_err) = hvp_error(&p, &v, &opts, &Strategy::backsolve());
        eprintln!(
            "rk4 backsolve (mixed {mixed}): HVP vs central differences {err:.1e} ({fd_err:.1e})"
        );
        assert!(fd_err <= 1e-7);
        assert!(err <= 1e-6, "backsolve: {err:e}");
    }
    let adaptive = Options::with_method("dopri5")
        .unwrap()
        .tolerances(1e-10, 1e-12);
    for mixed in [false, true] {
        let v = direction(&p, mixed);
        let lift = |m: &DMatrix<f64>, i: usize| m.zip_map(&v[i], Dual64::new);
        let taped = dual_parts(&gradients(&p, &adaptive, &Strategy::Taped, lift).0);
        let fd = central(&p, &v, &adaptive, &Strategy::Taped, 1e-5);
        let err_fd = worst(&taped, &fd);
        eprintln!("adaptive dopri5 taped (mixed {mixed}): HVP vs central differences {err_fd:.1e}");
        assert!(err_fd <= 1e-5, "adaptive dopri5: {err_fd:e}");
        for s in exact_strategies().into_iter().skip(1) {
            let g = dual_parts(&gradients(&p, &adaptive, &s, lift).0);
            let e = worst(&g, &taped);
            assert!(e <= 1e-12, "adaptive dopri5 {}: {e:e}", s.name());
        }
    }
}
