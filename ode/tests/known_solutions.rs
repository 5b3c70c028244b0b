//! Closed-form solutions through the whole engine (`ode::solve` and the taped `ode::odeint`):
//! every adaptive method within a small multiple of its tolerance, every fixed-step method
//! converging at its order, decreasing time grids, and a norm-conserving rotation.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::Tape;
use common::*;
use ode::{odeint, solve, tableau, Dynamics, Options};

/// The outputs of `solve` and of the taped `odeint` (which must agree to rounding: the same
/// engine takes the same steps on both).
fn both_modes<F: Dynamics<f64> + Dynamics<ad_core::num_dual::Dual64>>(
    f: &F,
    h0: &DMatrix<f64>,
    grid: &[f64],
    params: &[DMatrix<f64>],
    opts: &Options,
) -> Vec<DMatrix<f64>> {
    let (values, stats) = solve(f, h0, grid, params, opts).unwrap();
    assert_eq!(values.len(), grid.len());
    assert_eq!(values[0], *h0, "outputs[0] is h0 itself");
    let tape = Tape::<f64>::new();
    let h0v = tape.var(h0.clone());
    let t = tape.var(DMatrix::from_row_slice(1, grid.len(), grid));
    let pv: Vec<_> = params.iter().map(|p| tape.var(p.clone())).collect();
    let sol = odeint(&tape, f, h0v, t, &pv, opts).unwrap();
    assert_eq!(
        sol.stats, stats,
        "taped and untaped solves take the same steps"
    );
    for (v, o) in values.iter().zip(&sol.outputs) {
        let taped = o.value().unwrap();
        assert!(
            max_diff(v, &taped) <= 1e-13 * (1.0 + max_abs(v)),
            "solve and odeint disagree"
        );
    }
    values
}

/// Each adaptive method's rtol (atol = rtol/100): the second-order pairs would need ~10⁵
/// steps at 1e-8.
fn rtol(method: &str) -> f64 {
    match method {
        "fehlberg2" | "adaptive_heun" => 1e-6,
        "bosh3" => 1e-7,
        _ => 1e-8,
    }
}

/// Bound on the global error relative to the solution's scale, as a multiple of rtol.
/// Measured: tsit5 and dopri8 stay below 3·rtol, dopri5 below 10·rtol, bosh3 and
/// adaptive_heun below 6·rtol. fehlberg2 propagates its order-2 solution but controls the
/// step with an order-1 estimate whose error constant is 1/512 of Euler's, so its global
/// error runs to ~450·rtol (as in torchdiffeq). A wrong coefficient, a wrong stage time or
/// a wrong dense output is off by orders of magnitude more.
fn bound(method: &str) -> f64 {
    let multiple = match method {
        "fehlberg2" => 1500.0,
        _ => 25.0,
    };
    multiple * rtol(method)
}

fn tight(method: &str) -> Options {
    let rtol = rtol(method);
    Options::with_method(method)
        .unwrap()
        .tolerances(rtol, rtol * 1e-2)
}

#[test]
fn exponential_decay_matrix_state() {
    let mut rng = Rng::new(1);
    let h0 = rng.matrix(3, 4, 2.0);
    let k = 0.7;
    let grid = [0.0, 0.3, 1.0, 2.5];
    let params = [DMatrix::from_element(1, 1, k)];
    for method in ADAPTIVE {
        let out = both_modes(&Decay, &h0, &grid, &params, &tight(method));
        let err = grid
            .iter()
            .zip(&out)
            .map(|(&t, h)| max_diff(h, &(&h0 * (-k * t).exp())))
            .fold(0.0, f64::max);
        eprintln!("decay {method}: max error {err:.3e}");
        assert!(err < bound(method) * max_abs(&h0), "{method}: {err:e}");
    }
}

/// A random skew-symmetric `n×n` matrix.
fn skew(rng: &mut Rng, n: usize) -> DMatrix<f64> {
    let m = rng.matrix(n, n, 1.0);
    &m - m.transpose()
}

#[test]
fn skew_symmetric_rotation_matches_matrix_exponential() {
    let mut rng = Rng::new(2);
    for n in [3, 4] {
        let a = skew(&mut rng, n);
        let h0 = rng.matrix(3, n, 1.5);
        let grid = [0.0, 0.5, 1.5, 3.0];
        for method in ADAPTIVE {
            let out = both_modes(
                &Linear,
                &h0,
                &grid,
                std::slice::from_ref(&a),
                &tight(method),
            );
            let mut err: f64 = 0.0;
            let mut norm_drift: f64 = 0.0;
            for (&t, h) in grid.iter().zip(&out) {
                // Each row x solves x' = A x, so x(t) = exp(A t) x0; as rows, h0 exp(A t)ᵀ.
                let exact = &h0 * (&a * t).exp().transpose();
                err = err.max(max_diff(h, &exact));
                for r in 0..h0.nrows() {
                    let drift = h.row(r).norm() - h0.row(r).norm();
                    norm_drift = norm_drift.max(drift.abs());
                }
            }
            eprintln!("skew n={n} {method}: error {err:.3e}, norm drift {norm_drift:.3e}");
            let scale = max_abs(&h0);
            assert!(err < bound(method) * scale, "{method}: {err:e}");
            assert!(
                norm_drift < bound(method) * scale,
                "{method}: {norm_drift:e}"
            );
        }
    }
}

