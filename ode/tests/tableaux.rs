//! Checks of the Butcher tableaux in `ode::tableau`.
//!
//! Everything here runs on a tiny reference Runge–Kutta stepper over `Vec<f64>` states written
//! in this file, independent of the solver engine, so that a wrong coefficient shows up as a
//! wrong order of convergence rather than being masked by (or blamed on) the engine. The
//! order conditions are also checked exactly, tree by tree (Butcher's rooted trees).

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

/// All the weights `b_i(θ)`.
fn interp_weights(tab: &Tableau, theta: f64) -> Vec<f64> {
    tab.interpolant
        .expect("tableau with an interpolant")
        .iter()
        .map(|poly| interp_weight(poly, theta))
        .collect()
}

/// The method's dense output `y + h Σ_i b_i(θ) k_i` inside one step.
fn dense(tab: &Tableau, y: &[f64], h: f64, ks: &[Vec<f64>], theta: f64) -> Vec<f64> {
    combine(y, h, &interp_weights(tab, theta), ks)
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
// Test problems with known solutions. All are nonlinear (a linear problem only exercises the
// "tall" trees, so it can hide a wrong coefficient); two are non-autonomous (so the stage times
// `c` matter) and two are systems (scalar problems do not separate all trees beyond order 4).
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
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

/// A rotation whose angular speed depends on the radius and on time:
/// `y' = (1 + cos(t)/2) |y|² J y`; from `(1, 0)`, `y = (cos φ, sin φ)` with `φ = t + sin(t)/2`.
fn spin_f(t: f64, y: &[f64]) -> Vec<f64> {
    let w = (1.0 + 0.5 * t.cos()) * (y[0] * y[0] + y[1] * y[1]);
    vec![-w * y[1], w * y[0]]
}

fn spin_exact(t: f64) -> Vec<f64> {
    let phi = t + 0.5 * t.sin();
    vec![phi.cos(), phi.sin()]
}

/// `y' = 2 t y²`, `y(0) = 1`: `y = 1/(1 − t²)` (blows up at t = 1).
fn blowup_f(t: f64, y: &[f64]) -> Vec<f64> {
    vec![2.0 * t * y[0] * y[0]]
}

fn blowup_exact(t: f64) -> Vec<f64> {
    vec![1.0 / (1.0 - t * t)]
}

/// `y' = 1 + y²`, `y(0) = 0`: `y = tan t`.
fn tan_f(_t: f64, y: &[f64]) -> Vec<f64> {
    vec![1.0 + y[0] * y[0]]
}

fn tan_exact(t: f64) -> Vec<f64> {
    vec![t.tan()]
}

fn kepler(t_end: f64) -> Problem {
    Problem {
        name: "kepler",
        f: kepler_f,
        exact: kepler_exact,
        t_end,
    }
}

fn spin(t_end: f64) -> Problem {
    Problem {
        name: "spin",
        f: spin_f,
        exact: spin_exact,
        t_end,
    }
}

const BLOWUP: Problem = Problem {
    name: "blowup",
    f: blowup_f,
    exact: blowup_exact,
    t_end: 0.9,
};

const TAN: Problem = Problem {
    name: "tan",
    f: tan_f,
    exact: tan_exact,
    t_end: 1.4,
};

// ---------------------------------------------------------------------------------------------
// Consistency of the data
// ---------------------------------------------------------------------------------------------

const FIXED: [&str; 6] = ["euler", "midpoint", "heun2", "heun3", "rk4", "rk4_classic"];
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
    for name in FIXED {
        let tab = by_name(name).unwrap();
        assert!(
            tab.b_error.is_none() && tab.embedded_order.is_none(),
            "{name}"
        );
        assert!(tab.interpolant.is_none() && !tab.fsal, "{name}");
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
        (&RK4_CLASSIC, 4, None, 4, false, false),
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
// Order conditions, exactly: Σ_i w_i Φ_i(τ) = 1/γ(τ) for every rooted tree τ
// ---------------------------------------------------------------------------------------------

/// A rooted tree: its order (number of nodes), its density `γ`, and the subtrees hanging off
/// its root (indices into the list of all trees, non-increasing, so each tree appears once).
struct Tree {
    order: usize,
    gamma: f64,
    children: Vec<usize>,
}

/// Every rooted tree with at most `max_order` nodes, by increasing order.
fn rooted_trees(max_order: usize) -> Vec<Tree> {
    /// Multisets of trees `trees[..=max_index]` whose orders add up to `remaining`.
    fn forests(
        trees: &[Tree],
        remaining: usize,
        max_index: usize,
        current: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
    ) {
        if remaining == 0 {
            out.push(current.clone());
            return;
        }
        for index in (0..=max_index).rev() {
            if trees[index].order <= remaining {
                current.push(index);
                forests(trees, remaining - trees[index].order, index, current, out);
                current.pop();
            }
        }
    }

    let mut trees = vec![Tree {
        order: 1,
        gamma: 1.0,
        children: Vec::new(),
    }];
    for order in 2..=max_order {
        let mut out = Vec::new();
        forests(
            &trees,
            order - 1,
            trees.len() - 1,
            &mut Vec::new(),
            &mut out,
        );
        for children in out {
            let gamma = order as f64 * children.iter().map(|&c| trees[c].gamma).product::<f64>();
            trees.push(Tree {
                order,
                gamma,
                children,
            });
        }
    }
    trees
}

/// The elementary weights `Φ_i(τ)` of every tree: `Φ(•) = 1`,
/// `Φ_i([τ_1 … τ_m]) = Π_k Σ_j a_ij Φ_j(τ_k)`.
fn elementary_weights(tab: &Tableau, trees: &[Tree]) -> Vec<Vec<f64>> {
    let s = tab.b.len();
    let mut phi: Vec<Vec<f64>> = Vec::with_capacity(trees.len());
    let mut a_phi: Vec<Vec<f64>> = Vec::with_capacity(trees.len());
    for tree in trees {
        let mut p = vec![1.0; s];
        for &child in &tree.children {
            for (pi, api) in p.iter_mut().zip(&a_phi[child]) {
                *pi *= api;
            }
        }
        // A diagonally implicit tableau adds γ p_i on the diagonal.
        let gamma = |i: usize| match tab.step {
            StepKind::DiagonallyImplicit {
                gamma,
                explicit_first,
            } if i > 0 || !explicit_first => gamma,
            _ => 0.0,
        };
        let ap = tab
            .a
            .iter()
            .enumerate()
            .map(|(i, row)| row.iter().zip(&p).map(|(a, p)| a * p).sum::<f64>() + gamma(i) * p[i])
            .collect();
        phi.push(p);
        a_phi.push(ap);
    }
    phi
}

/// The largest residual `|Σ_i w_i Φ_i(τ) − θ^|τ|/γ(τ)|` over the trees of each order (index
/// = order). `θ = 1` for the step's weights, `θ ∈ (0, 1)` for dense-output weights `b_i(θ)`.
fn residuals_by_order(trees: &[Tree], phi: &[Vec<f64>], w: &[f64], theta: f64) -> Vec<f64> {
    let max_order = trees.last().unwrap().order;
    let mut worst = vec![0.0_f64; max_order + 1];
    for (tree, p) in trees.iter().zip(phi) {
        let lhs: f64 = w.iter().zip(p).map(|(w, p)| w * p).sum();
        let rhs = theta.powi(tree.order as i32) / tree.gamma;
        worst[tree.order] = worst[tree.order].max((lhs - rhs).abs());
    }
    worst
}

#[test]
fn rooted_tree_counts() {
    let trees = rooted_trees(9);
    let counts: Vec<usize> = (1..=9)
        .map(|n| trees.iter().filter(|t| t.order == n).count())
        .collect();
    assert_eq!(counts, [1, 1, 2, 4, 9, 20, 48, 115, 286]);
}

/// Each declared order is exactly right: every condition up to it holds (to rounding), and some
/// condition of the next order fails (so the order is not understated either).
#[test]
fn order_conditions_hold_exactly_up_to_the_declared_order() {
    let trees = rooted_trees(9);
    for tab in ALL.iter().chain(IMPLICIT) {
        let phi = elementary_weights(tab, &trees);
        let mut solutions = vec![("solution", tab.b.to_vec(), tab.order)];
        if let Some(embedded) = tab.embedded_order {
            solutions.push(("embedded", embedded_weights(tab), embedded));
        }
        for (what, w, order) in solutions {
            let order = order as usize;
            let worst = residuals_by_order(&trees, &phi, &w, 1.0);
            let held = worst[1..=order].iter().fold(0.0_f64, |m, &r| m.max(r));
            println!(
                "{:>13} {what:>8}: order ≤ {order}: max residual {held:.1e}; order {}: {:.1e}",
                tab.name,
                order + 1,
                worst[order + 1]
            );
            for (q, &r) in worst.iter().enumerate().take(order + 1).skip(1) {
                assert!(
                    r < 1e-13,
                    "{} {what}: an order-{q} condition is off by {r:e}",
                    tab.name
                );
            }
            assert!(
                worst[order + 1] > 1e-6,
                "{} {what}: every order-{} condition holds (residual {:e})",
                tab.name,
                order + 1,
                worst[order + 1]
            );
        }
    }
}

/// The dense outputs are of order 4 for every θ: `Σ_i b_i(θ) Φ_i(τ) = θ^|τ|/γ(τ)` for
/// `|τ| ≤ 4` (local error O(h⁵)).
#[test]
fn interpolant_order_conditions_hold_up_to_order_four() {
    let trees = rooted_trees(5);
    for tab in [&DOPRI5, &TSIT5] {
        let phi = elementary_weights(tab, &trees);
        for theta in [0.1, 0.3, 0.5, 0.7, 0.9] {
            let worst = residuals_by_order(&trees, &phi, &interp_weights(tab, theta), theta);
            for (q, &r) in worst.iter().enumerate().take(5).skip(1) {
                assert!(
                    r < 1e-13,
                    "{} at θ = {theta}: an order-{q} condition is off by {r:e}",
                    tab.name
                );
            }
            assert!(worst[5] > 1e-8, "{} at θ = {theta}: order 5?", tab.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Empirical orders of convergence with the reference stepper
// ---------------------------------------------------------------------------------------------

/// The problems (with their intervals) and the step count `N` used to measure a declared order
/// `p`: errors at `N` and `2N` steps are compared. `N` is large enough to be in the asymptotic
/// regime and small enough to keep the errors well above roundoff (asserted below).
///
/// The optimised high-order pairs have tiny principal error coefficients, so the next term
/// dominates until late: the 5th-order solutions are measured on longer integrations (where the
/// error accumulates far above roundoff), and RK8(7)13M's order-8 solution approaches 8 from
/// below (≈ 7.8 at the last step counts whose errors are still ~1e-11, on the problems where the
/// approach is monotone). `order_conditions_hold_exactly_up_to_the_declared_order` is the exact
/// check; this one checks that the data really integrates ODEs at that rate.
fn order_setup(order: u32) -> (Vec<Problem>, usize) {
    let short = vec![kepler(2.0), spin(2.0), BLOWUP, TAN];
    match order {
        1 => (short, 4096),
        2 => (short, 1024),
        3 => (short, 256),
        4 => (short, 128),
        5 => (vec![kepler(20.0), spin(20.0)], 1024),
        7 => (vec![kepler(6.0), BLOWUP, TAN], 64),
        8 => (vec![BLOWUP, TAN], 32),
        _ => unreachable!("no tableau of order {order}"),
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
    let (problems, n) = order_setup(declared);
    for p in problems {
        let (order, e1, e2) = observed_order(tab, w, &p, n);
        println!(
            "{:>13} {what:>8} {:>6} [0, {:>4}]: N = {n:>4}: err {e1:.2e} -> {e2:.2e}, order {order:.3} \
             (declared {declared})",
            tab.name, p.name, p.t_end
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

/// The error estimate `h Σ e_i k_i` is the difference of the two solutions after one step, so
/// it is O(h^(p̂+1)): halving h divides it by about 2^(p̂+1). (Not measurable for RK8(7)13M in
/// f64: its estimate reaches roundoff before the asymptotic regime; the exact order conditions
/// of its `b − e` cover it.)
#[test]
fn local_error_estimate_has_the_embedded_order() {
    for tab in ALL
        .iter()
        .filter(|t| t.embedded_order.is_some_and(|p| p <= 4))
    {
        let e = tab.b_error.unwrap();
        for p in [kepler(0.0), spin(0.0)] {
            let t0 = 0.4;
            let y0 = (p.exact)(t0);
            let estimate = |h: f64| {
                let ks = stages(tab, p.f, t0, &y0, h);
                max_abs_diff(&combine(&y0, h, e, &ks), &y0)
            };
            let h = 0.025;
            let (e1, e2) = (estimate(h), estimate(h / 2.0));
            let rate = (e1 / e2).log2();
            let expect = f64::from(tab.embedded_order.unwrap() + 1);
            println!(
                "{:>13} error estimate {:>6}: {e1:.2e} -> {e2:.2e}, rate {rate:.3} (expect {expect})",
                tab.name, p.name
            );
            assert!(
                e2 > 1e-12,
                "{} on {}: estimate at roundoff",
                tab.name,
                p.name
            );
            assert!(
                (rate - expect).abs() <= 0.3,
                "{} on {}: error estimate shrinks like h^{rate:.3}, expected h^{expect}",
                tab.name,
                p.name
            );
        }
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
        for p in [kepler(0.0), spin(0.0), BLOWUP] {
            let t0 = 0.4;
            let errs: Vec<f64> = [0.1, 0.05, 0.025]
                .iter()
                .map(|&h| dense_error(tab, &p, t0, h))
                .collect();
            let rates: Vec<f64> = errs.windows(2).map(|e| (e[0] / e[1]).log2()).collect();
            println!(
                "{:>6} dense {:>6}: err {:.2e} {:.2e} {:.2e}, log2 ratios {:.3} {:.3}",
                tab.name, p.name, errs[0], errs[1], errs[2], rates[0], rates[1]
            );
            assert!(
                errs[2] > 1e-12,
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
        for p in [kepler(0.0), spin(0.0), BLOWUP, TAN] {
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

/// The diagonally implicit tableaux fit together: stiffly accurate (the last row of A with its
/// diagonal is b, so y₁ is the last stage and FSAL holds), stage times the row sums of A.
#[test]
fn implicit_tableaux_are_consistent() {
    for tab in IMPLICIT {
        tab.validate().unwrap();
        let StepKind::DiagonallyImplicit {
            gamma,
            explicit_first,
        } = tab.step
        else {
            panic!("{} is not diagonally implicit", tab.name)
        };
        for (i, row) in tab.a.iter().enumerate() {
            let diagonal = if i == 0 && explicit_first { 0.0 } else { gamma };
            let sum: f64 = row.iter().sum::<f64>() + diagonal;
            assert!(
                (sum - tab.c[i]).abs() < 1e-14,
                "{} row {i}: {sum} vs {}",
                tab.name,
                tab.c[i]
            );
        }
    }
}
