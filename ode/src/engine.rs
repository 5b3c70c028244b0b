//! The one explicit Runge–Kutta engine behind every gradient strategy: the step itself.
//!
//! States are lists of tape `Var`s (one tensor for an ODE, several for the adjoint's
//! augmented state). A step is [`rk_step`], a pure function of `(t, y, dt)` up to the nodes
//! it records; dense output is [`interpolate`]. Step-size control lives in
//! `crate::controller`, the loop over steps in `crate::stepper`.

use std::rc::Rc;

use crate::newton::IterationMatrix;
use ad_core::nalgebra::DMatrix;
use ad_core::{Scalar, Tape, Var};

use crate::error::{Error, Result};
use crate::tableau::Tableau;

/// A state: one variable per component.
pub(crate) type State<'t, T> = Vec<Var<'t, T>>;

/// Counts of one solve (or of all segments of an adjoint backward solve).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SolveStats {
    /// Evaluations of the vector field (for the adjoint: of the augmented dynamics, each one
    /// f evaluation plus one VJP).
    pub nfe: usize,
    /// Accepted steps.
    pub accepted: usize,
    /// Rejected steps.
    pub rejected: usize,
    /// Accepted steps whose error estimate was above the tolerance but whose size had
    /// reached `min_step`: the step is clamped to `min_step` and accepted (as torchdiffeq
    /// and Diffrax do), and counted here so that it is never silent.
    pub clamped: usize,
    /// Evaluations of the vector field on dual numbers by a tangent-aware planning solve
    /// ([`crate::ErrorControl::WithTangents`]): one per stage and tangent direction; 0 under
    /// primal control. Its rejected and clamped steps are counted in `rejected` and
    /// `clamped`; `nfe` counts the strategy's own forward, which replays the planned steps
    /// (for [`crate::solve`], which takes its outputs from the planning solve itself, the
    /// planning solve's evaluations).
    pub tangent_nfe: usize,
    /// Jacobians of the field built for implicit stages.
    pub jacobians: usize,
    /// LU factorisations of the Newton iteration matrix `I − γ·dt·J`.
    pub factorizations: usize,
    /// Newton iterations over every implicit stage.
    pub newton_iterations: usize,
    /// Newton iterations that diverged or ran out (each rejects its step).
    pub newton_failures: usize,
}

impl std::ops::AddAssign for SolveStats {
    fn add_assign(&mut self, o: Self) {
        self.nfe += o.nfe;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.clamped += o.clamped;
        self.tangent_nfe += o.tangent_nfe;
        self.jacobians += o.jacobians;
        self.factorizations += o.factorizations;
        self.newton_iterations += o.newton_iterations;
        self.newton_failures += o.newton_failures;
    }
}

/// A time as a number (for step control and messages) and as a 1×1 variable (through which
/// taped solves differentiate).
#[derive(Clone, Copy)]
pub(crate) struct Time<'t, T: Scalar> {
    pub at: f64,
    pub var: Var<'t, T>,
    /// The derivative parts (real part 0) of the size of the step taken from this time when
    /// that size moves with an input: a step shortened to land on grid time `t_i` has size
    /// `t_i − t`, so on dual numbers its stage weights and stage times carry the grid's
    /// tangents (see [`step_scalar`]). `None`: the size is a constant.
    pub step_tangent: Option<T>,
}

/// `α·dt` as a scalar whose derivative parts are `α·tangent` (the step size's own, see
/// [`Time::step_tangent`]); the real part is `α·dt` exactly, as `T::constant` gives it.
pub(crate) fn step_scalar<T: Scalar>(dt: f64, tangent: Option<T>, alpha: f64) -> T {
    let value = T::constant(alpha * dt);
    match tangent {
        Some(tan) => value + tan * T::constant(alpha),
        None => value,
    }
}

/// `1/dt` as a scalar whose derivative parts are `−tangent/dt²` (see [`step_scalar`]).
pub(crate) fn inverse_step<T: Scalar>(dt: f64, tangent: Option<T>) -> T {
    let value = T::constant(1.0 / dt);
    match tangent {
        Some(tan) => value - tan * T::constant(1.0 / (dt * dt)),
        None => value,
    }
}

