//! [`Strategy::Interpolating`]: the interpolating adjoint. The backward integrates
//! `[a, a_θ, a_t]` together, with `h(t)` from the forward's interpolant
//! (`crate::interpolated`).

use ad_core::Scalar;

use crate::dynamics::Dynamics;
use crate::error::Result;
use crate::input::SolveInput;
use crate::interpolated::{record, Quadrature};
use crate::solution::Solution;
use crate::strategy::{ContinuousAdjoint, Strategy};

/// The interpolating adjoint with `settings`.
pub(crate) fn interpolating<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    input: &SolveInput<'_, 't, T>,
    f: &F,
    settings: &ContinuousAdjoint,
    strategy: &Strategy,
) -> Result<Solution<'t, T>> {
    record(input, f, settings, Quadrature::Integrated, strategy)
}
