//! How one step is taken from a tableau: the plain explicit Runge–Kutta step of
//! `crate::engine`, or one of the algebraically reversible schemes over it, whose state is a
//! pair `(y, z)` (component 0 is `y`, the solution; component 1 is `z`), with a dense output
//! of its own over a tableau with an interpolant (`coupled_dense_output`). A step is still a
//! pure function of `(t, y, dt)` up to the nodes it records, so every strategy's stepper runs
//! any scheme; `crate::strategies::reversible` inverts them.

use ad_core::{Scalar, Tape, Var};

use crate::engine::{rk_step, Method, State, Step, System, Time};
use crate::error::Result;
use crate::implicit::implicit_step;
use crate::options::Options;
use crate::tableau::{StepKind, Tableau};

/// The step a stepper takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Scheme {
    /// One explicit Runge–Kutta step of the tableau.
    Explicit,
    /// McCallum & Foster's reversible scheme over the tableau with coupling λ:
    /// `y₁ = λ(y₀ − z₀) + Φ_h(t₀, z₀)`, `z₁ = y₁ + z₀ − Φ_{−h}(t₁, y₁)`.
    Coupled(f64),
    /// Reversible Heun ([`StepKind::ReversibleHeun`]).
    ReversibleHeun,
    /// A diagonally implicit step ([`StepKind::DiagonallyImplicit`], `crate::implicit`).
    DiagonallyImplicit,
}

impl Scheme {
    /// The scheme the forward options ask for.
    pub fn of(opts: &Options) -> Self {
        match (opts.method.step, opts.coupling) {
            (StepKind::ReversibleHeun, _) => Scheme::ReversibleHeun,
            (StepKind::DiagonallyImplicit { .. }, _) => Scheme::DiagonallyImplicit,
            (StepKind::Explicit, Some(c)) => Scheme::Coupled(c),
            (StepKind::Explicit, None) => Scheme::Explicit,
        }
    }

    /// The plain (not reversible) step of `tableau`: explicit or diagonally implicit (the
    /// backward solves of the continuous adjoints).
    pub fn of_tableau(tableau: &Tableau) -> Self {
        match tableau.step {
            StepKind::DiagonallyImplicit { .. } => Scheme::DiagonallyImplicit,
            _ => Scheme::Explicit,
        }
    }

    /// Whether outputs inside a step come from a dense output ([`dense_output`]): the plain
    /// step's (its interpolant or a Hermite), or the coupled scheme's over a tableau with its
    /// own interpolant. Reversible Heun and the coupled scheme over other tableaux land on
    /// every output instead.
    pub fn has_dense_output(self, tableau: &Tableau) -> bool {
        match self {
            Scheme::Explicit => true,
            Scheme::Coupled(_) => tableau.interpolant.is_some(),
            // A Hermite from f(t₁, y₁) is poor on stiff problems: f amplifies y₁'s distance
            // from the slow manifold by the stiffness. Implicit steps land on every output.
            Scheme::DiagonallyImplicit => false,
            Scheme::ReversibleHeun => false,
        }
    }

    /// The scheme over `tableau`, for reports and messages.
    pub fn describe(self, tableau: &Tableau) -> String {
        match self {
            Scheme::Coupled(c) => format!("the reversible {} (coupling {c})", tableau.name),
            Scheme::ReversibleHeun => "reversible_heun".into(),
            Scheme::Explicit | Scheme::DiagonallyImplicit => tableau.name.into(),
        }
    }

    /// Whether the state is the pair `(y, z)`.
    pub fn is_reversible(self) -> bool {
        matches!(self, Scheme::Coupled(_) | Scheme::ReversibleHeun)
    }

    /// Whether the stages are implicit.
    pub fn is_implicit(self) -> bool {
        self == Scheme::DiagonallyImplicit
    }

