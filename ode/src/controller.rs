//! Step-size control, separate from the step: torchdiffeq's error-ratio rule and Hairer's
//! initial step for adaptive solves, a fixed step, or a replay of recorded accepted steps.

use std::collections::VecDeque;

use ad_core::nalgebra::DMatrix;
use ad_core::{Scalar, Tape, Var};

use crate::engine::{combine_where, counted, Step, System, Time};
use crate::error::{Error, Result};
use crate::options::Norm;
use crate::scheme::Scheme;
use crate::tableau::Tableau;

/// One accepted step as numbers: where it started, where it ended and with which signed
/// step `dt` (`t1 = t + dt` unless the step was shortened to land on an output time, then
/// `t1` is that time exactly). Replaying the record from the step's start state takes the
/// same step: same stage times and step size, so the same values up to the rounding of a
/// first stage that the forward took over from the previous step (FSAL).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRecord {
    /// Start time of the step.
    pub t: f64,
    /// End time of the step.
    pub t1: f64,
    /// The signed step size the stages were evaluated with.
    pub dt: f64,
    /// Whether the step was shortened to land exactly on an output time.
    pub landed: bool,
}

/// Step-size control, separate from the step itself.
#[derive(Clone, Debug)]
pub(crate) struct Controller {
    pub tableau: &'static Tableau,
    pub rtol: f64,
    pub atol: f64,
    pub safety: f64,
    pub ifactor: f64,
    pub dfactor: f64,
    pub min_step: f64,
    pub max_step: f64,
    pub max_num_steps: usize,
    pub fixed_step: Option<f64>,
    pub first_step: Option<f64>,
    pub norm: Norm,
    /// Components that count in the error norm (`None`: all).
    pub mask: Option<Vec<bool>>,
    /// Replay mode: take these accepted steps, in order, instead of choosing step sizes.
    pub replay: Option<VecDeque<StepRecord>>,
    /// The step taken from the tableau (plain or reversible).
    pub scheme: Scheme,
    /// Equal column blocks of every component that are measured apart, the ratio being the
    /// largest block's (1: the whole component). A tangent-aware planning solve stacks the
    /// state and its tangents side by side, and each must meet the tolerances on its own.
    pub blocks: usize,
}

impl Controller {
    /// The same controller in replay mode: it takes exactly `records`, in order.
    pub fn replaying(mut self, records: impl IntoIterator<Item = StepRecord>) -> Self {
        self.replay = Some(records.into_iter().collect());
        self
    }

    /// The next recorded step in replay mode (`None` when not replaying or exhausted).
    pub fn next_replayed(&mut self) -> Option<StepRecord> {
        self.replay.as_mut().and_then(VecDeque::pop_front)
    }

    /// Whether the controller replays recorded steps.
    pub fn is_replaying(&self) -> bool {
        self.replay.is_some()
    }

    fn counts(&self, c: usize) -> bool {
        counted(self.mask.as_deref(), c)
    }

