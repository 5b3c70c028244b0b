//! `f64` fast paths of hot elementwise kernels, and the casts that route a generic `T` to them.
//!
//! The generic code maps scalar functions entry by entry (`DualNum::tanh` is libm's `tanh`
//! for `f64`), which cannot be vectorised. Here `tanh` is a branch-free kernel (Cephes'
//! rational approximation up to 0.625, `(e − 1)/(e + 1)` with a polynomial `e = exp(2|x|)`
//! above), within 3 ulp of libm (2 observed), written with fused multiply-adds so that it
//! vectorises and rounds the same on every machine that runs it: x86-64 with AVX-512 or with
//! AVX2 and FMA (compiled for each and picked at run time; on AMD EPYC the eight-lane loop takes
//! 0.62 ns per entry, the four-lane one 1.42) and aarch64. Elsewhere libm is used.
// Elsewhere the kernel is compiled (for its tests) but not called.
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]

use std::any::Any;
use std::mem::MaybeUninit;

use nalgebra::DMatrix;

use super::threads::split_mut;

/// `m` as an `F` matrix, when `T` is `F`.
#[inline]
pub(crate) fn as_real<T: 'static, F: 'static>(m: &DMatrix<T>) -> Option<&DMatrix<F>> {
    (m as &dyn Any).downcast_ref::<DMatrix<F>>()
}

/// `m` as an `F` matrix, when `T` is `F`.
#[inline]
pub(crate) fn as_real_mut<T: 'static, F: 'static>(m: &mut DMatrix<T>) -> Option<&mut DMatrix<F>> {
    (m as &mut dyn Any).downcast_mut::<DMatrix<F>>()
}

/// An `F` matrix as a `DMatrix<T>`; `None` unless `T` is `F`.
#[inline]
pub(crate) fn from_real<F: 'static, T: 'static>(m: DMatrix<F>) -> Option<DMatrix<T>> {
    let mut m = Some(m);
    (&mut m as &mut dyn Any)
        .downcast_mut::<Option<DMatrix<T>>>()
        .and_then(Option::take)
}

/// An `r×c` matrix whose column-major entries are written by `fill`, which must initialise
/// every one of the `r·c` slots it is given (they start uninitialised: no zero-fill).
#[inline]
pub(crate) fn filled<F: nalgebra::Scalar>(
    r: usize,
    c: usize,
    fill: impl FnOnce(&mut [MaybeUninit<F>]),
) -> DMatrix<F> {
    let len = r * c;
    let mut data = Vec::<F>::with_capacity(len);
    fill(&mut data.spare_capacity_mut()[..len]);
    // SAFETY: `fill` initialised the first `len` slots (callers write each slot exactly once).
    unsafe { data.set_len(len) };
    DMatrix::from_vec(r, c, data)
}

const LOG2_E: f64 = std::f64::consts::LOG2_E;
/// ln 2 split in two (Cephes): `n · LN2_HI` is exact for the small `n` used here.
const LN2_HI: f64 = 6.931_457_519_531_25e-1;
const LN2_LO: f64 = 1.428_606_820_309_417_3e-6;
/// 1.5 · 2⁵²: adding it rounds to an integer held in the low mantissa bits.
const ROUND: f64 = 6_755_399_441_055_744.0;
/// Cephes `tanh` coefficients for |x| ≤ 0.625: tanh x = x + x·s·P(s)/Q(s), s = x².
const TANH_P: [f64; 3] = [
    -9.643_991_794_250_523e-1,
    -9.928_772_310_019_185e1,
    -1.614_687_684_417_084_5e3,
];
const TANH_Q: [f64; 3] = [
    1.128_116_784_916_329_3e2,
    2.235_488_390_601_004_5e3,
    4.844_063_053_251_255e3,
];
/// Beyond this, tanh rounds to ±1 (1 − tanh 22 ≈ 1.6e−19).
const TANH_CLAMP: f64 = 22.0;

