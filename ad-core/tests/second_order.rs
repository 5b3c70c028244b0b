//! Second (and third) derivatives by running the tape on dual numbers: forward-over-reverse
//! Hessian-vector products on `Tape<Dual64>`, and `HyperDual64` / `DualSVec64<2>` tapes.

mod common;

use ad_core::nalgebra::{dmatrix, Const, DMatrix, U1};
use ad_core::num_dual::{Dual64, DualSVec64, HyperDual64};
use ad_core::{Result, Tape};
use common::{assert_close, assert_mat_close, dual, eps, re};

/// Gradient (real parts) and Hessian-vector product (ε parts) of the loss built by `f`, by
/// one backward pass on `Tape<Dual64>` with `x = x0 + v ε`.
fn grad_and_hvp(
    x0: &DMatrix<f64>,
    v: &DMatrix<f64>,
    f: impl for<'t> Fn(ad_core::Var<'t, Dual64>) -> Result<ad_core::Var<'t, Dual64>>,
) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
    let tape = Tape::<Dual64>::new();
    let x = tape.var(dual(x0, v));
    let loss = f(x)?;
    let grads = tape.backward(loss)?;
    let g = grads.get(x).expect("the loss depends on x");
    Ok((re(g), eps(g)))
}

#[test]
fn hvp_of_sum_sin_times_square() -> Result<()> {
    // f(x) = Σ sin(xᵢ) xᵢ²:  ∂ᵢf = cos(xᵢ) xᵢ² + 2 xᵢ sin(xᵢ),
    // H = diag((2 - xᵢ²) sin(xᵢ) + 4 xᵢ cos(xᵢ)).
    let x0 = dmatrix![0.3, -1.2, 2.0; 0.7, 1.5, -0.4];
    let v = dmatrix![1.0, -0.5, 0.25; 2.0, 0.0, -1.5];
    let (g, hv) = grad_and_hvp(&x0, &v, |x| Ok(x.sin().mul(x.square())?.sum()))?;
    let g_hand = x0.map(|x| x.cos() * x * x + 2.0 * x * x.sin());
    let hv_hand = x0.zip_map(&v, |x, v| ((2.0 - x * x) * x.sin() + 4.0 * x * x.cos()) * v);
    assert_mat_close(&g, &g_hand, 1e-14, 1.0);
    assert_mat_close(&hv, &hv_hand, 1e-14, 1.0);
    Ok(())
}

#[test]
fn hvp_with_a_dense_hessian() -> Result<()> {
    // f(x) = Σ xᵢ³ / 3 + (Σ xᵢ)²:  ∂ᵢf = xᵢ² + 2 Σx,  H = diag(2x) + 2 11ᵀ,
    // so H v = 2 x ∘ v + 2 (Σ v) 1.
    let x0 = dmatrix![0.5, -1.0; 2.0, 0.25; -0.75, 1.5];
    let v = dmatrix![1.0, 2.0; -1.0, 0.5; 0.0, 3.0];
    let (g, hv) = grad_and_hvp(&x0, &v, |x| {
        let cubes = x.powi(3).scale(Dual64::from(1.0 / 3.0)).sum();
        cubes.add(x.sum().square())
    })?;
    let s = x0.sum();
    let g_hand = x0.map(|x| x * x + 2.0 * s);
    let hv_hand = x0.zip_map(&v, |x, v| 2.0 * x * v) + DMatrix::from_element(3, 2, 2.0 * v.sum());
    assert_mat_close(&g, &g_hand, 1e-14, 1.0);
    assert_mat_close(&hv, &hv_hand, 1e-14, 1.0);
    // The off-diagonal part matters: with it dropped the result would differ by 2 Σv = 11.
    assert!((hv - x0.zip_map(&v, |x, v| 2.0 * x * v)).amax() > 10.0);
    Ok(())
}

#[test]
fn hvp_of_least_squares_through_matmul() -> Result<()> {
    // f(w) = mse(A w, t) = |A w - t|² / n:  H = 2 AᵀA / n, independent of w.
    let a = dmatrix![1.0, 2.0; -1.0, 0.5; 3.0, -2.0];
    let t = dmatrix![0.5; -1.0; 2.0];
    let w0 = dmatrix![0.3; -0.7];
    let v = dmatrix![1.0; -2.0];
    let (a_d, t_d) = (a.map(Dual64::from), t.map(Dual64::from));
    let (g, hv) = grad_and_hvp(&w0, &v, |w| {
        let tape = w.tape();
        tape.constant(a_d.clone())
            .matmul(w)?
            .mse(tape.constant(t_d.clone()))
    })?;
    let g_hand = a.transpose() * (&a * &w0 - &t) * (2.0 / 3.0);
    let hv_hand = a.transpose() * (&a * &v) * (2.0 / 3.0);
    assert_mat_close(&g, &g_hand, 1e-14, 1.0);
    assert_mat_close(&hv, &hv_hand, 1e-14, 1.0);
    Ok(())
}

