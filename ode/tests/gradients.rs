//! Gradient exactness of the taped solve against forward-mode `Dual64` solves, and the adjoint
//! equation `da/dt = −(∂f/∂h)ᵀ a` checked along a backward solve.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::Tape;
use common::*;
use ode::{odeint, odeint_adjoint, solve, Dynamics, Options, SolveStats};

/// Which input a directional derivative is taken along.
#[derive(Clone, Copy, Debug)]
enum Dir {
    H0(usize, usize),
    Param(usize, usize, usize),
    Time(usize),
}

/// `L` and its directional derivative along `dir` from a taped solve on `Tape<Dual64>`,
/// checked against the untaped `solve` on duals; with the solve's counts.
fn dual_loss(p: &Problem, opts: &Options, dir: Dir) -> (f64, f64, SolveStats) {
    let tape = Tape::<Dual64>::new();
    let seed_h0 = match dir {
        Dir::H0(i, j) => Some((i, j)),
        _ => None,
    };
    let h0 = tape.var(dual(&p.h0, seed_h0));
    let grid = DMatrix::from_row_slice(1, p.grid.len(), &p.grid);
    let seed_t = match dir {
        Dir::Time(i) => Some((0, i)),
        _ => None,
    };
    let t = tape.var(dual(&grid, seed_t));
    let params: Vec<_> = p
        .params
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let seed = match dir {
                Dir::Param(q, i, j) if q == k => Some((i, j)),
                _ => None,
            };
            tape.var(dual(p, seed))
        })
        .collect();
    let sol = odeint(&tape, &p.f, h0, t, &params, opts).unwrap();
    let loss = dot_loss(&tape, &sol.outputs, &p.cots)
        .unwrap()
        .scalar_value()
        .unwrap();

    // The untaped solve on duals propagates the same derivative.
    let dual_params: Vec<DMatrix<Dual64>> = p
        .params
        .iter()
        .enumerate()
        .map(|(k, p)| match dir {
            Dir::Param(q, i, j) if q == k => dual(p, Some((i, j))),
            _ => dual(p, None),
        })
        .collect();
    let times: Vec<Dual64> = dual(&grid, seed_t).iter().copied().collect();
    let (values, _) = solve(&p.f, &dual(&p.h0, seed_h0), &times, &dual_params, opts).unwrap();
    let untaped: Dual64 = values
        .iter()
        .zip(&p.cots)
        .map(|(h, v)| {
            let v = v.as_ref().unwrap();
            h.iter()
                .zip(v.iter())
                .fold(Dual64::from(0.0), |acc, (&x, &w)| acc + x * w)
        })
        .fold(Dual64::from(0.0), |acc, x| acc + x);
    assert!((untaped.re - loss.re).abs() <= 1e-12 * (1.0 + loss.re.abs()));
    assert!(
        (untaped.eps - loss.eps).abs() <= 1e-10 * loss.eps.abs() + 1e-13,
        "{dir:?}: untaped dual {} vs taped dual {}",
        untaped.eps,
        loss.eps
    );
    (loss.re, loss.eps, sol.stats)
}

