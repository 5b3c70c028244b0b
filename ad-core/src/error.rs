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
    #[error("`{op}`: this Var was created before its tape was reset or rewound, so its node is gone; record it again on the current tape")]
    StaleVar {
        /// The operation that was called.
        op: &'static str,
    },
    /// The value of an intermediate node was released to save memory (its backward does not
    /// need it); the variable can still be differentiated through, but not read.
    #[error("`{op}`: this intermediate value was released after recording to save memory (backward never reads it); read the values you need before they are released, e.g. a solve's outputs")]
    Released {
        /// The operation that was called.
        op: &'static str,
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
