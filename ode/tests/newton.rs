//! `ode::newton`: the iteration matrix `I − c·J` (dense or per batch row) and simplified
//! Newton on implicit stage equations `z = s + c·f(t, z)`, with Jacobians from
//! `ode::jacobian`.

mod common;

use ad_core::nalgebra::DMatrix;
use common::{field, Declared, LotkaVolterra, Mlp, Rng};
use ode::jacobian::{jacobian, Jacobian};
use ode::newton::{newton, IterationMatrix, NewtonSettings, Outcome};
use ode::{Dynamics, Error};

fn lv_params() -> Vec<DMatrix<f64>> {
    [1.5, 1.0, 3.0, 1.0]
        .iter()
        .map(|&v| DMatrix::from_element(1, 1, v))
        .collect()
}

/// Solve `z = s + c f(t, z)` from `z = s` with the Jacobian at `s`.
fn stage<F: Dynamics<f64> + Dynamics<ad_core::num_dual::Dual64>>(
    f: &F,
    s: &DMatrix<f64>,
    c: f64,
    params: &[DMatrix<f64>],
    settings: &NewtonSettings,
) -> (Outcome<f64>, Jacobian<f64>) {
    let (jac, _) = jacobian::<f64, _>(f, 0.0, s, params).unwrap();
    let m = IterationMatrix::new(&jac, c).unwrap();
    let outcome = newton(&m, s, settings, |z| {
        Ok(z - s - field(f, 0.0, z, params) * c)
    })
    .unwrap();
    (outcome, jac)
}

#[test]
fn newton_solves_stage_equations_dense_and_blocked() {
    let settings = NewtonSettings {
        rtol: 1e-10,
        atol: 1e-12,
        ..NewtonSettings::default()
    };
    let s = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 0.5, 3.0]);
    let (outcome, _) = stage(&LotkaVolterra, &s, 0.05, &lv_params(), &settings);
    let Outcome::Converged { z, iterations } = outcome else {
        panic!("{outcome:?}")
    };
    let residual = &z - &s - field(&LotkaVolterra, 0.0, &z, &lv_params()) * 0.05;
    assert!(residual.abs().max() < 1e-11, "{}", residual.abs().max());
    assert!(iterations <= 6, "{iterations}");

    // A field with independent rows: per-row LUs give the dense solution.
    let mut rng = Rng::new(5);
    let params = Mlp::DECAY.params(&mut rng, 3, 6, 0.8);
    let s = rng.matrix(4, 3, 1.0);
    let (dense, jd) = stage(&Declared(Mlp::DECAY, false), &s, 0.3, &params, &settings);
    let (blocked, jb) = stage(&Declared(Mlp::DECAY, true), &s, 0.3, &params, &settings);
    assert!(matches!(jd, Jacobian::Dense(_)) && matches!(jb, Jacobian::Blocks(_)));
    let (Outcome::Converged { z: zd, .. }, Outcome::Converged { z: zb, .. }) = (dense, blocked)
    else {
        panic!("both converge")
    };
    assert!((&zd - &zb).abs().max() < 1e-12);
}

#[test]
fn transposed_solves_match_the_explicit_inverse() {
    let mut rng = Rng::new(8);
    let blocks: Vec<DMatrix<f64>> = (0..3).map(|_| rng.matrix(4, 4, 1.0)).collect();
    let jac = Jacobian::Blocks(blocks);
    let c = 0.4;
    let m = IterationMatrix::new(&jac, c).unwrap();
    let dense = DMatrix::<f64>::identity(12, 12) - jac.to_dense() * c;
    let rhs = rng.matrix(3, 4, 1.0);
    let flat = DMatrix::from_column_slice(12, 1, rhs.as_slice());
    for (transpose, matrix) in [(false, dense.clone()), (true, dense.transpose())] {
        let expected = matrix.try_inverse().unwrap() * &flat;
        let got = if transpose {
            m.solve_transpose(&rhs).unwrap()
        } else {
            m.solve(&rhs).unwrap()
        };
        let got = DMatrix::from_column_slice(12, 1, got.as_slice());
        assert!(
            (got - expected).abs().max() < 1e-12,
            "transpose {transpose}"
        );
    }
    // The same through one dense LU.
    let m = IterationMatrix::new(&Jacobian::Dense(jac.to_dense()), c).unwrap();
    let expected = dense.transpose().try_inverse().unwrap() * &flat;
    let got = m.solve_transpose(&rhs).unwrap();
    assert!(
        (DMatrix::from_column_slice(12, 1, got.as_slice()) - expected)
            .abs()
            .max()
            < 1e-12
    );
    // A right-hand side of the wrong shape is an error, not a panic.
    assert!(matches!(
        m.solve(&DMatrix::zeros(2, 4)),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn singular_matrices_and_divergence_are_reported() {
    let c = 0.5;
    // I − c J = 0.
    let singular = Jacobian::Dense(DMatrix::<f64>::identity(2, 2) / c);
    match IterationMatrix::new(&singular, c) {
        Err(e @ Error::SingularIterationMatrix { block: None, .. }) => {
            assert!(e.to_string().contains("smaller step"), "{e}")
        }
        other => panic!("expected SingularIterationMatrix, got {other:?}"),
    }
    let blocks = Jacobian::Blocks(vec![DMatrix::zeros(2, 2), DMatrix::identity(2, 2) / c]);
    assert!(matches!(
        IterationMatrix::new(&blocks, c),
        Err(Error::SingularIterationMatrix { block: Some(1), .. })
    ));
    let nan = Jacobian::Dense(DMatrix::from_element(1, 1, f64::NAN));
    assert!(matches!(
        IterationMatrix::new(&nan, c),
        Err(Error::SingularIterationMatrix { .. })
    ));

    // z = 1 + c·(−10 z³) with a Jacobian of the wrong sign: the iteration runs away.
    let wrong =
        IterationMatrix::new(&Jacobian::Dense(DMatrix::from_element(1, 1, 30.0)), 0.2).unwrap();
    let start = DMatrix::from_element(1, 1, 1.0);
    let outcome = newton(&wrong, &start, &NewtonSettings::default(), |z| {
        Ok(z.map(|z| z - 1.0 + 0.2 * 10.0 * z * z * z))
    })
    .unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Diverged { .. } | Outcome::NotConverged { .. }
        ),
        "{outcome:?}"
    );
    // A NaN residual is a divergence the caller answers with a smaller step.
    let fine =
        IterationMatrix::new(&Jacobian::Dense(DMatrix::from_element(1, 1, -1.0)), 0.2).unwrap();
    let outcome = newton(&fine, &start, &NewtonSettings::default(), |z| {
        Ok(z.map(|_| f64::NAN))
    })
    .unwrap();
    assert!(matches!(outcome, Outcome::Diverged { rate, .. } if rate.is_infinite()));
}
