//! Tangent-aware step control ([`ErrorControl::WithTangents`], [`ErrorControl::Along`]): a
//! planning solve carries forward-mode tangents of the state beside it and accepts a step
//! only when the state and every tangent meet the tolerances; the gradient strategy then
//! takes exactly those steps (replayed, as the exact replays re-take theirs).
//!
//! The tangents ride in the one stepper and controller. The planning state is the state and
//! its tangents side by side, `[y | u_1 | … | u_k]`; evaluating it runs `f` once per
//! direction on dual numbers, whose value is `f(t, y)` and whose tangent is
//! `J u_j + ∂f/∂θ w_j`. A Runge–Kutta step of that system is the forward-mode derivative of
//! the step of `y`, so each block's embedded error estimate is the error estimate of the
//! sensitivity the gradient differentiates, and the controller measures each block on its
//! own ([`Controller::blocks`]).

use std::any::Any;

use ad_core::nalgebra::DMatrix;
use ad_core::{all_finite, Mark, Precision, Scalar, Tape, Var};

use crate::controller::{Controller, StepRecord};
use crate::dynamics::Dynamics;
use crate::engine::SolveStats;
use crate::error::{Error, Result};
use crate::forward::{forward_controller, forward_landing};
use crate::jacobian::{jacobian, Jacobian};
use crate::options::{ErrorControl, Options, TangentDirection};

/// The dual number of `T`'s precision (`Dual64` for `f64`, `f32` → `Dual32`; for a `Dual64`
/// solve, `Dual64` itself): the scalar a tangent-aware planning solve evaluates `f` on. A
/// vector field written generically over [`Scalar`] implements [`Dynamics`] for it already.
pub type DualOf<T> = <<T as ad_core::num_dual::DualNum>::Primitive as Precision>::Dual;

/// The steps a planning solve chose, and what it cost.
pub(crate) struct Plan<T: Scalar> {
    /// Every accepted step, for the strategy's forward to replay.
    pub steps: Vec<StepRecord>,
    /// The planning solve's counts (`nfe` counts evaluations of the stacked system, each
    /// `directions` evaluations of `f` on dual numbers).
    pub stats: SolveStats,
    /// How many tangent directions it carried.
    pub directions: usize,
    /// `h(t_1), …, h(t_n)` and their tangents side by side, `[y | u_1 | … | u_k]`.
    pub outputs: Vec<DMatrix<<T as ad_core::num_dual::DualNum>::Primitive>>,
    /// Whether the first direction is the solve's own dual parts (a `Dual64`/`Dual32`
    /// solve), so the planned outputs are the solve's outputs.
    pub own_dual_parts: bool,
}

impl<T: Scalar> Plan<T> {
    /// Fold the planning solve into the counts of the forward that replayed its steps: the
    /// rejections and clamped steps happened while planning, and its dual evaluations are
    /// counted apart.
    pub fn merge_into(&self, stats: &mut SolveStats) {
        stats.rejected += self.stats.rejected;
        stats.clamped += self.stats.clamped;
        stats.tangent_nfe += self.stats.nfe * self.directions;
    }

    /// The solve's outputs straight from the planning solve, when it computed them: for a
    /// real `T` the state block, for a `Dual64`/`Dual32` solve planned along its own dual
    /// parts the state and that tangent. `None` otherwise (the caller replays the steps).
    pub fn solve_outputs(&self) -> Option<Vec<DMatrix<T>>> {
        let state = |m: &DMatrix<T::Primitive>| {
            m.columns(0, m.ncols() / (self.directions + 1))
                .clone_owned()
        };
        if !ad_core::carries_derivatives::<T>() {
            // A real T is its own primitive.
            return self
                .outputs
                .iter()
                .map(|m| from_any::<T::Primitive, T>(state(m)))
                .collect();
        }
        if !self.own_dual_parts {
            return None;
        }
        self.outputs
            .iter()
            .map(|m| {
                let d = m.ncols() / (self.directions + 1);
                let dual = DMatrix::from_fn(m.nrows(), d, |r, c| {
                    T::Primitive::dual(m[(r, c)], m[(r, d + c)])
                });
                from_any::<DualOf<T>, T>(dual)
            })
            .collect()
    }

    /// A clause for the strategy report.
    pub fn describe(&self) -> String {
        format!(
            "; steps chosen with {} tangent direction{} ({} evaluations on dual numbers)",
            self.directions,
            if self.directions == 1 { "" } else { "s" },
            self.stats.nfe * self.directions
        )
    }
}

