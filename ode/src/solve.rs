//! The entry points: [`odeint_with`] (any [`Strategy`]), the taped [`odeint`], the
//! backsolve shorthand [`odeint_adjoint`] and the untaped value-only [`solve`]. Each
//! strategy lives in its own module under `strategies/`; this file only picks one.

use ad_core::nalgebra::DMatrix;
use ad_core::{Scalar, Tape, Var};

use crate::dynamics::Dynamics;
use crate::engine::SolveStats;
use crate::error::{Error, Result};
use crate::forward::{forward_landing, planned_controller};
use crate::input::{check_grid, check_h0, check_precision, check_tape, SolveInput};
use crate::options::Options;
use crate::scheme::Scheme;
use crate::solution::Solution;
use crate::strategies::{auto, backsolve, gauss, interpolating, replay, reversible, taped};
use crate::strategy::{reversible_options, Backsolve, Strategy};
use crate::tableau::StepKind;
use crate::tangent_control::{plan, DualOf, Plan};

/// Solve with any gradient [`Strategy`]: the one entry point behind [`odeint`] (taped) and
/// [`crate::odeint_adjoint`] (backsolve).
///
/// `t` is a 1×n (or n×1) grid, strictly increasing or decreasing; `params` are the
/// variables the dynamics read, in the order `f` expects them. Gradients reach `h0`, every
/// parameter and every time in `t`. The opaque strategies clone `f` into their node, so it
/// must be `Clone + 'static` (keep weights in `params`). On error the tape is left as it was.
///
/// ```
/// use ad_core::{nalgebra::DMatrix, Result as TapeResult, Scalar, Tape, Var};
/// use ode::{odeint_with, Dynamics, Options, Strategy};
///
/// /// h' = −k h.
/// #[derive(Clone)]
/// struct Decay;
/// impl<T: Scalar> Dynamics<T> for Decay {
///     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
///         Ok(-(h.mul(p[0].broadcast(h.shape()?.0, h.shape()?.1)?)?))
///     }
/// }
///
/// let tape = Tape::<f64>::new();
/// let h0 = tape.var(DMatrix::from_element(1, 3, 2.0));
/// let k = tape.var(DMatrix::from_element(1, 1, 0.5));
/// let t = tape.constant(DMatrix::from_row_slice(1, 3, &[0.0, 1.0, 4.0]));
/// let mut grads = Vec::new();
/// for strategy in ["taped", "aca", "checkpointed:2", "backsolve", "auto:100000"] {
///     let strategy: Strategy = strategy.parse()?;
///     let sol = odeint_with(&tape, &Decay, h0, t, &[k], &Options::default(), &strategy)?;
///     let g = tape.backward(sol.last().sum())?;
///     grads.push(g.get(k).unwrap()[(0, 0)]);
///     if let Some(b) = sol.backward_stats(&g) {
///         println!("{}: backward NFE {}, {} recomputed", sol.strategy.name, b.nfe, b.recomputed_steps);
///     }
/// }
/// // The exact strategies agree with the taped gradient to rounding.
/// assert!((grads[1] - grads[0]).abs() < 1e-12 * grads[0].abs());
/// assert!((grads[2] - grads[0]).abs() < 1e-12 * grads[0].abs());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn odeint_with<'t, T: Scalar, F: Dynamics<T> + Dynamics<DualOf<T>> + Clone + 'static>(
    tape: &'t Tape<T>,
    f: &F,
    h0: Var<'t, T>,
    t: Var<'t, T>,
    params: &[Var<'t, T>],
    opts: &Options,
    strategy: &Strategy,
) -> Result<Solution<'t, T>> {
    let input = SolveInput::checked("odeint_with", strategy, tape, h0, t, params, opts)?;
    if let Some(sol) = input.without_steps(strategy)? {
        return Ok(sol);
    }
    let scheme = Scheme::of(opts);
    if scheme.is_implicit() && (!strategy.runs_implicit_stages() || implicit_unsupported::<T>()) {
        return Err(implicit_not_differentiable(strategy, opts));
    }
    if let Strategy::Gauss(c) | Strategy::Interpolating(c) = strategy {
        // Their interpolants read F(t₀, y₀) as a step's first stage.
        for m in [Some(opts.method), c.method].into_iter().flatten() {
            if let StepKind::DiagonallyImplicit {
                explicit_first: false,
                ..
            } = m.step
            {
                return Err(Error::SchemeNotSupported {
                    strategy: strategy.name(),
                    scheme: format!("the implicit {}", m.name),
                    fix: "its first stage is implicit, so its steps carry no F(t₀, y₀) for the interpolant the continuous adjoints read: use kvaerno3 or kvaerno5 (explicit first stage), or an exact strategy",
                });
            }
        }
    }
    if scheme.is_reversible() && !strategy.runs_reversible_schemes() {
        return Err(Error::SchemeNotSupported {
            strategy: strategy.name(),
            scheme: scheme.describe(opts.method),
            fix: "use `reversible` (exact, O(d + |θ|) memory), `taped` or `auto:BYTES`, or solve with a plain method (no Options::coupling)",
        });
    }
    let reversible_opts;
    let opts = match strategy {
        Strategy::Reversible { coupling } => {
            reversible_opts = reversible_options(opts, *coupling)?;
            &reversible_opts
        }
        _ => opts,
    };
    // The continuous adjoints control their own adjoint's error: only the strategies whose
    // gradient is the derivative of the forward's steps plan them with tangents.
    let plan = if strategy.is_exact() {
        planned(&input, f, opts)?
    } else {
        None
    };
    let input = SolveInput {
        opts,
        planned: plan.as_ref().map(|p| p.steps.as_slice()),
        ..input
    };
    let solution = match strategy {
        Strategy::Taped => taped::taped(&input, f, |_| Ok(())),
        Strategy::Backsolve(_) | Strategy::BacksolveCheckpointed { .. } => {
            backsolve::backsolve(&input, f, strategy)
        }
        Strategy::StoreEveryStep => replay::exact(&input, f, None, String::new()),
        Strategy::Checkpointed { slots } => replay::exact(&input, f, Some(*slots), String::new()),
        Strategy::Auto {
            budget_bytes,
            strict,
        } => auto::solve(&input, f, *budget_bytes, *strict),
        Strategy::Gauss(c) => gauss::gauss(&input, f, c, strategy),
        Strategy::Interpolating(c) => interpolating::interpolating(&input, f, c, strategy),
        Strategy::Reversible { .. } => reversible::reversible(&input, f, strategy, String::new()),
    };
    let solution = with_plan(solution?, plan.as_ref());
    if strategy.is_exact() {
        note_discrete_derivative(tape, opts);
    }
    Ok(solution)
}