/// tanh of one entry, branch-free (the `if`s are selects) so that loops over it vectorise.
#[inline(always)]
fn tanh1(x: f64) -> f64 {
    let a = x.abs();
    // exp(z) for z = 2a in [0, 44] (NaN passes through the clamp and stays NaN):
    // z = n ln2 + r with |r| ≤ ln2 / 2, exp(r) by its Taylor polynomial to r¹³ (the next term
    // is below 5e−18), times 2ⁿ built from the exponent bits.
    let z = 2.0 * if a > TANH_CLAMP { TANH_CLAMP } else { a };
    let t = z.mul_add(LOG2_E, ROUND);
    let n = t - ROUND;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, z));
    let mut p: f64 = 1.0 / 6_227_020_800.0; // 1/13!
    for c in INV_FACT.iter().rev() {
        p = p.mul_add(r, *c);
    }
    // The low 12 bits of t's mantissa hold n (0 ≤ n ≤ 64), so shifting them into the exponent
    // field and adding the bias gives 2ⁿ.
    let scale = f64::from_bits((t.to_bits() << 52).wrapping_add(1023 << 52));
    let e = p * scale;
    let s = a * a;
    let ps = TANH_P[0].mul_add(s, TANH_P[1]).mul_add(s, TANH_P[2]);
    let qs = (s + TANH_Q[0]).mul_add(s, TANH_Q[1]).mul_add(s, TANH_Q[2]);
    let small = a <= 0.625;
    // One division serves both branches.
    let (num, den) = if small { (ps, qs) } else { (e - 1.0, e + 1.0) };
    let q = num / den;
    let y = if small { (a * s).mul_add(q, a) } else { q };
    y.copysign(x)
}

/// 1/k! for k = 0..=12 (Horner runs from the end).
const INV_FACT: [f64; 13] = [
    1.0,
    1.0,
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5_040.0,
    1.0 / 40_320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
];

#[inline(always)]
fn tanh_loop(x: &[f64], y: &mut [MaybeUninit<f64>]) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(tanh1(x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_loop_avx2_fma(x: &[f64], y: &mut [MaybeUninit<f64>]) {
    tanh_loop(x, y);
}

/// The same loop eight lanes wide. Every lane runs the same fused operations as the scalar
/// kernel, so the results are bitwise those of the AVX2 loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tanh_loop_avx512(x: &[f64], y: &mut [MaybeUninit<f64>]) {
    tanh_loop(x, y);
}

/// A tanh loop compiled for some CPU features (unsafe to call without them).
#[cfg(target_arch = "x86_64")]
type TanhLoop = unsafe fn(&[f64], &mut [MaybeUninit<f64>]);

/// The widest tanh loop this x86-64 machine runs, or `None` without FMA.
#[cfg(target_arch = "x86_64")]
fn tanh_loop_x86() -> Option<TanhLoop> {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma")) {
        return None;
    }
    if has!("avx512f") {
        Some(tanh_loop_avx512)
    } else {
        Some(tanh_loop_avx2_fma)
    }
}

/// Elementwise tanh of an `f64` matrix, or `None` where this machine has no fused
/// multiply-add (the caller then maps libm's `tanh`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn tanh(x: &DMatrix<f64>) -> Option<DMatrix<f64>> {
    let run = tanh_loop_x86()?;
    let xs = x.as_slice();
    Some(filled(x.nrows(), x.ncols(), |y| {
        split_mut(y, &|start, y| {
            // SAFETY: `tanh_loop_x86` picked a loop whose features the CPU has.
            unsafe { run(&xs[start..start + y.len()], y) }
        })
    }))
}

/// Elementwise tanh of an `f64` matrix (aarch64 always has fused multiply-add).
#[cfg(target_arch = "aarch64")]
pub(crate) fn tanh(x: &DMatrix<f64>) -> Option<DMatrix<f64>> {
    Some(filled(x.nrows(), x.ncols(), |y| tanh_loop(x.as_slice(), y)))
}

/// No fast kernel on this architecture: the caller maps libm's `tanh`.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn tanh(_x: &DMatrix<f64>) -> Option<DMatrix<f64>> {
    None
}

/// ln 2 split for `f32` (Cephes): `n · LN2_HI_F32` is exact for the small `n` used here.
const LN2_HI_F32: f32 = 0.693_359_4;
const LN2_LO_F32: f32 = -2.121_944_4e-4;
/// 1.5 · 2²³: adding it rounds to an integer held in the low mantissa bits.
const ROUND_F32: f32 = 12_582_912.0;
/// Cephes `tanhf` coefficients for |x| ≤ 0.625: tanh x = x + x·s·P(s), s = x².
const TANH_P_F32: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];
/// Beyond this, tanh rounds to ±1 in `f32` (1 − tanh 9.5 ≈ 1.1e−8, below half an ulp of 1;
/// at 9 it is 3.05e−8, just above).
const TANH_CLAMP_F32: f32 = 9.5;

