//! Gradient strategies: how a solve's gradient is obtained, each with the settings it owns,
//! and what each reports. `docs/design.md` explains the algorithms and their costs.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::options::{check_coupling, AdjointNorm, Options};
use crate::tableau::{StepKind, Tableau};

/// How gradients flow through a solve: passed to [`crate::odeint_with`]. Every strategy is
/// generic over the scalar, so on a `Tape<Dual64>` each one gives forward-over-reverse
/// Hessian-vector products.
///
/// In the cost figures, N is the number of accepted steps, s the stages per step, d the
/// state size (batch × dim), |θ| the parameter count and A the tape memory of one f
/// evaluation.
#[derive(Clone, Debug, Default)]
pub enum Strategy {
    /// Every stage on the caller's tape ([`crate::odeint`]): the exact gradient of the
    /// discrete solve. Memory O(N·s·A) (values no VJP reads are released as the solve goes);
    /// compute: one taped forward and one backward sweep. The fastest exact strategy.
    #[default]
    Taped,
    /// The backsolve adjoint ([`crate::odeint_adjoint`]): the forward records nothing, and
    /// one opaque node's VJP integrates `[h, a, a_θ, a_t]` backwards. Memory O(d + |θ|)
    /// beyond the outputs; compute: one untaped forward plus a backward solve whose steps
    /// the adjoint tolerances choose (each evaluation is one f and one VJP). The gradient is
    /// accurate to the tolerance, but `h` is reconstructed backwards and drifts on
    /// contracting dynamics: [`BackwardStats::drift`] measures it at every reset.
    Backsolve(Backsolve),
    /// The backsolve adjoint with `checkpoints` stored states (the initial state counts as
    /// one): the forward keeps states at evenly spread accepted steps, and the backward
    /// resets `h` to them (as well as at output times), so drift cannot build up over more
    /// than the stretch between two resets. Memory O(checkpoints·d + |θ|); compute as for
    /// [`Strategy::Backsolve`], with at least one backward step per stretch. Not exact.
    BacksolveCheckpointed {
        /// States kept (≥ 1; at most this many, at least half as many once the forward has
        /// taken more steps than that).
        checkpoints: usize,
        /// The backward solve's settings.
        backsolve: Backsolve,
    },
    /// Store every step (ACA; Zhuang et al. 2020): the forward, untaped, keeps each accepted
    /// step's start state and step size; the backward re-runs each step on a local tape with
    /// the same step size and pulls the cotangent back through it. The gradient is the
    /// taped one exactly. Memory N·d + one step's tape (s·A); compute: one untaped forward,
    /// one taped replay of every step and its VJP — no re-integration.
    StoreEveryStep,
    /// Exact like [`Strategy::StoreEveryStep`] but holding at most `slots` states (the
    /// initial one included), forward and backward; states between them are recomputed
    /// from the nearest stored one by replaying recorded step sizes, on Griewank's binomial
    /// (revolve) schedule. The forward, not knowing N, keeps states at evenly spread steps;
    /// the backward, knowing N, runs the schedule between them, or from `h0` alone when
    /// that is cheaper. Memory: slots·d + one step's tape + O(N) numbers; compute: one
    /// untaped forward, at most t(N, slots) = r·N − C(slots + r, slots + 1) untaped step
    /// recomputations in the backward (r the smallest integer with C(slots + r, slots) ≥ N;
    /// [`BackwardStats::recomputed_steps`] counts them) and one taped replay of every step.
    Checkpointed {
        /// States kept (≥ 1).
        slots: usize,
    },
    /// The exact gradient of a reversible solve in O(d + |θ|) memory (McCallum & Foster
    /// 2024; Kidger et al. 2021): the forward solves with a reversible scheme — McCallum &
    /// Foster's coupling over the options' method, or the `reversible_heun` method — and
    /// keeps only the final pair `(y, z)` and the step sizes; the backward reconstructs every
    /// step's start by inverting the step and pulls the cotangent back through the inverse's
    /// own evaluations on a local tape. The gradient is the taped gradient of the same
    /// reversible solve to rounding ([`BackwardStats::reconstruction`] reports how well the
    /// states were reconstructed). Note that the coupled scheme's solution is not the plain
    /// method's: it is a different discrete solve (of the same order), stable on dissipative
    /// modes of rate `μ` only for `|h μ| < −ln λ`; beyond that the discrete derivative itself
    /// grows step by step (the reconstruction report shows it). Memory: 2d + |θ| + one base step's tape + O(N) numbers;
    /// compute: two base steps per step forward (plus one evaluation), two taped base
    /// steps and their VJPs per step backward (reversible Heun: one evaluation per step
    /// forward, two with their VJPs backward).
    Reversible {
        /// The coupling λ ∈ (0, 1] of McCallum & Foster's scheme. `None`: the options'
        /// ([`Options::coupling`]), else 0.999 (the authors' choice); must be `None` for the
        /// `reversible_heun` method, which is reversible by itself.
        coupling: Option<f64>,
    },
    /// The Gauss adjoint (SciMLSensitivity's `GaussAdjoint`): the forward keeps its dense
    /// output (every step's, or `checkpoints` states from which each stretch is re-solved in
    /// the backward), and the backward integrates only the adjoint `a` (d entries) under its
    /// own error control, with `h(t)` read from the interpolant, and adds
    /// `∫ aᵀ ∂f/∂θ dt` over each accepted backward step by Gauss–Legendre quadrature on the
    /// backward step's own dense output. Nothing is integrated backwards but `a`, so nothing
    /// drifts, and the step sizes follow `a` alone. Accurate to the tolerances (of the
    /// forward interpolant and the backward solve), not exact. Memory: the interpolant
    /// ((s + 1)·d per step with a method's own interpolant, 2·d with a Hermite), or
    /// `checkpoints`·d plus one stretch's interpolant; compute: one untaped forward (plus one
    /// re-solve with checkpoints), and per backward step s evaluations with a VJP to `h` and
    /// ⌈(p + 1)/2⌉ with a VJP to θ and t.
    Gauss(ContinuousAdjoint),
    /// The interpolating adjoint (SciMLSensitivity's `InterpolatingAdjoint`, CVODES): as
    /// [`Strategy::Gauss`], but the backward integrates `[a, a_θ, a_t]` together (each
    /// evaluation one f and one VJP to h, θ and t), so `a_θ` counts in its error norm
    /// unless [`AdjointNorm::Seminorm`] is chosen.
    Interpolating(ContinuousAdjoint),
    /// The fastest exact strategy whose peak memory fits `budget_bytes`: taped while its
    /// tape fits (abandoned, and the tape rewound, before a step that would not), else
    /// checkpointed with as many slots as fit beside one step's replay — store-every-step
    /// when that is a slot for every step, reported as `aca` — and backsolve only when not
    /// even two states and one step's replay fit. A solve over a reversible scheme (which
    /// the user chose: it changes the discrete solution) goes to [`Strategy::Reversible`]
    /// when its tape does not fit. Gauss and interpolating are never chosen: not exact, and
    /// they need more than the two states `checkpointed:2` needs.
    /// [`Solution::strategy`](crate::Solution::strategy) says what was chosen and why.
    ///
    /// Backsolve's own peak (its augmented state `[h, a, a_θ, a_t]` with its stages, one
    /// evaluation's tape and VJP) can exceed a small budget too: the report's reason then
    /// says "over budget" with the estimate, and `strict` refuses with
    /// [`Error::OverBudget`] instead of running. Parsed as `auto:BYTES` and
    /// `auto-strict:BYTES`.
    Auto {
        /// Bytes the solve and its backward may use beyond inputs, parameters and outputs.
        budget_bytes: usize,
        /// Refuse ([`Error::OverBudget`]) rather than run a strategy whose estimated peak
        /// exceeds the budget.
        strict: bool,
    },
}