/// The planning solve for a solve from `h0` over the grid `t` with parameter values
/// `params`, or `None` when the options do not ask for one (primal control) or leave
/// nothing to choose (constant steps).
pub(crate) fn plan<T: Scalar, F: Dynamics<DualOf<T>>>(
    f: &F,
    h0: &DMatrix<T>,
    t: &[T],
    params: &[DMatrix<T>],
    opts: &Options,
) -> Result<Option<Plan<T>>> {
    if !opts.error_control.carries_tangents() {
        return Ok(None);
    }
    let ctl = forward_controller(opts);
    if ctl.fixed_step.is_some() {
        return Ok(None);
    }
    let real = |m: &DMatrix<T>| m.map(|x| T::Primitive::round_from(x.primal()));
    let y0 = real(h0);
    let theta: Vec<DMatrix<T::Primitive>> = params.iter().map(real).collect();
    let (directions, own_dual_parts) = directions(&opts.error_control, h0, params)?;
    let k = directions.len();
    let (b, d) = y0.shape();
    let cols = (k + 1)
        .checked_mul(d)
        .filter(|c| c.checked_mul(b).is_some_and(|n| n <= ad_core::MAX_ELEMENTS));
    let Some(cols) = cols else {
        return Err(Error::Tape(ad_core::Error::TooLarge {
            op: "tangent-aware error control (the state and its tangents side by side)",
            rows: b,
            cols: (k + 1).saturating_mul(d),
            limit: ad_core::MAX_ELEMENTS,
        }));
    };
    let stacked = DMatrix::from_fn(b, cols, |r, c| match c / d {
        0 => y0[(r, c)],
        j => directions[j - 1].0[(r, c % d)],
    });
    let tape = Tape::<DualOf<T>>::new();
    let _no_grad = tape.no_grad();
    let duals: Vec<Vec<Var<'_, DualOf<T>>>> = directions
        .iter()
        .map(|(_, w)| {
            theta
                .iter()
                .zip(w)
                .map(|(p, w)| tape.constant(p.zip_map(w, T::Primitive::dual)))
                .collect()
        })
        .collect();
    let field = TangentField::<T, F> {
        f,
        tape: &tape,
        theta: theta.to_vec(),
        params: duals,
        mark: tape.mark(),
        block: (b, d),
    };
    let times: Vec<T::Primitive> = t
        .iter()
        .map(|x| T::Primitive::round_from(x.primal()))
        .collect();
    let ctl = Controller {
        blocks: k + 1,
        ..ctl
    };
    // The last step lands on the last output time: the output there is a step's end, whose
    // error (state and tangents) the embedded estimate controls, where stepping past it and
    // interpolating back would add the interpolant's error, which nothing controls.
    let forward = forward_landing(
        &field,
        &stacked,
        &times,
        Vec::new(),
        ctl,
        true,
        false,
        |_, _| Ok(()),
    )
    .map_err(|e| match e {
        Error::Tape(e) => Error::from_tape(e),
        e => e,
    })?;
    Ok(Some(Plan {
        steps: forward.steps,
        stats: forward.stats,
        directions: k,
        outputs: forward.outputs,
        own_dual_parts,
    }))
}

/// A direction `(h0 tangent, parameter tangents)` in the solve's precision.
type Direction<P> = (DMatrix<P>, Vec<DMatrix<P>>);

/// The directions the options ask for: the caller's, checked; a `Dual64`/`Dual32` solve's
/// own dual parts (then `true`); or `n` drawn from a fixed seed.
fn directions<T: Scalar>(
    control: &ErrorControl,
    h0: &DMatrix<T>,
    params: &[DMatrix<T>],
) -> Result<(Vec<Direction<T::Primitive>>, bool)> {
    match control {
        ErrorControl::Primal => Ok((Vec::new(), false)),
        ErrorControl::Along(given) => Ok((
            given
                .iter()
                .enumerate()
                .map(|(i, dir)| checked_direction::<T>(i, dir, h0, params))
                .collect::<Result<_>>()?,
            false,
        )),
        ErrorControl::WithTangents { directions } => {
            if let Some(parts) = dual_parts(h0, params) {
                return Ok((vec![parts], true));
            }
            Ok((
                (0..*directions)
                    .map(|j| random_direction::<T>(j, h0, params))
                    .collect(),
                false,
            ))
        }
    }
}

/// `m` as a matrix of `B` when `A` is `B` (a type check at run time).
fn from_any<A: 'static, B: 'static>(m: DMatrix<A>) -> Option<DMatrix<B>> {
    let mut m = Some(m);
    (&mut m as &mut dyn Any)
        .downcast_mut::<Option<DMatrix<B>>>()
        .and_then(Option::take)
}

