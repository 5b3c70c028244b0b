//! Solver options: method, tolerances, step control and norms. The backsolve adjoint's own
//! settings live with it, in [`crate::Backsolve`].

use std::fmt;
use std::sync::Arc;

use ad_core::nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::tableau::{self, StepKind, Tableau};

/// A user-supplied error norm: receives the scaled error `err / (atol + rtol·max(|y₀|, |y₁|))`
/// of every state component and returns one number; a step is accepted when it is ≤ 1.
pub type NormFn = Arc<dyn Fn(&[DMatrix<f64>]) -> f64 + Send + Sync>;

/// How the adaptive controller measures the scaled error.
#[derive(Clone, Default)]
pub enum Norm {
    /// Root mean square over every entry of every component (torchdiffeq's default).
    #[default]
    Rms,
    /// The largest per-component RMS (torchdiffeq's adjoint norm over h, a, a_θ, a_t).
    MaxRms,
    /// A user-supplied norm.
    Custom(NormFn),
}

impl fmt::Debug for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Norm::Rms => f.write_str("Rms"),
            Norm::MaxRms => f.write_str("MaxRms"),
            Norm::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The error norm of the adjoint's backward solve over the augmented state `[h, a, a_θ, a_t]`.
#[derive(Clone, Default)]
pub enum AdjointNorm {
    /// The largest per-component RMS over all of `h`, `a`, every `a_θ` tensor and `a_t`.
    #[default]
    Full,
    /// Leave the parameter adjoints `a_θ` out of the error estimate (Kidger, Chen & Lyons
    /// 2021; torchdiffeq's `adjoint_options=dict(norm="seminorm")`): they never feed back
    /// into the dynamics, so their error need not limit the step size.
    Seminorm,
    /// A user-supplied norm over the scaled errors of `[h, a, a_θ..., a_t]`.
    Custom(NormFn),
}

impl fmt::Debug for AdjointNorm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdjointNorm::Full => f.write_str("Full"),
            AdjointNorm::Seminorm => f.write_str("Seminorm"),
            AdjointNorm::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// How the adaptive controller measures a step's error: from the state alone, or from the
/// state and forward-mode tangents of it.
///
/// The exact strategies (taped, the exact replays, auto, reversible) and `Dual` solves return
/// the derivative **of the discrete solve**, whose step sizes the error control chose. When
/// those steps resolve the state but not its sensitivities (a state at an equilibrium while
/// its derivative still moves), that derivative is wrong at every tolerance. With tangents,
/// the steps are chosen so that they resolve the sensitivities too, and the gradient
/// converges to the true derivative as the tolerance falls. Step sizes stay constants for
/// the gradient either way. See `docs/design.md`, "What exact means".
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ErrorControl {
    /// The state's embedded error estimate alone (torchdiffeq's and Diffrax's rule, so their
    /// step counts are kept). The default.
    #[default]
    Primal,
    /// A planning solve first carries `directions` forward-mode tangents of the state beside
    /// it, along directions in `(h0, θ)` drawn from a fixed seed (for a `Dual64`/`Dual32`
    /// solve: its own dual parts, `directions` is then not read), and accepts a step only
    /// when the state *and* every tangent meet the tolerances; the gradient strategy then
    /// takes exactly those steps. It costs one evaluation of `f` on dual numbers per stage and
    /// direction, plus whatever extra steps the sensitivities need. The continuous adjoints
    /// (backsolve, gauss, interpolating) control their adjoint's error themselves and
    /// ignore it; fixed steps have nothing to choose. An f64 solve and a `Dual64` solve plan
    /// along different directions here (random ones, the dual parts); to compare them step
    /// for step (taped ≡ `Dual64`), give both the same directions with
    /// [`ErrorControl::Along`].
    WithTangents {
        /// How many random directions (at least 1).
        directions: usize,
    },
    /// As [`ErrorControl::WithTangents`], along directions the caller gives (each the shape
    /// of `h0` and of every parameter): e.g. the inputs the loss is most sensitive to.
    Along(Vec<TangentDirection>),
}

impl ErrorControl {
    /// Tangent-aware control with one random direction.
    pub fn with_tangents() -> Self {
        ErrorControl::WithTangents { directions: 1 }
    }

    /// Whether step sizes are chosen from tangents as well as the state.
    pub fn carries_tangents(&self) -> bool {
        !matches!(self, ErrorControl::Primal)
    }

    /// The number of tangent directions (0 under [`ErrorControl::Primal`]).
    pub fn direction_count(&self) -> usize {
        match self {
            ErrorControl::Primal => 0,
            ErrorControl::WithTangents { directions } => *directions,
            ErrorControl::Along(d) => d.len(),
        }
    }
}

