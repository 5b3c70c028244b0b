//! `Dual64` products and tanh go through the `f64` kernels: their real parts are bitwise the
//! `f64` tape's (so taped ≡ Dual64 checks compare like with like), and their ε parts are the
//! derivative — checked against num-dual's own arithmetic entry by entry.

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::{Dual64, DualNum};
use ad_core::Tape;

fn dual(r: usize, c: usize, seed: usize, tangent: bool) -> DMatrix<Dual64> {
    DMatrix::from_fn(r, c, |i, j| {
        let k = (seed * 31 + i * 7 + j * 13) as f64;
        let eps = if tangent { (k * 0.37).cos() } else { 0.0 };
        Dual64::new((k * 0.11).sin() * 1.5, eps)
    })
}

fn close(a: Dual64, b: Dual64, scale: f64) -> bool {
    (a.eps - b.eps).abs() <= 1e-13 * scale.max(1.0)
}

#[test]
fn dual_products_match_f64_bitwise_and_num_dual_in_the_tangent() {
    // Tiny (direct loops) and large (blocked kernel) shapes, every transpose form and
    // tangents on one side or both.
    for &(m, k, n) in &[(3, 2, 4), (20, 2, 50), (40, 70, 90)] {
        for (tangent_a, tangent_b) in [(true, true), (false, true), (true, false)] {
            let a = dual(m, k, 1, tangent_a);
            let b = dual(n, k, 2, tangent_b);
            let tape = Tape::<Dual64>::new();
            let y = tape
                .constant(a.clone())
                .matmul_t(tape.constant(b.clone()))
                .unwrap();
            let y = y.value().unwrap();
            let f = Tape::<f64>::new();
            let y64 = f
                .constant(a.map(|v| v.re))
                .matmul_t(f.constant(b.map(|v| v.re)))
                .unwrap()
                .value()
                .unwrap();
            let generic = &a * b.transpose();
            for ((y, y64), g) in y.iter().zip(y64.iter()).zip(generic.iter()) {
                assert_eq!(y.re.to_bits(), y64.to_bits(), "{m}x{k}x{n}");
                assert!(close(*y, *g, k as f64), "{m}x{k}x{n}: {y} vs {g}");
            }
        }
    }
}

#[test]
fn dual_tanh_matches_f64_bitwise_and_num_dual_in_the_tangent() {
    let x = dual(7, 9, 3, true).map(|v| v * 4.0);
    let tape = Tape::<Dual64>::new();
    let y = tape.constant(x.clone()).tanh().value().unwrap();
    let f = Tape::<f64>::new();
    let y64 = f.constant(x.map(|v| v.re)).tanh().value().unwrap();
    for ((y, y64), x) in y.iter().zip(y64.iter()).zip(x.iter()) {
        assert_eq!(y.re.to_bits(), y64.to_bits());
        assert!(close(*y, x.tanh(), 1.0), "{y} vs {}", x.tanh());
    }
}