/// What the engine integrates: `y' = F(t, y)` over a list of tensors.
pub(crate) trait System<'t, T: Scalar> {
    /// `F(t, y)`; `t` is given as a number (for error messages and local tapes) and as a
    /// 1×1 variable (so taped solves differentiate through stage times).
    fn eval(&mut self, t: f64, tv: Var<'t, T>, y: &[Var<'t, T>]) -> Result<State<'t, T>>;

    /// Whether `F` reads component `c` of the state. A component it does not read is a
    /// quadrature (`y_c' = F_c` with `F_c` independent of `y_c`): its stage values are never
    /// formed, and on a tape that is not recording (see [`rk_step`]) its stages are folded
    /// into running sums as they arrive instead of being kept until the step ends.
    fn reads(&self, _c: usize) -> bool {
        true
    }

    /// `∂F/∂y` at `(t, y)` in the primal precision, for implicit stages. Systems that
    /// implicit methods do not run on have none.
    fn jacobian(
        &mut self,
        _t: f64,
        _tv: Var<'t, T>,
        _y: &[Var<'t, T>],
    ) -> Result<crate::jacobian::Jacobian<T::Primitive>> {
        Err(Error::Tape(ad_core::Error::InvalidArgument {
            op: "implicit step",
            message: "this system has no Jacobian: implicit methods run on the plain field only; this is a bug in the ode crate".into(),
        }))
    }

    /// Count the work of an implicit step (Jacobians, factorisations, Newton iterations).
    fn count(&mut self, _work: SolveStats) {}

    /// The iteration matrix `I − c·J` for the Newton of a step from `(t, y)`, and whether its
    /// `J` was reused from an earlier step rather than computed at `(t, y)`. The default
    /// computes it afresh (every step a pure function of `(t, y, dt)`, as the replaying
    /// strategies need); a values-only solve keeps `J` while Newton converges well.
    fn newton_matrix(
        &mut self,
        t: f64,
        tv: Var<'t, T>,
        y: &[Var<'t, T>],
        c: f64,
    ) -> Result<(Rc<IterationMatrix<T::Primitive>>, bool)> {
        let jac = self.jacobian(t, tv, y)?;
        let m = IterationMatrix::new(&jac, c)?;
        self.count(SolveStats {
            factorizations: 1,
            ..SolveStats::default()
        });
        Ok((Rc::new(m), false))
    }

    /// The Newton run with the last [`System::newton_matrix`] failed or converged slowly:
    /// a system that reuses Jacobians computes the next one afresh.
    fn drop_jacobian(&mut self) {}
}

impl<'t, T: Scalar, S: System<'t, T>> System<'t, T> for &mut S {
    fn eval(&mut self, t: f64, tv: Var<'t, T>, y: &[Var<'t, T>]) -> Result<State<'t, T>> {
        (**self).eval(t, tv, y)
    }

    fn reads(&self, c: usize) -> bool {
        (**self).reads(c)
    }

    fn jacobian(
        &mut self,
        t: f64,
        tv: Var<'t, T>,
        y: &[Var<'t, T>],
    ) -> Result<crate::jacobian::Jacobian<T::Primitive>> {
        (**self).jacobian(t, tv, y)
    }

    fn count(&mut self, work: SolveStats) {
        (**self).count(work)
    }

    fn newton_matrix(
        &mut self,
        t: f64,
        tv: Var<'t, T>,
        y: &[Var<'t, T>],
        c: f64,
    ) -> Result<(Rc<IterationMatrix<T::Primitive>>, bool)> {
        (**self).newton_matrix(t, tv, y, c)
    }

    fn drop_jacobian(&mut self) {
        (**self).drop_jacobian()
    }
}

/// The quadrature components of one step on a tape that is not recording: each stage's
/// values are added into `y + dt Σ b_i k_i` as the stage arrives and then released, so a
/// step holds one running sum per quadrature instead of all `s` stages (the adjoint's
/// `a_θ` is as large as the parameters). The sum is formed in stage order: the same terms as
/// [`combine_where`], rounded in a different order (at most a few ulps apart).
struct Quadratures<T: Scalar> {
    /// `Some(running sum)` (empty until the first stage with a non-zero weight) for a folded
    /// component, `None` for the others.
    sums: Vec<Option<DMatrix<T>>>,
    /// Whether any component is folded.
    any: bool,
}

impl<T: Scalar> Quadratures<T> {
    fn new(tape: &Tape<T>, reads: impl Fn(usize) -> bool, components: usize) -> Self {
        // A recording tape differentiates through the stages: they must stay nodes.
        let fold = !tape.is_grad_enabled();
        let sums: Vec<Option<DMatrix<T>>> = (0..components)
            .map(|c| (fold && !reads(c)).then(|| DMatrix::zeros(0, 0)))
            .collect();
        let any = sums.iter().any(Option::is_some);
        Self { sums, any }
    }

    fn folded(&self, c: usize) -> bool {
        self.sums.get(c).is_some_and(Option::is_some)
    }

    /// Add `dt b_i k_i` of the folded components into their sums (`y` the step's start);
    /// with `release`, free the stage's values of those components afterwards (reading them
    /// again is an error, never a silent zero).
    fn add(&mut self, y: &[Var<'_, T>], w: f64, k: &State<'_, T>, release: bool) -> Result<()> {
        if !self.any {
            return Ok(());
        }
        let wt = T::constant(w);
        for (c, sum) in self.sums.iter_mut().enumerate() {
            let Some(sum) = sum else { continue };
            // Zero weights are skipped, as in `combine_where`.
            if w != 0.0 {
                let w = wt;
                if sum.is_empty() {
                    // The first term is y + w k, as `combine_where` starts.
                    *sum = y[c].value()?;
                }
                // Over both cores when large (a_θ); each entry's sum is the same whichever
                // band it is in.
                k[c].with_value(|kc| {
                    ad_core::in_bands(sum.as_mut_slice(), &|start, band| {
                        for (s, &x) in band.iter_mut().zip(&kc.as_slice()[start..]) {
                            *s += w * x;
                        }
                    })
                })?;
            }
            if release {
                drop(k[c].take_value()?);
            }
        }
        Ok(())
    }

    /// The step's result for component `c` if it is folded: the running sum as a value on
    /// `tape` (`y_c` itself when every weight was zero).
    fn result<'t>(&mut self, tape: &'t Tape<T>, y: &[Var<'t, T>], c: usize) -> Option<Var<'t, T>> {
        let sum = self.sums.get_mut(c)?.take()?;
        Some(if sum.is_empty() {
            y[c]
        } else {
            tape.constant(sum)
        })
    }
}

/// Whether component `c` counts in an error norm restricted by `mask` (`None`: all count).
pub(crate) fn counted(mask: Option<&[bool]>, c: usize) -> bool {
    mask.is_none_or(|m| m.get(c).copied().unwrap_or(true))
}

/// `y + dt Σ_j w_j k_j` for the components where `wanted(c)`, one `fixed_weighted_sum` node
/// per component (zero weights skipped); the other components are left as `y[c]`.
pub(crate) fn combine_where<'t, T: Scalar>(
    tape: &'t Tape<T>,
    y: &[Var<'t, T>],
    dt: f64,
    w: &[f64],
    k: &[State<'t, T>],
    wanted: impl Fn(usize) -> bool,
) -> Result<State<'t, T>> {
    combine_scaled(tape, y, |wj| T::constant(dt * wj), w, k, wanted)
}

/// [`combine_where`] with the weight of `w_j` given by `scale(w_j)` (`dt·w_j`, with the step
/// size's derivative parts when it has any: see [`step_scalar`]).
pub(crate) fn combine_scaled<'t, T: Scalar>(
    tape: &'t Tape<T>,
    y: &[Var<'t, T>],
    scale: impl Fn(f64) -> T,
    w: &[f64],
    k: &[State<'t, T>],
    wanted: impl Fn(usize) -> bool,
) -> Result<State<'t, T>> {
    let mut out = Vec::with_capacity(y.len());
    let mut terms = Vec::with_capacity(w.len() + 1);
    for (c, &yc) in y.iter().enumerate() {
        terms.clear();
        terms.push((T::one(), yc));
        if wanted(c) {
            for (&wj, kj) in w.iter().zip(k) {
                if wj != 0.0 {
                    terms.push((scale(wj), kj[c]));
                }
            }
        }
        out.push(if terms.len() == 1 {
            yc
        } else {
            tape.fixed_weighted_sum(&terms)?
        });
    }
    Ok(out)
}

/// The stages of one step and its result.
pub(crate) struct Step<'t, T: Scalar> {
    /// The state at the step's start.
    pub y0: State<'t, T>,
    /// `k_i`, one state per stage (`k[0]` is F at the step's start). On a tape that is not
    /// recording, the quadrature components of the stages between the first and an FSAL
    /// method's last are released once folded into `y1` (see [`System::reads`]).
    pub k: Vec<State<'t, T>>,
    /// The propagated solution at `t + dt`.
    pub y1: State<'t, T>,
    /// The error estimate `dt Σ e_i k_i` per component (empty where the norm skips the
    /// component; `None` for fixed-step methods).
    pub err: Option<Vec<Vec<f64>>>,
    /// Whether every stage was evaluated (an FSAL method's last stage may be left out when
    /// nothing reads it: see [`Method::final_stage`]).
    pub complete: bool,
}

/// One Runge–Kutta step from `(t, y)` with `k0 = F(t, y)`: a pure function of (t, y, dt)
/// up to the nodes it records.
pub(crate) fn rk_step<'t, T: Scalar, S: System<'t, T>>(
    tape: &'t Tape<T>,
    sys: &mut S,
    method: Method<'_>,
    t: Time<'t, T>,
    y: &[Var<'t, T>],
    k0: State<'t, T>,
    dt: f64,
) -> Result<Step<'t, T>> {
    let tab = method.tableau;
    let s = tab.c.len();
    let mut k: Vec<State<'t, T>> = Vec::with_capacity(s);
    // The error estimate dt Σ e_i k_i accumulates as each stage arrives, while its values are
    // still in cache (numbers only: step control is not differentiated).
    let mut err: Option<Vec<Vec<f64>>> = match tab.b_error {
        Some(_) if method.estimate_error => Some(
            y.iter()
                .enumerate()
                .map(|(c, v)| {
                    Ok(if method.counts(c) {
                        vec![0.0; v.shape()?.0 * v.shape()?.1]
                    } else {
                        Vec::new()
                    })
                })
                .collect::<Result<_>>()?,
        ),
        _ => None,
    };
    let mut add_stage = |i: usize, ki: &State<'t, T>| -> Result<()> {
        let (Some(err), Some(e)) = (err.as_mut(), tab.b_error) else {
            return Ok(());
        };
        let w = dt * e[i];
        if w == 0.0 {
            return Ok(());
        }
        for (acc, v) in err.iter_mut().zip(ki).filter(|(acc, _)| !acc.is_empty()) {
            // Over both cores when large (the adjoint's a_θ is as large as the parameters);
            // each entry's sum is the same whichever band it is in.
            v.with_value(|m| {
                ad_core::in_bands(acc, &|start, band| {
                    for (a, x) in band.iter_mut().zip(&m.as_slice()[start..]) {
                        *a += w * x.primal();
                    }
                })
            })?;
        }
        Ok(())
    };
    // Stage weights and times: `α·dt`, with the step size's derivative parts if it has any.
    let scale = |alpha: f64| step_scalar(dt, t.step_tangent, alpha);
    let mut quadratures = Quadratures::new(tape, |c| sys.reads(c), y.len());
    add_stage(0, &k0)?;
    // k0 belongs to the stepper too (a rejected step is retried from it): never released.
    quadratures.add(y, dt * tab.b[0], &k0, false)?;
    k.push(k0);
    let mut last_input = None;
    let mut complete = true;
    for i in 1..s {
        // Stage values only for the components F reads (the adjoint's a_θ and a_t are
        // integrated but never read, so their stage values would be wasted work).
        let yi = combine_scaled(tape, y, scale, tab.a[i], &k, |c| sys.reads(c))?;
        if i + 1 == s && tab.fsal && !method.final_stage && !method.estimate_error {
            // FSAL's last stage is F(t + dt, y₁): y₁ is its input, and only the error
            // estimate, dense output and the next step read the stage itself.
            complete = false;
            last_input = Some(yi);
            break;
        }
        let ti = t.var.add_scalar(scale(tab.c[i]));
        let ki = sys.eval(t.at + tab.c[i] * dt, ti, &yi)?;
        add_stage(i, &ki)?;
        // An FSAL method's last stage is the next step's first: kept whole.
        quadratures.add(y, dt * tab.b[i], &ki, !(tab.fsal && i + 1 == s))?;
        k.push(ki);
        last_input = Some(yi);
    }
    let y1: State<'t, T> = match (tab.fsal, last_input) {
        // FSAL: the last stage was evaluated at y₁ itself (for the components F reads).
        (true, Some(y_last)) => {
            let rest = combine_scaled(tape, y, scale, tab.b, &k, |c| {
                !sys.reads(c) && !quadratures.folded(c)
            })?;
            (0..y.len())
                .map(|c| if sys.reads(c) { y_last[c] } else { rest[c] })
                .collect()
        }
        _ => combine_scaled(tape, y, scale, tab.b, &k, |c| !quadratures.folded(c))?,
    };
    let y1 = y1
        .into_iter()
        .enumerate()
        .map(|(c, v)| quadratures.result(tape, y, c).unwrap_or(v))
        .collect();
    Ok(Step {
        y0: y.to_vec(),
        k,
        y1,
        err,
        complete,
    })
}

