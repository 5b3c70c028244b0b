//! The tolerance study: how each gradient strategy's error follows the solver tolerance.

use std::fmt;

use ad_core::num_dual::Dual64;
use serde::Serialize;

use super::problem::{GradientProblem, ProblemVector};
use super::table::{render, sci};
use super::{Result, VerifyError};
use crate::dynamics::Dynamics;
use crate::options::Options;
use crate::strategy::Strategy;
use crate::tableau::{self, Tableau};

/// How the study sets `atol` from each `rtol` of the sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AtolRule {
    /// `atol = ratio · rtol` (the default ratio is 1e-2, torchdiffeq's 1e-7 / 1e-9).
    Ratio(f64),
    /// The same `atol` at every `rtol`.
    Fixed(f64),
}

impl AtolRule {
    fn atol(&self, rtol: f64) -> f64 {
        match *self {
            AtolRule::Ratio(r) => r * rtol,
            AtolRule::Fixed(a) => a,
        }
    }
}

/// The gradient the study measures errors against.
#[derive(Clone, Debug)]
pub enum Reference {
    /// The taped gradient with this method and these tolerances (the other options from
    /// [`StudyOptions::base`]).
    Taped {
        /// The method.
        method: &'static Tableau,
        /// Its relative tolerance.
        rtol: f64,
        /// Its absolute tolerance.
        atol: f64,
    },
    /// A gradient the caller computed (e.g. in closed form).
    Given(ProblemVector),
}

impl Default for Reference {
    /// Taped dopri8 at rtol 1e-12, atol 1e-14.
    fn default() -> Self {
        Reference::Taped {
            method: &tableau::DOPRI8,
            rtol: 1e-12,
            atol: 1e-14,
        }
    }
}

/// The settings of a [`tolerance_study`].
#[derive(Clone, Debug)]
pub struct StudyOptions {
    /// The solve's options; the study replaces `rtol` and `atol`.
    pub base: Options,
    /// How `atol` follows `rtol`.
    pub atol: AtolRule,
    /// The gradient to measure against.
    pub reference: Reference,
    /// Count the gradient with respect to the grid times in the errors (default `true`).
    pub include_times: bool,
    /// Errors at or below this are the reference's own error and rounding, not the
    /// strategy's: the slope fit skips them (default 1e-11, ten times the default
    /// reference's rtol).
    pub rounding_floor: f64,
    /// With `Some(step)`, also compare every gradient with central finite differences of
    /// the loss ([`GradientProblem::finite_difference_gradient`] with this step, solved
    /// with the reference's method and tolerances, or dopri8 at rtol 1e-12 for a given
    /// reference). Costs two solves per input entry, once. Default `None`.
    pub finite_difference_step: Option<f64>,
}

impl Default for StudyOptions {
    fn default() -> Self {
        Self {
            base: Options::default(),
            atol: AtolRule::Ratio(1e-2),
            reference: Reference::default(),
            include_times: true,
            rounding_floor: 1e-11,
            finite_difference_step: None,
        }
    }
}

/// One strategy at one tolerance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudyRow {
    /// The strategy's name ([`Strategy::name`]).
    pub strategy: String,
    /// The relative tolerance.
    pub rtol: f64,
    /// The absolute tolerance the rule gave.
    pub atol: f64,
    /// The gradient's relative error against the reference
    /// ([`ProblemVector::relative_error`]).
    pub grad_rel_err: f64,
    /// The gradient's relative error against the taped gradient at the same tolerances:
    /// rounding level for the exact strategies at every tolerance.
    pub taped_rel_err: f64,
    /// The gradient's relative error against central finite differences (with
    /// [`StudyOptions::finite_difference_step`]).
    pub fd_rel_err: Option<f64>,
    /// Evaluations of f in the forward solve.
    pub forward_nfe: usize,
    /// Evaluations in the backward pass (for taped, the VJPs through the recorded
    /// evaluations; `None` if the pass did not reach the solve).
    pub backward_nfe: Option<usize>,
}

/// The fitted order of one strategy's error in the tolerance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudySlope {
    /// The strategy's name.
    pub strategy: String,
    /// The least-squares slope of `ln(grad_rel_err)` on `ln(rtol)` over the points above the
    /// rounding floor; `None` with fewer than two such points (an exact match everywhere).
    pub slope: Option<f64>,
    /// How many points the fit used.
    pub points: usize,
}

