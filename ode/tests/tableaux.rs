//! Checks of the Butcher tableaux in `ode::tableau`.
//!
//! Everything here runs on a tiny reference Runge–Kutta stepper over `Vec<f64>` states written
//! in this file, independent of the solver engine, so that a wrong coefficient shows up as a
//! wrong order of convergence rather than being masked by (or blamed on) the engine.

use ode::tableau::*;

// ---------------------------------------------------------------------------------------------
// Reference stepper
// ---------------------------------------------------------------------------------------------

type Rhs = fn(f64, &[f64]) -> Vec<f64>;

/// The stages `k_i = f(t + c_i h, y + h Σ_j a_ij k_j)` of one step.
fn stages(tab: &Tableau, f: Rhs, t: f64, y: &[f64], h: f64) -> Vec<Vec<f64>> {
    let mut ks: Vec<Vec<f64>> = Vec::with_capacity(tab.b.len());
    for (row, &ci) in tab.a.iter().zip(tab.c) {
        let mut yi = y.to_vec();
        for (&aij, kj) in row.iter().zip(&ks) {
            for (v, &kv) in yi.iter_mut().zip(kj) {
                *v += h * aij * kv;
            }
        }
        ks.push(f(t + ci * h, &yi));
    }
    ks
}

/// `y + h Σ_i w_i k_i`.
fn combine(y: &[f64], h: f64, w: &[f64], ks: &[Vec<f64>]) -> Vec<f64> {
    let mut out = y.to_vec();
    for (&wi, ki) in w.iter().zip(ks) {
        for (v, &kv) in out.iter_mut().zip(ki) {
            *v += h * wi * kv;
        }
    }
    out
}

/// The embedded weights `b̂ = b − e`.
fn embedded_weights(tab: &Tableau) -> Vec<f64> {
    let e = tab.b_error.expect("adaptive tableau");
    tab.b.iter().zip(e).map(|(b, e)| b - e).collect()
}

/// Integrates `p` over `[0, p.t_end]` with `n` equal steps, propagating with the weights `w`.
fn integrate(tab: &Tableau, w: &[f64], p: &Problem, n: usize) -> Vec<f64> {
    let h = p.t_end / n as f64;
    let mut y = (p.exact)(0.0);
    for step in 0..n {
        let t = step as f64 * h;
        let ks = stages(tab, p.f, t, &y, h);
        y = combine(&y, h, w, &ks);
    }
    y
}

/// `Σ_k poly[k] θ^(k+1)`: one stage's interpolation weight `b_i(θ)`.
fn interp_weight(poly: &[f64], theta: f64) -> f64 {
    poly.iter().rev().fold(0.0, |acc, &p| acc * theta + p) * theta
}

/// `d/dθ Σ_k poly[k] θ^(k+1)`.
fn interp_weight_derivative(poly: &[f64], theta: f64) -> f64 {
    poly.iter()
        .enumerate()
        .rev()
        .fold(0.0, |acc, (k, &p)| acc * theta + (k + 1) as f64 * p)
}

/// The method's dense output `y + h Σ_i b_i(θ) k_i` inside one step.
fn dense(tab: &Tableau, y: &[f64], h: f64, ks: &[Vec<f64>], theta: f64) -> Vec<f64> {
    let w: Vec<f64> = tab
        .interpolant
        .expect("tableau with an interpolant")
        .iter()
        .map(|poly| interp_weight(poly, theta))
        .collect();
    combine(y, h, &w, ks)
}

/// Max-norm distance; NaN if any component is NaN (so a blow-up never reads as "no error").
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d > m || d.is_nan() { d } else { m })
}

// ---------------------------------------------------------------------------------------------
// Test problems with known solutions (both nonlinear, so that every elementary differential is
// exercised; one of them non-autonomous, so that the stage times `c` matter).
// ---------------------------------------------------------------------------------------------

struct Problem {
    name: &'static str,
    f: Rhs,
    exact: fn(f64) -> Vec<f64>,
    t_end: f64,
}

/// Eccentricity of the Kepler orbit.
const ECC: f64 = 0.5;

/// Kepler two-body problem `q'' = −q/|q|³`, `y = (q1, q2, p1, p2)`.
fn kepler_f(_t: f64, y: &[f64]) -> Vec<f64> {
    let r2 = y[0] * y[0] + y[1] * y[1];
    let r3 = r2 * r2.sqrt();
    vec![y[2], y[3], -y[0] / r3, -y[1] / r3]
}