/// tanh of one `f32`, branch-free so that loops over it vectorise (sixteen lanes with
/// AVX-512): the `f64` kernel's structure in single precision, exp(r) to r⁷ (the next term,
/// r⁸/8! ≤ 5.5e−9 at |r| ≤ ln2/2, is below f32's rounding of 6e−8).
#[inline(always)]
fn tanh1_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = 2.0
        * if a > TANH_CLAMP_F32 {
            TANH_CLAMP_F32
        } else {
            a
        };
    let t = z.mul_add(std::f32::consts::LOG2_E, ROUND_F32);
    let n = t - ROUND_F32;
    let r = (-n).mul_add(LN2_LO_F32, (-n).mul_add(LN2_HI_F32, z));
    let mut p: f32 = 1.0 / 5_040.0; // 1/7!
    for c in INV_FACT_F32.iter().rev() {
        p = p.mul_add(r, *c);
    }
    // The low bits of t's mantissa hold n (0 ≤ n ≤ 27): shifted into the exponent field with
    // the bias added, they give 2ⁿ.
    let scale = f32::from_bits((t.to_bits() << 23).wrapping_add(127 << 23));
    let e = p * scale;
    let s = a * a;
    let mut ps = TANH_P_F32[0];
    for c in &TANH_P_F32[1..] {
        ps = ps.mul_add(s, *c);
    }
    let small = a <= 0.625;
    // 1 − 2/(e + 1) rather than (e − 1)/(e + 1): near 1 the quotient rounds twice.
    let big = 1.0 - 2.0 / (e + 1.0);
    let y = if small { (a * s).mul_add(ps, a) } else { big };
    y.copysign(x)
}

/// 1/k! for k = 0..=6 (Horner runs from the end).
const INV_FACT_F32: [f32; 7] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
];

#[inline(always)]
fn tanh_loop_f32(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(tanh1_f32(x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_loop_f32_avx2_fma(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    tanh_loop_f32(x, y);
}

/// Sixteen lanes; every lane runs the same fused operations, so the results are bitwise
/// those of the AVX2 loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tanh_loop_f32_avx512(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    tanh_loop_f32(x, y);
}

/// Elementwise tanh of an `f32` matrix, or `None` where this machine has no fused
/// multiply-add (the caller then maps libm's `tanhf`). Within 1 ulp of the correctly
/// rounded value (tested).
#[cfg(target_arch = "x86_64")]
pub(crate) fn tanh_f32(x: &DMatrix<f32>) -> Option<DMatrix<f32>> {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma")) {
        return None;
    }
    let run: unsafe fn(&[f32], &mut [MaybeUninit<f32>]) = if has!("avx512f") {
        tanh_loop_f32_avx512
    } else {
        tanh_loop_f32_avx2_fma
    };
    let xs = x.as_slice();
    Some(filled(x.nrows(), x.ncols(), |y| {
        split_mut(y, &|start, y| {
            // SAFETY: the loop picked is compiled for features this CPU has.
            unsafe { run(&xs[start..start + y.len()], y) }
        })
    }))
}

/// Elementwise tanh of an `f32` matrix (aarch64 always has fused multiply-add).
#[cfg(target_arch = "aarch64")]
pub(crate) fn tanh_f32(x: &DMatrix<f32>) -> Option<DMatrix<f32>> {
    Some(filled(x.nrows(), x.ncols(), |y| {
        tanh_loop_f32(x.as_slice(), y)
    }))
}

/// No fast kernel on this architecture: the caller maps libm's `tanhf`.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn tanh_f32(_x: &DMatrix<f32>) -> Option<DMatrix<f32>> {
    None
}

/// The scalar `f32` tanh kernel, for tests.
#[cfg(test)]
pub(crate) fn tanh_scalar_f32(x: f32) -> f32 {
    tanh1_f32(x)
}