/// The taped gradient is the exact derivative of the discrete solve: it equals forward-mode
/// `Dual64` directional derivatives (whose real parts take the same steps) to rounding, for
/// h0, every parameter tensor and every grid time, with every kind of dense output (dopri5
/// and tsit5 interpolants, dopri8 landing on outputs, Hermite for bosh3 and rk4); along a
/// grid time a step lands on, to that step's local error (see below).
#[test]
fn taped_gradient_matches_dual_directional_derivatives() {
    let cases = [
        ("dopri5", None, 1, false),
        ("tsit5", None, 2, true),
        ("dopri8", None, 3, false),
        ("bosh3", None, 4, false),
        ("rk4", Some(0.07), 5, false),
        ("dopri5", None, 6, true),
    ];
    for (method, step, seed, reversed) in cases {
        let opts = match step {
            Some(dt) => Options::fixed(method, dt).unwrap(),
            None => Options::with_method(method).unwrap().tolerances(1e-6, 1e-8),
        };
        let p = Problem::random(
            &mut Rng::new(seed),
            Mlp::TIMED,
            (3, 2, 5),
            4,
            reversed,
            true,
        );
        let tape = Tape::<f64>::new();
        let h0 = tape.var(p.h0.clone());
        let t = tape.var(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
        let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
        let sol = odeint(&tape, &p.f, h0, t, &params, &opts).unwrap();
        let loss = dot_loss(&tape, &sol.outputs, &p.cots).unwrap();
        let l = loss.scalar_value().unwrap();
        let grads = tape.backward(loss).unwrap();

        let mut rng = Rng::new(100 + seed);
        let mut dirs = Vec::new();
        for _ in 0..3 {
            dirs.push(Dir::H0(rng.index(p.h0.nrows()), rng.index(p.h0.ncols())));
        }
        for (k, m) in p.params.iter().enumerate() {
            for _ in 0..2 {
                dirs.push(Dir::Param(k, rng.index(m.nrows()), rng.index(m.ncols())));
            }
        }
        dirs.extend((0..p.grid.len()).map(Dir::Time));

        let mut worst: f64 = 0.0;
        for dir in dirs {
            let taped = match dir {
                Dir::H0(i, j) => grads.get(h0).unwrap()[(i, j)],
                Dir::Param(k, i, j) => grads.get(params[k]).unwrap()[(i, j)],
                Dir::Time(i) => grads.get(t).unwrap()[(0, i)],
            };
            let (l_dual, d, stats) = dual_loss(&p, &opts, dir);
            assert_eq!(stats, sol.stats, "the dual solve must take the same steps");
            assert!(
                (l_dual - l).abs() <= 1e-11 * (1.0 + l.abs()),
                "{method} {dir:?}: {l_dual} vs {l}"
            );
            // Relative to the gradient tensor's size: f64 and Dual64 round differently (the
            // f64 kernels use their own gemm and tanh), and the large coefficients of tsit5's
            // interpolant and dopri8's stages amplify that to ~1e-12 of the loss.
            let tensor_scale = match dir {
                Dir::H0(..) => max_abs(grads.get(h0).unwrap()),
                Dir::Param(k, ..) => max_abs(grads.get(params[k]).unwrap()),
                Dir::Time(_) => max_abs(grads.get(t).unwrap()),
            };
            let rel = (taped - d).abs() / taped.abs().max(d.abs()).max(tensor_scale);
            // A grid time a step lands on (dopri8's every output, rk4's last): the taped
            // gradient is dh/dt = F(t₁, y₁), while forward mode differentiates the landed
            // step's size t_i − t_k (exact second derivatives, tests/landed_hvp.rs), ∂Φ/∂dt:
            // they differ by the step's local error (dopri8 at rtol 1e-6: 3.4e-10; rk4 at
            // dt 0.07: 8.2e-9).
            let bound = if matches!(dir, Dir::Time(_)) {
                2e-8
            } else {
                1e-10
            };
            worst = worst.max(rel);
            assert!(
                rel <= bound,
                "{method} {dir:?}: taped {taped:.15e} vs dual {d:.15e} (rel {rel:.1e})"
            );
            if let Dir::Time(_) = dir {
                // Every grid time carries a cotangent, so none of these is trivially zero.
                assert!(taped.abs() > 1e-6, "{method} {dir:?}: {taped}");
            }
        }
        eprintln!(
            "{method}: {} steps, worst relative taped-vs-dual difference {worst:.2e}",
            sol.stats.accepted
        );
    }
}

/// `(∂f/∂h)ᵀ a` at `(t, h)`, built column by column from `Dual64` evaluations of `f`.
fn jacobian_t_times<F: Dynamics<Dual64>>(
    f: &F,
    t: f64,
    h: &DMatrix<f64>,
    params: &[DMatrix<f64>],
    a: &DMatrix<f64>,
) -> DMatrix<f64> {
    DMatrix::from_fn(h.nrows(), h.ncols(), |i, j| {
        let tape = Tape::<Dual64>::new();
        let tv = tape.constant(DMatrix::from_element(1, 1, Dual64::from(t)));
        let hv = tape.constant(dual(h, Some((i, j))));
        let pv: Vec<_> = params
            .iter()
            .map(|p| tape.constant(dual(p, None)))
            .collect();
        let out = f.eval(tv, hv, &pv).unwrap().value().unwrap();
        out.iter()
            .zip(a.iter())
            .map(|(o, &w)| o.eps * w)
            .sum::<f64>()
    })
}

/// The adjoint state `a(s) = dL/dh(s)` for `L = ⟨g, h(t_end)⟩` along the trajectory through
/// `h(0) = h0`, and `dL/ds` at fixed `h(s)`, from `odeint_adjoint` on `[s, t_end]`.
fn adjoint_at(
    p: &Problem,
    g: &DMatrix<f64>,
    s: f64,
    t_end: f64,
    opts: &Options,
) -> (DMatrix<f64>, DMatrix<f64>, f64) {
    let (hs, _) = solve(&p.f, &p.h0, &[0.0, s], &p.params, opts).unwrap();
    let hs = hs[1].clone();
    let tape = Tape::<f64>::new();
    let h = tape.var(hs.clone());
    let t = tape.var(DMatrix::from_row_slice(1, 2, &[s, t_end]));
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let sol = odeint_adjoint(&tape, &p.f, h, t, &params, opts).unwrap();
    let loss = dot_loss(&tape, &sol.outputs, &[None, Some(g.clone())]).unwrap();
    let grads = tape.backward(loss).unwrap();
    (
        hs,
        grads.get(h).unwrap().clone(),
        grads.get(t).unwrap()[(0, 0)],
    )
}

/// Along the backward solve the adjoint obeys `da/ds = −(∂f/∂h)ᵀ a`: central differences of
/// `a(s)` (each from `odeint_adjoint` started on the trajectory at `s`) against the Jacobian
/// built from `Dual64`; and the time adjoint is `dL/ds = −a(s)·f(s, h(s))`.
#[test]
fn adjoint_state_obeys_the_adjoint_equation() {
    let p = Problem::random(&mut Rng::new(7), Mlp::TIMED, (3, 2, 5), 4, false, true);
    let opts = Options::with_method("dopri8")
        .unwrap()
        .tolerances(1e-12, 1e-12);
    let mut rng = Rng::new(77);
    let g = rng.matrix(p.h0.nrows(), p.h0.ncols(), 1.0);
    let t_end = 1.2;
    let delta = 1e-3;
    for s in [0.2, 0.7] {
        let (hs, a, dl_ds) = adjoint_at(&p, &g, s, t_end, &opts);
        let (_, a_plus, _) = adjoint_at(&p, &g, s + delta, t_end, &opts);
        let (_, a_minus, _) = adjoint_at(&p, &g, s - delta, t_end, &opts);
        let da_ds = (a_plus - a_minus) / (2.0 * delta);
        let rhs = -jacobian_t_times(&p.f, s, &hs, &p.params, &a);
        let err = max_diff(&da_ds, &rhs);
        eprintln!(
            "s = {s}: |da/ds| = {:.3}, max |da/ds + Jᵀa| = {err:.2e}",
            max_abs(&rhs)
        );
        assert!(max_abs(&rhs) > 0.1, "a nontrivial Jacobian");
        // Central differences: O(δ²) truncation (~1e-6 here) plus 1e-12/δ rounding.
        assert!(err < 1e-5 * max_abs(&rhs), "s = {s}: {err:e}");

        let f = field(&p.f, s, &hs, &p.params);
        let expected = -a.dot(&f);
        eprintln!("s = {s}: dL/ds = {dl_ds:.12}, −a·f = {expected:.12}");
        assert!((dl_ds - expected).abs() < 1e-9 * (1.0 + expected.abs()));
    }
}