impl Strategy {
    /// The backsolve adjoint with default settings.
    pub fn backsolve() -> Self {
        Strategy::Backsolve(Backsolve::default())
    }

    /// The backsolve adjoint with `checkpoints` stored states and default settings.
    pub fn backsolve_checkpointed(checkpoints: usize) -> Self {
        Strategy::BacksolveCheckpointed {
            checkpoints,
            backsolve: Backsolve::default(),
        }
    }

    /// The short name used by reports and by [`Strategy::from_str`]: `taped`, `backsolve`,
    /// `backsolve-checkpointed:K`, `aca`, `checkpointed:K`, `auto:BYTES`, `auto-strict:BYTES`,
    /// `gauss`, `interpolating`, `reversible`.
    pub fn name(&self) -> String {
        match self {
            Strategy::Taped => "taped".into(),
            Strategy::Backsolve(_) => "backsolve".into(),
            Strategy::BacksolveCheckpointed { checkpoints, .. } => {
                format!("backsolve-checkpointed:{checkpoints}")
            }
            Strategy::StoreEveryStep => "aca".into(),
            Strategy::Checkpointed { slots } => format!("checkpointed:{slots}"),
            Strategy::Auto {
                budget_bytes,
                strict: false,
            } => format!("auto:{budget_bytes}"),
            Strategy::Auto {
                budget_bytes,
                strict: true,
            } => format!("auto-strict:{budget_bytes}"),
            Strategy::Gauss(c) => c.name("gauss"),
            Strategy::Interpolating(c) => c.name("interpolating"),
            Strategy::Reversible { coupling: None } => "reversible".into(),
            Strategy::Reversible { coupling: Some(c) } => format!("reversible:{c}"),
        }
    }