    /// The stepper's state at the start of a solve from `h0`: `[h0]`, or `[h0, h0]` for a
    /// reversible scheme (`z₀ = y₀`).
    pub fn initial_state<'t, T: Scalar>(self, h0: Var<'t, T>) -> State<'t, T> {
        if self.is_reversible() {
            vec![h0, h0]
        } else {
            vec![h0]
        }
    }

    /// The components the vector field is evaluated at between steps: the whole state, or
    /// `z` for a reversible scheme (its first stage is `F(t, z)`).
    pub fn field_input<'a, 't, T: Scalar>(self, y: &'a [Var<'t, T>]) -> &'a [Var<'t, T>] {
        if self.is_reversible() {
            &y[1..2]
        } else {
            y
        }
    }

    /// One step from `(t, y)` with `k0 = F(t, field_input(y))`, complete but for what
    /// [`Scheme::finish`] adds once the step is accepted. For the reversible schemes the
    /// returned stages are those of the step from `z₀` (whose error estimate controls the
    /// step), and `y1` is `[y₁, z₁]` after `finish`.
    // rk_step's arguments and the scheme itself.
    #[allow(clippy::too_many_arguments)]
    pub fn step<'t, T: Scalar, S: System<'t, T>>(
        self,
        tape: &'t Tape<T>,
        sys: &mut S,
        method: Method<'_>,
        t: Time<'t, T>,
        y: &[Var<'t, T>],
        k0: State<'t, T>,
        dt: f64,
    ) -> Result<Step<'t, T>> {
        match self {
            Scheme::Explicit => rk_step(tape, sys, method, t, y, k0, dt),
            Scheme::Coupled(_) => coupled_proposal(tape, sys, method, t, y, k0, dt),
            Scheme::ReversibleHeun => reversible_heun_step(tape, sys, method, t, y, k0, dt),
            Scheme::DiagonallyImplicit => {
                let tolerances = method.tolerances;
                implicit_step(tape, sys, method, t, y, k0, dt, tolerances)
            }
        }
    }
}

impl Scheme {
    /// Complete an accepted step: the coupled scheme's `y₁ = λ(y₀ − z₀) + Φ_h(t₀, z₀)` and
    /// `z₁ = y₁ + z₀ − Φ_{−h}(t₁, y₁)` (left until now so that a rejected step costs only
    /// its proposal); the other schemes' steps are already complete.
    pub fn finish<'t, T: Scalar, S: System<'t, T>>(
        self,
        tape: &'t Tape<T>,
        sys: &mut S,
        tableau: &Tableau,
        t: Time<'t, T>,
        mut step: Step<'t, T>,
        dt: f64,
    ) -> Result<Step<'t, T>> {
        let Scheme::Coupled(coupling) = self else {
            return Ok(step);
        };
        let (y0, z0, ahead) = (step.y0[0], step.y0[1], step.y1[0]);
        let y1 = combination(tape, &[(coupling, y0), (-coupling, z0), (1.0, ahead)])?;
        let back = backward_base_step(tape, sys, tableau, step_end(t, dt), y1, dt)?;
        let z1 = combination(tape, &[(1.0, y1), (1.0, z0), (-1.0, back)])?;
        step.y1 = vec![y1, z1];
        // Its outputs are y₁ itself: nothing reads the proposal's left-out last stage.
        step.complete = true;
        Ok(step)
    }
}

/// The coupled scheme's dense output at `t_out` inside the step `[t₀, t₀ + dt]` from
/// `(y₀, z₀)`, whose base step from `z₀` has the stages `k`:
/// `y(θ) = y₀ + (Φ_{θ}(z₀) − z₀) + (λ − 1) θ (y₀ − z₀)`, with `Φ_θ` the base method's own
/// interpolant. It is `y₀` at θ = 0 and `y₁ = λ(y₀ − z₀) + Φ_h(z₀)` at θ = 1, and follows the
/// base method's dense output in between (`y` and `z` differ by the O(gap) term only).
/// Differentiable in every input and in `t_out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn coupled_dense_output<'t, T: Scalar>(
    tape: &'t Tape<T>,
    tableau: &Tableau,
    coupling: f64,
    t0: Var<'t, T>,
    dt: f64,
    t_out: Var<'t, T>,
    (y0, z0): (Var<'t, T>, Var<'t, T>),
    k: &[State<'t, T>],
) -> Result<Var<'t, T>> {
    let base = Step {
        y0: vec![z0],
        k: k.to_vec(),
        y1: Vec::new(),
        err: None,
        complete: true,
    };
    let along = crate::engine::interpolate(tape, tableau, t0, dt, None, t_out, &base, None)?[0];
    // c = 1 + (λ − 1) θ, θ = (t_out − t₀)/dt: y = c·y₀ + Φ_θ(z₀) − c·z₀.
    let theta = t_out.sub(t0)?.scale(T::constant(1.0 / dt));
    let c = theta
        .scale(T::constant(coupling - 1.0))
        .add_scalar(T::one());
    let one = tape.constant(ad_core::nalgebra::DMatrix::from_element(1, 1, T::one()));
    let weights = tape.concat_cols(&[c, one, c.scale(T::constant(-1.0))])?;
    Ok(tape.weighted_sum(weights, &[y0, along, z0])?)
}

