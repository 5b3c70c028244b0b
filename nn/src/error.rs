//! The nn crate's error type.

/// Result alias of the nn crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong building, running, training, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A solve failed (bad grid, tolerance, non-finite state, too many steps, ...).
    #[error(transparent)]
    Ode(#[from] ode::Error),
    /// The tape rejected an operation.
    #[error(transparent)]
    Tape(#[from] ad_core::Error),
    /// A file (problem file, weights) is malformed; `key` is the JSON path of the offending
    /// entry, e.g. `model.layers[1].weight[3]`.
    #[error("{key}: {message}")]
    Format {
        /// Where in the document.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Parameters, gradients or optimiser state do not match each other.
    #[error("parameter mismatch: {0}")]
    Mismatch(String),
}

impl Error {
    pub(crate) fn format(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format {
            key: key.into(),
            message: message.into(),
        }
    }
}
