//! The scalar types a tape can run on.

use nalgebra::{DMatrix, RealField};
use num_dual::{Dual, DualNum, DualNumFloat, DualStruct};

/// The floating-point precision under a scalar: `f32` or `f64`.
///
/// Controllers, norms and reports work in `f64` whatever the precision; these two conversions
/// are the only crossings.
pub trait Precision: DualNumFloat + RealField + DualNum<Primitive = Self> {
    /// The type's name, `"f32"` or `"f64"`, for messages and reports.
    const NAME: &'static str;
    /// Machine epsilon (the gap from 1 to the next number), as an `f64`.
    const EPSILON: f64;
    /// The value as an `f64` (exact for both precisions).
    fn as_f64(self) -> f64;
    /// The nearest value of this precision to `x` (rounded for `f32`; ±inf beyond its range).
    fn round_from(x: f64) -> Self;

    /// The dual number of this precision (`Dual64`, `Dual32`): one tangent beside the value.
    /// Forward-mode sweeps of code written generically over [`Scalar`] run on it.
    type Dual: Scalar<Primitive = Self>;
    /// `re + ε·eps`.
    fn dual(re: Self, eps: Self) -> Self::Dual;
    /// The value and the tangent of a dual number.
    fn parts(x: Self::Dual) -> (Self, Self);
}

/// `Precision`'s dual-number items for a real type (identical for f64 and f32).
macro_rules! dual_of_precision {
    ($real:ty) => {
        type Dual = Dual<$real>;
        #[inline]
        fn dual(re: Self, eps: Self) -> Self::Dual {
            Dual::new(re, eps)
        }
        #[inline]
        fn parts(x: Self::Dual) -> (Self, Self) {
            (x.re, x.eps)
        }
    };
}

impl Precision for f64 {
    const NAME: &'static str = "f64";
    const EPSILON: f64 = f64::EPSILON;
    #[inline]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline]
    fn round_from(x: f64) -> Self {
        x
    }
    dual_of_precision!(f64);
}

impl Precision for f32 {
    const NAME: &'static str = "f32";
    const EPSILON: f64 = f32::EPSILON as f64;
    #[inline]
    fn as_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn round_from(x: f64) -> Self {
        // Round to nearest; out-of-range values become ±inf, NaN stays NaN.
        x as f32
    }
    dual_of_precision!(f32);
}

/// A scalar the tape computes with: `f64` or `f32` for speed, or a `num-dual` number
/// (`Dual64`, `Dual32`, `HyperDual64`, `DualSVec64<N>`) to push forward-mode derivatives
/// through the same code, e.g. for forward-over-reverse Hessian-vector products.
pub trait Scalar: RealField + DualNum<Primitive: Precision> + Copy {
    /// The real part of the number, as an `f64` (exact for `f32` and `f64` real parts).
    #[inline]
    fn primal(self) -> f64 {
        DualStruct::re(&self).as_f64()
    }

    /// Lift an `f64` constant into this scalar type (rounded to its precision, all derivative
    /// parts zero).
    #[inline]
    fn constant(x: f64) -> Self {
        <Self as From<Self::Primitive>>::from(Precision::round_from(x))
    }
}

impl<T: RealField + DualNum<Primitive: Precision> + Copy> Scalar for T {}

/// Whether every entry's real part is finite.
pub fn all_finite<T: Scalar>(m: &DMatrix<T>) -> bool {
    // A non-short-circuiting `&` over all entries: unlike a search, this loop vectorises.
    m.as_slice()
        .iter()
        .fold(true, |ok, x| ok & x.primal().is_finite())
}

/// Whether `T` carries derivative parts beside its real part (every dual number does; `f64`
/// and `f32` do not). Comparisons of dual numbers look at the real part only, so code that
/// skips work on zeros must not skip for such types: a zero can carry a nonzero derivative.
pub fn carries_derivatives<T: Scalar>() -> bool {
    // Any derivative part makes the number larger than its real part.
    std::mem::size_of::<T>() != std::mem::size_of::<T::Primitive>()
}