    /// The configured norm of per-component scaled errors.
    pub(crate) fn norm(&self, scaled: &[DMatrix<f64>]) -> f64 {
        match &self.norm {
            Norm::Rms | Norm::MaxRms => self.combine_parts(
                scaled
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| self.counts(*c))
                    .map(|(_, m)| (m.norm_squared(), m.len())),
            ),
            Norm::Custom(f) => {
                let kept: Vec<DMatrix<f64>> = scaled
                    .iter()
                    .enumerate()
                    .map(|(c, m)| {
                        if self.counts(c) {
                            m.clone()
                        } else {
                            DMatrix::zeros(m.nrows(), m.ncols())
                        }
                    })
                    .collect();
                f(&kept)
            }
        }
    }

    /// [`Controller::norm`] of the scaled values `scaled(c)` of components `0..n`, formed
    /// one component at a time and combined in the same order (all at once only for a
    /// custom norm, which needs them together).
    fn scaled_norm(&self, n: usize, scaled: impl Fn(usize) -> Result<DMatrix<f64>>) -> Result<f64> {
        if matches!(self.norm, Norm::Custom(_)) {
            let all = (0..n).map(scaled).collect::<Result<Vec<_>>>()?;
            return Ok(self.norm(&all));
        }
        let mut parts = Vec::with_capacity(n);
        for c in (0..n).filter(|&c| self.counts(c)) {
            let m = scaled(c)?;
            parts.push((m.norm_squared(), m.len()));
        }
        Ok(self.combine_parts(parts.into_iter()))
    }

    /// An RMS or max-RMS norm from each counted component's `(Σ x², element count)`.
    fn combine_parts(&self, parts: impl Iterator<Item = (f64, usize)>) -> f64 {
        match &self.norm {
            Norm::Rms => {
                let (sum, n) = parts.fold((0.0, 0usize), |(s, n), (ps, pn)| (s + ps, n + pn));
                (sum / n.max(1) as f64).sqrt()
            }
            _ => parts
                .map(|(s, n)| (s / n.max(1) as f64).sqrt())
                .fold(0.0, f64::max),
        }
    }

    /// `‖err / (atol + rtol·max(|y₀|, |y₁|))‖` with the error estimate `err = dt Σ e_i k_i`
    /// (numbers only: step control is not differentiated); accept the step when ≤ 1. One
    /// pass over each component, no temporary tensors (except for a custom norm). With
    /// [`Controller::blocks`] > 1, the largest of the blocks' norms.
    pub(crate) fn error_ratio<T: Scalar>(
        &self,
        err: &[Vec<f64>],
        step: &Step<'_, T>,
    ) -> Result<f64> {
        let blocks = self.blocks.max(1);
        let mut worst: f64 = 0.0;
        for b in 0..blocks {
            let r = self.block_ratio(err, step, blocks, b)?;
            worst = worst.max(r);
        }
        Ok(worst)
    }

    /// The norm over column block `b` of `blocks` of every component.
    fn block_ratio<T: Scalar>(
        &self,
        err: &[Vec<f64>],
        step: &Step<'_, T>,
        blocks: usize,
        b: usize,
    ) -> Result<f64> {
        let custom = matches!(self.norm, Norm::Custom(_));
        let mut parts: Vec<(f64, usize)> = Vec::with_capacity(step.y1.len());
        let mut scaled: Vec<DMatrix<f64>> = Vec::new();
        for (c, e) in err.iter().enumerate() {
            let (r, all_cols) = step.y1[c].shape()?;
            let cols = all_cols / blocks;
            if !self.counts(c) {
                parts.push((0.0, 0));
                if custom {
                    scaled.push(DMatrix::zeros(r, cols));
                }
                continue;
            }
            // Column-major: block b is one contiguous run of entries.
            let offset = b * r * cols;
            let len = r * cols;
            let vars = [step.y0[c], step.y1[c]];
            let (sum, m) = Var::with_values(&vars, |v| {
                let range = offset..offset + len;
                let (e, y0, y1) = (
                    &e[range.clone()],
                    &v[0].as_slice()[range.clone()],
                    &v[1].as_slice()[range],
                );
                let (atol, rtol) = (self.atol, self.rtol);
                if custom {
                    let scaled_err: Vec<f64> = e
                        .iter()
                        .zip(y0.iter().zip(y1))
                        .map(|(&e, (a, b))| scaled_error(e, a, b, atol, rtol))
                        .collect();
                    let sum = sum_of_squares(&scaled_err);
                    (sum, Some(DMatrix::from_vec(r, cols, scaled_err)))
                } else {
                    // No temporary: the adjoint's a_θ error is as large as the parameters.
                    (scaled_sum_of_squares(e, y0, y1, atol, rtol), None)
                }
            })?;
            parts.push((sum, len));
            scaled.extend(m);
        }
        let r = match &self.norm {
            Norm::Rms => {
                let (sum, n) = parts
                    .iter()
                    .fold((0.0, 0), |(s, n), &(ps, pn)| (s + ps, n + pn));
                (sum / n.max(1) as f64).sqrt()
            }
            Norm::MaxRms => parts
                .iter()
                .filter(|p| p.1 > 0)
                .map(|&(s, n)| (s / n as f64).sqrt())
                .fold(0.0, f64::max),
            Norm::Custom(f) => f(&scaled),
        };
        Ok(if r.is_nan() { f64::INFINITY } else { r })
    }

    /// The next step size after a step of size `dt` with this error ratio (torchdiffeq's
    /// rule: no shrinking after an accepted step).
    pub(crate) fn next_step(&self, dt: f64, ratio: f64) -> f64 {
        if ratio == 0.0 {
            return dt * self.ifactor;
        }
        let dfactor = if ratio < 1.0 { 1.0 } else { self.dfactor };
        let factor = (self.safety / ratio.powf(1.0 / f64::from(self.tableau.order)))
            .max(dfactor)
            .min(self.ifactor);
        dt * factor
    }

    /// Hairer's initial step (Hairer, Nørsett & Wanner, Solving ODEs I, II.4), as torchdiffeq
    /// does it: one extra evaluation of F.
    pub(crate) fn initial_step<'t, T: Scalar, S: System<'t, T>>(
        &self,
        tape: &'t Tape<T>,
        sys: &mut S,
        t0: Time<'t, T>,
        dir: f64,
        y0: &[Var<'t, T>],
        f0: &[Var<'t, T>],
    ) -> Result<f64> {
        // Scaled values are formed one component at a time (see `scaled_norm`): for the
        // adjoint, a_θ is as large as the parameters.
        let (atol, rtol) = (self.atol, self.rtol);
        let d0 = self.scaled_norm(y0.len(), |c| {
            Ok(y0[c].with_value(|y| y.map(|v| v.primal() / (atol + rtol * v.primal().abs())))?)
        })?;
        let d1 = self.scaled_norm(y0.len(), |c| {
            Ok(Var::with_values(&[f0[c], y0[c]], |v| {
                v[0].zip_map(v[1], |f, y| f.primal() / (atol + rtol * y.primal().abs()))
            })?)
        })?;
        let h0 = if d0 < 1e-5 || d1 < 1e-5 {
            1e-6
        } else {
            0.01 * d0 / d1
        };
        if !(d0.is_finite() && d1.is_finite()) {
            // An overflowed state or derivative (a huge adjoint, say) is the cause to report,
            // not the step size it leaves undefined.
            non_finite(y0, "state", t0.at)?;
            non_finite(f0, "derivative", t0.at)?;
        }
        if !(h0.is_finite() && h0 > 0.0) {
            // NaN scaled norms (tolerances so small that the scaling overflows, a custom
            // norm returning NaN): say so here, not as a NaN state one evaluation later.
            return Err(Error::BadInitialStep {
                t: t0.at,
                dt: h0,
                rtol: self.rtol,
                atol: self.atol,
            });
        }
        let mark = tape.mark();
        // Components F does not read (quadratures) need no probe value.
        let y1 = combine_where(tape, y0, dir * h0, &[1.0], &[f0.to_vec()], |c| sys.reads(c))?;
        let f1 = sys.eval(
            t0.at + dir * h0,
            t0.var.add_scalar(T::constant(dir * h0)),
            &y1,
        )?;
        let d2 = self.scaled_norm(y0.len(), |c| {
            Ok(Var::with_values(&[f1[c], f0[c], y0[c]], |v| {
                let (f1, f0, y) = (v[0].as_slice(), v[1].as_slice(), v[2].as_slice());
                DMatrix::from_iterator(
                    v[2].nrows(),
                    v[2].ncols(),
                    (0..y.len()).map(|i| {
                        (f1[i].primal() - f0[i].primal()) / (atol + rtol * y[i].primal().abs())
                    }),
                )
            })?)
        })? / h0;
        if !d2.is_finite() {
            // The probe state overflowed: report that, as above.
            let what = "state at the initial step's probe";
            if let Err(e) = non_finite(&y1, what, t0.at).and_then(|()| non_finite(&f1, what, t0.at))
            {
                tape.rewind(mark)?;
                return Err(e);
            }
        }
        tape.rewind(mark)?;
        let h1 = if d1 <= 1e-15 && d2 <= 1e-15 {
            (h0 * 1e-3).max(1e-6)
        } else {
            (0.01 / d1.max(d2)).powf(1.0 / f64::from(self.tableau.order))
        };
        let dt = (100.0 * h0).min(h1);
        if !(dt.is_finite() && dt > 0.0) {
            return Err(Error::BadInitialStep {
                t: t0.at,
                dt,
                rtol: self.rtol,
                atol: self.atol,
            });
        }
        Ok(dt)
    }
}

/// [`Error::NonFinite`] naming `what` at `t` if a component of `y` holds NaN or infinity.
fn non_finite<T: Scalar>(y: &[Var<'_, T>], what: &'static str, t: f64) -> Result<()> {
    for v in y {
        if !v.with_value(ad_core::all_finite)? {
            return Err(Error::NonFinite { what, t });
        }
    }
    Ok(())
}

/// The error `e` scaled by the tolerance at the larger of the step's two values.
#[inline(always)]
fn scaled_error<T: Scalar>(e: f64, y0: &T, y1: &T, atol: f64, rtol: f64) -> f64 {
    e / (atol + rtol * y0.primal().abs().max(y1.primal().abs()))
}

/// `Σ scaled_error(e_i, y0_i, y1_i)²`, summed exactly as [`sum_of_squares`] sums a slice of the
/// scaled values, without the slice. The three inputs are walked in chunks of eight, so the
/// division and the sums vectorise (indexing each by `i` kept both scalar).
fn scaled_sum_of_squares<T: Scalar>(e: &[f64], y0: &[T], y1: &[T], atol: f64, rtol: f64) -> f64 {
    let full = e.len() - e.len() % 8;
    let tail: f64 = e[full..]
        .iter()
        .zip(y0[full..].iter().zip(&y1[full..]))
        .map(|(&e, (a, b))| {
            let v = scaled_error(e, a, b, atol, rtol);
            v * v
        })
        .sum();
    let mut acc = [0.0; 8];
    let chunks = e[..full]
        .chunks_exact(8)
        .zip(y0[..full].chunks_exact(8).zip(y1[..full].chunks_exact(8)));
    for (e, (a, b)) in chunks {
        for j in 0..8 {
            let v = scaled_error(e[j], &a[j], &b[j], atol, rtol);
            acc[j] += v * v;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `Σ x²` with eight independent partial sums, so that the loop vectorises (one running
/// sum would chain every addition on the previous one).
fn sum_of_squares(x: &[f64]) -> f64 {
    let mut acc = [0.0; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f64>() + tail
}
