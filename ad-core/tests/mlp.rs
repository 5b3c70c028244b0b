//! A 2-layer tanh MLP: the reverse-mode gradient of every parameter from `Tape<f64>` matches
//! forward mode on `Tape<Dual64>`, one dual pass per parameter entry.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::{Result, Scalar, Tape, Var};
use common::assert_close;

/// Deterministic, irregular test values.
fn filled(r: usize, c: usize, seed: f64) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |i, j| {
        (seed + 1.3 * i as f64 + 0.7 * j as f64 + 0.37 * (i * j) as f64).sin()
    })
}

struct Problem {
    x: DMatrix<f64>,
    target: DMatrix<f64>,
    /// W1 (4x3), b1 (1x4), W2 (2x4), b2 (1x2).
    params: [DMatrix<f64>; 4],
}

fn problem() -> Problem {
    Problem {
        x: filled(5, 3, 0.1) * 1.5,
        target: filled(5, 2, 2.0) * 0.5,
        params: [
            filled(4, 3, 0.5),
            filled(1, 4, 1.1) * 0.2,
            filled(2, 4, -0.3),
            filled(1, 2, 3.1) * 0.2,
        ],
    }
}

/// loss = mse(tanh(x W1ᵀ + b1) W2ᵀ + b2, target).
fn mlp_loss<'t, T: Scalar>(
    tape: &'t Tape<T>,
    x: DMatrix<T>,
    target: DMatrix<T>,
    params: [DMatrix<T>; 4],
) -> Result<(Var<'t, T>, [Var<'t, T>; 4])> {
    let x = tape.constant(x);
    let target = tape.constant(target);
    let p = params.map(|m| tape.var(m));
    let [w1, b1, w2, b2] = p;
    let h = x.matmul_t(w1)?.add_row(b1)?.tanh();
    let y = h.matmul_t(w2)?.add_row(b2)?;
    Ok((y.mse(target)?, p))
}

fn lift(m: &DMatrix<f64>) -> DMatrix<Dual64> {
    m.map(Dual64::from)
}

#[test]
fn mlp_reverse_gradient_equals_forward_mode() -> Result<()> {
    let pb = problem();
    let tape = Tape::<f64>::new();
    let (loss, vars) = mlp_loss(&tape, pb.x.clone(), pb.target.clone(), pb.params.clone())?;
    let loss_value = loss.scalar_value()?;
    assert!(
        loss_value > 0.01,
        "a trivial loss would not test much: {loss_value}"
    );
    let stats = tape.stats();
    assert_eq!(stats.per_op["matmul_t"], 2);
    assert_eq!(stats.per_op["add_row"], 2);
    assert_eq!(stats.per_op["tanh"], 1);
    assert_eq!(stats.per_op["mse"], 1);
    assert_eq!(stats.graph_nodes, 6);
    let grads = tape.backward(loss)?;
    assert_eq!(grads.len(), 4);

    let mut checked = 0;
    for (p, var) in vars.iter().enumerate() {
        let g = grads.get(*var).expect("every parameter gets a gradient");
        assert_eq!(g.shape(), pb.params[p].shape());
        assert!(
            g.amax() > 1e-3,
            "parameter {p}: gradient {g} is suspiciously small"
        );
        for j in 0..g.ncols() {
            for i in 0..g.nrows() {
                // One forward pass with ε = 1 on entry (i, j) of parameter p.
                let mut params = pb.params.each_ref().map(lift);
                params[p][(i, j)].eps = 1.0;
                let dtape = Tape::<Dual64>::new();
                let (dloss, _) = mlp_loss(&dtape, lift(&pb.x), lift(&pb.target), params)?;
                let d = dloss.scalar_value()?;
                assert_close(d.re, loss_value, 1e-13, 1e-300);
                assert_close(g[(i, j)], d.eps, 1e-12, 1e-2);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 3 + 4 + 2 * 4 + 2);
    Ok(())
}
