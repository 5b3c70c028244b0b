//! Op values and gradients against hand-computed numbers, including the overflow-safe
//! branches of sigmoid and softplus.

mod common;

use ad_core::nalgebra::{dmatrix, DMatrix};
use ad_core::num_dual::Dual64;
use ad_core::{Result, Tape};
use common::{assert_close, assert_mat_close};

#[test]
fn matmul_of_2x2_and_its_gradients() -> Result<()> {
    let tape = Tape::<f64>::new();
    let a = tape.var(dmatrix![1.0, 2.0; 3.0, 4.0]);
    let b = tape.var(dmatrix![5.0, 6.0; 7.0, 8.0]);
    let c = a.matmul(b)?;
    assert_eq!(c.value()?, dmatrix![19.0, 22.0; 43.0, 50.0]);
    let grads = tape.backward(c.sum())?;
    // d sum(AB)/dA = 1 Bᵀ: every row holds B's row sums (11, 15).
    assert_eq!(grads.get(a).unwrap(), &dmatrix![11.0, 15.0; 11.0, 15.0]);
    // d sum(AB)/dB = Aᵀ 1: every column holds A's column sums (4, 6).
    assert_eq!(grads.get(b).unwrap(), &dmatrix![4.0, 4.0; 6.0, 6.0]);
    Ok(())
}

#[test]
fn matmul_non_square_and_matmul_t() -> Result<()> {
    let tape = Tape::<f64>::new();
    let a = tape.var(dmatrix![1.0, 2.0, 3.0; 4.0, 5.0, 6.0]); // 2x3
    let b = tape.var(dmatrix![1.0, 0.0; 0.0, 1.0; 1.0, -1.0]); // 3x2
    assert_eq!(a.matmul(b)?.value()?, dmatrix![4.0, -1.0; 10.0, -1.0]);
    // x Wᵀ with x 1x3 and W 2x3.
    let x = tape.constant(dmatrix![1.0, 2.0, 3.0]);
    let w = tape.var(dmatrix![1.0, 0.0, -1.0; 2.0, 1.0, 0.0]);
    let y = x.matmul_t(w)?;
    assert_eq!(y.value()?, dmatrix![-2.0, 4.0]);
    // d (u · x Wᵀ) / dW = uᵀ x.
    let grads = tape.vjp(y, dmatrix![1.0, -2.0])?;
    assert_eq!(
        grads.get(w).unwrap(),
        &dmatrix![1.0, 2.0, 3.0; -2.0, -4.0, -6.0]
    );
    assert!(grads.get(x).is_none());
    Ok(())
}

#[test]
fn transpose_values_and_gradient() -> Result<()> {
    let tape = Tape::<f64>::new();
    let a = tape.var(dmatrix![1.0, 2.0, 3.0; 4.0, 5.0, 6.0]);
    let t = a.transpose();
    assert_eq!(t.value()?, dmatrix![1.0, 4.0; 2.0, 5.0; 3.0, 6.0]);
    let grads = tape.vjp(t, dmatrix![1.0, 2.0; 3.0, 4.0; 5.0, 6.0])?;
    assert_eq!(
        grads.get(a).unwrap(),
        &dmatrix![1.0, 3.0, 5.0; 2.0, 4.0, 6.0]
    );
    Ok(())
}

#[test]
fn tanh_value_and_derivative_at_a_point() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![0.5, 0.0]);
    let y = x.tanh();
    assert_mat_close(
        &y.value()?,
        &dmatrix![0.46211715726000974, 0.0],
        1e-15,
        1e-300,
    );
    let grads = tape.backward(y.sum())?;
    // tanh'(x) = 1 - tanh(x)²: 0.786447... at 0.5, exactly 1 at 0.
    assert_mat_close(
        grads.get(x).unwrap(),
        &dmatrix![0.7864477329659274, 1.0],
        1e-15,
        1e-300,
    );

    // Far out, tanh saturates to ±1 and its derivative to 0.
    let far = tape.var(dmatrix![30.0, -30.0, 1e-8]);
    let yf = far.tanh();
    assert_eq!(yf.value()?, dmatrix![1.0, -1.0, 1e-8]);
    assert_mat_close(
        tape.backward(yf.sum())?.get(far).unwrap(),
        &dmatrix![0.0, 0.0, 1.0],
        1e-15,
        1e-300,
    );

    // The same derivative by forward mode.
    let dt = Tape::<Dual64>::new();
    let y = dt
        .var(dmatrix![Dual64::new(0.5, 1.0)])
        .tanh()
        .scalar_value()?;
    assert_close(y.re, 0.46211715726000974, 1e-15, 1e-300);
    assert_close(y.eps, 0.7864477329659274, 1e-15, 1e-300);
    Ok(())
}