/// A caller's direction, checked against the shapes of `h0` and the parameters.
fn checked_direction<T: Scalar>(
    index: usize,
    dir: &TangentDirection,
    h0: &DMatrix<T>,
    params: &[DMatrix<T>],
) -> Result<Direction<T::Primitive>> {
    let bad = |reason: String| Error::BadTangentDirection { index, reason };
    if dir.params.len() != params.len() {
        return Err(bad(format!(
            "it has {} parameter tangents but the solve has {} parameters",
            dir.params.len(),
            params.len()
        )));
    }
    let shaped = |what: String, m: &DMatrix<f64>, shape: (usize, usize)| {
        if m.shape() != shape {
            return Err(bad(format!(
                "the tangent of {what} is {:?} but {what} is {shape:?}",
                m.shape()
            )));
        }
        let m = m.map(T::Primitive::round_from);
        if !all_finite(&m) {
            return Err(bad(format!(
                "the tangent of {what} has a NaN or infinite entry (in {})",
                <T::Primitive as Precision>::NAME
            )));
        }
        Ok(m)
    };
    let h = shaped("h0".into(), &dir.h0, h0.shape())?;
    let w = dir
        .params
        .iter()
        .zip(params)
        .enumerate()
        .map(|(i, (w, p))| shaped(format!("parameter {i}"), w, p.shape()))
        .collect::<Result<_>>()?;
    Ok((h, w))
}

/// The dual parts of a `Dual64`/`Dual32` solve's inputs (SciMLSensitivity's fix: the
/// tangents a forward-mode solve already carries are the ones to control). `None` for other
/// scalars.
fn dual_parts<T: Scalar>(
    h0: &DMatrix<T>,
    params: &[DMatrix<T>],
) -> Option<Direction<T::Primitive>> {
    let eps = |m: &DMatrix<T>| {
        (m as &dyn Any)
            .downcast_ref::<DMatrix<DualOf<T>>>()
            .map(|m| m.map(|x| T::Primitive::parts(x).1))
    };
    let h = eps(h0)?;
    let w = params.iter().map(eps).collect::<Option<Vec<_>>>()?;
    Some((h, w))
}

