//! Diagonally implicit methods (kvaerno3, kvaerno5, implicit_euler) on stiff problems, values
//! only: a stiff relaxation onto cos t, where dopri5 needs thousands of steps.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::{Result as TapeResult, Scalar, Tape, Var};
use ode::{odeint, solve, Dynamics, Error, Options};

/// `y' = −λ (y − cos t)` with `λ = p[0]`.
#[derive(Clone, Copy)]
struct Relax;

impl<T: Scalar> Dynamics<T> for Relax {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (r, c) = h.shape()?;
        let target = t.cos().broadcast(r, c)?;
        Ok(-(h.sub(target)?.mul(p[0])?))
    }
    fn rows_independent(&self) -> bool {
        true
    }
}

fn exact(lambda: f64, y0: f64, t: f64) -> f64 {
    let l2 = lambda * lambda;
    let particular = |t: f64| (l2 * t.cos() + lambda * t.sin()) / (l2 + 1.0);
    particular(t) + (y0 - particular(0.0)) * (-lambda * t).exp()
}

#[test]
fn kvaerno_solves_a_stiff_relaxation_in_few_steps() {
    let lambda = 1e4;
    let h0 = DMatrix::from_row_slice(2, 1, &[1.0, -0.5]);
    let p = [DMatrix::from_element(1, 1, lambda)];
    let grid = [0.0, 0.5, 2.0];
    for (name, rtol, bound) in [("kvaerno3", 1e-6, 1e-5), ("kvaerno5", 1e-8, 1e-7)] {
        let opts = Options {
            max_num_steps: 100_000,
            ..Options::with_method(name)
                .unwrap()
                .tolerances(rtol, rtol * 1e-2)
        };
        let (h, stats) = solve(&Relax, &h0, &grid, &p, &opts).unwrap();
        for (i, &t) in grid.iter().enumerate() {
            for r in 0..2 {
                let err = (h[i][(r, 0)] - exact(lambda, h0[(r, 0)], t)).abs();
                assert!(err < bound, "{name} t = {t} row {r}: {err:e}");
            }
        }
        println!("{name}: {stats:?}");
        assert!(stats.accepted < 300, "{name}: {} steps", stats.accepted);
        assert!(stats.jacobians > 0 && stats.factorizations > 0 && stats.newton_iterations > 0);
        // A values-only solve keeps J while Newton converges (J is constant here).
        assert!(
            stats.jacobians * 4 < stats.accepted,
            "{name}: {} Jacobians for {} steps",
            stats.jacobians,
            stats.accepted
        );
    }
    // dopri5 pays the stability limit: thousands of steps.
    let opts = Options {
        max_num_steps: 100_000,
        ..Options::default().tolerances(1e-6, 1e-8)
    };
    let (_, stats) = solve(&Relax, &h0, &grid, &p, &opts).unwrap();
    assert!(stats.accepted > 5000, "dopri5: {} steps", stats.accepted);
}

#[test]
fn implicit_euler_converges_at_order_one() {
    let lambda = 50.0;
    let h0 = DMatrix::from_element(1, 1, 2.0);
    let p = [DMatrix::from_element(1, 1, lambda)];
    let err = |dt: f64| {
        let opts = Options::fixed("implicit_euler", dt).unwrap();
        let (h, _) = solve(&Relax, &h0, &[0.0, 1.0], &p, &opts).unwrap();
        (h[1][(0, 0)] - exact(lambda, 2.0, 1.0)).abs()
    };
    let (e1, e2) = (err(0.01), err(0.005));
    let order = (e1 / e2).log2();
    assert!(
        (0.85..1.15).contains(&order),
        "order {order} ({e1:e}, {e2:e})"
    );
    // Stable far past the explicit limit (dt λ = 5).
    assert!(err(0.1).is_finite() && err(0.1) < 0.1);
}