/// One direction in `(h0, θ)` along which [`ErrorControl::Along`] carries a tangent.
#[derive(Clone, Debug, PartialEq)]
pub struct TangentDirection {
    /// The tangent of `h0` (the shape of `h0`).
    pub h0: DMatrix<f64>,
    /// The tangent of every parameter, in the order the solve is given them (their shapes).
    pub params: Vec<DMatrix<f64>>,
}

/// The most tangent directions one solve may carry: each costs one evaluation of `f` on dual
/// numbers per stage, so beyond this a continuous adjoint is the cheaper fix.
pub const MAX_TANGENT_DIRECTIONS: usize = 64;

/// Everything the forward solve can be told (the gradient strategy and its settings are a
/// separate [`crate::Strategy`]). Defaults match torchdiffeq: dopri5, rtol 1e-7, atol 1e-9,
/// safety 0.9, ifactor 10, dfactor 0.2, automatic first step, RMS norm.
#[derive(Clone, Debug)]
pub struct Options {
    /// The Runge–Kutta method (default [`tableau::DOPRI5`]).
    pub method: &'static Tableau,
    /// Relative tolerance of adaptive methods.
    pub rtol: f64,
    /// Absolute tolerance of adaptive methods.
    pub atol: f64,
    /// Step size of fixed-step methods (required for them, ignored by adaptive ones unless
    /// `constant_steps` is set).
    pub step_size: Option<f64>,
    /// Take every step at `step_size` even with an adaptive method, whose error estimate is
    /// then unused (Diffrax's `ConstantStepSize`). [`Options::fixed`] sets it.
    pub constant_steps: bool,
    /// Solve with McCallum & Foster's reversible scheme over `method` (arXiv 2410.11648):
    /// the state is a pair `(y, z)`, `z₀ = y₀`, and each step is
    /// `y₁ = λ(y₀ − z₀) + Φ_h(t₀, z₀)`, `z₁ = y₁ + z₀ − Φ_{−h}(t₁, y₁)` with `Φ` a step of
    /// `method` and `λ` this coupling, in (0, 1]. The outputs are `y`, between steps from the
    /// base method's interpolant (methods without one step onto every output). The scheme is
    /// stable on a dissipative mode of rate `μ` only for `|h μ| < −ln λ` (0.001 at
    /// λ = 0.999): it suits non-stiff, weakly dissipative problems (see `docs/design.md`). [`crate::Strategy::Reversible`] inverts the steps for an exact
    /// gradient in O(state + parameters) memory (and sets this itself); the taped strategy
    /// differentiates the same discrete solve. `None`: the plain step of `method`.
    pub coupling: Option<f64>,
    /// First step of adaptive methods; `None` selects it automatically (Hairer's algorithm).
    pub first_step: Option<f64>,
    /// Smallest step the controller may take; asking for less is a `StepSizeUnderflow`.
    pub min_step: f64,
    /// Largest step the controller may take.
    pub max_step: f64,
    /// Most steps (accepted and rejected) one solve, or one adjoint segment, may take.
    pub max_num_steps: usize,
    /// Factor applied to the optimal step size.
    pub safety: f64,
    /// Largest growth of the step size per step.
    pub ifactor: f64,
    /// Largest shrink of the step size per rejected step.
    pub dfactor: f64,
    /// Error norm of the forward solve.
    pub norm: Norm,
    /// What the error norm covers: the state alone (default) or the state and tangents of
    /// it, so that the exact strategies' gradients converge (see [`ErrorControl`]).
    pub error_control: ErrorControl,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            method: &tableau::DOPRI5,
            rtol: 1e-7,
            atol: 1e-9,
            step_size: None,
            constant_steps: false,
            coupling: None,
            first_step: None,
            min_step: 0.0,
            max_step: f64::INFINITY,
            max_num_steps: 10_000,
            safety: 0.9,
            ifactor: 10.0,
            dfactor: 0.2,
            norm: Norm::Rms,
            error_control: ErrorControl::Primal,
        }
    }
}

impl Options {
    /// Default options with the method called `name` (`"dopri5"`, `"tsit5"`, `"rk4"`, ...).
    pub fn with_method(name: &str) -> Result<Self> {
        Ok(Self {
            method: method_by_name(name)?,
            ..Self::default()
        })
    }

