//! Helpers shared by ad-core's integration tests.
#![allow(dead_code)]

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;

/// `|a - b| <= rel * max(|a|, |b|, floor)`: relative tolerance with an absolute floor.
pub fn close(a: f64, b: f64, rel: f64, floor: f64) -> bool {
    a.is_finite() && b.is_finite() && (a - b).abs() <= rel * a.abs().max(b.abs()).max(floor)
}

/// Panics unless `a` and `b` are close (see [`close`]).
#[track_caller]
pub fn assert_close(a: f64, b: f64, rel: f64, floor: f64) {
    assert!(
        close(a, b, rel, floor),
        "{a:e} vs {b:e}: difference {:e} exceeds rel {rel:e} (floor {floor:e})",
        (a - b).abs()
    );
}

/// Same shape and every entry close.
#[track_caller]
pub fn assert_mat_close(a: &DMatrix<f64>, b: &DMatrix<f64>, rel: f64, floor: f64) {
    assert_eq!(a.shape(), b.shape(), "shapes differ:\n{a}\nvs\n{b}");
    for (i, (&x, &y)) in a.iter().zip(b.iter()).enumerate() {
        assert!(
            close(x, y, rel, floor),
            "entry {i} (column-major): {x:e} vs {y:e}\n{a}\nvs\n{b}"
        );
    }
}

/// Dual numbers `x + v ε`, entrywise.
pub fn dual(x: &DMatrix<f64>, v: &DMatrix<f64>) -> DMatrix<Dual64> {
    assert_eq!(x.shape(), v.shape());
    x.zip_map(v, Dual64::new)
}

/// Real parts.
pub fn re(m: &DMatrix<Dual64>) -> DMatrix<f64> {
    m.map(|d| d.re)
}

/// ε parts.
pub fn eps(m: &DMatrix<Dual64>) -> DMatrix<f64> {
    m.map(|d| d.eps)
}

/// Frobenius inner product `⟨a, b⟩`.
pub fn dot(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}