/// The scalar tanh kernel, for tests.
#[cfg(test)]
pub(crate) fn tanh_scalar(x: f64) -> f64 {
    tanh1(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in f32 units in the last place.
    fn ulps_f32(a: f32, b: f32) -> u32 {
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
    fn f32_tanh_is_within_1_ulp_of_the_correctly_rounded_value() {
        // Every f32 from 2⁻²⁰ to 16 (both signs; ~4·10⁸ values would be exhaustive, so a
        // stride of 7 through the bit patterns), plus tiny values, the branch point and the
        // clamp.
        let mut worst = (0, 0.0f32);
        let mut check = |x: f32| {
            let d = ulps_f32(tanh_scalar_f32(x), f64::from(x).tanh() as f32);
            if d > worst.0 {
                worst = (d, x);
            }
        };
        let (lo, hi) = (2f32.powi(-20).to_bits(), 16f32.to_bits());
        for bits in (lo..=hi).step_by(7) {
            let x = f32::from_bits(bits);
            check(x);
            check(-x);
        }
        for x in [
            0.0,
            -0.0,
            1e-30,
            1e-10,
            0.625,
            0.625f32.next_up(),
            9.0,
            9.5,
            1e30,
            f32::MAX,
        ] {
            check(x);
            check(-x);
        }
        eprintln!("f32 tanh: worst {} ulp at {}", worst.0, worst.1);
        assert!(worst.0 <= 1, "{} ulp at {}", worst.0, worst.1);
        assert!(tanh_scalar_f32(f32::NAN).is_nan());
        assert_eq!(tanh_scalar_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_scalar_f32(f32::NEG_INFINITY), -1.0);
        assert!(tanh_scalar_f32(-0.0).is_sign_negative());
    }

    /// Distance in units in the last place.
    fn ulps(a: f64, b: f64) -> u64 {
        let key = |x: f64| {
            let b = x.to_bits() as i64;
            if b < 0 {
                i64::MIN - b
            } else {
                b
            }
        };
        key(a).abs_diff(key(b))
    }

    #[test]
    fn tanh_is_within_3_ulp_of_libm() {
        let mut worst = (0, 0.0);
        let mut check = |x: f64| {
            let d = ulps(tanh_scalar(x), x.tanh());
            if d > worst.0 {
                worst = (d, x);
            }
        };
        // Dense around the branch point and the clamp, log-spaced from tiny to huge.
        for i in 0..=200_000 {
            check(f64::from(i) * 1e-4 - 10.0);
        }
        let mut x = 1e-300;
        while x < 1e300 {
            check(x);
            check(-x);
            x *= 1.001;
        }
        let near = |x: f64, d: i64| f64::from_bits((x.to_bits() as i64 + d) as u64);
        for x in [0.625, near(0.625, 1), near(0.625, -1), 22.0, 19.0, 1e-8] {
            check(x);
            check(-x);
        }
        assert!(worst.0 <= 3, "{} ulp at x = {:e}", worst.0, worst.1);
    }

    #[test]
    fn tanh_special_values() {
        assert_eq!(tanh_scalar(0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(tanh_scalar(-0.0).to_bits(), (-0.0f64).to_bits());
        assert_eq!(tanh_scalar(f64::INFINITY), 1.0);
        assert_eq!(tanh_scalar(f64::NEG_INFINITY), -1.0);
        assert_eq!(tanh_scalar(1e300), 1.0);
        assert!(tanh_scalar(f64::NAN).is_nan());
        assert_eq!(tanh_scalar(f64::MIN_POSITIVE), f64::MIN_POSITIVE);
        assert_eq!(tanh_scalar(5e-324), 5e-324);
    }

    /// The inputs of the ulp test above, as one vector.
    fn ulp_test_inputs() -> Vec<f64> {
        let mut xs: Vec<f64> = (0..=200_000).map(|i| f64::from(i) * 1e-4 - 10.0).collect();
        let mut x = 1e-300;
        while x < 1e300 {
            xs.extend([x, -x]);
            x *= 1.001;
        }
        xs.extend([
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            5e-324,
            22.0,
            -19.0,
        ]);
        xs
    }

    /// Each vector loop this machine can run gives the scalar kernel's bits on every input of
    /// the ulp test, so the 3-ulp bound holds for them too.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_x86_loop_matches_scalar_kernel_bitwise() {
        use std::arch::is_x86_feature_detected as has;
        let xs = ulp_test_inputs();
        let mut loops: Vec<(&str, TanhLoop)> = Vec::new();
        if has!("avx2") && has!("fma") {
            loops.push(("avx2", tanh_loop_avx2_fma));
            if has!("avx512f") {
                loops.push(("avx512", tanh_loop_avx512));
            }
        }
        for (name, run) in loops {
            let mut y = vec![MaybeUninit::uninit(); xs.len()];
            // SAFETY: the features each loop needs were detected above.
            unsafe { run(&xs, &mut y) };
            for (y, &x) in y.iter().zip(&xs) {
                // SAFETY: the loop wrote every entry.
                let y = unsafe { y.assume_init() };
                assert!(
                    y.to_bits() == tanh_scalar(x).to_bits() || (y.is_nan() && x.is_nan()),
                    "{name} at x = {x:e}: {y:e} vs {:e}",
                    tanh_scalar(x)
                );
            }
        }
    }

    #[test]
    fn dispatched_matrix_tanh_matches_scalar_kernel() {
        let x = DMatrix::from_fn(7, 5, |i, j| (i as f64 - 3.0) * 0.7 + j as f64 * 0.31);
        let Some(y) = tanh(&x) else {
            return; // no FMA on this machine: libm is used instead
        };
        for (y, &x) in y.iter().zip(x.iter()) {
            assert_eq!(y.to_bits(), tanh_scalar(x).to_bits());
        }
    }
}