#[test]
fn softplus_is_overflow_safe() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![800.0, -800.0, 0.0, 3.0]);
    let y = x.softplus();
    let v = y.value()?;
    // ln(1 + e^800) overflows if computed naively; it is 800 to double precision.
    assert_eq!(v[0], 800.0);
    assert_eq!(v[1], 0.0);
    assert_close(v[2], std::f64::consts::LN_2, 1e-15, 1e-300);
    assert_close(v[3], 3.048587351573742, 1e-15, 1e-300);
    // softplus' = sigmoid: 1, 0, 1/2, sigmoid(3).
    let grads = tape.backward(y.sum())?;
    let g = grads.get(x).unwrap();
    assert_eq!(g[0], 1.0);
    assert_eq!(g[1], 0.0);
    assert_eq!(g[2], 0.5);
    assert_close(g[3], 1.0 / (1.0 + (-3.0f64).exp()), 1e-15, 1e-300);
    Ok(())
}

#[test]
fn sigmoid_is_overflow_safe() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![-800.0, 800.0, 0.0, 1.5]);
    let y = x.sigmoid();
    let v = y.value()?;
    assert_eq!(v[0], 0.0, "sigmoid(-800) must be 0, not NaN");
    assert_eq!(v[1], 1.0);
    assert_eq!(v[2], 0.5);
    assert_close(v[3], 0.8175744761936437, 1e-15, 1e-300);
    // sigmoid' = s (1 - s): 0 in both tails, 1/4 at 0.
    let grads = tape.backward(y.sum())?;
    let g = grads.get(x).unwrap();
    assert_eq!(g[0], 0.0);
    assert_eq!(g[1], 0.0);
    assert_eq!(g[2], 0.25);
    assert_close(g[3], 0.14914645207033286, 1e-14, 1e-300);

    // Dual numbers take the same overflow-safe branches.
    let dt = Tape::<Dual64>::new();
    let d = dt
        .var(dmatrix![Dual64::new(-800.0, 1.0), Dual64::new(800.0, 1.0)])
        .sigmoid()
        .value()?;
    assert_eq!((d[0].re, d[0].eps), (0.0, 0.0));
    assert_eq!((d[1].re, d[1].eps), (1.0, 0.0));
    Ok(())
}

#[test]
fn relu_and_abs_values_and_gradients_at_the_kink() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![-1.5, 0.0, 2.5]);
    let y = x.relu();
    assert_eq!(y.value()?, dmatrix![0.0, 0.0, 2.5]);
    // The derivative at 0 is taken as 0.
    assert_eq!(
        tape.backward(y.sum())?.get(x).unwrap(),
        &dmatrix![0.0, 0.0, 1.0]
    );
    Ok(())
}

