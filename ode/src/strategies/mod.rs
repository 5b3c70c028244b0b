//! One module per gradient strategy. Each takes the checked [`crate::input::SolveInput`] and
//! returns a [`crate::Solution`]; `crate::solve` picks one from the [`crate::Strategy`], and
//! what they share (the untaped forward, the opaque node, the input checks) lives below
//! them, so arrows point one way.

pub(crate) mod auto;
pub(crate) mod backsolve;
pub(crate) mod gauss;
pub(crate) mod interpolating;
pub(crate) mod replay;
pub(crate) mod reversible;
pub(crate) mod taped;