/// The end time of a step as a number and a variable, formed the same way by the forward and
/// by the reversible backward (so both evaluate at bitwise the same times).
pub(crate) fn step_end<'t, T: Scalar>(t: Time<'t, T>, dt: f64) -> Time<'t, T> {
    Time {
        at: t.at + dt,
        var: t.var.add_scalar(T::constant(dt)),
        step_tangent: None,
    }
}

/// `Σ w_i x_i` as one node.
pub(crate) fn combination<'t, T: Scalar>(
    tape: &'t Tape<T>,
    terms: &[(f64, Var<'t, T>)],
) -> Result<Var<'t, T>> {
    let terms: Vec<(T, Var<'t, T>)> = terms.iter().map(|&(w, v)| (T::constant(w), v)).collect();
    Ok(tape.fixed_weighted_sum(&terms)?)
}

/// The proposal of a coupled step: `Φ_h(t₀, z₀)` with the base method's error estimate
/// (`y1` holds only `Φ_h(t₀, z₀)` until [`Scheme::finish`]). An FSAL method's last stage
/// `F(t₁, Φ)` serves only that estimate and the dense output (the next step starts from
/// `z₁`), so it is left out when neither is wanted.
fn coupled_proposal<'t, T: Scalar, S: System<'t, T>>(
    tape: &'t Tape<T>,
    sys: &mut S,
    method: Method<'_>,
    t: Time<'t, T>,
    y: &[Var<'t, T>],
    k0: State<'t, T>,
    dt: f64,
) -> Result<Step<'t, T>> {
    // The last stage of an FSAL method serves the error estimate and the dense output.
    let forward_method = Method {
        final_stage: method.estimate_error || method.final_stage,
        tolerances: (0.0, 0.0),
        ..method
    };
    let ahead = rk_step(tape, sys, forward_method, t, &y[1..2], k0, dt)?;
    Ok(Step {
        y0: y.to_vec(),
        ..ahead
    })
}

/// `Φ_{−h}(t₁, y₁)`: the base method's step from `t₁` back by `dt`, without error
/// estimate (and without an FSAL method's last stage, which nothing reads).
pub(crate) fn backward_base_step<'t, T: Scalar, S: System<'t, T>>(
    tape: &'t Tape<T>,
    sys: &mut S,
    tableau: &Tableau,
    t1: Time<'t, T>,
    y1: Var<'t, T>,
    dt: f64,
) -> Result<Var<'t, T>> {
    let k = sys.eval(t1.at, t1.var, &[y1])?;
    let method = Method {
        tableau,
        estimate_error: false,
        error_mask: None,
        final_stage: false,
        tolerances: (0.0, 0.0),
        newton_blocks: 1,
    };
    let step = rk_step(tape, sys, method, t1, &[y1], k, -dt)?;
    Ok(step.y1[0])
}

fn reversible_heun_step<'t, T: Scalar, S: System<'t, T>>(
    tape: &'t Tape<T>,
    sys: &mut S,
    method: Method<'_>,
    t: Time<'t, T>,
    y: &[Var<'t, T>],
    k0: State<'t, T>,
    dt: f64,
) -> Result<Step<'t, T>> {
    let (y0, z0, f0) = (y[0], y[1], k0[0]);
    let z1 = combination(tape, &[(2.0, y0), (-1.0, z0), (dt, f0)])?;
    let t1 = step_end(t, dt);
    let k1 = sys.eval(t1.at, t1.var, &[z1])?;
    let f1 = k1[0];
    let y1 = combination(tape, &[(1.0, y0), (0.5 * dt, f0), (0.5 * dt, f1)])?;
    let err = if method.estimate_error {
        let e = ad_core::Var::with_values(&[f0, f1], |v| {
            v[0].iter()
                .zip(v[1].iter())
                .map(|(a, b)| 0.5 * dt * (b.primal() - a.primal()))
                .collect::<Vec<f64>>()
        })?;
        Some(vec![e])
    } else {
        None
    };
    Ok(Step {
        y0: vec![y0, z0],
        k: vec![k0, k1],
        y1: vec![y1, z1],
        err,
        complete: true,
    })
}