/// Taped, aca and checkpointed gradients through implicit stages: the implicit-function
/// theorem at each stage, against the closed form's derivatives.
#[test]
fn gradients_through_implicit_stages_match_the_closed_form() {
    let lambda: f64 = 1e3;
    let y0 = 0.3;
    let t1: f64 = 2.0;
    let opts = Options {
        max_num_steps: 100_000,
        ..Options::with_method("kvaerno5")
            .unwrap()
            .tolerances(1e-10, 1e-12)
    };
    // d h(t1) / d y0 and d h(t1) / d λ of the closed form (the latter by central differences).
    let dy0 = (-lambda * t1).exp();
    let eps = 1e-3;
    let dlambda = (exact(lambda + eps, y0, t1) - exact(lambda - eps, y0, t1)) / (2.0 * eps);
    let mut taped = None;
    for name in ["taped", "aca", "checkpointed:2"] {
        let strategy: ode::Strategy = name.parse().unwrap();
        let tape = Tape::<f64>::new();
        let h0 = tape.var(DMatrix::from_element(1, 1, y0));
        let p = tape.var(DMatrix::from_element(1, 1, lambda));
        let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, t1]));
        let sol = ode::odeint_with(&tape, &Relax, h0, t, &[p], &opts, &strategy).unwrap();
        let g = tape.backward(sol.last().sum()).unwrap();
        let (gh, gp) = (g.get(h0).unwrap()[(0, 0)], g.get(p).unwrap()[(0, 0)]);
        assert!((gh - dy0).abs() < 1e-12, "{name}: dh/dy0 {gh:e} vs {dy0:e}");
        assert!(
            (gp - dlambda).abs() < 1e-7 * dlambda.abs(),
            "{name}: dh/dλ {gp:e} vs {dlambda:e}"
        );
        match taped {
            None => taped = Some(gp),
            // dh/dλ ≈ −9e-7 is a sum of much larger stage terms: rounding of the replayed
            // Newton solves shows at ~1e-12 of it.
            Some(tp) => assert!(
                (gp - tp).abs() < 1e-10 * tp.abs(),
                "{name}: {gp:e} vs taped {tp:e}"
            ),
        }
        assert!(
            sol.stats.jacobians > sol.stats.accepted,
            "{name}: {:?}",
            sol.stats
        );
    }
}

#[test]
fn strategies_that_do_not_run_implicit_stages_refuse_them() {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_element(1, 1, 1.0));
    let p = tape.var(DMatrix::from_element(1, 1, 10.0));
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
    let before = tape.len();
    let opts = Options::with_method("kvaerno5").unwrap();
    for name in ["backsolve", "backsolve-checkpointed:2", "reversible"] {
        let strategy: ode::Strategy = name.parse().unwrap();
        assert!(
            matches!(
                ode::odeint_with(&tape, &Relax, h0, t, &[p], &opts, &strategy),
                Err(Error::SchemeNotSupported { .. })
            ),
            "{name}"
        );
        assert_eq!(tape.len(), before);
    }
    // Forward over reverse through a stage would hold its iteration matrix fixed along
    // the dual direction: refused.
    let dual_tape = Tape::<Dual64>::new();
    let dh0 = dual_tape.var(DMatrix::from_element(1, 1, Dual64::new(1.0, 1.0)));
    let dp = dual_tape.var(DMatrix::from_element(1, 1, Dual64::from_re(10.0)));
    let dt = dual_tape.constant(DMatrix::from_row_slice(
        1,
        2,
        &[Dual64::from_re(0.0), Dual64::from_re(1.0)],
    ));
    assert!(matches!(
        odeint(&dual_tape, &Relax, dh0, dt, &[dp], &opts),
        Err(Error::SchemeNotSupported { .. })
    ));
    assert_eq!(tape.len(), before);
}

/// `h' = h Aᵀ` with a stiff, non-normal `A` (eigenvalues −1 and −1000) and no declaration of
/// independent rows: a dense Jacobian. `dL/dh0` for `L = sum h(T)` is `exp(Aᵀ T) 1`; the
/// fast mode has decayed to e^{−3} by T = 0.003, so both modes count.
#[derive(Clone, Copy)]
struct Linear;

impl<T: Scalar> Dynamics<T> for Linear {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.matmul_t(p[0])
    }
}