#[test]
fn elementwise_values() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![1.0, 4.0; 0.25, 2.0]);
    assert_eq!(
        x.sqrt().value()?,
        dmatrix![1.0, 2.0; 0.5, std::f64::consts::SQRT_2]
    );
    assert_eq!(x.square().value()?, dmatrix![1.0, 16.0; 0.0625, 4.0]);
    assert_eq!(x.powi(3).value()?, dmatrix![1.0, 64.0; 0.015625, 8.0]);
    assert_eq!(x.powi(-1).value()?, dmatrix![1.0, 0.25; 4.0, 0.5]);
    assert_eq!(x.neg().value()?, dmatrix![-1.0, -4.0; -0.25, -2.0]);
    assert_eq!(x.scale(-2.0).value()?, dmatrix![-2.0, -8.0; -0.5, -4.0]);
    assert_mat_close(
        &x.log().value()?,
        &dmatrix![0.0, 2.0 * std::f64::consts::LN_2; -2.0 * std::f64::consts::LN_2, std::f64::consts::LN_2],
        1e-15,
        1e-300,
    );
    let z = tape.var(dmatrix![0.0, 1.0]);
    assert_mat_close(
        &z.exp().value()?,
        &dmatrix![1.0, std::f64::consts::E],
        1e-15,
        1e-300,
    );
    let p = tape.var(dmatrix![0.0, std::f64::consts::FRAC_PI_2]);
    assert_mat_close(&p.sin().value()?, &dmatrix![0.0, 1.0], 1e-15, 1.0);
    assert_mat_close(&p.cos().value()?, &dmatrix![1.0, 0.0], 1e-15, 1.0);

    let a = tape.var(dmatrix![6.0, -3.0]);
    let b = tape.var(dmatrix![2.0, 4.0]);
    assert_eq!(a.add(b)?.value()?, dmatrix![8.0, 1.0]);
    assert_eq!(a.sub(b)?.value()?, dmatrix![4.0, -7.0]);
    assert_eq!(a.mul(b)?.value()?, dmatrix![12.0, -12.0]);
    assert_eq!(a.div(b)?.value()?, dmatrix![3.0, -0.75]);
    // d(a/b) = da / b - a db / b².
    let grads = tape.backward(a.div(b)?.sum())?;
    assert_eq!(grads.get(a).unwrap(), &dmatrix![0.5, 0.25]);
    assert_eq!(grads.get(b).unwrap(), &dmatrix![-1.5, 0.1875]);
    Ok(())
}

#[test]
fn reductions_shapes_and_values() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![1.0, 2.0, 3.0; 4.0, 5.0, 6.0]);
    let rows = x.sum_rows();
    assert_eq!(rows.shape()?, (1, 3));
    assert_eq!(rows.value()?, dmatrix![5.0, 7.0, 9.0]);
    let cols = x.sum_cols();
    assert_eq!(cols.shape()?, (2, 1));
    assert_eq!(cols.value()?, dmatrix![6.0; 15.0]);
    assert_eq!(x.sum().scalar_value()?, 21.0);
    assert_eq!(x.mean().scalar_value()?, 3.5);
    // Pulling back: sum_rows spreads each column's cotangent down the column, sum_cols
    // spreads each row's along the row, mean divides by the entry count.
    let g = tape.vjp(rows, dmatrix![1.0, 10.0, 100.0])?;
    assert_eq!(
        g.get(x).unwrap(),
        &dmatrix![1.0, 10.0, 100.0; 1.0, 10.0, 100.0]
    );
    let g = tape.vjp(cols, dmatrix![1.0; -1.0])?;
    assert_eq!(
        g.get(x).unwrap(),
        &dmatrix![1.0, 1.0, 1.0; -1.0, -1.0, -1.0]
    );
    let g = tape.backward(x.mean())?;
    assert_eq!(g.get(x).unwrap(), &DMatrix::from_element(2, 3, 1.0 / 6.0));
    Ok(())
}

#[test]
fn add_row_and_broadcast_values() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![1.0, 2.0; 3.0, 4.0; 5.0, 6.0]);
    let b = tape.var(dmatrix![10.0, 20.0]);
    let y = x.add_row(b)?;
    assert_eq!(y.value()?, dmatrix![11.0, 22.0; 13.0, 24.0; 15.0, 26.0]);
    // The bias gradient sums the cotangent over rows.
    let g = tape.vjp(y, dmatrix![1.0, 2.0; 3.0, 4.0; 5.0, 6.0])?;
    assert_eq!(g.get(b).unwrap(), &dmatrix![9.0, 12.0]);

    let s = tape.var(dmatrix![7.0]);
    let bs = s.broadcast(2, 3)?;
    assert_eq!(bs.value()?, DMatrix::from_element(2, 3, 7.0));
    assert_eq!(
        tape.vjp(bs, dmatrix![1.0, 2.0, 3.0; 4.0, 5.0, 6.0])?
            .get(s)
            .unwrap()[(0, 0)],
        21.0
    );
    let row = tape.var(dmatrix![1.0, 2.0]);
    let br = row.broadcast(3, 2)?;
    assert_eq!(br.value()?, dmatrix![1.0, 2.0; 1.0, 2.0; 1.0, 2.0]);
    assert_eq!(
        tape.vjp(br, dmatrix![1.0, 2.0; 3.0, 4.0; 5.0, 6.0])?
            .get(row)
            .unwrap(),
        &dmatrix![9.0, 12.0]
    );
    let col = tape.var(dmatrix![1.0; 2.0]);
    let bc = col.broadcast(2, 3)?;
    assert_eq!(bc.value()?, dmatrix![1.0, 1.0, 1.0; 2.0, 2.0, 2.0]);
    assert_eq!(
        tape.vjp(bc, dmatrix![1.0, 2.0, 3.0; 4.0, 5.0, 6.0])?
            .get(col)
            .unwrap(),
        &dmatrix![6.0; 15.0]
    );
    Ok(())
}