/// The orbit with eccentricity `ECC`, semi-major axis 1 and period 2π, starting at pericentre:
/// `q = (cos E − e, √(1−e²) sin E)` with `E − e sin E = t`.
fn kepler_exact(t: f64) -> Vec<f64> {
    let mut ecc_anomaly = t;
    for _ in 0..100 {
        let delta = (ecc_anomaly - ECC * ecc_anomaly.sin() - t) / (1.0 - ECC * ecc_anomaly.cos());
        ecc_anomaly -= delta;
        if delta.abs() < 1e-16 {
            break;
        }
    }
    let (s, c) = ecc_anomaly.sin_cos();
    let rate = 1.0 / (1.0 - ECC * c);
    let w = (1.0 - ECC * ECC).sqrt();
    vec![c - ECC, w * s, -s * rate, w * c * rate]
}

/// `y' = −2 t y²`, `y(0) = 1`: `y = 1/(1 + t²)`.
fn rational_f(t: f64, y: &[f64]) -> Vec<f64> {
    vec![-2.0 * t * y[0] * y[0]]
}

fn rational_exact(t: f64) -> Vec<f64> {
    vec![1.0 / (1.0 + t * t)]
}

/// `y' = y cos t`, `y(0) = 1`: `y = exp(sin t)`.
fn exp_sin_f(t: f64, y: &[f64]) -> Vec<f64> {
    vec![y[0] * t.cos()]
}

fn exp_sin_exact(t: f64) -> Vec<f64> {
    vec![t.sin().exp()]
}