/// Leave `gradcheck` a caveat on the tape: an exact gradient of an adaptive solve under
/// primal control is the derivative of steps the state's error alone chose.
fn note_discrete_derivative<T: Scalar>(tape: &Tape<T>, opts: &Options) {
    let adaptive = opts.method.b_error.is_some() && !opts.constant_steps;
    if adaptive && !opts.error_control.carries_tangents() {
        tape.add_note(
            "an ODE solve with an exact gradient strategy (taped, aca, checkpointed, auto, reversible) under primal error control differentiates its discrete steps, which the state's error alone chose; where finite differences disagree while Dual64 agrees, those steps may not resolve the sensitivities: check with ode::verify::convergence_check, then use ErrorControl::WithTangents or an adjoint strategy (interpolating or backsolve)",
        );
    }
}

/// What implicit stages do not run on yet: dual numbers (Newton on their parts) and
/// tangent-aware planning.
/// Implicit stages on a recording tape of dual numbers (forward over reverse: the stage
/// VJP holds `M` fixed along the dual direction).
fn implicit_unsupported<T: Scalar>() -> bool {
    ad_core::carries_derivatives::<T>()
}

/// Why a strategy (or scalar, or error control) does not differentiate an implicit solve.
fn implicit_not_differentiable(strategy: &Strategy, opts: &Options) -> Error {
    let fix = match strategy {
        Strategy::Backsolve(_) | Strategy::BacksolveCheckpointed { .. } => {
            "backsolve integrates h backwards through the stiff field, where its fast decaying modes grow: use interpolating or gauss (h read from the forward's interpolant, the adjoint integrated by the implicit method) or an exact strategy (taped, aca, checkpointed:K, auto:BYTES); to watch the instability, give Backsolve an explicit backward method"
        }
        Strategy::Reversible { .. } => {
            "the reversible schemes are explicit: use taped, aca, checkpointed:K or auto:BYTES for an exact gradient of the implicit solve"
        }
        _ => {
            "implicit stages run with every strategy but reversible on f32/f64 tapes, and in `solve` on f32, f64 and dual numbers; not on dual-number tapes (forward over reverse: a stage's VJP holds its matrix fixed along the dual direction)"
        }
    };
    Error::SchemeNotSupported {
        strategy: strategy.name(),
        scheme: format!("the implicit {}", opts.method.name),
        fix,
    }
}

