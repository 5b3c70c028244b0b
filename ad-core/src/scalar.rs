//! The scalar types a tape can run on.

use nalgebra::{DMatrix, RealField};
use num_dual::{DualNum, DualStruct};

/// A scalar the tape computes with: `f64` for speed, or a `num-dual` number
/// (`Dual64`, `HyperDual64`, `DualSVec64<N>`) to push forward-mode derivatives
/// through the same code, e.g. for forward-over-reverse Hessian-vector products.
pub trait Scalar: RealField + DualNum<Primitive = f64> + Copy {
    /// The real (`f64`) part of the number.
    #[inline]
    fn primal(self) -> f64 {
        DualStruct::re(&self)
    }

    /// Lift an `f64` constant into this scalar type (all derivative parts zero).
    #[inline]
    fn constant(x: f64) -> Self {
        <Self as From<f64>>::from(x)
    }
}

impl<T: RealField + DualNum<Primitive = f64> + Copy> Scalar for T {}

/// Whether every entry's real part is finite.
pub fn all_finite<T: Scalar>(m: &DMatrix<T>) -> bool {
    // A non-short-circuiting `&` over all entries: unlike a search, this loop vectorises.
    m.as_slice()
        .iter()
        .fold(true, |ok, x| ok & x.primal().is_finite())
}

/// Whether `T` carries derivative parts beside its real part (every dual number does; `f64`
/// does not). Comparisons of dual numbers look at the real part only, so code that skips
/// work on zeros must not skip for such types: a zero can carry a nonzero derivative.
pub fn carries_derivatives<T: Scalar>() -> bool {
    // The real part is an f64; any derivative part makes the number larger.
    std::mem::size_of::<T>() != std::mem::size_of::<f64>()
}