fn problems() -> [Problem; 3] {
    [
        Problem {
            name: "kepler",
            f: kepler_f,
            exact: kepler_exact,
            t_end: 2.0,
        },
        Problem {
            name: "rational",
            f: rational_f,
            exact: rational_exact,
            t_end: 2.0,
        },
        Problem {
            name: "exp_sin",
            f: exp_sin_f,
            exact: exp_sin_exact,
            t_end: 2.0,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Consistency of the data
// ---------------------------------------------------------------------------------------------

const FIXED: [&str; 5] = ["euler", "midpoint", "heun2", "heun3", "rk4"];
const ADAPTIVE: [&str; 6] = [
    "fehlberg2",
    "adaptive_heun",
    "bosh3",
    "dopri5",
    "tsit5",
    "dopri8",
];

#[test]
fn all_and_by_name_agree() {
    assert_eq!(ALL.len(), FIXED.len() + ADAPTIVE.len());
    for name in FIXED.iter().chain(&ADAPTIVE) {
        let tab = by_name(name).unwrap_or_else(|| panic!("no tableau named {name}"));
        assert_eq!(tab.name, *name);
        assert_eq!(ALL.iter().filter(|t| t.name == *name).count(), 1);
    }
    assert!(by_name("rk45").is_none());
    assert!(by_name("").is_none());
    assert!(std::ptr::eq(by_name("dopri5").unwrap(), &DOPRI5));
    assert!(std::ptr::eq(by_name("tsit5").unwrap(), &TSIT5));
}

#[test]
fn declared_properties() {
    let expect = [
        (&EULER, 1, None, 1, false, false),
        (&MIDPOINT, 2, None, 2, false, false),
        (&HEUN2, 2, None, 2, false, false),
        (&HEUN3, 3, None, 3, false, false),
        (&RK4, 4, None, 4, false, false),
        (&FEHLBERG2, 2, Some(1), 3, false, false),
        (&ADAPTIVE_HEUN, 2, Some(1), 2, false, false),
        (&BOSH3, 3, Some(2), 4, true, false),
        (&DOPRI5, 5, Some(4), 7, true, true),
        (&TSIT5, 5, Some(4), 7, true, true),
        (&DOPRI8, 8, Some(7), 13, false, false),
    ];
    for (tab, order, embedded, stages, fsal, interp) in expect {
        assert_eq!(tab.order, order, "{}", tab.name);
        assert_eq!(tab.embedded_order, embedded, "{}", tab.name);
        assert_eq!(tab.b.len(), stages, "{}", tab.name);
        assert_eq!(tab.fsal, fsal, "{}", tab.name);
        assert_eq!(tab.interpolant.is_some(), interp, "{}", tab.name);
    }
}

#[test]
fn tableaux_are_consistent() {
    for tab in ALL {
        let name = tab.name;
        let s = tab.b.len();
        assert!(s >= 1, "{name}");
        assert_eq!(tab.c.len(), s, "{name}: len(c)");
        assert_eq!(tab.a.len(), s, "{name}: len(a)");
        for (i, row) in tab.a.iter().enumerate() {
            assert_eq!(row.len(), i, "{name}: len(a[{i}])");
        }
        assert_eq!(tab.c[0], 0.0, "{name}: c[0]");

        let sum_b: f64 = tab.b.iter().sum();
        assert!((sum_b - 1.0).abs() < 1e-14, "{name}: Σb = {sum_b}");

        for (i, (row, &ci)) in tab.a.iter().zip(tab.c).enumerate() {
            let row_sum: f64 = row.iter().sum();
            assert!(
                (row_sum - ci).abs() < 1e-14,
                "{name}: row {i}: Σ_j a_ij = {row_sum} but c_i = {ci}"
            );
        }

        assert_eq!(
            tab.b_error.is_some(),
            tab.embedded_order.is_some(),
            "{name}: b_error and embedded_order go together"
        );
        if let Some(e) = tab.b_error {
            assert_eq!(e.len(), s, "{name}: len(b_error)");
            let sum_e: f64 = e.iter().sum();
            assert!(sum_e.abs() < 1e-14, "{name}: Σe = {sum_e}");
            assert!(e.iter().any(|&x| x != 0.0), "{name}: e = 0");
            assert!(tab.embedded_order.unwrap() < tab.order, "{name}");
        }

        if tab.fsal {
            assert_eq!(
                tab.a[s - 1],
                &tab.b[..s - 1],
                "{name}: FSAL: last row of a ≠ b"
            );
            assert_eq!(tab.b[s - 1], 0.0, "{name}: FSAL: last weight ≠ 0");
            assert_eq!(tab.c[s - 1], 1.0, "{name}: FSAL: last c ≠ 1");
        }

        if let Some(interp) = tab.interpolant {
            assert_eq!(interp.len(), s, "{name}: len(interpolant)");
            for (i, (poly, &bi)) in interp.iter().zip(tab.b).enumerate() {
                assert!(!poly.is_empty(), "{name}: interpolant[{i}] empty");
                let at0 = interp_weight(poly, 0.0);
                let at1 = interp_weight(poly, 1.0);
                assert_eq!(at0, 0.0, "{name}: b_{i}(0) = {at0}");
                assert!(
                    (at1 - bi).abs() < 1e-13,
                    "{name}: b_{i}(1) = {at1} but b_{i} = {bi}"
                );
            }
        }
    }
}

/// Both continuous extensions are C¹ Hermite-type: the dense output's derivative is `k_1` at
/// θ = 0 and `k_s = f(t + h, y₁)` (the FSAL stage) at θ = 1.
#[test]
fn interpolants_match_stage_derivatives_at_the_ends() {
    for tab in [&DOPRI5, &TSIT5] {
        let interp = tab.interpolant.unwrap();
        let s = interp.len();
        for (i, poly) in interp.iter().enumerate() {
            let d0 = interp_weight_derivative(poly, 0.0);
            let d1 = interp_weight_derivative(poly, 1.0);
            let want0 = if i == 0 { 1.0 } else { 0.0 };
            let want1 = if i == s - 1 { 1.0 } else { 0.0 };
            assert!((d0 - want0).abs() < 1e-12, "{}: b_{i}'(0) = {d0}", tab.name);
            assert!((d1 - want1).abs() < 1e-12, "{}: b_{i}'(1) = {d1}", tab.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Empirical orders of convergence
// ---------------------------------------------------------------------------------------------

/// The step counts `N` (errors at `N` and `2N` are compared): large enough to be in the
/// asymptotic regime on [0, 2], small enough to keep the errors far above roundoff.
fn step_count(tab: &Tableau) -> usize {
    match tab.order {
        1 => 256,
        2 => 128,
        3 => 64,
        4 | 5 => 32,
        _ => 16,
    }
}

/// `log2(err(N) / err(2N))` of the global error at `t_end`, propagating with weights `w`.
fn observed_order(tab: &Tableau, w: &[f64], p: &Problem, n: usize) -> (f64, f64, f64) {
    let exact = (p.exact)(p.t_end);
    let e1 = max_abs_diff(&integrate(tab, w, p, n), &exact);
    let e2 = max_abs_diff(&integrate(tab, w, p, 2 * n), &exact);
    ((e1 / e2).log2(), e1, e2)
}

fn check_order(tab: &Tableau, w: &[f64], declared: u32, what: &str) {
    let n = step_count(tab);
    for p in problems() {
        let (order, e1, e2) = observed_order(tab, w, &p, n);
        println!(
            "{:>13} {what:>8} {:>8}: N = {n:>3}: err {e1:.3e} -> {e2:.3e}, order {order:.3} \
             (declared {declared})",
            tab.name, p.name
        );
        assert!(
            e2 > 1e-12,
            "{} {what} on {}: error {e2:e} too close to roundoff to measure an order",
            tab.name,
            p.name
        );
        assert!(
            (order - f64::from(declared)).abs() <= 0.3,
            "{} {what} on {}: observed order {order:.3}, declared {declared}",
            tab.name,
            p.name
        );
    }
}

#[test]
fn propagated_solutions_converge_at_the_declared_order() {
    for tab in ALL {
        check_order(tab, tab.b, tab.order, "solution");
    }
}

#[test]
fn embedded_solutions_converge_at_the_declared_order() {
    for tab in ALL.iter().filter(|t| t.b_error.is_some()) {
        let w = embedded_weights(tab);
        check_order(tab, &w, tab.embedded_order.unwrap(), "embedded");
    }
}

// ---------------------------------------------------------------------------------------------
// Dense output
// ---------------------------------------------------------------------------------------------

/// One step from the exact solution at `t0`: the largest dense-output error over
/// θ ∈ {0.3, 0.5, 0.7}.
fn dense_error(tab: &Tableau, p: &Problem, t0: f64, h: f64) -> f64 {
    let y0 = (p.exact)(t0);
    let ks = stages(tab, p.f, t0, &y0, h);
    [0.3, 0.5, 0.7]
        .iter()
        .map(|&theta| max_abs_diff(&dense(tab, &y0, h, &ks, theta), &(p.exact)(t0 + theta * h)))
        .fold(0.0, f64::max)
}

#[test]
fn dense_output_has_local_error_of_order_five() {
    for tab in [&DOPRI5, &TSIT5] {
        for p in problems() {
            let t0 = 0.4;
            let errs: Vec<f64> = [0.2, 0.1, 0.05]
                .iter()
                .map(|&h| dense_error(tab, &p, t0, h))
                .collect();
            let rates: Vec<f64> = errs.windows(2).map(|e| (e[0] / e[1]).log2()).collect();
            println!(
                "{:>6} dense {:>8}: err {:.3e} {:.3e} {:.3e}, log2 ratios {:.3} {:.3}",
                tab.name, p.name, errs[0], errs[1], errs[2], rates[0], rates[1]
            );
            assert!(
                errs[2] > 1e-14,
                "{} on {}: error at roundoff",
                tab.name,
                p.name
            );
            assert!(
                rates[1] >= 4.7,
                "{} dense output on {}: local error ratio 2^{:.3} < 2^4.7 when h halves",
                tab.name,
                p.name,
                rates[1]
            );
        }
    }
}

#[test]
fn dense_output_is_continuous_with_the_step_endpoints() {
    for tab in [&DOPRI5, &TSIT5] {
        for p in problems() {
            let (t0, h) = (0.4, 0.3);
            let y0 = (p.exact)(t0);
            let ks = stages(tab, p.f, t0, &y0, h);
            let y1 = combine(&y0, h, tab.b, &ks);
            let start = dense(tab, &y0, h, &ks, 0.0);
            let end = dense(tab, &y0, h, &ks, 1.0);
            assert_eq!(start, y0, "{} on {}: dense(0) ≠ y0", tab.name, p.name);
            let scale = y1.iter().fold(1.0_f64, |m, v| m.max(v.abs()));
            assert!(
                max_abs_diff(&end, &y1) <= 1e-14 * scale,
                "{} on {}: dense(1) = {end:?} but y1 = {y1:?}",
                tab.name,
                p.name
            );
            // Just inside the step the dense output is close to the endpoints too.
            let eps = 1e-7;
            assert!(max_abs_diff(&dense(tab, &y0, h, &ks, eps), &y0) < 1e-6);
            assert!(max_abs_diff(&dense(tab, &y0, h, &ks, 1.0 - eps), &y1) < 1e-6);
        }
    }
}