#[test]
fn time_dependent_scalar_fields() {
    let h0 = DMatrix::from_column_slice(2, 1, &[1.5, -0.5]);
    for (field, grid) in [
        (TimeField::Gaussian, [0.0, 0.5, 1.0, 2.0]),
        (TimeField::CosGrowth, [0.0, 1.0, 3.0, 6.0]),
    ] {
        for method in ADAPTIVE {
            let out = both_modes(&field, &h0, &grid, &[], &tight(method));
            let mut err: f64 = 0.0;
            let mut scale: f64 = 0.0;
            for (&t, h) in grid.iter().zip(&out) {
                for r in 0..2 {
                    let exact = field.exact(h0[(r, 0)], grid[0], t);
                    err = err.max((h[(r, 0)] - exact).abs());
                    scale = scale.max(exact.abs());
                }
            }
            eprintln!("{field:?} {method}: error {err:.3e} (scale {scale:.2})");
            assert!(err < bound(method) * scale, "{field:?} {method}: {err:e}");
        }
    }
}

/// `h' = h cos t` on a grid whose points are step ends: halving `dt` divides the error by
/// ≈ 2^p. The grid spacing is a multiple of every `dt` (powers of two, exact in binary), so
/// the outputs are step ends and the dense output does not spoil the order.
#[test]
fn fixed_step_methods_converge_at_their_order() {
    let field = TimeField::CosGrowth;
    let h0 = DMatrix::from_element(1, 1, 1.0);
    let grid = [0.0, 0.5, 1.0];
    for method in FIXED {
        let order = tableau::by_name(method).unwrap().order;
        // Low orders need smaller steps to reach the asymptotic regime.
        let ks: &[i32] = if order <= 2 { &[6, 7, 8] } else { &[5, 6, 7] };
        let errors: Vec<f64> = ks
            .iter()
            .map(|&k| {
                let dt = 2f64.powi(-k);
                let opts = Options::fixed(method, dt).unwrap();
                let out = both_modes(&field, &h0, &grid, &[], &opts);
                let (values, stats) = solve(&field, &h0, &grid, &[], &opts).unwrap();
                assert_eq!(
                    stats.accepted,
                    2usize.pow(k as u32),
                    "{method}: one step per dt"
                );
                assert_eq!(values, out);
                grid.iter()
                    .zip(&out)
                    .map(|(&t, h)| (h[(0, 0)] - field.exact(1.0, 0.0, t)).abs())
                    .fold(0.0, f64::max)
            })
            .collect();
        let errors_s: Vec<String> = errors.iter().map(|e| format!("{e:.3e}")).collect();
        let rates: Vec<f64> = errors.windows(2).map(|w| (w[0] / w[1]).log2()).collect();
        eprintln!("{method} (order {order}): errors {errors_s:?}, observed orders {rates:.3?}");
        for rate in rates {
            assert!(
                (rate - f64::from(order)).abs() < 0.2,
                "{method}: observed order {rate}, expected {order}"
            );
        }
    }
}

/// Integrating backwards in time (a decreasing grid) gives the backward solution.
#[test]
fn decreasing_time_grid() {
    let h0 = DMatrix::from_row_slice(2, 2, &[1.0, -2.0, 0.5, 3.0]);
    let k = 0.8;
    let decay_grid = [2.0, 1.5, 0.5, 0.0];
    let cos_grid = [6.0, 3.0, 1.0, -0.5];
    let mut methods: Vec<Options> = ADAPTIVE.iter().map(|m| tight(m)).collect();
    methods.push(Options::fixed("rk4", 1.0 / 64.0).unwrap());
    for opts in &methods {
        let method = opts.method.name;
        let params = [DMatrix::from_element(1, 1, k)];
        let out = both_modes(&Decay, &h0, &decay_grid, &params, opts);
        let mut err: f64 = 0.0;
        for (&t, h) in decay_grid.iter().zip(&out) {
            // h grows backwards in time: h(t) = h(2) e^{−k(t−2)}.
            err = err.max(max_diff(h, &(&h0 * (-k * (t - 2.0)).exp())) / (k * 2.0).exp());
        }
        let out = both_modes(&TimeField::CosGrowth, &h0, &cos_grid, &[], opts);
        for (&t, h) in cos_grid.iter().zip(&out) {
            let exact = h0.map(|x| TimeField::CosGrowth.exact(x, cos_grid[0], t));
            err = err.max(max_diff(h, &exact) / max_abs(&exact));
        }
        eprintln!("backwards {method}: relative error {err:.3e}");
        let allowed = if opts.step_size.is_some() {
            1e-8
        } else {
            bound(method)
        };
        assert!(err < allowed, "{method}: {err:e}");
    }
}