    /// Whether the gradient is the taped one up to rounding (for `Auto`: unless it falls
    /// back to backsolve, which [`StrategyReport::name`] then says).
    pub fn is_exact(&self) -> bool {
        !matches!(
            self,
            Strategy::Backsolve(_)
                | Strategy::BacksolveCheckpointed { .. }
                | Strategy::Gauss(_)
                | Strategy::Interpolating(_)
        )
    }

    /// Whether the strategy differentiates solves over a reversible scheme
    /// ([`Options::coupling`], `reversible_heun`): taped, reversible and auto do; the
    /// others refuse them with [`Error::SchemeNotSupported`].
    pub fn runs_reversible_schemes(&self) -> bool {
        matches!(
            self,
            Strategy::Taped | Strategy::Reversible { .. } | Strategy::Auto { .. }
        )
    }

    /// Whether the strategy differentiates solves over implicit methods (kvaerno3/5,
    /// implicit_euler). The exact strategies (taped, aca, checkpointed:K, auto) record the
    /// stages and differentiate them by the implicit-function theorem; interpolating and
    /// gauss integrate the adjoint backwards with the implicit method (its Jacobian `−Jᵀ`),
    /// reading `h` from the forward's interpolant. Backsolve integrates `h` backwards through
    /// the stiff field, where its decaying modes grow: it runs only with an explicit backward
    /// method given ([`Backsolve::method`]), to show that. Reversible schemes are explicit.
    pub fn runs_implicit_stages(&self) -> bool {
        match self {
            Strategy::Taped
            | Strategy::StoreEveryStep
            | Strategy::Checkpointed { .. }
            | Strategy::Auto { .. }
            | Strategy::Gauss(_)
            | Strategy::Interpolating(_) => true,
            Strategy::Backsolve(b) | Strategy::BacksolveCheckpointed { backsolve: b, .. } => b
                .method
                .is_some_and(|m| !matches!(m.step, StepKind::DiagonallyImplicit { .. })),
            Strategy::Reversible { .. } => false,
        }
    }