/// A method as the step sees it: its tableau, whether to estimate the error (not when
/// replaying recorded steps), which components the estimate covers (`None`: all), and
/// whether an FSAL method's last stage is wanted (a replay with no dense output in the step
/// and its own start stage for the next step leaves it out).
#[derive(Clone, Copy)]
pub(crate) struct Method<'a> {
    pub tableau: &'a Tableau,
    pub estimate_error: bool,
    pub error_mask: Option<&'a [bool]>,
    pub final_stage: bool,
    /// `(rtol, atol)` of the step's control, for an implicit method's Newton iterations.
    pub tolerances: (f64, f64),
    /// Equal column blocks the Newton norm measures apart ([`crate::controller::Controller`]'s
    /// `blocks`: the state and its tangents in tangent-aware planning), else 1.
    pub newton_blocks: usize,
}

impl Method<'_> {
    fn counts(&self, c: usize) -> bool {
        counted(self.error_mask, c)
    }
}

/// Dense output at `t_out` inside the step `[t_n, t_n + dt]`: the method's own interpolant,
/// or a cubic Hermite on `(y, F(t_n, y), y₁, F(t_n + dt, y₁))`. Differentiable in `t_out`;
/// `dt_tangent`: the step size's derivative parts ([`Time::step_tangent`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn interpolate<'t, T: Scalar>(
    tape: &'t Tape<T>,
    tab: &Tableau,
    t_n: Var<'t, T>,
    dt: f64,
    dt_tangent: Option<T>,
    t_out: Var<'t, T>,
    step: &Step<'t, T>,
    k_next: Option<&State<'t, T>>,
) -> Result<State<'t, T>> {
    // weights(θ) = [1, θ, …, θ^K] · C, over the terms listed below.
    let (coeffs, terms): (DMatrix<T>, Vec<&State<'t, T>>) = match (tab.interpolant, k_next) {
        (Some(p), _) => {
            let kmax = p.iter().map(|row| row.len()).max().unwrap_or(0);
            let mut c = DMatrix::zeros(kmax + 1, p.len() + 1);
            c[(0, 0)] = T::one();
            for (i, row) in p.iter().enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    c[(k + 1, i + 1)] = step_scalar(dt, dt_tangent, v);
                }
            }
            let mut terms: Vec<&State<'t, T>> = Vec::with_capacity(p.len() + 1);
            terms.push(&step.y0);
            terms.extend(step.k.iter());
            (c, terms)
        }
        (None, Some(f1)) => {
            let h = |alpha: f64| step_scalar(dt, dt_tangent, alpha);
            let n = T::constant;
            #[rustfmt::skip]
            let c = DMatrix::from_row_slice(4, 4, &[
                // y       dt·f0        y1        dt·f1
                n(1.0),    n(0.0),      n(0.0),   n(0.0),
                n(0.0),    h(1.0),      n(0.0),   n(0.0),
                n(-3.0),   h(-2.0),     n(3.0),   h(-1.0),
                n(2.0),    h(1.0),      n(-2.0),  h(1.0),
            ]);
            (c, vec![&step.y0, &step.k[0], &step.y1, f1])
        }
        (None, None) => unreachable_interp()?,
    };
    // Terms whose weight polynomial is identically zero (dopri5's k₂) are left out.
    let used: Vec<usize> = (0..coeffs.ncols())
        .filter(|&j| coeffs.column(j).iter().any(|v| *v != T::zero()))
        .collect();
    let coeffs = coeffs.select_columns(&used);
    let terms: Vec<&State<'t, T>> = used.iter().map(|&j| terms[j]).collect();
    let theta = t_out.sub(t_n)?.scale(inverse_step(dt, dt_tangent));
    let weights = theta
        .powers(coeffs.nrows() - 1)?
        .matmul(tape.constant(coeffs))?;
    (0..step.y0.len())
        .map(|c| {
            let vars: Vec<Var<'t, T>> = terms.iter().map(|s| s[c]).collect();
            Ok(tape.weighted_sum(weights, &vars)?)
        })
        .collect()
}

fn unreachable_interp<T>() -> Result<T> {
    Err(Error::Tape(ad_core::Error::InvalidArgument {
        op: "interpolate",
        message: "Hermite interpolation needs F at the step's end; this is a bug in the ode crate"
            .into(),
    }))
}