/// The tangent-aware planning solve for a strategy's input (`None` under primal control).
fn planned<T: Scalar, F: Dynamics<DualOf<T>>>(
    input: &SolveInput<'_, '_, T>,
    f: &F,
    opts: &Options,
) -> Result<Option<Plan<T>>> {
    if !opts.error_control.carries_tangents() {
        return Ok(None);
    }
    let values = input.values()?;
    plan(f, &values.h0, &values.times, &values.params, opts)
}

/// A solution whose forward replayed planned steps, with the planning solve's counts.
fn with_plan<'t, T: Scalar>(mut sol: Solution<'t, T>, plan: Option<&Plan<T>>) -> Solution<'t, T> {
    if let Some(plan) = plan {
        plan.merge_into(&mut sol.stats);
        sol.strategy.reason.push_str(&plan.describe());
    }
    sol
}

/// Constant-memory gradients with the backsolve adjoint and its default settings: the
/// torchdiffeq-familiar shorthand for [`odeint_with`] with [`Strategy::backsolve`]. The
/// forward solve records nothing, and the tape gets one node (plus one output node per grid
/// time). Its VJP solves the augmented system `[h, a, a_θ, a_t]` from `t_n` back to `t_0`,
/// resetting `h` to the stored forward value at every output time and adding that output's
/// cotangent to `a`. Gradients reach `h0`, every parameter and every time in `t`, accurate
/// to the solver tolerance. The backward solve uses the forward's method and tolerances and
/// carries the step size from one segment between output times to the next instead of
/// restarting the controller; [`crate::Backsolve`] sets them apart.
///
/// `f` is cloned into the node, so it must be `Clone + 'static` (keep weights in `params`).
pub fn odeint_adjoint<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    tape: &'t Tape<T>,
    f: &F,
    h0: Var<'t, T>,
    t: Var<'t, T>,
    params: &[Var<'t, T>],
    opts: &Options,
) -> Result<Solution<'t, T>> {
    check_tape(tape, "odeint_adjoint", [&h0, &t].into_iter().chain(params))?;
    if Scheme::of(opts).is_implicit() {
        return Err(implicit_not_differentiable(
            &Strategy::Backsolve(Backsolve::default()),
            opts,
        ));
    }
    // Backsolve does not plan with tangents, so it needs no dual-number field: this is
    // `odeint_with`'s backsolve branch without that bound.
    let settings = Backsolve::default();
    let strategy = Strategy::Backsolve(settings.clone());
    let input = SolveInput::checked("odeint_adjoint", &strategy, tape, h0, t, params, opts)?;
    if let Some(sol) = input.without_steps(&strategy)? {
        return Ok(sol);
    }
    backsolve::backsolve(&input, f, &strategy)
}