/// Direction `j` with standard normal entries over `(h0, θ)` from a fixed seed, so a solve
/// takes the same steps every time.
fn random_direction<T: Scalar>(
    j: usize,
    h0: &DMatrix<T>,
    params: &[DMatrix<T>],
) -> Direction<T::Primitive> {
    let mut rng =
        Normal::new(0x5eed_7a96_e471_u64 ^ (j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut draw = |m: &DMatrix<T>| {
        DMatrix::from_fn(m.nrows(), m.ncols(), |_, _| {
            T::Primitive::round_from(rng.next())
        })
    };
    let h = draw(h0);
    let w = params.iter().map(&mut draw).collect();
    (h, w)
}

/// Standard normal numbers from SplitMix64 and the Box–Muller transform.
struct Normal {
    state: u64,
    spare: Option<f64>,
}

impl Normal {
    fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 53 random bits in (0, 1].
        ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        if let Some(x) = self.spare.take() {
            return x;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let a = std::f64::consts::TAU * v;
        self.spare = Some(r * a.sin());
        r * a.cos()
    }
}

/// The planning system `[y | u_1 | … | u_k]' = [f(t, y) | J u_1 + ∂f/∂θ w_1 | …]`, on values
/// of the solve's precision; `f` runs on dual numbers on a tape of its own, rewound after
/// every evaluation (the parameters' duals stay before `mark`).
struct TangentField<'a, 'd, T: Scalar, F> {
    f: &'a F,
    tape: &'d Tape<DualOf<T>>,
    /// θ's values, for the Jacobian of `f`.
    theta: Vec<DMatrix<T::Primitive>>,
    /// `θ + ε w_j` for every direction `j`.
    params: Vec<Vec<Var<'d, DualOf<T>>>>,
    mark: Mark,
    /// The shape of the state (batch × dimension).
    block: (usize, usize),
}

impl<T: Scalar, F: Dynamics<DualOf<T>>> Dynamics<T::Primitive> for TangentField<'_, '_, T, F> {
    fn eval<'t>(
        &self,
        t: Var<'t, T::Primitive>,
        h: Var<'t, T::Primitive>,
        _params: &[Var<'t, T::Primitive>],
    ) -> ad_core::Result<Var<'t, T::Primitive>> {
        let at = t.scalar_value()?;
        let out = h.with_value(|stacked| self.stacked_eval(at, stacked))?;
        self.tape.rewind(self.mark)?;
        Ok(h.tape().constant(out.map_err(boxed)?))
    }

    /// For implicit methods' Newton: `J = ∂f/∂y` repeated on the diagonal, once per block
    /// `[y | u_1 | … | u_k]`. The stacked system's Jacobian is block lower-triangular (the
    /// tangents' rows also hold `∂(J u)/∂y`); a simplified Newton on its diagonal converges
    /// all the same (the iteration's error map is nilpotent over the blocks).
    fn jacobian(
        &self,
        t: f64,
        stacked: &DMatrix<T::Primitive>,
        _params: &[DMatrix<T::Primitive>],
    ) -> Option<Result<Jacobian<T::Primitive>>> {
        Some(self.diagonal_jacobian(t, stacked))
    }
}

impl<T: Scalar, F: Dynamics<DualOf<T>>> TangentField<'_, '_, T, F> {
    /// See [`Dynamics::jacobian`] above.
    fn diagonal_jacobian(
        &self,
        t: f64,
        stacked: &DMatrix<T::Primitive>,
    ) -> Result<Jacobian<T::Primitive>> {
        let (b, d) = self.block;
        let copies = stacked.ncols() / d;
        let y = stacked.columns(0, d).into_owned();
        let (jac, _) = jacobian::<T::Primitive, F>(self.f, t, &y, &self.theta)?;
        let repeat = |m: &DMatrix<T::Primitive>| {
            let n = m.nrows();
            let mut big = DMatrix::zeros(n * copies, n * copies);
            for j in 0..copies {
                big.view_mut((j * n, j * n), (n, n)).copy_from(m);
            }
            big
        };
        Ok(match jac {
            // The stacked state flattened column-major puts each block's entries together,
            // in y's own order.
            Jacobian::Dense(m) => {
                let n = b * d * copies;
                if n.checked_mul(n).is_none_or(|e| e > ad_core::MAX_ELEMENTS) {
                    return Err(Error::Tape(ad_core::Error::TooLarge {
                        op: "jacobian of the tangent-planning system (declare Dynamics::rows_independent if the rows are)",
                        rows: n,
                        cols: n,
                        limit: ad_core::MAX_ELEMENTS,
                    }));
                }
                Jacobian::Dense(repeat(&m))
            }
            Jacobian::Blocks(blocks) => Jacobian::Blocks(blocks.iter().map(repeat).collect()),
        })
    }

    /// Evaluate the stacked system at time `at` (as a number) on stacked values.
    fn stacked_eval(
        &self,
        at: T::Primitive,
        stacked: &DMatrix<T::Primitive>,
    ) -> Result<DMatrix<T::Primitive>> {
        let (b, d) = self.block;
        let t_f64 = at.as_f64();
        let mut out = DMatrix::<T::Primitive>::zeros(b, stacked.ncols());
        let time = self.tape.constant(DMatrix::from_element(
            1,
            1,
            T::Primitive::dual(at, T::Primitive::round_from(0.0)),
        ));
        for (j, params) in self.params.iter().enumerate() {
            let tangent = stacked.columns(d * (j + 1), d);
            if !tangent.iter().all(|x| x.as_f64().is_finite()) {
                return Err(Error::TangentNonFinite {
                    t: t_f64,
                    direction: j,
                });
            }
            let y = DMatrix::from_fn(b, d, |r, c| {
                T::Primitive::dual(stacked[(r, c)], tangent[(r, c)])
            });
            let y = self.tape.constant(y);
            let value = self.f.eval(time, y, params)?;
            let got = value.shape()?;
            if got != (b, d) {
                return Err(Error::Shape {
                    what: "f(t, h) on dual numbers".into(),
                    expected: (b, d),
                    got,
                });
            }
            value.with_value(|m| {
                for c in 0..d {
                    for r in 0..b {
                        let (re, eps) = T::Primitive::parts(m[(r, c)]);
                        if j == 0 {
                            out[(r, c)] = re;
                        }
                        out[(r, d * (j + 1) + c)] = eps;
                    }
                }
            })?;
            let block = out.columns(d * (j + 1), d);
            if !block.iter().all(|x| x.as_f64().is_finite()) {
                return Err(Error::TangentNonFinite {
                    t: t_f64,
                    direction: j,
                });
            }
        }
        Ok(out)
    }
}

/// An ode error carried through `Dynamics::eval`'s tape error (recovered by
/// [`Error::from_tape`]).
fn boxed(e: Error) -> ad_core::Error {
    match e {
        Error::Tape(e) => e,
        e => ad_core::Error::Custom {
            op: "tangent-aware error control".into(),
            source: Box::new(e),
        },
    }
}