/// What [`tolerance_study`] measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToleranceReport {
    /// How the reference was obtained.
    pub reference: String,
    /// The finite-difference gradient's own relative error against the reference: the
    /// floor under every `fd_rel_err`.
    pub fd_vs_reference: Option<f64>,
    /// One row per strategy and tolerance, strategy by strategy.
    pub rows: Vec<StudyRow>,
    /// One slope per strategy, in the order given.
    pub slopes: Vec<StudySlope>,
}

impl ToleranceReport {
    /// The fitted slope of the strategy called `name` (`None` if absent or not fitted).
    pub fn slope(&self, name: &str) -> Option<f64> {
        self.slopes
            .iter()
            .find(|s| s.strategy == name)
            .and_then(|s| s.slope)
    }
}

impl fmt::Display for ToleranceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "reference: {}", self.reference)?;
        if let Some(e) = self.fd_vs_reference {
            writeln!(f, "finite differences vs reference: {e:.2e}")?;
        }
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.strategy.clone(),
                    sci(Some(r.rtol)),
                    sci(Some(r.atol)),
                    sci(Some(r.grad_rel_err)),
                    sci(Some(r.taped_rel_err)),
                    sci(r.fd_rel_err),
                    r.forward_nfe.to_string(),
                    r.backward_nfe.map_or("-".into(), |n| n.to_string()),
                ]
            })
            .collect();
        f.write_str(&render(
            &[
                "strategy",
                "rtol",
                "atol",
                "err vs reference",
                "err vs taped",
                "err vs FD",
                "fwd NFE",
                "bwd NFE",
            ],
            &rows,
        ))?;
        let slopes: Vec<Vec<String>> = self
            .slopes
            .iter()
            .map(|s| {
                vec![
                    s.strategy.clone(),
                    s.slope.map_or("-".into(), |x| format!("{x:.3}")),
                    s.points.to_string(),
                ]
            })
            .collect();
        f.write_str(&render(&["strategy", "log-log slope", "points"], &slopes))
    }
}

