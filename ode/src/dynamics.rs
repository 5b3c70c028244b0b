//! The vector field `f_θ(t, h)`, written once against the tape API.

use ad_core::nalgebra::DMatrix;
use ad_core::{Result, Scalar, Var};

use crate::jacobian::Jacobian;

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
///
/// Lotka–Volterra with learnable α, β, γ, δ (each 1×1), on a batch of `[prey, predator]`
/// rows: 1×1 parameters broadcast in elementwise ops, so no `broadcast` call is needed.
///
/// ```
/// use ad_core::{nalgebra::DMatrix, Result, Scalar, Tape, Var};
/// use ode::{odeint, Dynamics, Options};
///
/// #[derive(Clone)]
/// struct LotkaVolterra;
///
/// impl<T: Scalar> Dynamics<T> for LotkaVolterra {
///     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> Result<Var<'t, T>> {
///         let (x, y) = (h.slice_cols(0, 1)?, h.slice_cols(1, 1)?);
///         let xy = x.mul(y)?;
///         let dx = x.mul(p[0])?.sub(xy.mul(p[1])?)?; // α x − β x y
///         let dy = xy.mul(p[3])?.sub(y.mul(p[2])?)?; // δ x y − γ y
///         h.tape().concat_cols(&[dx, dy])
///     }
/// }
///
/// let tape = Tape::<f64>::new();
/// let params: Vec<_> = [1.5, 1.0, 3.0, 1.0]
///     .iter()
///     .map(|&v| tape.var(DMatrix::from_element(1, 1, v)))
///     .collect();
/// let h0 = tape.var(DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 2.0, 0.5]));
/// let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
/// let sol = odeint(&tape, &LotkaVolterra, h0, t, &params, &Options::default())?;
/// let g = tape.backward(sol.last().sum())?;
/// assert!(params.iter().all(|p| g.get(*p).unwrap()[(0, 0)].is_finite()));
/// # Ok::<(), ode::Error>(())
/// ```
pub trait Dynamics<T: Scalar> {
    /// Evaluate `f_θ(t, h)`; the result must have the shape of `h`.
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, params: &[Var<'t, T>]) -> Result<Var<'t, T>>;

    /// Whether row `r` of `f(t, h)` depends on row `r` of `h` alone (one field applied to
    /// every sample of a batch, as a neural ODE's is). Its Jacobian is then block-diagonal
    /// over the rows, and [`crate::jacobian::jacobian`] builds it in `dim` sweeps instead of
    /// `batch × dim`, one `dim × dim` block per row. Default `false` (a dense Jacobian); a
    /// wrong `true` is caught by a probe ([`crate::Error::RowsCoupled`]).
    fn rows_independent(&self) -> bool {
        false
    }

    /// `∂f/∂h` at `(t, h)` with parameter values `params`, when the field computes it itself
    /// (an analytic or structured Jacobian, in [`crate::jacobian::Jacobian`]'s layout). `None`
    /// (the default): implicit methods build it from VJP rows of [`Dynamics::eval`].
    fn jacobian(
        &self,
        _t: f64,
        _h: &DMatrix<T>,
        _params: &[DMatrix<T>],
    ) -> Option<crate::Result<Jacobian<T::Primitive>>> {
        None
    }
}

impl<T: Scalar, F: Dynamics<T> + ?Sized> Dynamics<T> for &F {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, params: &[Var<'t, T>]) -> Result<Var<'t, T>> {
        (**self).eval(t, h, params)
    }

    fn rows_independent(&self) -> bool {
        (**self).rows_independent()
    }

    fn jacobian(
        &self,
        t: f64,
        h: &DMatrix<T>,
        params: &[DMatrix<T>],
    ) -> Option<crate::Result<Jacobian<T::Primitive>>> {
        (**self).jacobian(t, h, params)
    }
}
