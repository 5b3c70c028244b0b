//! One step of a diagonally implicit Runge–Kutta method ([`StepKind::DiagonallyImplicit`]):
//! stage `i` solves `Z_i = S_i + γ dt f(t_i, Z_i)` with `S_i = y + dt Σ_{j<i} a_ij k_j` by
//! simplified Newton ([`crate::newton`]) on one iteration matrix `I − γ dt J(t, y)` per step,
//! and `k_i = (Z_i − S_i)/(γ dt)` (not `f(t_i, Z_i)`, which would amplify the Newton error
//! by the stiffness). A Newton that diverges, or a singular iteration matrix, rejects the
//! step (its error ratio is infinite), so the controller retries it smaller.
//!
//! On a recording tape each converged stage `Z̃` is recorded as one more Newton step with a
//! fresh iteration matrix `M = I − γ dt J(t_i, Z̃)`: `Z = Z̃ − M⁻¹ r(Z̃, S_i, θ)` with `Z̃` a
//! constant and `r = Z̃ − S_i − γ dt f(t_i, Z̃)` recorded. Its value is `Z̃` to the Newton
//! tolerance, and its derivative is the implicit-function theorem's: `∂Z/∂S = M⁻¹`,
//! `∂Z/∂θ = γ dt M⁻¹ ∂f/∂θ`, so the pull-back is one transposed solve with `M` (the
//! [`StageSolve`] node) and a VJP of `f`. Newton is never unrolled.

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
    let StepKind::DiagonallyImplicit {
        gamma,
        explicit_first,
    } = tab.step
    else {
        return Err(internal("an implicit step of an explicit tableau"));
    };
    if y.len() != 1 || ad_core::carries_derivatives::<T>() {
        return Err(internal(
            "implicit steps run on the plain field over real numbers only",
        ));
    }
    let recording = tape.is_grad_enabled();
    let c = gamma * dt;
    let mut work = SolveStats::default();
    let jac = sys.jacobian(t.at, t.var, y)?;
    let matrix = match IterationMatrix::new(&jac, c) {
        Ok(m) => m,
        Err(Error::SingularIterationMatrix { .. }) => {
            work.newton_failures += 1;
            sys.count(work);
            return rejected(y, k0, &method, t.at, dt);
        }
        Err(e) => return Err(e),
    };
    work.factorizations += 1;
    let settings = NewtonSettings {
        rtol: tolerances.0,
        atol: tolerances.1,
        ..NewtonSettings::default()
    };
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
        let outcome = newton(&matrix, &start, &settings, |z| {
            let zv = tape.constant(to_t(z));
            let f = sys.eval(t_i, tv_i, &[zv])?;
            let f = to_p(&f[0].value()?);
            Ok(z - &s_val - f * T::Primitive::round_from(c))
        })?;
        let z = match outcome {
            Outcome::Converged { z, iterations } => {
                work.newton_iterations += iterations;
                z
            }
            Outcome::Diverged { iterations, .. } => {
                work.newton_iterations += iterations;
                work.newton_failures += 1;
                sys.count(work);
                return rejected(y, k0, &method, t.at, dt);
            }
            Outcome::NotConverged { .. } => {
                work.newton_iterations += settings.max_iterations;
                work.newton_failures += 1;
                sys.count(work);
                return rejected(y, k0, &method, t.at, dt);
            }
        };
        if recording {
            // The stage through the implicit-function theorem (see the module docs).
            let jac = sys.jacobian(t_i, tv_i, &[tape.constant(to_t(&z))])?;
            work.jacobians += 1;
            let fresh = IterationMatrix::new(&jac, c)?;
            work.factorizations += 1;
            let z_const = tape.constant(to_t(&z));
            let f = sys.eval(t_i, tv_i, &[z_const])?;
            let residual = z_const.sub(s_i[0])?.sub(f[0].scale(T::constant(c)))?;
            let correction = tape.custom(StageSolve { matrix: fresh }, &[residual])?;
            let stage = z_const.add(correction[0])?;
            let slope = stage.sub(s_i[0])?.scale(T::constant(1.0 / c));
            k.push(vec![slope]);
        } else {
            let slope = (z - &s_val) / T::Primitive::round_from(c);
            k.push(vec![tape.constant(to_t(&slope))]);
        }
    }
    sys.count(work);
    let y1 = combine_where(tape, y, dt, tab.b, &k, |_| true)?;
    let err = match tab.b_error {
        Some(e) if method.estimate_error => {
            let mut acc = vec![0.0; y1[0].shape().map(|(r, c)| r * c)?];
            for (w, ki) in e.iter().zip(&k) {
                if *w == 0.0 {
                    continue;
                }
                ki[0].with_value(|m| {
                    for (a, x) in acc.iter_mut().zip(m.as_slice()) {
                        *a += dt * w * x.primal();
                    }
                })?;
            }
            Some(vec![acc])
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
    let n = y[0].shape().map(|(r, c)| r * c)?;
    Ok(Step {
        y0: y.to_vec(),
        k: vec![k0],
        y1: y.to_vec(),
        err: Some(vec![vec![f64::INFINITY; n]]),
        complete: false,
    })
}

/// `−M⁻¹ r` for a recorded stage residual `r`; its VJP is `g ↦ −M⁻ᵀ g`. Over real numbers
/// (`T` is its own primitive): dual scalars are refused before a stage is recorded.
struct StageSolve<P: Precision> {
    matrix: IterationMatrix<P>,
}

impl<T: Scalar> CustomOp<T> for StageSolve<T::Primitive> {
    fn name(&self) -> &str {
        "implicit_stage"
    }

    fn forward(
        &mut self,
        inputs: &[&DMatrix<T>],
    ) -> std::result::Result<Vec<DMatrix<T>>, BoxError> {
        let r = real_values(inputs[0]);
        let x = self.matrix.solve(&r).map_err(|e| Box::new(e) as BoxError)?;
        Ok(vec![x.map(|v| -T::constant(v.as_f64()))])
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
            .solve_transpose(&real_values(&g))
            .map_err(|e| Box::new(e) as BoxError)?;
        Ok(vec![Some(x.map(|v| -T::constant(v.as_f64())))])
    }

    fn held_bytes(&self) -> usize {
        self.matrix.held_bytes()
    }
}

/// The real parts (exact for f32 and f64, the only scalars implicit stages run on).
fn real_values<T: Scalar>(m: &DMatrix<T>) -> DMatrix<T::Primitive> {
    m.map(|x| T::Primitive::round_from(x.primal()))
}

fn internal(message: &str) -> Error {
    Error::Tape(ad_core::Error::InvalidArgument {
        op: "implicit step",
        message: format!("{message}; this is a bug in the ode crate"),
    })
}