/// Taped solve: every stage is recorded on `tape`, so `tape.backward` differentiates the
/// discrete solution exactly (accepted step sizes are constants, as in torchdiffeq and
/// Diffrax) with respect to `h0`, every parameter and every time in `t`.
///
/// `t` is a 1×n (or n×1) grid, strictly increasing or decreasing; `params` are the
/// variables the dynamics read, handed over in the order `f` expects them. Memory grows
/// with the number of steps; see [`odeint_with`] for the other strategies. On error the
/// tape is rewound to where it was, so it stays usable.
pub fn odeint<'t, T: Scalar, F: Dynamics<T> + Dynamics<DualOf<T>>>(
    tape: &'t Tape<T>,
    f: &F,
    h0: Var<'t, T>,
    t: Var<'t, T>,
    params: &[Var<'t, T>],
    opts: &Options,
) -> Result<Solution<'t, T>> {
    let input = SolveInput::checked("odeint", &Strategy::Taped, tape, h0, t, params, opts)?;
    if let Some(sol) = input.without_steps(&Strategy::Taped)? {
        return Ok(sol);
    }
    if Scheme::of(opts).is_implicit() && implicit_unsupported::<T>() {
        return Err(implicit_not_differentiable(&Strategy::Taped, opts));
    }
    let plan = planned(&input, f, opts)?;
    let input = SolveInput {
        planned: plan.as_ref().map(|p| p.steps.as_slice()),
        ..input
    };
    Ok(with_plan(
        taped::taped(&input, f, |_| Ok(()))?,
        plan.as_ref(),
    ))
}

/// Untaped solve on values: `h(t_0), …, h(t_n)` and the counts. Runs on a scratch tape that
/// is rewound after every step, so memory does not grow with the number of steps. With a
/// dual-number `T` it also propagates forward-mode derivatives through the solve; with
/// [`crate::ErrorControl::WithTangents`] its steps then resolve those derivatives too.
///
/// Implicit methods (`kvaerno3`, `kvaerno5`, `implicit_euler`) keep a step's Jacobian for
/// the next steps while Newton converges well (recomputing it after a failure or a slow
/// convergence), so on real numbers the values differ from a taped solve's by the Newton
/// tolerance; on dual numbers every step computes its own Jacobian, as the gradient
/// strategies do, and the derivatives are those of the same discrete solve.
pub fn solve<T: Scalar, F: Dynamics<T> + Dynamics<DualOf<T>>>(
    f: &F,
    h0: &DMatrix<T>,
    t: &[T],
    params: &[DMatrix<T>],
    opts: &Options,
) -> Result<(Vec<DMatrix<T>>, SolveStats)> {
    opts.validate()?;
    check_precision::<T>(opts, &Strategy::Taped)?;
    if check_grid(t)?.len() == 1 {
        check_h0(h0, t[0].primal())?;
        return Ok((vec![h0.clone()], SolveStats::default()));
    }
    let plan = plan(f, h0, t, params, opts)?;
    if let Some(plan) = &plan {
        // The planning solve computed the outputs itself: no replay.
        if let Some(planned) = plan.solve_outputs() {
            let mut outputs = Vec::with_capacity(t.len());
            outputs.push(h0.clone());
            outputs.extend(planned);
            let stats = SolveStats {
                nfe: plan.stats.nfe,
                accepted: plan.stats.accepted,
                rejected: plan.stats.rejected,
                clamped: plan.stats.clamped,
                tangent_nfe: plan.stats.nfe * plan.directions,
                ..plan.stats
            };
            return Ok((outputs, stats));
        }
    }
    let ctl = planned_controller(opts, plan.as_ref().map(|p| p.steps.as_slice()));
    // Implicit steps keep their Jacobian while Newton converges well; a dual-number solve
    // computes each step's own, so that it is the same discrete solve as a taped one.
    let reuse_jacobians = !ad_core::carries_derivatives::<T>();
    let forward = forward_landing(
        f,
        h0,
        t,
        params.to_vec(),
        ctl,
        false,
        reuse_jacobians,
        |_, _| Ok(()),
    )?;
    let mut outputs = Vec::with_capacity(t.len());
    outputs.push(h0.clone());
    outputs.extend(forward.outputs);
    let mut stats = forward.stats;
    if let Some(plan) = &plan {
        plan.merge_into(&mut stats);
    }
    Ok((outputs, stats))
}