#[test]
fn a_dense_jacobian_system_gets_the_exact_gradient() {
    // A = Q diag(−1, −1000) Q⁻¹.
    let q = DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 0.5, -1.0]);
    let q_inv = q.clone().try_inverse().unwrap();
    let a = &q * DMatrix::from_row_slice(2, 2, &[-1.0, 0.0, 0.0, -1000.0]) * &q_inv;
    let t1 = 0.003;
    let expm = |t: f64| {
        let e = DMatrix::from_row_slice(2, 2, &[(-t).exp(), 0.0, 0.0, (-1000.0 * t).exp()]);
        &q * e * &q_inv
    };
    // h(T) = h0 exp(Aᵀ T), so dL/dh0 = exp(Aᵀ T) 1 = exp(A T)ᵀ 1.
    let expected = expm(t1).transpose() * DMatrix::from_element(2, 1, 1.0);
    let tape = Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_row_slice(1, 2, &[0.7, -0.2]));
    let av = tape.var(a.clone());
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, t1]));
    let opts = Options {
        max_num_steps: 100_000,
        ..Options::with_method("kvaerno5")
            .unwrap()
            .tolerances(1e-10, 1e-12)
    };
    let sol = odeint(&tape, &Linear, h0, t, &[av], &opts).unwrap();
    let g = tape.backward(sol.last().sum()).unwrap();
    let gh = g.get(h0).unwrap();
    for i in 0..2 {
        assert!(
            (gh[(0, i)] - expected[(i, 0)]).abs() < 1e-8,
            "{gh} vs {expected}"
        );
    }
    // The stiff mode costs tens of steps, not the thousands dopri5 needs.
    assert!(sol.stats.accepted < 200, "{:?}", sol.stats);
}

/// `y' = −p₀ (y³ − cos t) + p₁ y` on two rows: nonlinear and stiff (p₀ = 500).
#[derive(Clone, Copy)]
struct Cubic;

impl<T: Scalar> Dynamics<T> for Cubic {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (r, c) = h.shape()?;
        let target = t.cos().broadcast(r, c)?;
        let cube = h.mul(h)?.mul(h)?;
        cube.sub(target)?
            .mul(p[0])?
            .scale(T::constant(-1.0))
            .add(h.mul(p[1])?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}

/// The same discrete solve on `Dual64` (forward mode through every stage's
/// implicit-function theorem) and taped (reverse mode): one derivative, to rounding, for
/// every method and every input direction.
#[test]
fn dual_number_solves_through_implicit_stages_equal_the_taped_gradient() {
    let h0 = DMatrix::from_row_slice(2, 1, &[0.4, -0.9]);
    let p = [
        DMatrix::from_element(1, 1, 500.0),
        DMatrix::from_element(1, 1, 0.3),
    ];
    let grid = [0.0, 0.7, 1.5];
    for name in ["kvaerno3", "kvaerno5"] {
        let opts = Options {
            max_num_steps: 100_000,
            ..Options::with_method(name).unwrap().tolerances(1e-7, 1e-9)
        };
        // Taped: L = sum of h at every output after the first.
        let tape = Tape::<f64>::new();
        let hv = tape.var(h0.clone());
        let pv: Vec<_> = p.iter().map(|m| tape.var(m.clone())).collect();
        let t = tape.constant(DMatrix::from_row_slice(1, 3, &grid));
        let sol = odeint(&tape, &Cubic, hv, t, &pv, &opts).unwrap();
        let loss = sol.outputs[1].sum().add(sol.outputs[2].sum()).unwrap();
        let g = tape.backward(loss).unwrap();
        let mut taped = g.get(hv).unwrap().as_slice().to_vec();
        taped.extend(pv.iter().map(|v| g.get(*v).unwrap()[(0, 0)]));
        // Dual64: one input direction at a time.
        let lift = |m: &DMatrix<f64>, seed: Option<usize>| {
            DMatrix::from_fn(m.nrows(), m.ncols(), |r, c| {
                let k = r + c * m.nrows();
                Dual64::new(m[(r, c)], if seed == Some(k) { 1.0 } else { 0.0 })
            })
        };
        let times: Vec<Dual64> = grid.iter().map(|&x| Dual64::from_re(x)).collect();
        for (dir, want) in taped.iter().enumerate() {
            let hd = lift(&h0, (dir < 2).then_some(dir));
            let pd: Vec<_> = p
                .iter()
                .enumerate()
                .map(|(i, m)| lift(m, (dir == 2 + i).then_some(0)))
                .collect();
            let (hs, stats) = solve(&Cubic, &hd, &times, &pd, &opts).unwrap();
            let got: f64 = hs[1..].iter().flat_map(|m| m.iter()).map(|x| x.eps).sum();
            assert!(
                (got - want).abs() <= 1e-10 * want.abs().max(1e-3),
                "{name} direction {dir}: dual {got:e} vs taped {want:e}"
            );
            assert_eq!(stats.accepted, sol.stats.accepted, "{name}: the same steps");
        }
    }
}

/// `y' = a sin(b y)`: the simplified Newton with `J` from the step's start oscillates when
/// `c·a·b` is large and `y` moves across several periods.
#[derive(Clone, Copy)]
struct Wavy;

impl<T: Scalar> Dynamics<T> for Wavy {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.mul(p[1])?.sin().mul(p[0])
    }
}