#[test]
fn concat_and_slice_values() -> Result<()> {
    let tape = Tape::<f64>::new();
    let a = tape.var(dmatrix![1.0; 2.0]);
    let b = tape.var(dmatrix![3.0, 4.0; 5.0, 6.0]);
    let c = tape.concat_cols(&[a, b])?;
    assert_eq!(c.value()?, dmatrix![1.0, 3.0, 4.0; 2.0, 5.0, 6.0]);
    let s = c.slice_cols(1, 2)?;
    assert_eq!(s.value()?, b.value()?);
    assert_eq!(c.slice_cols(2, 1)?.value()?, dmatrix![4.0; 6.0]);
    assert_eq!(c.slice_cols(3, 0)?.shape()?, (2, 0));
    // Slicing columns 1..3 back out: a gets nothing, b gets the cotangent unchanged.
    let g = tape.vjp(s, dmatrix![7.0, 8.0; 9.0, 10.0])?;
    assert_eq!(g.get(a).unwrap(), &dmatrix![0.0; 0.0]);
    assert_eq!(g.get(b).unwrap(), &dmatrix![7.0, 8.0; 9.0, 10.0]);
    let g = tape.vjp(c, dmatrix![1.0, 2.0, 3.0; 4.0, 5.0, 6.0])?;
    assert_eq!(g.get(a).unwrap(), &dmatrix![1.0; 4.0]);
    assert_eq!(g.get(b).unwrap(), &dmatrix![2.0, 3.0; 5.0, 6.0]);
    Ok(())
}

#[test]
fn mse_value_and_gradients() -> Result<()> {
    let tape = Tape::<f64>::new();
    let p = tape.var(dmatrix![1.0, 2.0, 3.0]);
    let t = tape.var(dmatrix![1.0, 0.0, 0.0]);
    let l = p.mse(t)?;
    // (0 + 4 + 9) / 3
    assert_close(l.scalar_value()?, 13.0 / 3.0, 1e-15, 1e-300);
    let g = tape.backward(l)?;
    // dL/dp = 2 (p - t) / n, dL/dt = -dL/dp.
    assert_mat_close(
        g.get(p).unwrap(),
        &dmatrix![0.0, 4.0 / 3.0, 2.0],
        1e-15,
        1e-300,
    );
    assert_mat_close(
        g.get(t).unwrap(),
        &dmatrix![0.0, -4.0 / 3.0, -2.0],
        1e-15,
        1e-300,
    );
    Ok(())
}

#[test]
fn lin_comb_values_and_gradients() -> Result<()> {
    let tape = Tape::<f64>::new();
    let a = tape.var(dmatrix![1.0, 2.0]);
    let b = tape.var(dmatrix![10.0, 20.0]);
    let y = tape.fixed_weighted_sum(&[(2.0, a), (-0.5, b), (3.0, a)])?;
    assert_eq!(y.value()?, dmatrix![0.0, 0.0]);
    let g = tape.vjp(y, dmatrix![1.0, -1.0])?;
    // a appears twice: 2 + 3.
    assert_eq!(g.get(a).unwrap(), &dmatrix![5.0, -5.0]);
    assert_eq!(g.get(b).unwrap(), &dmatrix![-0.5, 0.5]);
    Ok(())
}