    /// Check the strategy's own settings against the solve's options.
    pub fn validate(&self, opts: &Options) -> Result<()> {
        let at_least_one = |name: &'static str, k: usize| {
            if k == 0 {
                Err(Error::BadOption {
                    name,
                    value: 0.0,
                    expected: "must be at least 1 (the initial state is one of them)",
                })
            } else {
                Ok(())
            }
        };
        match self {
            Strategy::Backsolve(b) => b.validate(opts),
            Strategy::BacksolveCheckpointed {
                checkpoints,
                backsolve,
            } => {
                at_least_one("checkpoints", *checkpoints)?;
                backsolve.validate(opts)
            }
            Strategy::Checkpointed { slots } => at_least_one("slots", *slots),
            Strategy::Reversible { coupling } => reversible_options(opts, *coupling).map(|_| ()),
            Strategy::Gauss(c) | Strategy::Interpolating(c) => {
                if let Some(k) = c.checkpoints {
                    at_least_one("checkpoints", k)?;
                }
                c.validate(opts)
            }
            Strategy::Taped | Strategy::StoreEveryStep | Strategy::Auto { .. } => Ok(()),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The text of a strategy name that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown gradient strategy `{0}`: use taped, backsolve, backsolve-checkpointed:K, aca (store every step), checkpointed:K, gauss, gauss:K, interpolating, interpolating:K, reversible, reversible:COUPLING, auto:BYTES or auto-strict:BYTES, with K ≥ 1 and 0 < COUPLING ≤ 1")]
pub struct ParseStrategyError(pub String);

impl FromStr for Strategy {
    type Err = ParseStrategyError;

    /// Parse a [`Strategy::name`] (`odeint` and `odeint_adjoint` are accepted too).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || ParseStrategyError(s.to_owned());
        let (head, arg) = match s.split_once(':') {
            Some((h, a)) => (h, Some(a)),
            None => (s, None),
        };
        let number = |a: Option<&str>| -> std::result::Result<usize, ParseStrategyError> {
            a.and_then(|a| a.trim().parse::<usize>().ok())
                .filter(|&k| k > 0)
                .ok_or_else(bad)
        };
        Ok(match (head.trim(), arg) {
            ("taped" | "odeint", None) => Strategy::Taped,
            ("backsolve" | "adjoint" | "odeint_adjoint", None) => Strategy::backsolve(),
            ("backsolve-checkpointed", a) => Strategy::backsolve_checkpointed(number(a)?),
            ("aca" | "store-every-step", None) => Strategy::StoreEveryStep,
            ("checkpointed", a) => Strategy::Checkpointed { slots: number(a)? },
            ("gauss", None) => Strategy::Gauss(ContinuousAdjoint::default()),
            ("gauss", a) => Strategy::Gauss(ContinuousAdjoint::checkpointed(number(a)?)),
            ("interpolating", None) => Strategy::Interpolating(ContinuousAdjoint::default()),
            ("interpolating", a) => {
                Strategy::Interpolating(ContinuousAdjoint::checkpointed(number(a)?))
            }
            ("reversible", None) => Strategy::Reversible { coupling: None },
            ("reversible", Some(a)) => Strategy::Reversible {
                coupling: Some(
                    a.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|c| *c > 0.0 && *c <= 1.0)
                        .ok_or_else(bad)?,
                ),
            },
            ("auto" | "auto-strict", a) => Strategy::Auto {
                budget_bytes: a
                    .and_then(|a| a.trim().parse::<usize>().ok())
                    .ok_or_else(bad)?,
                strict: head.trim() == "auto-strict",
            },
            _ => return Err(bad()),
        })
    }
}

/// The forward options of a reversible solve: `opts` with the coupling resolved (the
/// strategy's, else the options', else 0.999; none for `reversible_heun`), or the error
/// naming the conflict.
pub(crate) fn reversible_options(opts: &Options, coupling: Option<f64>) -> Result<Options> {
    if let Some(c) = coupling {
        check_coupling(c)?;
    }
    if opts.method.step == StepKind::ReversibleHeun {
        if let Some(c) = coupling.or(opts.coupling) {
            return Err(Error::BadOption {
                name: "coupling",
                value: c,
                expected: "must not be given with reversible_heun, which is reversible by itself: use the strategy `reversible` without a coupling",
            });
        }
        return Ok(opts.clone());
    }
    let c = match (coupling, opts.coupling) {
        (Some(s), Some(o)) if s != o => {
            return Err(Error::BadOption {
                name: "coupling",
                value: s,
                expected:
                    "must match Options::coupling when both are set: give the coupling in one place",
            })
        }
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => DEFAULT_COUPLING,
    };
    Ok(Options {
        coupling: Some(c),
        ..opts.clone()
    })
}

