//! `ode::jacobian`: ∂f/∂h from dual-number sweeps, dense or block-diagonal over the batch,
//! against closed forms and finite differences; the block structure's cost; bad fields.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::{Result as TapeResult, Scalar, Var};
use common::{Declared, LotkaVolterra, Mlp, Rng};
use ode::jacobian::{jacobian, Jacobian};
use ode::{Dynamics, Error};

fn lv_params() -> Vec<DMatrix<f64>> {
    [1.5, 1.0, 3.0, 1.0]
        .iter()
        .map(|&v| DMatrix::from_element(1, 1, v))
        .collect()
}

#[test]
fn a_dense_jacobian_matches_the_closed_form() {
    let h = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 0.5, 3.0]);
    let (jac, stats) = jacobian::<f64, _>(&LotkaVolterra, 0.0, &h, &lv_params()).unwrap();
    assert_eq!(stats.sweeps, 4);
    let Jacobian::Dense(m) = jac else {
        panic!("LotkaVolterra does not declare independent rows")
    };
    let (alpha, beta, gamma, delta) = (1.5, 1.0, 3.0, 1.0);
    let b = 2;
    for r in 0..b {
        let (x, y) = (h[(r, 0)], h[(r, 1)]);
        let block = [
            [alpha - beta * y, -beta * x],
            [delta * y, delta * x - gamma],
        ];
        for i in 0..2 {
            for j in 0..2 {
                assert_eq!(m[(r + i * b, r + j * b)], block[i][j], "row {r} ({i}, {j})");
                // Nothing couples row r to the other row.
                assert_eq!(m[(r + i * b, (1 - r) + j * b)], 0.0);
            }
        }
    }
}

#[test]
fn blocks_equal_the_dense_jacobian_and_finite_differences() {
    let mut rng = Rng::new(3);
    let mlp = Mlp::TIMED;
    let params = mlp.params(&mut rng, 3, 8, 0.9);
    let h = rng.matrix(4, 3, 1.0);
    let t = 0.7;
    let (dense, ds) = jacobian::<f64, _>(&Declared(mlp, false), t, &h, &params).unwrap();
    let (blocks, bs) = jacobian::<f64, _>(&Declared(mlp, true), t, &h, &params).unwrap();
    assert_eq!((ds.sweeps, bs.sweeps), (12, 3 + 1));
    assert!(matches!(blocks, Jacobian::Blocks(ref b) if b.len() == 4));
    let (dense, blocks) = (dense.to_dense(), blocks.to_dense());
    assert!((&dense - &blocks).abs().max() < 1e-15);
    // Central differences of f, column by column.
    let f = |h: &DMatrix<f64>| {
        let tape = ad_core::Tape::<f64>::new();
        let hv = tape.constant(h.clone());
        let tv = tape.constant(DMatrix::from_element(1, 1, t));
        let pv: Vec<_> = params.iter().map(|p| tape.constant(p.clone())).collect();
        mlp.eval(tv, hv, &pv).unwrap().value().unwrap()
    };
    let eps = 1e-6;
    for k in 0..h.len() {
        let (mut up, mut down) = (h.clone(), h.clone());
        up.as_mut_slice()[k] += eps;
        down.as_mut_slice()[k] -= eps;
        let column = (f(&up) - f(&down)) / (2.0 * eps);
        for i in 0..h.len() {
            assert!(
                (dense[(i, k)] - column.as_slice()[i]).abs() < 1e-8,
                "({i}, {k})"
            );
        }
    }
}

/// `f = h − mean over the batch`: couples every row to every other.
#[derive(Clone)]
struct Centred;

impl<T: Scalar> Dynamics<T> for Centred {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (rows, cols) = h.shape()?;
        let mean = h.sum_rows().scale(T::constant(1.0 / rows as f64));
        h.sub(mean.broadcast(rows, cols)?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}

/// `f = sqrt(h)`: its derivative at 0 is infinite.
#[derive(Clone)]
struct Root;

impl<T: Scalar> Dynamics<T> for Root {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        Ok(h.sqrt())
    }
}

#[test]
fn bad_fields_and_sizes_are_typed_errors() {
    let h = DMatrix::from_row_slice(3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    match jacobian::<f64, _>(&Centred, 0.0, &h, &[]) {
        Err(e @ Error::RowsCoupled { row: 1 }) => assert!(e.to_string().contains("return false")),
        other => panic!("expected RowsCoupled, got {:?}", other.map(|_| ())),
    }
    // Declared honestly, the same field has a dense Jacobian.
    let (jac, _) = jacobian::<f64, _>(&Declared(Centred, false), 0.0, &h, &[]).unwrap();
    assert!((jac.to_dense()[(0, 1)] + 1.0 / 3.0).abs() < 1e-15);
    let zero = DMatrix::from_row_slice(1, 2, &[0.0, 1.0]);
    assert!(matches!(
        jacobian::<f64, _>(&Root, 0.0, &zero, &[]),
        Err(Error::NonFinite {
            what: "Jacobian of f",
            ..
        })
    ));
    assert!(matches!(
        jacobian::<f64, _>(&Root, 0.0, &DMatrix::zeros(0, 2), &[]),
        Err(Error::EmptyState { .. })
    ));
    // A dense Jacobian of a 2000 × 600 state would have 1.44e12 entries: refused before any
    // sweep or allocation.
    let big = DMatrix::from_element(2000, 600, 1.0);
    assert!(matches!(
        jacobian::<f64, _>(&Declared(Root, false), 0.0, &big, &[]),
        Err(Error::Tape(ad_core::Error::TooLarge { .. }))
    ));
}

#[test]
fn a_neural_ode_at_the_seeds_shape_uses_its_block_structure() {
    // batch 32 × dim 64: 64 sweeps (+ the probe) and 32 blocks of 64 × 64, never a
    // 2048 × 2048 matrix.
    let mut rng = Rng::new(9);
    let mlp = Mlp::DECAY;
    let params = mlp.params(&mut rng, 64, 64, 0.2);
    let h = rng.matrix(32, 64, 1.0);
    let (jac, stats) = jacobian::<f64, _>(&Declared(mlp, true), 0.0, &h, &params).unwrap();
    assert_eq!(stats.sweeps, 65);
    let Jacobian::Blocks(blocks) = &jac else {
        panic!("expected blocks")
    };
    assert_eq!((blocks.len(), blocks[0].shape()), (32, (64, 64)));
    // f = mlp(h) − h: every block's diagonal carries the −1.
    let (dense_row, _) = jacobian::<f64, _>(
        &Declared(mlp, false),
        0.0,
        &h.rows(5, 1).into_owned(),
        &params,
    )
    .unwrap();
    assert!((&dense_row.to_dense() - &blocks[5]).abs().max() < 1e-14);
    // f32 builds the same blocks in its precision.
    let h32 = h.map(|x| x as f32);
    let p32: Vec<_> = params.iter().map(|p| p.map(|x| x as f32)).collect();
    let (jac32, _) = jacobian::<f32, _>(&Declared(mlp, true), 0.0, &h32, &p32).unwrap();
    let Jacobian::Blocks(blocks32) = &jac32 else {
        panic!("expected blocks")
    };
    let err = blocks32
        .iter()
        .zip(blocks)
        .map(|(a, b)| (a.map(f64::from) - b).abs().max())
        .fold(0.0, f64::max);
    assert!(err < 1e-5, "{err}");
}
