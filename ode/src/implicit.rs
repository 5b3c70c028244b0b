//! One step of a diagonally implicit Runge–Kutta method ([`StepKind::DiagonallyImplicit`]):
//! stage `i` solves `Z_i = S_i + γ dt f(t_i, Z_i)` with `S_i = y + dt Σ_{j<i} a_ij k_j` by
//! simplified Newton ([`crate::newton`]) on one iteration matrix `I − γ dt J(t, y)` per step,
//! and `k_i = (Z_i − S_i)/(γ dt)` (not `f(t_i, Z_i)`, which would amplify the Newton error
//! by the stiffness). A Newton that diverges, or a singular iteration matrix, rejects the
//! step (its error ratio is infinite), so the controller retries it smaller.
//!
//! On a recording tape, and on dual numbers, each converged stage `Z̃` (a constant) gets its
//! derivative from the implicit-function theorem: `Z = Z̃ + T(r)` with the residual
//! `r = Z̃ − S_i − γ dt f(t_i, Z̃)` recorded and `T` the [`StageTangent`] node, whose value is
//! zero (so the stage's value is the Newton iterate `Z̃`, the same on every tape and in every
//! replay) and whose derivative is `−M⁻¹` with a fresh `M = I − γ dt J(t_i, Z̃)`:
//! `∂Z/∂S = M⁻¹`, `∂Z/∂θ = γ dt M⁻¹ ∂f/∂θ`. Its pull-back is one transposed solve with `M`
//! and a VJP of `f`; on dual numbers its value is the dual part of `−M⁻¹ r`. Newton is never
//! unrolled. Both derivatives are those of the exact stage solution at `Z̃`: they differ from
//! the derivative of the discrete map `Z̃(S, θ)` by the Newton tolerance times `‖∂M/∂Z‖`.

use ad_core::nalgebra::DMatrix;
use ad_core::{BoxError, CustomOp, Precision, Scalar, Tape, Var};

use crate::engine::{combine_where, Method, SolveStats, State, Step, System, Time};
use crate::error::{Error, Result};
use crate::newton::{newton, IterationMatrix, NewtonSettings, Outcome};
use crate::tableau::StepKind;

/// One implicit step from `(t, y)` with `k0 = F(t, y)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn implicit_step<'t, T: Scalar, S: System<'t, T>>(
    tape: &'t Tape<T>,
    sys: &mut S,
    method: Method<'_>,
    t: Time<'t, T>,
    y: &[Var<'t, T>],
    k0: State<'t, T>,
    dt: f64,
    tolerances: (f64, f64),
) -> Result<Step<'t, T>> {
    let tab = method.tableau;
    let StepKind::DiagonallyImplicit { gamma, .. } = tab.step else {
        return Err(internal("an implicit step of an explicit tableau"));
    };
    // Derivatives pass through stages on a recording tape and on dual numbers.
    let derivatives = tape.is_grad_enabled() || ad_core::carries_derivatives::<T>();
    // Component 0 is implicit; further ones are quadratures (F does not read them: the
    // continuous adjoints' a_θ, a_t), evaluated at the converged stages, values only.
    if y.len() != 1 && (derivatives || (1..y.len()).any(|c| sys.reads(c))) {
        return Err(internal(
            "implicit steps solve one component; further ones must be quadratures on values",
        ));
    }
    let c = gamma * dt;
    let mut work = SolveStats::default();
    let settings = NewtonSettings {
        rtol: tolerances.0,
        atol: tolerances.1,
        blocks: method.newton_blocks,
        ..NewtonSettings::default()
    };
    // A Jacobian reused from an earlier step that fails is replaced by one at (t, y) and the
    // step tried again before it is rejected.
    let mut k = None;
    for _ in 0..2 {
        let (matrix, reused) = match sys.newton_matrix(t.at, t.var, y, c) {
            Ok(m) => m,
            // A fixed step cannot shrink the matrix's c: the cause is the error.
            Err(e @ Error::SingularIterationMatrix { .. }) if !method.estimate_error => {
                return Err(e)
            }
            Err(Error::SingularIterationMatrix { .. }) => {
                work.newton_failures += 1;
                sys.drop_jacobian();
                break;
            }
            Err(e) => return Err(e),
        };
        let slow_after = 4;
        let settings = NewtonSettings {
            min_iterations: if reused { 2 } else { 1 },
            ..settings
        };
        match stages(
            tape,
            sys,
            &method,
            t,
            y,
            &k0,
            dt,
            c,
            derivatives,
            &matrix,
            &settings,
            &mut work,
        )? {
            Some((stages, most)) => {
                if most > slow_after {
                    sys.drop_jacobian();
                }
                k = Some(stages);
                break;
            }
            None => {
                work.newton_failures += 1;
                sys.drop_jacobian();
                if !reused {
                    break;
                }
            }
        }
    }
    sys.count(work);
    let Some(k) = k else {
        return rejected(y, k0, &method, t.at, dt);
    };
    let y1 = combine_where(tape, y, dt, tab.b, &k, |_| true)?;
    let err = match tab.b_error {
        Some(e) if method.estimate_error => {
            let mut all = Vec::with_capacity(y1.len());
            for (comp, y1c) in y1.iter().enumerate() {
                let mut acc = vec![0.0; y1c.shape().map(|(r, c)| r * c)?];
                for (w, ki) in e.iter().zip(&k) {
                    if *w == 0.0 {
                        continue;
                    }
                    ki[comp].with_value(|m| {
                        for (a, x) in acc.iter_mut().zip(m.as_slice()) {
                            *a += dt * w * x.primal();
                        }
                    })?;
                }
                all.push(acc);
            }
            Some(all)
        }
        _ => None,
    };
    Ok(Step {
        y0: y.to_vec(),
        k,
        y1,
        err,
        complete: true,
    })
}

