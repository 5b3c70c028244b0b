//! `OdeFunc`: an MLP vector field, and `NeuralOde`: an `OdeFunc` integrated with a chosen
//! gradient strategy.

use ad_core::{Result as TapeResult, Scalar, Tape, Var};
use ode::{odeint_with, Dynamics, Options, Solution, Strategy};

use crate::error::{Error, ModelPart, Result};
use crate::layers::{Activation, Mlp};

/// What the MLP sees of the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// `h` itself.
    State,
    /// `h³` elementwise (torchdiffeq's `ode_demo`).
    Cube,
}

impl Input {
    /// Its name, as [`Input`]'s `FromStr` reads it (`"h"` or `"cube"`).
    pub fn name(self) -> &'static str {
        match self {
            Input::State => "h",
            Input::Cube => "cube",
        }
    }
}

impl std::str::FromStr for Input {
    type Err = Error;

    /// `"h"` is [`Input::State`], `"cube"` is [`Input::Cube`]; anything else
    /// is an [`Error::Model`] at [`ModelPart::Input`].
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "h" => Ok(Input::State),
            "cube" => Ok(Input::Cube),
            other => Err(Error::model(
                ModelPart::Input,
                format!("is {other:?}, expected \"h\" or \"cube\""),
            )),
        }
    }
}

/// `f(t, h) = mlp(x) [− h]` with `x = h` or `h³`, and `t` appended as a last input column
/// when `time_input` is set. Implements [`ode::Dynamics`] for every scalar type.
#[derive(Clone, Debug, PartialEq)]
pub struct OdeFunc {
    /// The network; its input width is `dim + time_input`, its output width `dim`.
    pub mlp: Mlp,
    /// What the network sees of the state.
    pub input: Input,
    /// Append `t` as an input column.
    pub time_input: bool,
    /// Return `mlp(x) − h` (a contracting field for long horizons).
    pub subtract_state: bool,
}

impl OdeFunc {
    /// `dim → hidden… → dim` with the given activation, reading `h`, no time input.
    pub fn new(dim: usize, hidden: &[usize], activation: Activation) -> Result<Self> {
        let mut widths = vec![dim];
        widths.extend_from_slice(hidden);
        widths.push(dim);
        Ok(Self {
            mlp: Mlp::new(&widths, activation)?,
            input: Input::State,
            time_input: false,
            subtract_state: false,
        })
    }

    /// Build from a network and flags, checking that the layers chain
    /// ([`Mlp::check_layers`]) and that the network reads the state (plus the time column
    /// with `time_input`) and outputs it. Errors are [`Error::Model`] naming the layer.
    pub fn from_mlp(
        mlp: Mlp,
        input: Input,
        time_input: bool,
        subtract_state: bool,
    ) -> Result<Self> {
        mlp.check_layers()?;
        let dim = mlp.out_features();
        let expected = dim + usize::from(time_input);
        if mlp.in_features() != expected {
            return Err(Error::model(
                ModelPart::Weight(0),
                format!(
                    "reads {} features (columns) but f needs {expected}: the state's {dim}{}",
                    mlp.in_features(),
                    if time_input {
                        " plus the time column (time_input)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(Self {
            mlp,
            input,
            time_input,
            subtract_state,
        })
    }

    /// Same field with `t` appended as an input column (the first layer grows by one input).
    pub fn with_time_input(mut self) -> Self {
        if let (false, Some(first)) = (self.time_input, self.mlp.layers.first_mut()) {
            self.time_input = true;
            first.in_features += 1;
        }
        self
    }

    /// Same field returning `mlp(x) − h`.
    pub fn with_subtract_state(mut self) -> Self {
        self.subtract_state = true;
        self
    }

    /// Same field reading `h³`.
    pub fn with_input(mut self, input: Input) -> Self {
        self.input = input;
        self
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        self.mlp.out_features()
    }
}

impl<T: Scalar> Dynamics<T> for OdeFunc {
    fn eval<'t>(
        &self,
        t: Var<'t, T>,
        h: Var<'t, T>,
        params: &[Var<'t, T>],
    ) -> TapeResult<Var<'t, T>> {
        let mut x = match self.input {
            Input::State => h,
            Input::Cube => h.powi(3),
        };
        if self.time_input {
            let rows = h.shape()?.0;
            let column = t.broadcast(rows, 1)?;
            x = h.tape().concat_cols(&[x, column])?;
        }
        let y = self.mlp.forward(x, params)?;
        if self.subtract_state {
            y.sub(h)
        } else {
            Ok(y)
        }
    }

    /// The MLP maps each row (sample) on its own, and `t` is the same for every row.
    fn rows_independent(&self) -> bool {
        true
    }
}

/// An [`OdeFunc`] integrated over a time grid with a chosen gradient mode and solver.
#[derive(Clone, Debug)]
pub struct NeuralOde {
    /// The vector field.
    pub func: OdeFunc,
    /// How gradients flow through the solve: taped, backsolve, checkpointed, ...
    pub strategy: Strategy,
    /// Solver, tolerances and step control of the forward solve.
    pub options: Options,
}

impl NeuralOde {
    /// A neural ODE with default options (dopri5, rtol 1e-7, atol 1e-9).
    pub fn new(func: OdeFunc, strategy: Strategy) -> Self {
        Self {
            func,
            strategy,
            options: Options::default(),
        }
    }

    /// `h(t_0), …, h(t_n)` on `tape`, with solver statistics. `params` are the field's
    /// parameters on the same tape (see [`crate::ParamSet::to_tape`]). An `h0` whose width is
    /// not the field's state dimension is an [`ode::Error::Shape`] naming `h0` (not a shape
    /// error from inside the first layer).
    pub fn forward<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        h0: Var<'t, T>,
        t: Var<'t, T>,
        params: &[Var<'t, T>],
    ) -> Result<Solution<'t, T>> {
        let (rows, cols) = h0.shape()?;
        if cols != self.func.dim() {
            return Err(ode::Error::Shape {
                what: format!(
                    "h0 (one row per sample, one column per state component: this OdeFunc's state has {} components)",
                    self.func.dim()
                ),
                expected: (rows, self.func.dim()),
                got: (rows, cols),
            }
            .into());
        }
        Ok(odeint_with(
            tape,
            &self.func,
            h0,
            t,
            params,
            &self.options,
            &self.strategy,
        )?)
    }
}