#[test]
fn add_scalar_and_weighted_sum_values() -> Result<()> {
    let tape = Tape::<f64>::new();
    let a = tape.var(dmatrix![1.0, 2.0]);
    let b = tape.var(dmatrix![10.0, 20.0]);
    assert_eq!(a.add_scalar(0.5).value()?, dmatrix![1.5, 2.5]);
    let w = tape.var(dmatrix![2.0, -0.5]);
    let y = tape.weighted_sum(w, &[a, b])?;
    assert_eq!(y.value()?, dmatrix![-3.0, -6.0]);
    let g = tape.vjp(y, dmatrix![1.0, -1.0])?;
    // w̄ⱼ = ⟨ḡ, xⱼ⟩, x̄ⱼ = wⱼ ḡ.
    assert_eq!(g.get(w).unwrap(), &dmatrix![-1.0, -10.0]);
    assert_eq!(g.get(a).unwrap(), &dmatrix![2.0, -2.0]);
    assert_eq!(g.get(b).unwrap(), &dmatrix![-0.5, 0.5]);
    Ok(())
}

#[test]
fn linear_equals_matmul_t_then_add_row_in_value_and_gradient() {
    use nalgebra::dmatrix;
    let tape = ad_core::Tape::<f64>::new();
    let x = tape.var(dmatrix![1.0, 2.0, -1.0; 0.5, -0.5, 3.0]);
    let w = tape.var(dmatrix![0.1, 0.2, 0.3; -0.4, 0.5, -0.6]);
    let b = tape.var(dmatrix![0.25, -0.75]);
    let fused = x.linear(w, b).unwrap();
    // Row 0: [0.1 + 0.4 - 0.3 + 0.25, -0.4 + 1.0 + 0.6 - 0.75] = [0.45, 0.45]
    let v = fused.value().unwrap();
    assert!((v[(0, 0)] - 0.45).abs() < 1e-15 && (v[(0, 1)] - 0.45).abs() < 1e-15);
    let two_ops = x.matmul_t(w).unwrap().add_row(b).unwrap();
    let g1 = tape.backward(fused.tanh().sum()).unwrap();
    let g2 = tape.backward(two_ops.tanh().sum()).unwrap();
    for p in [x, w, b] {
        assert!((g1.get(p).unwrap() - g2.get(p).unwrap()).abs().max() < 1e-15);
    }
    let bad = tape.var(dmatrix![1.0, 2.0, 3.0]);
    assert!(matches!(
        x.linear(w, bad),
        Err(ad_core::Error::ShapeMismatch { op: "linear", .. })
    ));
}