/// The stages of one step with the Newton matrix `matrix`: `Some((k, most))` with `most`
/// the largest number of Newton iterations a stage took, or `None` when a stage's Newton
/// diverged or ran out of iterations.
#[allow(clippy::too_many_arguments)]
fn stages<'t, T: Scalar, S: System<'t, T>>(
    tape: &'t Tape<T>,
    sys: &mut S,
    method: &Method<'_>,
    t: Time<'t, T>,
    y: &[Var<'t, T>],
    k0: &State<'t, T>,
    dt: f64,
    c: f64,
    derivatives: bool,
    matrix: &IterationMatrix<T::Primitive>,
    settings: &NewtonSettings,
    work: &mut SolveStats,
) -> Result<Option<(Vec<State<'t, T>>, usize)>> {
    let tab = method.tableau;
    let StepKind::DiagonallyImplicit { explicit_first, .. } = tab.step else {
        return Err(internal("an implicit step of an explicit tableau"));
    };
    let mut most = 0;
    let to_p = |m: &DMatrix<T>| m.map(|x| T::Primitive::round_from(x.primal()));
    let to_t = |m: &DMatrix<T::Primitive>| m.map(|x| T::constant(x.as_f64()));
    let mut k: Vec<State<'t, T>> = Vec::with_capacity(tab.c.len());
    for i in 0..tab.c.len() {
        if i == 0 && explicit_first {
            k.push(k0.clone());
            continue;
        }
        let s_i = combine_where(tape, y, dt, tab.a[i], &k, |_| true)?;
        let s_val = to_p(&s_i[0].value()?);
        let t_i = t.at + tab.c[i] * dt;
        let tv_i = t.var.add_scalar(T::constant(tab.c[i] * dt));
        // Predictor: the last stage's slope carried on (the start state for the first).
        let start = match k.last() {
            Some(prev) => &s_val + to_p(&prev[0].value()?) * T::Primitive::round_from(c),
            None => s_val.clone(),
        };
        // A step that cannot be retried smaller (fixed, or replaying planned steps) gets
        // up to two more tries with J at the stage's own starting points before failing.
        let rescue_points = if method.estimate_error { 0 } else { 2 };
        let mut fresh: Option<IterationMatrix<T::Primitive>> = None;
        let mut attempt = 0;
        let z = loop {
            let m = fresh.as_ref().unwrap_or(matrix);
            // Without a smaller alternative, increments that grow for a while are given
            // time (the tangent-planning solve, whose norm covers the tangents too, may
            // have accepted such a step).
            let patient = NewtonSettings {
                max_iterations: 4 * settings.max_iterations,
                diverged_above: f64::INFINITY,
                ..*settings
            };
            let settings = if method.estimate_error {
                settings
            } else {
                &patient
            };
            let outcome = newton(m, &start, settings, |z| {
                let mut at = vec![tape.constant(to_t(z))];
                at.extend_from_slice(&s_i[1..]);
                let f = sys.eval(t_i, tv_i, &at)?;
                let f = to_p(&f[0].value()?);
                Ok(z - &s_val - f * T::Primitive::round_from(c))
            })?;
            match outcome {
                Outcome::Converged { z, iterations } => {
                    work.newton_iterations += iterations;
                    most = most.max(iterations);
                    break z;
                }
                Outcome::Diverged { iterations, .. } => work.newton_iterations += iterations,
                Outcome::NotConverged { .. } => work.newton_iterations += settings.max_iterations,
            }
            if attempt == rescue_points {
                return Ok(None);
            }
            let point = if attempt == 0 { &start } else { &s_val };
            attempt += 1;
            let jac = sys.jacobian(t_i, tv_i, &[tape.constant(to_t(point))])?;
            match IterationMatrix::new(&jac, c) {
                Ok(m) => fresh = Some(m),
                Err(Error::SingularIterationMatrix { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
            work.factorizations += 1;
        };
        if derivatives {
            // The stage through the implicit-function theorem (see the module docs).
            let z_const = tape.constant(to_t(&z));
            let jac = sys.jacobian(t_i, tv_i, &[z_const])?;
            let fresh = IterationMatrix::new(&jac, c)?;
            work.factorizations += 1;
            let f = sys.eval(t_i, tv_i, &[z_const])?;
            let residual = z_const.sub(s_i[0])?.sub(f[0].scale(T::constant(c)))?;
            let tangent = tape.custom(StageTangent { matrix: fresh }, &[residual])?;
            let stage = z_const.add(tangent[0])?;
            let slope = stage.sub(s_i[0])?.scale(T::constant(1.0 / c));
            k.push(vec![slope]);
        } else {
            let slope = (&z - &s_val) / T::Primitive::round_from(c);
            let mut stage = vec![tape.constant(to_t(&slope))];
            if y.len() > 1 {
                // The quadratures' slopes at the converged stage.
                let mut at = vec![tape.constant(to_t(&z))];
                at.extend_from_slice(&s_i[1..]);
                stage.extend(sys.eval(t_i, tv_i, &at)?.into_iter().skip(1));
            }
            k.push(stage);
        }
    }
    Ok(Some((k, most)))
}

/// A step the controller must reject: an infinite error estimate. A fixed-step method has
/// no estimate to reject with, so for it the failure is an error.
fn rejected<'t, T: Scalar>(
    y: &[Var<'t, T>],
    k0: State<'t, T>,
    method: &Method<'_>,
    t: f64,
    dt: f64,
) -> Result<Step<'t, T>> {
    if !method.estimate_error {
        return Err(Error::NewtonFailed { t, dt });
    }
    let err = y
        .iter()
        .map(|c| Ok(vec![f64::INFINITY; c.shape().map(|(r, c)| r * c)?]))
        .collect::<Result<_>>()?;
    Ok(Step {
        y0: y.to_vec(),
        k: vec![k0],
        y1: y.to_vec(),
        err: Some(err),
        complete: false,
    })
}

/// The derivative part of a stage: value zero over real numbers (the dual part of `−M⁻¹ r`
/// over dual numbers), derivative `−M⁻¹`, so its VJP is `g ↦ −M⁻ᵀ g`. On a recording tape
/// of dual numbers (forward over reverse) the VJP would hold `M` fixed along the dual
/// direction, so `crate::solve` refuses that combination before a stage is recorded.
struct StageTangent<P: Precision> {
    matrix: IterationMatrix<P>,
}

impl<T: Scalar> CustomOp<T> for StageTangent<T::Primitive> {
    fn name(&self) -> &str {
        "implicit_stage"
    }

    fn forward(
        &mut self,
        inputs: &[&DMatrix<T>],
    ) -> std::result::Result<Vec<DMatrix<T>>, BoxError> {
        let r = inputs[0];
        if !ad_core::carries_derivatives::<T>() {
            return Ok(vec![DMatrix::from_element(r.nrows(), r.ncols(), T::zero())]);
        }
        let x = self
            .matrix
            .solve_lifted(r, false)
            .map_err(|e| Box::new(e) as BoxError)?;
        // The dual part of −x: −x minus its real part.
        Ok(vec![x.map(|v| T::constant(v.primal()) - v)])
    }

    fn vjp(
        &self,
        _inputs: &[&DMatrix<T>],
        _outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> std::result::Result<Vec<Option<DMatrix<T>>>, BoxError> {
        let Some(Some(g)) = cotangents.into_iter().next() else {
            return Ok(vec![None]);
        };
        let x = self
            .matrix
            .solve_lifted(&g, true)
            .map_err(|e| Box::new(e) as BoxError)?;
        Ok(vec![Some(-x)])
    }

    fn held_bytes(&self) -> usize {
        self.matrix.held_bytes()
    }
}

fn internal(message: &str) -> Error {
    Error::Tape(ad_core::Error::InvalidArgument {
        op: "implicit step",
        message: format!("{message}; this is a bug in the ode crate"),
    })
}