#[test]
fn hyperdual_tape_gives_second_and_third_derivatives_of_tanh() -> Result<()> {
    let x0: f64 = 0.7;
    let t = x0.tanh();
    let s = 1.0 - t * t; // tanh'
    let d2 = -2.0 * t * s; // tanh''
    let d3 = -2.0 * s * (1.0 - 3.0 * t * t); // tanh'''

    let tape = Tape::<HyperDual64>::new();
    let x = tape.var(dmatrix![HyperDual64::new(x0, 1.0, 1.0, 0.0)]);
    let y = x.tanh().sum();
    let yv = y.scalar_value()?;
    assert_close(yv.re, t, 1e-15, 1e-300);
    assert_close(yv.eps1, s, 1e-15, 1e-300);
    assert_close(yv.eps2, s, 1e-15, 1e-300);
    assert_close(yv.eps1eps2, d2, 1e-14, 1e-300);

    // Backward on the hyper-dual tape: the gradient tanh'(x) carries tanh'' and tanh'''.
    let g = tape.backward(y)?.get(x).unwrap()[(0, 0)];
    assert_close(g.re, s, 1e-15, 1e-300);
    assert_close(g.eps1, d2, 1e-14, 1e-300);
    assert_close(g.eps2, d2, 1e-14, 1e-300);
    assert_close(g.eps1eps2, d3, 1e-13, 1e-300);
    Ok(())
}

#[test]
fn dual_vec_tape_gives_a_full_hessian() -> Result<()> {
    // f(x, y) = tanh(x y).  With u = x y, t = tanh u, s = 1 - t²:
    // f_x = y s, f_y = x s, f_xx = -2 y² t s, f_yy = -2 x² t s, f_xy = s - 2 x y t s.
    let (x0, y0): (f64, f64) = (0.8, -0.6);
    let t = (x0 * y0).tanh();
    let s = 1.0 - t * t;
    let (fxx, fyy, fxy) = (
        -2.0 * y0 * y0 * t * s,
        -2.0 * x0 * x0 * t * s,
        s - 2.0 * x0 * y0 * t * s,
    );

    let tape = Tape::<DualSVec64<2>>::new();
    let x = tape.var(dmatrix![DualSVec64::<2>::from_re(x0).derivative(0)]);
    let y = tape.var(dmatrix![DualSVec64::<2>::from_re(y0).derivative(1)]);
    let f = x.mul(y)?.tanh().sum();
    assert_close(f.scalar_value()?.re, t, 1e-15, 1e-300);
    let grads = tape.backward(f)?;
    let gx = grads.get(x).unwrap()[(0, 0)];
    let gy = grads.get(y).unwrap()[(0, 0)];
    assert_close(gx.re, y0 * s, 1e-15, 1e-300);
    assert_close(gy.re, x0 * s, 1e-15, 1e-300);
    let hx = gx.eps.unwrap_generic(Const::<2>, U1);
    let hy = gy.eps.unwrap_generic(Const::<2>, U1);
    assert_close(hx[0], fxx, 1e-14, 1e-300);
    assert_close(hx[1], fxy, 1e-14, 1e-300);
    assert_close(hy[0], fxy, 1e-14, 1e-300);
    assert_close(hy[1], fyy, 1e-14, 1e-300);
    Ok(())
}

#[test]
fn hvp_through_an_mlp_matches_finite_differences_of_the_gradient() -> Result<()> {
    // No hand formula here: H v must equal (∇f(w + h v) - ∇f(w - h v)) / 2h from f64 tapes.
    let x = DMatrix::from_fn(4, 3, |i, j| ((i * 3 + j) as f64 * 0.77).sin());
    let w0 = DMatrix::from_fn(2, 3, |i, j| ((i * 3 + j) as f64 * 1.31 + 0.2).cos());
    let v = DMatrix::from_fn(2, 3, |i, j| ((i + 2 * j) as f64 * 0.53 - 0.4).sin());
    let xd = x.map(Dual64::from);
    let (_, hv) = grad_and_hvp(&w0, &v, |w| {
        let h = w.tape().constant(xd.clone()).matmul_t(w)?.tanh();
        Ok(h.mul(h.sigmoid())?.mean())
    })?;
    let grad = |w: DMatrix<f64>| -> Result<DMatrix<f64>> {
        let tape = Tape::<f64>::new();
        let wv = tape.var(w);
        let h = tape.constant(x.clone()).matmul_t(wv)?.tanh();
        let loss = h.mul(h.sigmoid())?.mean();
        Ok(tape.backward(loss)?.get(wv).unwrap().clone())
    };
    let h = 1e-5;
    let fd = (grad(&w0 + &v * h)? - grad(&w0 - &v * h)?) / (2.0 * h);
    assert!(hv.amax() > 1e-2);
    assert_mat_close(&hv, &fd, 1e-6, 1.0);
    Ok(())
}
