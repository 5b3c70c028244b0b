//! [`Strategy::Gauss`]: the Gauss adjoint. The backward integrates only the adjoint `a`, with
//! `h(t)` from the forward's interpolant, and forms `∫ aᵀ ∂f/∂θ dt` by Gauss–Legendre
//! quadrature over each accepted backward step (`crate::interpolated`).

use ad_core::Scalar;

use crate::dynamics::Dynamics;
use crate::error::Result;
use crate::input::SolveInput;
use crate::interpolated::{record, Quadrature};
use crate::solution::Solution;
use crate::strategy::{ContinuousAdjoint, Strategy};

/// The Gauss adjoint with `settings`.
pub(crate) fn gauss<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    input: &SolveInput<'_, 't, T>,
    f: &F,
    settings: &ContinuousAdjoint,
    strategy: &Strategy,
) -> Result<Solution<'t, T>> {
    record(input, f, settings, Quadrature::GaussLegendre, strategy)
}