    /// Default options for steps of constant size `dt` with the method called `name`
    /// (adaptive methods too: their error estimate is then unused).
    pub fn fixed(name: &str, dt: f64) -> Result<Self> {
        Ok(Self {
            step_size: Some(dt),
            constant_steps: true,
            ..Self::with_method(name)?
        })
    }

    /// These options with McCallum & Foster's reversible scheme over the method, with
    /// coupling `coupling` (see [`Options::coupling`]).
    pub fn reversible(mut self, coupling: f64) -> Self {
        self.coupling = Some(coupling);
        self
    }

    /// These options with tangent-aware error control along `directions` random directions
    /// (see [`ErrorControl::WithTangents`]).
    pub fn with_tangents(mut self, directions: usize) -> Self {
        self.error_control = ErrorControl::WithTangents { directions };
        self
    }

    /// Set both tolerances.
    pub fn tolerances(mut self, rtol: f64, atol: f64) -> Self {
        self.rtol = rtol;
        self.atol = atol;
        self
    }

    /// Check every option; the solvers call this before doing anything.
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::BadOption {
                    name,
                    value: v,
                    expected: "must be finite and > 0",
                })
            }
        };
        positive("rtol", self.rtol)?;
        positive("atol", self.atol)?;
        positive("safety", self.safety)?;
        positive("ifactor", self.ifactor)?;
        positive("dfactor", self.dfactor)?;
        for (name, v) in [
            ("step_size", self.step_size),
            ("first_step", self.first_step),
        ] {
            if let Some(v) = v {
                positive(name, v)?;
            }
        }
        if !(self.min_step >= 0.0 && self.min_step.is_finite()) {
            return Err(Error::BadOption {
                name: "min_step",
                value: self.min_step,
                expected: "must be finite and >= 0",
            });
        }
        if self.max_step.partial_cmp(&self.min_step) != Some(std::cmp::Ordering::Greater) {
            return Err(Error::BadOption {
                name: "max_step",
                value: self.max_step,
                expected: "must be > min_step",
            });
        }
        if self.max_num_steps == 0 {
            return Err(Error::BadOption {
                name: "max_num_steps",
                value: 0.0,
                expected: "must be at least 1",
            });
        }
        self.method.validate()?;
        if let Some(c) = self.coupling {
            check_coupling(c)?;
            if self.method.step != StepKind::Explicit {
                return Err(Error::BadOption {
                    name: "coupling",
                    value: c,
                    expected: "must not be set: the method is reversible by itself (reversible_heun); leave Options::coupling at None",
                });
            }
        }
        if (self.method.b_error.is_none() || self.constant_steps) && self.step_size.is_none() {
            return Err(Error::MissingStepSize {
                option: "step_size",
                method: self.method.name,
            });
        }
        let directions = self.error_control.direction_count();
        if self.error_control.carries_tangents()
            && !(1..=MAX_TANGENT_DIRECTIONS).contains(&directions)
        {
            return Err(Error::BadOption {
                name: "error_control directions",
                value: directions as f64,
                expected: "must be between 1 and 64 (MAX_TANGENT_DIRECTIONS): with none there is no tangent to control, so use ErrorControl::Primal; past 64 a continuous adjoint (interpolating) is cheaper",
            });
        }
        if self.ifactor < 1.0 {
            return Err(Error::BadOption {
                name: "ifactor",
                value: self.ifactor,
                expected: "must be >= 1 (the most a step may grow by); below 1 every accepted step shrinks",
            });
        }
        if self.dfactor > 1.0 {
            return Err(Error::BadOption {
                name: "dfactor",
                value: self.dfactor,
                expected: "must be <= 1 (the least a rejected step shrinks by)",
            });
        }
        Ok(())
    }
}

/// Check a reversible scheme's coupling λ: it must lie in (0, 1] (λ = 0 makes the step
/// impossible to invert, λ > 1 amplifies the `y − z` gap every step).
pub(crate) fn check_coupling(c: f64) -> Result<()> {
    if c > 0.0 && c <= 1.0 {
        Ok(())
    } else {
        Err(Error::BadOption {
            name: "coupling",
            value: c,
            expected: "must lie in (0, 1]: 0 cannot be inverted and above 1 the y − z gap grows every step; McCallum & Foster use 0.999",
        })
    }
}

/// The tableau called `name`, or an `UnknownMethod` error listing the known ones.
pub fn method_by_name(name: &str) -> Result<&'static Tableau> {
    tableau::by_name(name).ok_or_else(|| Error::UnknownMethod { name: name.into() })
}

impl Norm {
    /// The norm's name, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Norm::Rms => "rms",
            Norm::MaxRms => "max_rms",
            Norm::Custom(_) => "custom",
        }
    }
}
