//! The ODE crate's error type: what went wrong, where, and how to fix it.

/// Result alias of the ode crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a solve can reject or run into.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output time grid is unusable.
    #[error("bad time grid: {reason}; give at least two finite, strictly increasing (or strictly decreasing) times as a 1xn or nx1 Var")]
    BadTimeGrid {
        /// What is wrong with it, with the offending index.
        reason: String,
    },
    /// A tolerance or step option is out of range.
    #[error("bad option `{name}` = {value}: {expected}")]
    BadOption {
        /// The option's name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What the option accepts.
        expected: &'static str,
    },
    /// The initial state or the vector field's output has the wrong shape.
    #[error("shape mismatch: {what} is {got:?} but must be {expected:?} (rows = batch, columns = state dimension)")]
    Shape {
        /// Which tensor (`"h0"`, `"f(t, h)"`, a parameter, ...).
        what: String,
        /// The shape it should have.
        expected: (usize, usize),
        /// The shape it has.
        got: (usize, usize),
    },
    /// The state or its derivative contains NaN or infinity.
    #[error("non-finite {what} at t = {t}: the dynamics blew up or produced NaN; check the vector field, its parameters and the initial state, or tighten the tolerances")]
    NonFinite {
        /// `"state"` or `"derivative"` (or an adjoint component).
        what: &'static str,
        /// The time at which it was found.
        t: f64,
    },
    /// The adaptive step size fell below `min_step`, or so low that `t + dt == t`.
    #[error("step size underflow at t = {t}: the controller asked for dt = {dt:e} (min_step = {min_step:e}); the problem is stiff or singular near t, so loosen rtol/atol, lower min_step, or use an implicit solver")]
    StepSizeUnderflow {
        /// Where the solve stopped.
        t: f64,
        /// The step size that was requested.
        dt: f64,
        /// The configured minimum.
        min_step: f64,
    },
    /// More than `max_num_steps` steps were needed.
    #[error("too many steps: {max_num_steps} steps reached t = {t} before the end of the time grid; raise max_num_steps or loosen the tolerances")]
    TooManySteps {
        /// The configured maximum.
        max_num_steps: usize,
        /// The time reached.
        t: f64,
    },
    /// The tape rejected an operation (a foreign or stale `Var`, a shape error inside the
    /// dynamics, ...).
    #[error(transparent)]
    Tape(#[from] ad_core::Error),
}

impl Error {
    /// Recover an ode error that travelled through a custom op's VJP as a boxed source.
    pub(crate) fn from_tape(e: ad_core::Error) -> Self {
        match e {
            ad_core::Error::Custom { source, op } => match source.downcast::<Error>() {
                Ok(inner) => *inner,
                Err(source) => Error::Tape(ad_core::Error::Custom { op, source }),
            },
            other => Error::Tape(other),
        }
    }
}