/// `y' = −√y`: at `y = 0` its Jacobian is −∞.
#[derive(Clone, Copy)]
struct Root;

impl<T: Scalar> Dynamics<T> for Root {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        Ok(-h.sqrt())
    }
}

/// Sums over the batch: row r of f depends on every row of h.
#[derive(Clone, Copy)]
struct Coupled;

impl<T: Scalar> Dynamics<T> for Coupled {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (r, c) = h.shape()?;
        Ok(-h.sum().broadcast(r, c)?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}

/// After a failed solve the tape still records and differentiates a good one.
fn tape_still_works(tape: &Tape<f64>) {
    let h0 = tape.var(DMatrix::from_element(1, 1, 1.0));
    let p = tape.var(DMatrix::from_element(1, 1, 5.0));
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
    let opts = Options::with_method("kvaerno3").unwrap();
    let sol = odeint(tape, &Relax, h0, t, &[p], &opts).unwrap();
    let g = tape.backward(sol.last().sum()).unwrap();
    assert!(g.get(h0).unwrap()[(0, 0)].is_finite());
}

#[test]
fn bad_implicit_input_gets_typed_errors_and_the_tape_stays_usable() {
    let tape = Tape::<f64>::new();
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
    let h0 = tape.var(DMatrix::from_element(1, 1, 1.0));

    // I − c·J = 1 + 0.1·(−10) = 0 for implicit Euler at dt = 0.1 on y' = 10 (y − cos t).
    let p = tape.var(DMatrix::from_element(1, 1, -10.0));
    let fixed = Options::fixed("implicit_euler", 0.1).unwrap();
    let err = odeint(&tape, &Relax, h0, t, &[p], &fixed)
        .err()
        .expect("an error");
    assert!(
        matches!(err, Error::SingularIterationMatrix { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("smaller step"), "{err}");
    // The adaptive method shrinks the step past the singular c and solves it.
    let adaptive = Options::with_method("kvaerno5").unwrap();
    let sol = odeint(&tape, &Relax, h0, t, &[p], &adaptive).unwrap();
    assert!(sol.last().value().unwrap()[(0, 0)].is_finite());
    tape_still_works(&tape);

    // A Newton that never converges at a fixed step: a typed error naming the fix.
    let wavy = [
        tape.var(DMatrix::from_element(1, 1, 50.0)),
        tape.var(DMatrix::from_element(1, 1, 20.0)),
    ];
    let big = Options::fixed("implicit_euler", 0.5).unwrap();
    let err = odeint(&tape, &Wavy, h0, t, &wavy, &big)
        .err()
        .expect("an error");
    assert!(matches!(err, Error::NewtonFailed { .. }), "{err}");
    assert!(err.to_string().contains("smaller step_size"), "{err}");
    // Adaptive steps reject and retry smaller instead.
    let (_, stats) = solve(
        &Wavy,
        &DMatrix::from_element(1, 1, 1.0),
        &[0.0, 1.0],
        &[
            DMatrix::from_element(1, 1, 50.0),
            DMatrix::from_element(1, 1, 20.0),
        ],
        &Options::with_method("kvaerno5").unwrap(),
    )
    .unwrap();
    assert!(stats.accepted > 0);
    tape_still_works(&tape);

    // An infinite Jacobian (√y at 0): refused, naming the Jacobian.
    let zero = tape.var(DMatrix::from_element(1, 1, 0.0));
    let err = odeint(&tape, &Root, zero, t, &[], &adaptive)
        .err()
        .expect("an error");
    assert!(
        matches!(err, Error::NonFinite { what, .. } if what.contains("Jacobian")),
        "{err}"
    );
    tape_still_works(&tape);

    // Rows declared independent but coupled: caught on the first Jacobian.
    let batch = tape.var(DMatrix::from_row_slice(2, 1, &[1.0, 2.0]));
    let err = odeint(&tape, &Coupled, batch, t, &[], &adaptive)
        .err()
        .expect("an error");
    assert!(matches!(err, Error::RowsCoupled { row: 1 }), "{err}");
    tape_still_works(&tape);
}

/// The continuous adjoints on a stiff problem: `a` integrated backwards by the implicit
/// method (Newton on `−Jᵀ`), `h` from the forward's interpolant. Against the closed form
/// (linear, λ = 1e3) and the taped gradient (nonlinear), to the tolerance, not to rounding.
#[test]
fn continuous_adjoints_integrate_the_adjoint_implicitly() {
    let lambda: f64 = 1e3;
    let (y0, t1) = (0.3, 2.0);
    let dy0 = (-lambda * t1).exp();
    let eps = 1e-3;
    let dlambda = (exact(lambda + eps, y0, t1) - exact(lambda - eps, y0, t1)) / (2.0 * eps);
    let opts = Options {
        max_num_steps: 100_000,
        ..Options::with_method("kvaerno5")
            .unwrap()
            .tolerances(1e-9, 1e-11)
    };
    for name in ["interpolating", "gauss"] {
        let strategy: ode::Strategy = name.parse().unwrap();
        let tape = Tape::<f64>::new();
        let h0 = tape.var(DMatrix::from_element(1, 1, y0));
        let p = tape.var(DMatrix::from_element(1, 1, lambda));
        let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, t1]));
        let sol = ode::odeint_with(&tape, &Relax, h0, t, &[p], &opts, &strategy).unwrap();
        let g = tape.backward(sol.last().sum()).unwrap();
        let stats = sol.backward_stats(&g).unwrap();
        let (gh, gp) = (g.get(h0).unwrap()[(0, 0)], g.get(p).unwrap()[(0, 0)]);
        assert!((gh - dy0).abs() < 1e-9, "{name}: dh/dy0 {gh:e} vs {dy0:e}");
        assert!(
            (gp - dlambda).abs() < 1e-4 * dlambda.abs(),
            "{name}: dh/dλ {gp:e} vs {dlambda:e}"
        );
        // An explicit backward solve of a' = λ a needs ~λ·T/3 steps; the implicit one few.
        assert!(stats.accepted < 300, "{name}: {stats:?}");
    }
    // Nonlinear: against the taped gradient of the same forward.
    let h0v = DMatrix::from_row_slice(2, 1, &[0.4, -0.9]);
    let pv = [
        DMatrix::from_element(1, 1, 500.0),
        DMatrix::from_element(1, 1, 0.3),
    ];
    let mut grads: Vec<Vec<f64>> = Vec::new();
    for name in ["taped", "interpolating", "gauss", "auto:1"] {
        let strategy: ode::Strategy = name.parse().unwrap();
        let tape = Tape::<f64>::new();
        let h0 = tape.var(h0v.clone());
        let p: Vec<_> = pv.iter().map(|m| tape.var(m.clone())).collect();
        let t = tape.constant(DMatrix::from_row_slice(1, 3, &[0.0, 0.7, 1.5]));
        let sol = ode::odeint_with(&tape, &Cubic, h0, t, &p, &opts, &strategy).unwrap();
        if name == "auto:1" {
            assert!(
                sol.strategy.reason.contains("interpolating"),
                "{}",
                sol.strategy.reason
            );
        }
        let loss = sol.outputs[1].sum().add(sol.outputs[2].sum()).unwrap();
        let g = tape.backward(loss).unwrap();
        let mut v = g.get(h0).unwrap().as_slice().to_vec();
        v.extend(p.iter().map(|x| g.get(*x).unwrap()[(0, 0)]));
        grads.push(v);
    }
    for (name, got) in ["interpolating", "gauss", "auto:1"].iter().zip(&grads[1..]) {
        for (a, b) in got.iter().zip(&grads[0]) {
            assert!(
                (a - b).abs() < 1e-5 * b.abs().max(1e-2),
                "{name}: {got:?} vs taped {:?}",
                grads[0]
            );
        }
    }
}