/// McCallum & Foster's coupling.
pub(crate) const DEFAULT_COUPLING: f64 = 0.999;

/// The backsolve adjoint's own settings (torchdiffeq's `adjoint_*` arguments, Diffrax's
/// `BacksolveAdjoint(**kwargs)`); unset ones default to the forward solve's.
#[derive(Clone, Debug)]
pub struct Backsolve {
    /// Method of the backward solve (default: the forward's).
    pub method: Option<&'static Tableau>,
    /// Relative tolerance of the backward solve (default: the forward's `rtol`).
    pub rtol: Option<f64>,
    /// Absolute tolerance of the backward solve (default: the forward's `atol`).
    pub atol: Option<f64>,
    /// Step size of a fixed-step backward method (default: the forward's `step_size`).
    pub step_size: Option<f64>,
    /// Error norm of the backward solve over `[h, a, a_θ, a_t]`.
    pub norm: AdjointNorm,
    /// Stop the backward solve at every output time and reset `h` to the stored forward
    /// value there, as torchdiffeq does (default `true`). With `false`, output times whose
    /// output gets no cotangent are stepped through: far fewer steps when the loss reads only
    /// a few outputs, but no reset of `h` there, so on contracting dynamics (whose backward
    /// reconstruction drifts) gradients can be much less accurate — the drift report shows
    /// it. The step size is carried across stops either way.
    pub stop_at_all_outputs: bool,
}

impl Default for Backsolve {
    fn default() -> Self {
        Self {
            method: None,
            rtol: None,
            atol: None,
            step_size: None,
            norm: AdjointNorm::Full,
            stop_at_all_outputs: true,
        }
    }
}

impl Backsolve {
    /// These settings with both backward tolerances set.
    ///
    /// The backward solve stops at every output time ([`Backsolve::stop_at_all_outputs`]) and
    /// checkpoint, and takes at least one step per segment between stops
    /// ([`BackwardStats::segments`] counts them). On a dense output grid — 50 points, say —
    /// the segments are shorter than the steps the tolerances would choose, so the grid, not
    /// the tolerances, sets the step count and the accuracy: tightening them then changes
    /// nothing. Set `stop_at_all_outputs = false` to let the tolerances choose the steps
    /// between outputs that carry a cotangent.
    pub fn tolerances(mut self, rtol: f64, atol: f64) -> Self {
        self.rtol = Some(rtol);
        self.atol = Some(atol);
        self
    }

    /// These settings with the given backward error norm.
    pub fn norm(mut self, norm: AdjointNorm) -> Self {
        self.norm = norm;
        self
    }

    /// Check the settings against the forward options they default to.
    pub fn validate(&self, opts: &Options) -> Result<()> {
        check_positive([
            ("Backsolve::rtol", self.rtol),
            ("Backsolve::atol", self.atol),
            ("Backsolve::step_size", self.step_size),
        ])?;
        check_backward_method(self.method, self.step_size, opts, "Backsolve::step_size")
    }
}

/// Each setting that is given must be finite and positive.
fn check_positive(settings: [(&'static str, Option<f64>); 3]) -> Result<()> {
    for (name, v) in settings {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::BadOption {
                name,
                value: v,
                expected: "must be finite and > 0",
            });
        }
    }
    Ok(())
}

/// The backward solve's method: valid, explicit, and given a step size if it is fixed-step.
fn check_backward_method(
    method: Option<&'static Tableau>,
    step_size: Option<f64>,
    opts: &Options,
    option: &'static str,
) -> Result<()> {
    let method = method.unwrap_or(opts.method);
    method.validate()?;
    if method.b_error.is_none() && step_size.or(opts.step_size).is_none() {
        return Err(Error::MissingStepSize {
            option,
            method: method.name,
        });
    }
    Ok(())
}

