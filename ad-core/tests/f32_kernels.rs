//! The `f32` paths: `sgemm` (and its direct loops for tiny shapes), tanh through the `f64`
//! kernel, sums accumulated in `f64`, and `Dual32` products split into `f32` products. Each is
//! checked against the same computation in `f64` to the accuracy `f32` can hold.

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual32;
use ad_core::Tape;

fn values(r: usize, c: usize, seed: usize) -> DMatrix<f32> {
    DMatrix::from_fn(r, c, |i, j| {
        let k = (seed * 31 + i * 7 + j * 13) as f32;
        (k * 0.11).sin() * 1.5
    })
}

/// Distance in f32 units in the last place.
fn ulps(a: f32, b: f32) -> u32 {
    let key = |x: f32| {
        let b = x.to_bits() as i32;
        if b < 0 {
            i32::MIN - b
        } else {
            b
        }
    };
    key(a).abs_diff(key(b))
}

#[test]
fn f32_products_match_f64_to_f32_accuracy_for_every_shape_and_transpose() {
    // Tiny (direct loops), mid-sized and large enough to split across threads.
    for &(m, k, n) in &[(3, 2, 4), (20, 2, 50), (40, 70, 90), (256, 128, 256)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = if ta { values(k, m, 1) } else { values(m, k, 1) };
            let b = if tb { values(n, k, 2) } else { values(k, n, 2) };
            let product = |tape: &Tape<f32>| {
                let (x, y) = (tape.constant(a.clone()), tape.constant(b.clone()));
                let x = if ta { x.transpose() } else { x };
                if tb { x.matmul_t(y) } else { x.matmul(y) }
                    .unwrap()
                    .value()
                    .unwrap()
            };
            let got = product(&Tape::new());
            let (a64, b64) = (a.map(f64::from), b.map(f64::from));
            let oa = if ta { a64.transpose() } else { a64 };
            let ob = if tb { b64.transpose() } else { b64 };
            let want = &oa * &ob;
            let magnitude = oa.abs() * ob.abs();
            for ((g, w), s) in got.iter().zip(want.iter()).zip(magnitude.iter()) {
                // Any order of k f32 multiply-adds is within k·ε of the sum of magnitudes.
                let bound = k as f64 * f64::from(f32::EPSILON) * s;
                assert!(
                    (f64::from(*g) - w).abs() <= bound,
                    "{m}x{k}x{n} ta={ta} tb={tb}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn dual32_products_are_f32_products_in_the_real_part_and_the_derivative_in_the_tangent() {
    for &(m, k, n) in &[(3, 2, 4), (40, 70, 90)] {
        let a = values(m, k, 3);
        let b = values(k, n, 4);
        let da = values(m, k, 5);
        let tape = Tape::<Dual32>::new();
        let x = tape.constant(a.zip_map(&da, Dual32::new));
        let y = tape.constant(b.map(Dual32::from));
        let got = x.matmul(y).unwrap().value().unwrap();
        let f = Tape::<f32>::new();
        let real = f
            .constant(a.clone())
            .matmul(f.constant(b.clone()))
            .unwrap()
            .value()
            .unwrap();
        let tangent = da.map(f64::from) * b.map(f64::from);
        let magnitude = da.map(f64::from).abs() * b.map(f64::from).abs();
        for (((g, r), t), s) in got
            .iter()
            .zip(real.iter())
            .zip(tangent.iter())
            .zip(magnitude.iter())
        {
            assert_eq!(g.re.to_bits(), r.to_bits(), "{m}x{k}x{n}");
            let bound = k as f64 * f64::from(f32::EPSILON) * s;
            assert!(
                (f64::from(g.eps) - t).abs() <= bound,
                "{m}x{k}x{n}: {} vs {t}",
                g.eps
            );
        }
    }
}

#[test]
fn f32_tanh_is_within_one_ulp_of_the_rounded_f64_value_and_passes_nan_and_infinities() {
    let mut xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.0053).collect();
    xs.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        f32::MIN_POSITIVE / 4.0,
        0.625,
        -0.625,
        9.0,
        9.1,
        50.0,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    let x = DMatrix::from_column_slice(1, xs.len(), &xs);
    let tape = Tape::<f32>::new();
    let y = tape.constant(x).tanh().value().unwrap();
    let mut worst = 0;
    for (&x, &y) in xs.iter().zip(y.iter()) {
        let want = f64::from(x).tanh() as f32;
        assert_eq!(y.is_sign_negative(), want.is_sign_negative(), "sign at {x}");
        worst = worst.max(ulps(y, want));
    }
    assert!(worst <= 1, "tanh is {worst} ulp off");
    // Dual32's real part is the f32 kernel's, bitwise; its ε part ε·(1 − tanh²).
    let dual = Tape::<Dual32>::new();
    let d = DMatrix::from_fn(1, xs.len(), |_, j| Dual32::new(xs[j], 0.5));
    let yd = dual.constant(d).tanh().value().unwrap();
    for (d, y) in yd.iter().zip(y.iter()) {
        assert_eq!(d.re.to_bits(), y.to_bits());
        assert_eq!(d.eps, 0.5 * (1.0 - y * y));
    }
    let nan = Tape::<f32>::new();
    let y = nan.constant(DMatrix::from_element(1, 3, f32::NAN)).tanh();
    assert!(y.value().unwrap().iter().all(|v| v.is_nan()));
}

#[test]
fn f32_sums_accumulate_in_f64() {
    // 10⁶ × 0.1: a sequential f32 sum drifts to 100958.34 (a 1 % error); the reduction
    // rounds the f64 sum once.
    let n = 1_000_000;
    let tape = Tape::<f32>::new();
    let x = tape.constant(DMatrix::from_element(n, 1, 0.1f32));
    let want = (f64::from(0.1f32) * n as f64) as f32;
    assert_eq!(x.sum().scalar_value().unwrap(), want);
    assert_eq!(x.sum_rows().value().unwrap()[(0, 0)], want);
    let xt = tape.constant(DMatrix::from_element(1, n, 0.1f32));
    assert_eq!(xt.sum_cols().value().unwrap()[(0, 0)], want);
    let mean = x.mean().scalar_value().unwrap();
    assert!(ulps(mean, 0.1) <= 1, "{mean}");
    // Dual32 sums both parts the same way.
    let dual = Tape::<Dual32>::new();
    let d = dual.constant(DMatrix::from_element(n, 1, Dual32::new(0.1, 0.1)));
    let s = d.sum().scalar_value().unwrap();
    assert_eq!((s.re, s.eps), (want, want));
    // The broadcast VJP sums the same way.
    let w = Tape::<f32>::new();
    let leaf = w.var(DMatrix::from_element(1, 1, 1.0f32));
    let spread = leaf.broadcast(n, 1).unwrap().scale(0.1).sum();
    let grad = w.backward(spread).unwrap().take_or_zeros(leaf).unwrap();
    assert_eq!(grad[(0, 0)], want);
}