/// Backsolve reconstructs `h` backwards: through a stiff field its decaying mode grows as
/// `e^{λ t}` backwards. With an explicit backward method it runs, and fails.
#[test]
fn backsolve_through_a_stiff_field_is_unstable() {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_element(1, 1, 0.3));
    let p = tape.var(DMatrix::from_element(1, 1, 1e3));
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 2.0]));
    let opts = Options {
        max_num_steps: 20_000,
        ..Options::with_method("kvaerno5")
            .unwrap()
            .tolerances(1e-8, 1e-10)
    };
    let refused = ode::odeint_with(
        &tape,
        &Relax,
        h0,
        t,
        &[p],
        &opts,
        &"backsolve".parse().unwrap(),
    )
    .err()
    .expect("an error");
    assert!(
        refused.to_string().contains("interpolating or gauss"),
        "{refused}"
    );
    let explicit = ode::Strategy::Backsolve(ode::Backsolve {
        method: Some(ode::method_by_name("dopri5").unwrap()),
        ..ode::Backsolve::default()
    });
    let sol = ode::odeint_with(&tape, &Relax, h0, t, &[p], &opts, &explicit).unwrap();
    let dy0 = (-1e3f64 * 2.0).exp();
    match tape.backward(sol.last().sum()) {
        Err(e) => println!("backsolve failed, as expected: {e}"),
        Ok(g) => {
            let gh = g.get(h0).unwrap()[(0, 0)];
            // If it finishes at all, h has left the slow manifold and the gradient is wrong.
            assert!(
                (gh - dy0).abs() > 1e3 * dy0,
                "backsolve dh/dy0 {gh:e} vs {dy0:e}"
            );
        }
    }
}

