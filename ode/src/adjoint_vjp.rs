//! One evaluation of an adjoint's dynamics: `f(t, h)` recorded once on a local tape and a
//! cotangent pulled back through it. Backsolve's augmented system, the interpolated
//! adjoints' system and the Gauss quadrature all evaluate it this way.

use ad_core::nalgebra::DMatrix;
use ad_core::{Mark, Scalar, Tape, Var};

use crate::dynamics::Dynamics;
use crate::error::Result;
use crate::forward::check_field_output;

/// What the cotangent is pulled back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wrt {
    /// `h` only.
    State,
    /// `h`, every parameter, then `t`.
    All,
    /// Every parameter, then `t`.
    ParamsAndTime,
}

/// `f(t, h)` and the pull-back of `seed` through it, as values.
pub(crate) struct FieldVjp<T: Scalar> {
    /// `f(t, h)`.
    pub field: DMatrix<T>,
    /// `seedᵀ ∂f/∂x` for every `x` of the [`Wrt`], in its order.
    pub grads: Vec<DMatrix<T>>,
}

/// Record `f(t, h)` on `local` (rewound to `base` afterwards; `params` live below it), check
/// it, call `before_vjp` (where the caller accounts its peak memory: the evaluation is
/// recorded and its VJP about to run) and pull `seed` back. `t_value` is the 1×1 time as a
/// scalar (its dual part, a tangent on the grid, must reach f). A non-finite seed (a trial
/// step whose adjoint blew up) gives NaN cotangents, so that the controller rejects the
/// step instead of the tape refusing the seed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn field_vjp<'l, T: Scalar, F: Dynamics<T>>(
    f: &F,
    local: &'l Tape<T>,
    base: Mark,
    params: &[Var<'l, T>],
    (t, t_value): (f64, T),
    h: DMatrix<T>,
    seed: DMatrix<T>,
    wrt: Wrt,
    before_vjp: impl FnOnce(),
) -> Result<FieldVjp<T>> {
    let shape = h.shape();
    let h = local.var(h);
    let t_local = local.var(DMatrix::from_element(1, 1, t_value));
    let out = f.eval(t_local, h, params)?;
    check_field_output(out, shape, t)?;
    let mut vars = Vec::with_capacity(params.len() + 2);
    if wrt != Wrt::ParamsAndTime {
        vars.push(h);
    }
    if wrt != Wrt::State {
        vars.extend_from_slice(params);
        vars.push(t_local);
    }
    before_vjp();
    let grads = if ad_core::all_finite(&seed) {
        local.vjp_wrt(&[(out, seed)], &vars)?
    } else {
        vars.iter()
            .map(|v| {
                let (r, c) = v.shape()?;
                Ok(DMatrix::from_element(r, c, T::constant(f64::NAN)))
            })
            .collect::<Result<Vec<_>>>()?
    };
    let field = out.value()?;
    local.rewind(base)?;
    Ok(FieldVjp { field, grads })
}
