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
    /// A model's layers, weights or settings do not fit together: layers that do not chain, a
    /// tensor of the wrong shape for its layer, an input width that is not the state's, an
    /// unknown activation or input name. `part` says which, so that a file reader can name
    /// the key it came from (e.g. `model.layers[1].weight` in a problem file).
    #[error("{part}: {message}")]
    Model {
        /// The offending part of the model.
        part: ModelPart,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Parameters, gradients or optimiser state do not match each other.
    #[error("parameter mismatch: {0}")]
    Mismatch(String),
    /// A file is not valid JSON: it is truncated, its syntax is broken, or characters follow
    /// the end of the document. `line` and `column` (1-based, column in bytes) locate it.
    #[error("not valid JSON at line {line}, column {column}: {message}")]
    Json {
        /// Line of the problem.
        line: usize,
        /// Column (bytes from the start of the line).
        column: usize,
        /// What is wrong, where in the document (when known) and what to do.
        message: String,
    },
    /// A value that JSON cannot carry (NaN or ±infinity) was about to be written; nothing was
    /// written.
    #[error(
        "{key} (in `{tensor}`) is {value}: JSON cannot carry non-finite numbers, so nothing \
         was written; find where the value went non-finite (e.g. a diverging training run)"
    )]
    NonFiniteSave {
        /// JSON path of the entry in the document that would have been written, e.g.
        /// `params[1].value[0][2]`.
        key: String,
        /// The tensor it belongs to (`layers.0.weight`, `h0`, ...).
        tensor: String,
        /// The value.
        value: f64,
    },
    /// A finite value does not fit in the precision it is converted to (an `f64` beyond
    /// ±3.4e38 for `f32`): it would become infinite.
    #[error(
        "`{tensor}`[{row}, {col}] = {value:e} does not fit in {precision}: it would become \
         infinite; rescale it or run in f64"
    )]
    Overflow {
        /// The tensor (`layers.0.weight`, `h0`, `t`, ...).
        tensor: String,
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The value.
        value: f64,
        /// The precision converted to (`f32`).
        precision: &'static str,
    },
    /// An optimiser hyper-parameter is outside its valid range.
    #[error("{optimizer}: {name} = {value} is invalid: {expected}")]
    Hyperparameter {
        /// `Sgd` or `Adam`.
        optimizer: &'static str,
        /// The field (`lr`, `momentum`, `beta1`, `beta2`, `eps`).
        name: &'static str,
        /// The value given.
        value: f64,
        /// The valid range.
        expected: &'static str,
    },
    /// A gradient has a NaN or infinite entry; no parameter was updated.
    #[error(
        "gradient of parameter {index} `{name}` is {value} at [{row}, {col}]; no parameter was \
         updated (the loss or its backward pass overflowed: check the loss, scale it down or \
         lower the learning rate)"
    )]
    NonFiniteGradient {
        /// Position of the parameter in the `ParamSet`.
        index: usize,
        /// Its name.
        name: String,
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The entry.
        value: f64,
    },
    /// The update from finite gradients would overflow a parameter or the optimiser state;
    /// no parameter was updated and the state is unchanged.
    #[error(
        "{optimizer}: the {quantity} of parameter {index} `{name}` would become {value} at \
         [{row}, {col}]; no parameter was updated (gradients too large for the learning rate: \
         lower it or scale the loss)"
    )]
    NonFiniteUpdate {
        /// `Sgd` or `Adam`.
        optimizer: &'static str,
        /// `parameter`, `velocity`, `first moment` or `second moment`.
        quantity: &'static str,
        /// Position of the parameter in the `ParamSet`.
        index: usize,
        /// Its name.
        name: String,
        /// Row of the entry.
        row: usize,
        /// Column of the entry.
        col: usize,
        /// The value it would have taken.
        value: f64,
    },
}

/// The part of a model an [`Error::Model`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelPart {
    /// The list of layers as a whole (e.g. it is empty, or the tensor count is wrong).
    Layers,
    /// Layer `i`'s weight (out × in), parameter `layers.{i}.weight`.
    Weight(usize),
    /// Layer `i`'s bias (1 × out), parameter `layers.{i}.bias`.
    Bias(usize),
    /// The activation's name.
    Activation,
    /// The input kind's name (what the network reads of the state).
    Input,
}

impl std::fmt::Display for ModelPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelPart::Layers => write!(f, "layers"),
            ModelPart::Weight(i) => write!(f, "layers.{i}.weight"),
            ModelPart::Bias(i) => write!(f, "layers.{i}.bias"),
            ModelPart::Activation => write!(f, "activation"),
            ModelPart::Input => write!(f, "input"),
        }
    }
}

impl Error {
    pub(crate) fn model(part: ModelPart, message: impl Into<String>) -> Self {
        Error::Model {
            part,
            message: message.into(),
        }
    }

    pub(crate) fn format(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format {
            key: key.into(),
            message: message.into(),
        }
    }
}