/// Tangent-aware step control with an implicit method: the planning system's Newton runs on
/// `J` repeated over the blocks `[y | u]`, and the exact strategies replay its steps. Here a
/// parameter forces a state that sits at rest (`y' = −λ (y − a sin 3t)` at `a = 0`): primal
/// control sees nothing to resolve, and its gradient in `a` is off; with tangents it is right.
#[derive(Clone, Copy)]
struct Forced;

impl<T: Scalar> Dynamics<T> for Forced {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (r, c) = h.shape()?;
        let forcing = t.scale(T::constant(3.0)).sin().mul(p[1])?.broadcast(r, c)?;
        Ok(-(h.sub(forcing)?.mul(p[0])?))
    }
    fn rows_independent(&self) -> bool {
        true
    }
}

#[test]
fn tangent_control_resolves_the_sensitivities_of_an_implicit_solve() {
    let (lambda, t1) = (1e3, 2.0);
    // dh(t1)/da for h0 = 0, a = 0: the particular solution's coefficient.
    let exact = {
        let w = 3.0f64;
        let l: f64 = lambda;
        l * (l * (w * t1).sin() - w * (w * t1).cos() + w * (-l * t1).exp()) / (l * l + w * w)
    };
    let grad = |opts: &Options, strategy: &str| {
        let tape = Tape::<f64>::new();
        let h0 = tape.var(DMatrix::from_element(1, 1, 0.0));
        let p = [
            tape.var(DMatrix::from_element(1, 1, lambda)),
            tape.var(DMatrix::from_element(1, 1, 0.0)),
        ];
        let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, t1]));
        let sol =
            ode::odeint_with(&tape, &Forced, h0, t, &p, opts, &strategy.parse().unwrap()).unwrap();
        let g = tape.backward(sol.last().sum()).unwrap();
        (g.get(p[1]).unwrap()[(0, 0)], sol.stats)
    };
    let opts = Options {
        max_num_steps: 100_000,
        ..Options::with_method("kvaerno5")
            .unwrap()
            .tolerances(1e-6, 1e-8)
    };
    let (primal, primal_stats) = grad(&opts, "taped");
    let tangents = opts.clone().with_tangents(1);
    let (taped, stats) = grad(&tangents, "taped");
    let (replayed, _) = grad(&tangents, "checkpointed:2");
    println!(
        "exact {exact:e}; primal {primal:e} ({primal_stats:?}); tangents {taped:e} ({stats:?})"
    );
    // Primal control: 8 steps growing tenfold (3.5e-4 off); tangents: ~100 steps (6e-7).
    assert!(
        (primal - exact).abs() > 1e-4 * exact.abs(),
        "primal control resolves it already: {primal:e} vs {exact:e}"
    );
    assert!(
        (taped - exact).abs() < 1e-5 * exact.abs(),
        "with tangents {taped:e} vs {exact:e}"
    );
    assert!((replayed - taped).abs() < 1e-10 * taped.abs());
    assert!(stats.tangent_nfe > 0 && stats.accepted > primal_stats.accepted);
}

