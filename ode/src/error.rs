//! The ODE crate's error type: what went wrong, where, and how to fix it.

/// Result alias of the ode crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A number for a message: plain where that is short, in exponent form otherwise (a
/// `1e-300` printed plainly is 300 digits long).
pub(crate) fn num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 || !a.is_finite() || (1e-4..1e9).contains(&a) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// Everything a solve can reject or run into.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output time grid is unusable.
    #[error("bad time grid: {reason}; give finite, strictly increasing (or strictly decreasing) times as a 1xn or nx1 Var")]
    BadTimeGrid {
        /// What is wrong with it, with the offending index.
        reason: String,
    },
    /// A tolerance or step option is out of range.
    #[error("bad option `{name}` = {}: {expected}", num(*value))]
    BadOption {
        /// The option's name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What the option accepts.
        expected: &'static str,
    },
    /// A relative tolerance finer than the scalar's precision can resolve.
    #[error("`{name}` = {} is below the unit roundoff of {precision} ({}): a step cannot be resolved that finely, so the solve would report an accuracy it does not have; raise {name} to at least {}{}", num(*value), num(*unit_roundoff), num(*unit_roundoff), if *precision == "f64" { "" } else { " or solve in f64" })]
    ToleranceBelowPrecision {
        /// The option's name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// The scalar's real type (`f32` or `f64`).
        precision: &'static str,
        /// Half its machine epsilon.
        unit_roundoff: f64,
    },
    /// No method has this name.
    #[error("unknown method `{name}`: use one of euler, midpoint, heun2, heun3, rk4, rk4_classic, fehlberg2, adaptive_heun, bosh3, dopri5, tsit5, dopri8, reversible_heun, implicit_euler, kvaerno3, kvaerno5")]
    UnknownMethod {
        /// The name asked for.
        name: String,
    },
    /// A fixed-step method was given no step size.
    #[error("`{option}` is not set, and the fixed-step method `{method}` needs it: set it (e.g. Options::fixed(\"{method}\", 0.01)) or use an adaptive method")]
    MissingStepSize {
        /// The option that must be set (`"step_size"`, `"Backsolve::step_size"`).
        option: &'static str,
        /// The fixed-step method.
        method: &'static str,
    },
    /// A hand-built tableau whose arrays do not fit each other.
    #[error(transparent)]
    Tableau(#[from] crate::tableau::TableauError),
    /// The initial state has no entries.
    #[error(
        "h0 is {rows}x{cols}: the state needs at least one row (batch) and one column (dimension)"
    )]
    EmptyState {
        /// Rows of the given h0.
        rows: usize,
        /// Columns of the given h0.
        cols: usize,
    },
    /// The initial state or the vector field's output has the wrong shape.
    #[error("shape mismatch: {what} is {got:?} but must be {expected:?} (rows = batch, columns = state dimension)")]
    Shape {
        /// Which tensor (`"f(t, h)"`, a parameter, ...).
        what: String,
        /// The shape it should have.
        expected: (usize, usize),
        /// The shape it has.
        got: (usize, usize),
    },
    /// The state or its derivative contains NaN or infinity.
    #[error("non-finite {what} at t = {}: the dynamics blew up or produced NaN; check the vector field, its parameters and the initial state, or tighten the tolerances", num(*t))]
    NonFinite {
        /// `"state"` or `"derivative"` (or an adjoint component).
        what: &'static str,
        /// The time at which it was found.
        t: f64,
    },
    /// The initial state `h0` holds NaN or infinity: the input, not the dynamics.
    #[error("the initial state h0 has a non-finite entry, {value}, at row {row}, column {col} (t = {}): the solve has not started; check the data or whatever computed h0", num(*t))]
    NonFiniteInitialState {
        /// Row (batch sample) of the first such entry.
        row: usize,
        /// Column (state component) of the first such entry.
        col: usize,
        /// The entry.
        value: f64,
        /// The grid's first time.
        t: f64,
    },
    /// A cotangent handed to a solve's backward pass contains NaN or infinity.
    #[error("the cotangent of output {output} (t = {}) is not finite: the loss or whatever reads h(t_{output}) produced NaN or infinity; check the loss, not the dynamics", num(*t))]
    NonFiniteCotangent {
        /// Index of the output in the time grid.
        output: usize,
        /// Its time.
        t: f64,
    },
    /// The automatic first step came out NaN, infinite or zero.
    #[error("the initial step size at t = {} came out as {}: the tolerances (rtol = {}, atol = {}) are too small to scale the error, or a custom norm returned NaN; raise the tolerances, fix the norm, or set Options::first_step", num(*t), num(*dt), num(*rtol), num(*atol))]
    BadInitialStep {
        /// Where the solve starts.
        t: f64,
        /// The step the heuristic proposed.
        dt: f64,
        /// The relative tolerance in use.
        rtol: f64,
        /// The absolute tolerance in use.
        atol: f64,
    },
    /// The adaptive step size fell so low that `t + dt == t`.
    #[error("step size underflow at t = {}: the controller asked for dt = {}, which no longer moves t; the problem is stiff or singular near t, so loosen rtol/atol, set min_step (steps are then clamped to it), or, if it is stiff, solve with an implicit method (kvaerno3, kvaerno5)", num(*t), num(*dt))]
    StepSizeUnderflow {
        /// Where the solve stopped.
        t: f64,
        /// The step size that was requested.
        dt: f64,
        /// The configured minimum.
        min_step: f64,
    },
    /// More than `max_num_steps` steps were needed.
    #[error("too many steps: {max_num_steps} steps reached t = {} before the end of the time grid; raise max_num_steps or loosen the tolerances", num(*t))]
    TooManySteps {
        /// The configured maximum.
        max_num_steps: usize,
        /// The time reached.
        t: f64,
    },
    /// A gradient strategy that cannot differentiate a solve over the options' step scheme.
    #[error("the `{strategy}` gradient strategy cannot differentiate {scheme}: {fix}")]
    SchemeNotSupported {
        /// The strategy asked for.
        strategy: String,
        /// The solve's scheme (e.g. `the reversible dopri5 (coupling 0.999)`).
        scheme: String,
        /// What to use instead.
        fix: &'static str,
    },
    /// The reversible strategy's backward reconstruction of a state overflowed.
    #[error("the reversible solve's backward reconstruction of the state is not finite at t = {}: inverting the steps amplified rounding until it overflowed (the dynamics expand too fast backwards for these step sizes and this coupling); take smaller steps (tighter rtol or a smaller step_size), use a coupling closer to 1, or use an exact replay strategy (aca or checkpointed:K) on the plain method", num(*t))]
    ReconstructionFailed {
        /// The start time of the step whose inversion failed.
        t: f64,
    },
    /// A tangent direction given to [`crate::ErrorControl::Along`] does not fit the solve.
    #[error("tangent direction {index} is unusable: {reason}; give one finite matrix the shape of h0 and one per parameter, in the solve's order")]
    BadTangentDirection {
        /// Its index in the list.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A tangent carried by tangent-aware error control became NaN or infinite while the
    /// state stayed finite.
    #[error("a tangent of the state is not finite at t = {}: the sensitivity along tangent direction {direction} overflowed (the solve is that sensitive to its inputs, or a given direction is too large); scale the direction down, shorten the horizon, or use ErrorControl::Primal with a continuous adjoint (interpolating)", num(*t))]
    TangentNonFinite {
        /// Where it was found.
        t: f64,
        /// Which direction.
        direction: usize,
    },
    /// A field that declares its rows independent ([`crate::Dynamics::rows_independent`])
    /// moved another row when only row 0 was perturbed.
    #[error("the vector field declares its rows independent (Dynamics::rows_independent) but row {row} of f moved when only row 0 of h was perturbed: it couples the rows (a batch norm, a mean over the batch, a row-mixing product); return false from rows_independent")]
    RowsCoupled {
        /// The first row that moved.
        row: usize,
    },
    /// An implicit stage's Newton iteration failed in a step that cannot be retried smaller
    /// (a fixed step, or a replayed one).
    #[error("the Newton iteration of an implicit stage did not converge at t = {} with dt = {} (a fixed step, which cannot be retried smaller): take a smaller step_size, or an adaptive implicit method (kvaerno3, kvaerno5)", num(*t), num(*dt))]
    NewtonFailed {
        /// The step's start.
        t: f64,
        /// Its size.
        dt: f64,
    },
    /// At an event's root `∂g/∂t + ∂g/∂h · f = 0`: the event time does not move to first
    /// order with the inputs (a grazing or stationary crossing), so its derivative is undefined.
    #[error("event function {event} crosses zero at t = {} with ∂g/∂t + ∂g/∂h·f = 0 (a grazing or stationary crossing): the event time's derivative is undefined; use an event function that crosses zero transversally", num(*t))]
    EventTimeUndefined {
        /// The root.
        t: f64,
        /// Which event function.
        event: usize,
    },
    /// `auto-strict:BYTES`: no strategy's estimated peak fits the budget.
    #[error("no gradient strategy fits the budget of {budget} bytes: the smallest, {strategy}, needs about {needed} bytes at its peak; raise the budget, or use auto:BYTES to run {strategy} over budget")]
    OverBudget {
        /// The budget asked for.
        budget: usize,
        /// The strategy with the smallest estimated peak.
        strategy: String,
        /// Its estimated peak in bytes.
        needed: usize,
    },
    /// The Newton iteration matrix `I − c·J` of an implicit stage cannot be factorised.
    #[error("the Newton iteration matrix I − c·J (c = γ·dt = {}){} is singular: {reason}; take a smaller step (c shrinks with dt), or check the Jacobian for NaN", num(*c), block.map_or(String::new(), |r| format!(", block of batch row {r},")))]
    SingularIterationMatrix {
        /// `γ·dt`.
        c: f64,
        /// The batch row of a block-diagonal matrix, if it was one block.
        block: Option<usize>,
        /// What was found.
        reason: String,
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