/// The settings of the continuous adjoints that read `h` from the forward's interpolant
/// ([`Strategy::Gauss`], [`Strategy::Interpolating`]); unset ones default to the forward
/// solve's.
#[derive(Clone, Debug, Default)]
pub struct ContinuousAdjoint {
    /// Method of the backward solve (default: the forward's).
    pub method: Option<&'static Tableau>,
    /// Relative tolerance of the backward solve (default: the forward's `rtol`).
    pub rtol: Option<f64>,
    /// Absolute tolerance of the backward solve (default: the forward's `atol`).
    pub atol: Option<f64>,
    /// Step size of a fixed-step backward method (default: the forward's `step_size`).
    pub step_size: Option<f64>,
    /// Error norm of the backward solve: over `a` (and, for the interpolating adjoint,
    /// `a_θ` and `a_t` unless [`AdjointNorm::Seminorm`]).
    pub norm: AdjointNorm,
    /// `None`: keep every step's dense output. `Some(K)`: keep at most K states (the initial
    /// one included) and re-solve the stretch between two of them when the backward enters
    /// it.
    pub checkpoints: Option<usize>,
}

impl ContinuousAdjoint {
    /// Default settings with `k` checkpoints.
    pub fn checkpointed(k: usize) -> Self {
        Self {
            checkpoints: Some(k),
            ..Self::default()
        }
    }

    /// These settings with both backward tolerances set.
    pub fn tolerances(mut self, rtol: f64, atol: f64) -> Self {
        self.rtol = Some(rtol);
        self.atol = Some(atol);
        self
    }

    fn name(&self, family: &str) -> String {
        match self.checkpoints {
            None => family.into(),
            Some(k) => format!("{family}:{k}"),
        }
    }

    /// Check the settings against the forward options they default to.
    pub fn validate(&self, opts: &Options) -> Result<()> {
        check_positive([
            ("ContinuousAdjoint::rtol", self.rtol),
            ("ContinuousAdjoint::atol", self.atol),
            ("ContinuousAdjoint::step_size", self.step_size),
        ])?;
        check_backward_method(
            self.method,
            self.step_size,
            opts,
            "ContinuousAdjoint::step_size",
        )?;
        let forward = opts.method;
        let implicit = matches!(forward.step, StepKind::DiagonallyImplicit { .. });
        if forward.interpolant.is_none()
            && forward.b_error.is_some()
            && forward.order > 4
            && !implicit
        {
            // A cubic Hermite between a high-order method's large steps is far less accurate
            // than its tolerance (dopri8 at rtol 1e-8: gradient errors of 1e-5). Implicit
            // methods have no interpolant either (Diffrax's Kvaerno5 uses the same Hermite);
            // on stiff problems they are the only continuous choice, so they are let through.
            return Err(Error::SchemeNotSupported {
                strategy: "gauss / interpolating".into(),
                scheme: format!(
                    "a {} solve: these adjoints read h(t) from the forward's dense output, and {} has none of its own (a cubic Hermite between its large steps is accurate to ~1e-5 only)",
                    forward.name, forward.name
                ),
                fix: "use a method with its own interpolant (dopri5, tsit5, bosh3), or an exact strategy (taped, aca, checkpointed:K)",
            });
        }
        Ok(())
    }
}

/// How far a backsolve's backward reconstruction of `h` had drifted from the stored forward
/// state where it was reset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drift {
    /// The time of the reset.
    pub t: f64,
    /// `max |h_reconstructed − h_stored| / max |h_stored|`.
    pub relative: f64,
}

