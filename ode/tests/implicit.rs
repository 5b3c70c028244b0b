//! Diagonally implicit methods (kvaerno3, kvaerno5, implicit_euler) on stiff problems, values
//! only: a stiff relaxation onto cos t, where dopri5 needs thousands of steps.

mod common;

use ad_core::nalgebra::DMatrix;
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

#[test]
fn gradients_through_implicit_steps_are_refused_for_now() {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_element(1, 1, 1.0));
    let p = tape.var(DMatrix::from_element(1, 1, 10.0));
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
    let before = tape.len();
    let opts = Options::with_method("kvaerno5").unwrap();
    assert!(matches!(
        odeint(&tape, &Relax, h0, t, &[p], &opts),
        Err(Error::SchemeNotSupported { .. })
    ));
    assert_eq!(tape.len(), before);
}