/// Each strategy's gradient error over a tolerance sweep, against a tight reference, with
/// the fitted log–log slope of error on `rtol`.
///
/// For every `rtol` in `rtols` (and `atol` by [`StudyOptions::atol`]) and every strategy,
/// the gradient of `problem`'s loss (over h0, θ and, by default, t) is compared with the
/// reference ([`StudyOptions::reference`]; default taped dopri8 at rtol 1e-12) and with the
/// taped gradient at the same tolerances. The slope per strategy is the least-squares fit
/// of `ln err` on `ln rtol` over the points whose error is above
/// [`StudyOptions::rounding_floor`]. Cost: one reference gradient, then one gradient per
/// strategy and tolerance plus one taped gradient per tolerance.
///
/// ```
/// use ad_core::{nalgebra::DMatrix, Result as TapeResult, Scalar, Var};
/// use ode::verify::{tolerance_study, GradientProblem, StudyOptions};
/// use ode::{Dynamics, Strategy};
///
/// /// h' = h Aᵀ.
/// #[derive(Clone, Debug)]
/// struct Linear;
/// impl<T: Scalar> Dynamics<T> for Linear {
///     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
///         h.matmul_t(p[0])
///     }
/// }
///
/// let a = DMatrix::from_row_slice(2, 2, &[-0.5, 1.0, -1.0, -0.2]);
/// let problem = GradientProblem::new(Linear, DMatrix::from_row_slice(1, 2, &[1.0, 0.5]), vec![0.0, 2.0], vec![a]);
/// let strategies = [Strategy::Taped, Strategy::backsolve(), Strategy::Checkpointed { slots: 2 }];
/// let report = tolerance_study(&problem, &strategies, &[1e-4, 1e-6, 1e-8], &StudyOptions::default())?;
/// println!("{report}");
/// let slope = report.slope("backsolve").unwrap();
/// assert!((0.6..1.4).contains(&slope), "{slope}");
/// // The exact strategies match the taped gradient at every tolerance.
/// assert!(report.rows.iter().filter(|r| r.strategy != "backsolve").all(|r| r.taped_rel_err < 1e-12));
/// # Ok::<(), ode::verify::VerifyError>(())
/// ```
pub fn tolerance_study<F>(
    problem: &GradientProblem<F>,
    strategies: &[Strategy],
    rtols: &[f64],
    study: &StudyOptions,
) -> Result<ToleranceReport>
where
    F: Dynamics<f64> + Dynamics<Dual64> + Clone + 'static,
{
    problem.validate()?;
    if strategies.is_empty() {
        return Err(VerifyError::Empty { what: "strategies" });
    }
    if rtols.is_empty() {
        return Err(VerifyError::Empty { what: "rtols" });
    }
    for (index, &value) in rtols.iter().enumerate() {
        positive("rtol", index, value)?;
        positive("atol (from the rule)", index, study.atol.atol(value))?;
    }
    if !(study.rounding_floor.is_finite() && study.rounding_floor >= 0.0) {
        return Err(VerifyError::BadValue {
            what: "rounding floor",
            index: 0,
            value: study.rounding_floor,
        });
    }
    let trim = |v: ProblemVector| {
        if study.include_times {
            v
        } else {
            v.without_times()
        }
    };
    let (reference, described) = match &study.reference {
        Reference::Taped { .. } => {
            let opts = reference_options(&study.reference, &study.base);
            let g = problem.gradient(&opts, &Strategy::Taped)?;
            let described = format!(
                "taped {} at rtol {:e}, atol {:e}",
                opts.method.name, opts.rtol, opts.atol
            );
            (g, described)
        }
        Reference::Given(g) => {
            problem.check_vector(g)?;
            (g.clone(), "given by the caller".to_string())
        }
    };
    let reference = trim(reference);
    let fd = match study.finite_difference_step {
        Some(step) => {
            let opts = reference_options(&study.reference, &study.base);
            Some(trim(problem.finite_difference_gradient(&opts, step)?))
        }
        None => None,
    };

    let mut rows = Vec::with_capacity(strategies.len() * rtols.len());
    let mut taped = Vec::with_capacity(rtols.len());
    for &rtol in rtols {
        let opts = study.base.clone().tolerances(rtol, study.atol.atol(rtol));
        taped.push((
            opts.clone(),
            trim(problem.gradient(&opts, &Strategy::Taped)?),
        ));
    }
    for strategy in strategies {
        for (&rtol, (opts, taped_gradient)) in rtols.iter().zip(&taped) {
            let (g, forward_nfe, backward_nfe) = problem.gradient_with_counts(opts, strategy)?;
            let g = trim(g);
            rows.push(StudyRow {
                strategy: strategy.name(),
                rtol,
                atol: opts.atol,
                grad_rel_err: g.relative_error(&reference),
                taped_rel_err: g.relative_error(taped_gradient),
                fd_rel_err: fd.as_ref().map(|fd| g.relative_error(fd)),
                forward_nfe,
                backward_nfe,
            });
        }
    }
    let slopes = strategies
        .iter()
        .map(|s| {
            let name = s.name();
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.strategy == name)
                .filter(|r| r.grad_rel_err.is_finite() && r.grad_rel_err > study.rounding_floor)
                .map(|r| (r.rtol.ln(), r.grad_rel_err.ln()))
                .collect();
            StudySlope {
                strategy: name,
                slope: least_squares_slope(&points),
                points: points.len(),
            }
        })
        .collect();
    Ok(ToleranceReport {
        fd_vs_reference: fd.as_ref().map(|fd| fd.relative_error(&reference)),
        reference: described,
        rows,
        slopes,
    })
}

/// The options of a taped reference solve (for a given reference: those of the default
/// reference), on top of `base`.
fn reference_options(reference: &Reference, base: &Options) -> Options {
    match reference {
        Reference::Taped { method, rtol, atol } => Options {
            method,
            ..base.clone()
        }
        .tolerances(*rtol, *atol),
        Reference::Given(_) => reference_options(&Reference::default(), base),
    }
}

fn positive(what: &'static str, index: usize, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(VerifyError::BadValue { what, index, value })
    }
}

/// The slope of the least-squares line through `(x, y)`; `None` with fewer than two
/// distinct `x`.
fn least_squares_slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}