/// Counts of a backward pass through a solve node, from
/// [`Solution::backward_stats`](crate::Solution::backward_stats).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackwardStats {
    /// Evaluations of the vector field: for backsolve, of the augmented dynamics (each one
    /// f evaluation plus one VJP); for the exact strategies, in replays and recomputations;
    /// for taped, the VJPs through the evaluations its accepted steps recorded (the method's
    /// stages per step, the first-same-as-last stage once).
    pub nfe: usize,
    /// Accepted steps of the backward solve (backsolve), or steps replayed on a tape for
    /// their VJP (exact strategies; steps no cotangent reaches are not replayed; taped: the
    /// recorded steps).
    pub accepted: usize,
    /// Rejected steps of the backward solve.
    pub rejected: usize,
    /// Untaped steps re-advanced from stored states in the backward (checkpointed
    /// strategies; 0 for store-every-step on its first backward pass). At most t(N, K) of
    /// [`crate::schedule`] — the count of a binomial schedule that starts from `h0` alone —
    /// and fewer when the forward's stored states make a cheaper schedule; the forward's
    /// own N untaped steps come on top.
    pub recomputed_steps: usize,
    /// Backsolve: the drift at every reset of `h` to a stored forward state, in the order
    /// the backward pass met them (latest time first).
    pub drift: Vec<Drift>,
    /// Reversible: how far the reconstructed `y` is from the stored output at every output
    /// time that is a step's start, and at every output with a cotangent inside a step (its
    /// dense output from the reconstructed step), and from `h0` (the worse of `y` and `z`) at
    /// `t_0`, latest first. Rounding alone gives ~1e-15; growth towards `t_0` shows the inversion losing
    /// digits on dynamics that expand backwards (the gradient is then off by about as much).
    pub reconstruction: Vec<Drift>,
    /// Backsolve: the stretches between stops (output times and checkpoints) the backward
    /// solve integrated, each taking at least one step; the continuous adjoints: the
    /// segments between output times; 0 for the exact strategies. When it is close to
    /// [`BackwardStats::accepted`], the output grid, not the adjoint tolerances, chose the
    /// steps ([`Backsolve::tolerances`]).
    pub segments: usize,
    /// The library's own account of the *peak heap* of this backward pass (see
    /// `docs/design.md`): the largest number of bytes it held at once in tensors it created
    /// itself, sampled at every vector-field VJP (where the peak lies) and after every
    /// recomputed step. It counts the local tapes (their copy of θ and the grid, the
    /// recorded evaluation or replayed step, as [`ad_core::Tape::bytes_since`] measures
    /// them), the working set of the VJP through them (a cotangent per recorded value, and
    /// the gradients it returns), the augmented state `[h, a, a_θ, a_t]` with its stages,
    /// running sums and error estimate (backsolve), recomputed states (checkpointed) and
    /// the gradient accumulators. Not counted: what was live before the pass (inputs,
    /// outputs, the forward's stored states, which are held bytes) and the caller's tape's
    /// own backward buffers. A counting allocator's peak above the live bytes at the
    /// start of the pass agrees within a few tens of percent (`ode/tests/reported_memory.rs`
    /// checks the band for every strategy). For taped, an estimate of the cotangents pending
    /// at once (a step's stages and ends, the parameters' gradients): its tape is held
    /// bytes, and its bookkeeping per node is not counted, so a counting allocator
    /// ([`ad_core::heap`]) shows a larger peak.
    pub peak_bytes: usize,
}

impl BackwardStats {
    /// Record `bytes` held now (keeps [`BackwardStats::peak_bytes`] the largest).
    pub(crate) fn holding(&mut self, bytes: usize) {
        self.peak_bytes = self.peak_bytes.max(bytes);
    }

    /// The largest reconstruction error of a reversible backward (`None` for the other
    /// strategies).
    pub fn max_reconstruction_error(&self) -> Option<f64> {
        self.reconstruction
            .iter()
            .map(|d| d.relative)
            .reduce(f64::max)
    }

    /// The largest relative drift over all resets (`None` when nothing was reset).
    pub fn max_drift(&self) -> Option<f64> {
        self.drift.iter().map(|d| d.relative).reduce(f64::max)
    }
}

/// What a solve's strategy did: its name, the states it stored, and for
/// [`Strategy::Auto`] what it chose and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StrategyReport {
    /// The strategy that ran (for `Auto`: the one it chose), as [`Strategy::name`] gives it.
    pub name: String,
    /// States the forward stored for the backward (checkpoints, ACA's every step).
    pub stored_states: usize,
    /// Why this strategy ran (for `Auto`: the budget arithmetic behind the choice).
    pub reason: String,
}
