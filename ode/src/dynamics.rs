//! The vector field `f_θ(t, h)`, written once against the tape API.

use ad_core::{Result, Scalar, Var};

/// A vector field `dh/dt = f_θ(t, h)`.
///
/// Write it once, generically over the scalar, with tape ops: the solvers run it untaped
/// (values only), taped (every op recorded), on dual numbers, and inside the adjoint's
/// backward pass. Parameters θ are passed in by the solver in the order the caller handed
/// them over; `t` is a 1×1 variable and `h` is batch × dim.
///
/// ```
/// use ad_core::{Result, Scalar, Var};
/// use ode::Dynamics;
///
/// /// h' = tanh(h Wᵀ), with W the only parameter.
/// #[derive(Clone)]
/// struct TanhLayer;
///
/// impl<T: Scalar> Dynamics<T> for TanhLayer {
///     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, params: &[Var<'t, T>]) -> Result<Var<'t, T>> {
///         Ok(h.matmul_t(params[0])?.tanh())
///     }
/// }
/// ```
pub trait Dynamics<T: Scalar> {
    /// Evaluate `f_θ(t, h)`; the result must have the shape of `h`.
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, params: &[Var<'t, T>]) -> Result<Var<'t, T>>;
}

impl<T: Scalar, F: Dynamics<T> + ?Sized> Dynamics<T> for &F {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, params: &[Var<'t, T>]) -> Result<Var<'t, T>> {
        (**self).eval(t, h, params)
    }
}