/// f32 and a dense Jacobian over a batch (rows coupled through a shared mean): every
/// strategy that runs implicit methods, against the f64 taped gradient.
#[derive(Clone, Copy)]
struct MeanField;

impl<T: Scalar> Dynamics<T> for MeanField {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (r, c) = h.shape()?;
        let mean = h
            .sum()
            .scale(T::constant(1.0 / (r * c) as f64))
            .broadcast(r, c)?;
        // Stiff pull towards the batch mean, and a slow nonlinear drift.
        let pull = h.sub(mean)?.mul(p[0])?.scale(T::constant(-1.0));
        pull.add(h.tanh().mul(p[1])?)
    }
}

fn mean_field_gradient<T: Scalar>(strategy: &str, rtol: f64) -> Vec<f64> {
    let tape = Tape::<T>::new();
    let h0 =
        tape.var(DMatrix::from_row_slice(3, 2, &[0.5, -0.2, 0.1, 0.9, -0.7, 0.3]).map(T::constant));
    let p = [
        tape.var(DMatrix::from_element(1, 1, T::constant(300.0))),
        tape.var(DMatrix::from_element(1, 1, T::constant(-0.8))),
    ];
    let t = tape.constant(DMatrix::from_row_slice(1, 3, &[0.0, 0.4, 1.0]).map(T::constant));
    let opts = Options {
        max_num_steps: 100_000,
        ..Options::with_method("kvaerno5")
            .unwrap()
            .tolerances(rtol, rtol * 1e-2)
    };
    let sol = ode::odeint_with(
        &tape,
        &MeanField,
        h0,
        t,
        &p,
        &opts,
        &strategy.parse().unwrap(),
    )
    .unwrap();
    let loss = sol.outputs[1]
        .sum()
        .add(sol.outputs[2].mul(sol.outputs[2]).unwrap().sum())
        .unwrap();
    let g = tape.backward(loss).unwrap();
    let mut v: Vec<f64> = g.get(h0).unwrap().iter().map(|x| x.primal()).collect();
    v.extend(p.iter().map(|x| g.get(*x).unwrap()[(0, 0)].primal()));
    v
}

#[test]
fn implicit_gradients_hold_in_f32_and_with_a_dense_batch_jacobian() {
    let reference = mean_field_gradient::<f64>("taped", 1e-10);
    let scale = reference.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let worst = |v: &[f64]| {
        v.iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
            / scale
    };
    for strategy in [
        "taped",
        "aca",
        "checkpointed:3",
        "interpolating",
        "gauss",
        "auto:1",
    ] {
        let e64 = worst(&mean_field_gradient::<f64>(strategy, 1e-7));
        let e32 = worst(&mean_field_gradient::<f32>(strategy, 1e-5));
        println!("{strategy}: f64 {e64:.1e}, f32 {e32:.1e}");
        assert!(e64 < 5e-6, "{strategy} f64: {e64:e}");
        assert!(e32 < 2e-4, "{strategy} f32: {e32:e}");
    }
}
