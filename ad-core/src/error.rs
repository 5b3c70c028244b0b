//! The one error type of the tape.

use std::fmt;

/// Result alias used throughout ad-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A matrix shape as `(rows, columns)`.
pub type Shape = (usize, usize);

/// Everything that can go wrong when recording on, or differentiating through, a tape.
///
/// Every variant names the operation (`op`) where it happened and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two operands (or an operand and an argument) have incompatible shapes.
    #[error("shape mismatch in `{op}`: left operand is {left:?}, right operand is {right:?} (rows x columns); {expected}")]
    ShapeMismatch {
        /// The operation that was called.
        op: &'static str,
        /// Shape of the left (first) operand.
        left: Shape,
        /// Shape of the right (second) operand, or the shape that was asked for.
        right: Shape,
        /// What the operation needs, in words.
        expected: &'static str,
    },
    /// A `Var` created on another tape was passed to an operation of this tape.
    #[error("`{op}`: a Var from a different tape was passed; record every Var of one computation on the same Tape")]
    ForeignVar {
        /// The operation that was called.
        op: &'static str,
    },
    /// A `Var` whose node no longer exists: the tape was reset or rewound after it was created.
    #[error("`{op}`: a Var passed to it was created before its tape was reset or rewound, so its node is gone (a result an op computed from such a Var carries this error too); record it again on the current tape")]
    StaleVar {
        /// The operation that was called.
        op: &'static str,
    },
    /// The value of an intermediate node was released to save memory (its backward does not
    /// need it); the variable can still be differentiated through, but not read.
    #[error("`{op}`: it read the value of an intermediate Var that `release_unneeded` dropped to save memory (backward never reads it; a result an op computed from it carries this error too); read the values you need before releasing, or list them in its `keep`")]
    Released {
        /// The operation that was called.
        op: &'static str,
    },
    /// The tape was asked to record (or to reset or rewind) while a custom op's forward or
    /// VJP was running on it.
    #[error("`{op}`: the tape is busy: a custom op's forward or VJP tried to record on (or reset, or rewind) the tape it belongs to; inside custom ops, record on a separate Tape (a leaf created on the busy tape is returned unrecorded, and its first use reports this)")]
    TapeBusy {
        /// The operation that was called (`var`, `constant` and `scalar` for leaves).
        op: &'static str,
    },
    /// `backward`, `vjp` or `vjp_wrt` was called while a backward pass on the same tape was
    /// running, i.e. from inside a custom op's VJP.
    #[error("`{op}`: called from inside a custom op's VJP while a backward pass on the same tape is running; a VJP must not differentiate on the tape it belongs to: record what it differentiates on a separate Tape")]
    NestedBackward {
        /// The operation that was called.
        op: &'static str,
    },
    /// A [`crate::Mark`] taken on another tape was passed to this tape.
    #[error(
        "`{op}`: the Mark was taken on a different tape; pass a Mark from this tape's own `mark()`"
    )]
    ForeignMark {
        /// The operation that was called.
        op: &'static str,
    },
    /// A [`crate::Mark`] whose position no longer holds what it saw: the tape was reset, or
    /// rewound to before the mark, after the mark was taken.
    #[error("`{op}`: the Mark is stale: {reason} after it was taken, so the position it names no longer holds the nodes it saw; take a new mark with `Tape::mark`")]
    StaleMark {
        /// The operation that was called.
        op: &'static str,
        /// What happened to the tape since the mark was taken.
        reason: &'static str,
    },
    /// A result would hold more entries than one tensor may ([`crate::MAX_ELEMENTS`]), or
    /// the allocator could not provide it.
    #[error("`{op}`: a {rows} x {cols} result is too large: one tensor holds at most {limit} entries (ad_core::MAX_ELEMENTS; an empty dimension counts as 1), and the allocator must be able to provide it; check the sizes passed to `{op}` (a negative size cast to usize is huge)")]
    TooLarge {
        /// The operation that was called.
        op: &'static str,
        /// Rows of the result that was asked for.
        rows: usize,
        /// Columns of the result that was asked for (saturated at `usize::MAX` if even
        /// counting them overflowed).
        cols: usize,
        /// The limit on the entries of one tensor, [`crate::MAX_ELEMENTS`].
        limit: usize,
    },
    /// A reduction that divides by the number of entries (`mean`, `mse`) got no entries.
    #[error("`{op}`: the input is {shape:?} (rows x columns), with no entries, and the mean of no entries is undefined; check that the batch is not empty, or use sum() if an empty input should give 0")]
    EmptyInput {
        /// The operation that was called.
        op: &'static str,
        /// Shape of the empty input.
        shape: Shape,
    },
    /// A cotangent handed to `vjp` / `vjp_wrt` has a NaN or infinite entry: every gradient
    /// would silently be NaN.
    #[error("`{op}`: the cotangent of seed {seed} has a non-finite entry (NaN or infinite) at {entry:?} (row, column); seed cotangents must be finite: check what produced it")]
    NonFiniteCotangent {
        /// The operation that was called.
        op: &'static str,
        /// Index of the offending seed (0 for `vjp`).
        seed: usize,
        /// `(row, column)` of its first non-finite entry.
        entry: (usize, usize),
    },
    /// An argument is out of range (a slice past the last column, an empty concat, ...).
    #[error("`{op}`: {message}")]
    InvalidArgument {
        /// The operation that was called.
        op: &'static str,
        /// What was wrong and how to fix it.
        message: String,
    },
    /// A custom op's forward or VJP failed, or returned values of the wrong shape.
    #[error("custom op `{op}` failed: {source}")]
    Custom {
        /// The custom op's name.
        op: String,
        /// The underlying error the op reported.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// A plain-text error for custom ops that have no error type of their own.
#[derive(Debug)]
pub struct Message(pub String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl Error {
    /// A copy of this error (the source of [`Error::Custom`] is copied as its message), for
    /// the error a `Var` that could not be recorded carries to its first fallible use.
    pub(crate) fn replicate(&self) -> Error {
        match *self {
            Error::ShapeMismatch {
                op,
                left,
                right,
                expected,
            } => Error::ShapeMismatch {
                op,
                left,
                right,
                expected,
            },
            Error::ForeignVar { op } => Error::ForeignVar { op },
            Error::StaleVar { op } => Error::StaleVar { op },
            Error::Released { op } => Error::Released { op },
            Error::TapeBusy { op } => Error::TapeBusy { op },
            Error::NestedBackward { op } => Error::NestedBackward { op },
            Error::ForeignMark { op } => Error::ForeignMark { op },
            Error::StaleMark { op, reason } => Error::StaleMark { op, reason },
            Error::TooLarge {
                op,
                rows,
                cols,
                limit,
            } => Error::TooLarge {
                op,
                rows,
                cols,
                limit,
            },
            Error::EmptyInput { op, shape } => Error::EmptyInput { op, shape },
            Error::NonFiniteCotangent { op, seed, entry } => {
                Error::NonFiniteCotangent { op, seed, entry }
            }
            Error::InvalidArgument { op, ref message } => Error::InvalidArgument {
                op,
                message: message.clone(),
            },
            Error::Custom { ref op, ref source } => Error::Custom {
                op: op.clone(),
                source: Box::new(Message(source.to_string())),
            },
        }
    }
}