#[test]
fn powi_gradient_at_extreme_exponents() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![2.0, -2.0, 1.0, -1.0, 0.5]);
    // d xⁿ = n xⁿ⁻¹ with n − 1 = −2³¹ − 1 (which overflows an i32): −0 at 2 (not −∞), +0 at
    // −2 (an odd power of a negative base), ∓2³¹ at ±1, −∞ at 0.5.
    let y = x.powi(i32::MIN);
    assert_eq!(y.value()?, dmatrix![0.0, 0.0, 1.0, 1.0, f64::INFINITY]);
    let g = tape.backward(y.sum())?;
    let g = g.get(x).unwrap();
    let two31 = 2f64.powi(31);
    assert_eq!(g[1], 0.0);
    assert!(g[0] == 0.0 && g[0].is_sign_negative(), "{}", g[0]);
    assert!(g[1].is_sign_positive(), "{}", g[1]);
    assert_eq!(g[2], -two31);
    assert_eq!(g[3], two31);
    assert_eq!(g[4], f64::NEG_INFINITY);
    // n = i32::MAX: n xⁿ⁻¹ = (2³¹ − 1) at ±1 (an even power).
    let g = tape.backward(x.powi(i32::MAX).sum())?;
    assert_eq!(
        &g.get(x).unwrap().as_slice()[2..4],
        &[two31 - 1.0, two31 - 1.0]
    );

    // x⁰ = 1 has derivative 0 everywhere, at 0 too (n xⁿ⁻¹ there would be 0 · ∞ = NaN).
    let z = tape.var(dmatrix![0.0, 2.0, -3.0]);
    let one = z.powi(0);
    assert_eq!(one.value()?, dmatrix![1.0, 1.0, 1.0]);
    assert_eq!(
        tape.backward(one.sum())?.get(z).unwrap(),
        &dmatrix![0.0, 0.0, 0.0]
    );
    // Ordinary exponents on the same tape: d x³ = 3x², d x⁻¹ = −x⁻².
    assert_eq!(
        tape.backward(z.powi(3).sum())?.get(z).unwrap(),
        &dmatrix![0.0, 12.0, 27.0]
    );
    assert_eq!(
        tape.backward(x.powi(-1).sum())?.get(x).unwrap(),
        &dmatrix![-0.25, -0.25, -1.0, -1.0, -4.0]
    );

    // Dual numbers (forward over reverse) take the same exponents without overflowing:
    // d/dε of n xⁿ⁻¹ at x = 1 + ε is n (n − 1).
    let dt = Tape::<Dual64>::new();
    let dx = dt.var(DMatrix::from_element(1, 1, Dual64::new(1.0, 1.0)));
    let g = dt.backward(dx.powi(i32::MIN).sum())?.get(dx).unwrap()[(0, 0)];
    assert_eq!(g.re, -two31);
    assert_close(g.eps, -two31 * (-two31 - 1.0), 1e-15, 1.0);
    let g = dt.backward(dx.powi(0).sum())?.get(dx).unwrap()[(0, 0)];
    assert_eq!((g.re, g.eps), (0.0, 0.0));
    let g = dt.backward(dx.powi(3).sum())?.get(dx).unwrap()[(0, 0)];
    assert_eq!((g.re, g.eps), (3.0, 6.0));
    Ok(())
}

#[test]
fn relu_and_abs_propagate_nan() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![f64::NAN, -1.5, 0.0, 2.5]);
    let r = x.relu().value()?;
    assert!(r[0].is_nan());
    assert_eq!(r.columns(1, 3), dmatrix![0.0, 0.0, 2.5]);
    let g = tape.backward(x.relu().sum())?.get(x).unwrap().clone();
    assert!(g[0].is_nan());
    assert_eq!(g.columns(1, 3), dmatrix![0.0, 0.0, 1.0]);
    let a = x.abs().value()?;
    assert!(a[0].is_nan());
    assert_eq!(a.columns(1, 3), dmatrix![1.5, 0.0, 2.5]);
    let g = tape.backward(x.abs().sum())?.get(x).unwrap().clone();
    assert!(g[0].is_nan());
    assert_eq!(g.columns(1, 3), dmatrix![-1.0, 0.0, 1.0]);

    // A layer with one NaN weight: the NaN reaches the output and its gradient instead of
    // being cut off by the ReLU.
    let input = tape.constant(dmatrix![1.0, 2.0]);
    let w = tape.var(dmatrix![f64::NAN, 1.0; 0.5, -1.0]);
    let b = tape.var(dmatrix![0.0, 0.0]);
    let out = input.linear(w, b)?.relu().sum();
    assert!(out.scalar_value()?.is_nan());
    let g = tape.backward(out)?;
    assert!(g.get(w).unwrap().row(0).iter().all(|v| v.is_nan()));
    assert!(g.get(b).unwrap()[0].is_nan());

    // |−0| is +0, and forward mode agrees with reverse mode at the kink (derivative 0).
    let dt = Tape::<Dual64>::new();
    let dx = dt.var(DMatrix::from_row_slice(
        1,
        2,
        &[Dual64::new(-0.0, 1.0), Dual64::new(0.0, 1.0)],
    ));
    let v = dx.abs().value()?;
    assert!(v
        .iter()
        .all(|d| d.re == 0.0 && d.re.is_sign_positive() && d.eps == 0.0));
    let v = dx.relu().value()?;
    assert!(v.iter().all(|d| d.re == 0.0 && d.eps == 0.0));

    // Finite inputs on the same tape.
    let y = tape.var(dmatrix![-2.0, 3.0]);
    assert_eq!(
        tape.backward(y.relu().add(y.abs())?.sum())?.get(y).unwrap(),
        &dmatrix![-1.0, 2.0]
    );
    Ok(())
}
