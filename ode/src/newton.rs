//! Simplified Newton for implicit stage equations `z = s + c·f(t, z)` (`c = γ·dt`): the
//! iteration matrix `M = I − c·J` factorised once ([`IterationMatrix`], dense or one LU per
//! batch row for a block-diagonal [`Jacobian`]) and reused across iterations, stages and, while
//! it converges well, steps; a stopping test on the increments with the observed contraction
//! rate (Hairer & Wanner, Solving ODEs II, IV.8); and a transposed solve `Mᵀλ = g` for the
//! implicit-function-theorem VJP of a stage.
//!
//! ```
//! use ad_core::nalgebra::DMatrix;
//! use ode::jacobian::Jacobian;
//! use ode::newton::{newton, IterationMatrix, NewtonSettings, Outcome};
//!
//! // z = s + c·(−z³) for one state entry, with J = −3 s² at the guess z = s.
//! let (s, c) = (1.0, 0.1);
//! let jac = Jacobian::Dense(DMatrix::from_element(1, 1, -3.0 * s * s));
//! let m = IterationMatrix::new(&jac, c)?;
//! let settings = NewtonSettings { rtol: 1e-10, atol: 1e-12, ..NewtonSettings::default() };
//! let start = DMatrix::from_element(1, 1, s);
//! // The residual z − s − c f(z); its correction solves M Δ = −residual.
//! let outcome = newton(&m, &start, &settings, |z| Ok(z.map(|z| z - s + c * z * z * z)))?;
//! let Outcome::Converged { z, iterations } = outcome else { panic!("{outcome:?}") };
//! let z = z[(0, 0)];
//! assert!((z - s + c * z * z * z).abs() < 1e-10 && iterations < 8);
//! # Ok::<(), ode::Error>(())
//! ```

use ad_core::nalgebra::{DMatrix, Dyn, LU};
use ad_core::{all_finite, Precision};

use crate::error::{Error, Result};
use crate::jacobian::Jacobian;

/// `M = I − c·J`, factorised: one LU for a dense Jacobian, one per row of the state for a
/// block-diagonal one. Solves work on state-shaped (`batch × dim`) right-hand sides.
#[derive(Clone, Debug)]
pub struct IterationMatrix<P: Precision> {
    factors: Factors<P>,
    /// The `c` it was built with.
    pub c: f64,
}

#[derive(Clone, Debug)]
enum Factors<P: Precision> {
    Dense(LU<P, Dyn, Dyn>),
    Blocks(Vec<LU<P, Dyn, Dyn>>),
}

/// The LU of `I − c·j`, refused when a pivot is negligible against the largest.
fn factorise<P: Precision>(
    j: &DMatrix<P>,
    c: f64,
    block: Option<usize>,
) -> Result<LU<P, Dyn, Dyn>> {
    let n = j.nrows();
    let cp = P::round_from(c);
    let m = DMatrix::from_fn(n, n, |r, k| {
        let identity = if r == k {
            P::round_from(1.0)
        } else {
            P::round_from(0.0)
        };
        identity - cp * j[(r, k)]
    });
    if !all_finite(&m) {
        return Err(Error::SingularIterationMatrix {
            c,
            block,
            reason: "it has NaN or infinite entries (the Jacobian or c·J overflowed)".into(),
        });
    }
    let lu = m.lu();
    let u = lu.u();
    let pivots: Vec<f64> = (0..n).map(|i| u[(i, i)].as_f64().abs()).collect();
    let largest = pivots.iter().copied().fold(0.0, f64::max);
    let smallest = pivots.iter().copied().fold(f64::INFINITY, f64::min);
    if smallest.is_nan() || smallest <= largest * P::EPSILON * n as f64 {
        return Err(Error::SingularIterationMatrix {
            c,
            block,
            reason: format!(
                "its smallest LU pivot is {smallest:e} against a largest of {largest:e}"
            ),
        });
    }
    Ok(lu)
}

impl<P: Precision> IterationMatrix<P> {
    /// Factorise `I − c·J` (`c = γ·dt`); a singular or non-finite matrix is
    /// [`Error::SingularIterationMatrix`] (a smaller step usually cures it).
    pub fn new(jac: &Jacobian<P>, c: f64) -> Result<Self> {
        let factors = match jac {
            Jacobian::Dense(j) => Factors::Dense(factorise(j, c, None)?),
            Jacobian::Blocks(blocks) => Factors::Blocks(
                blocks
                    .iter()
                    .enumerate()
                    .map(|(r, j)| factorise(j, c, Some(r)))
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(Self { factors, c })
    }

    /// Bytes the factors hold.
    pub fn held_bytes(&self) -> usize {
        let entries = match &self.factors {
            Factors::Dense(lu) => lu.l().len(),
            Factors::Blocks(lus) => lus.iter().map(|lu| lu.l().len()).sum(),
        };
        entries * std::mem::size_of::<P>()
    }

    /// `x` with `M x = rhs` (`rhs` state-shaped).
    pub fn solve(&self, rhs: &DMatrix<P>) -> Result<DMatrix<P>> {
        self.apply(rhs, false)
    }

    /// `x` with `Mᵀ x = rhs`: the transposed solve of a stage's implicit-function-theorem VJP.
    pub fn solve_transpose(&self, rhs: &DMatrix<P>) -> Result<DMatrix<P>> {
        self.apply(rhs, true)
    }

    fn apply(&self, rhs: &DMatrix<P>, transpose: bool) -> Result<DMatrix<P>> {
        self.per_factor(rhs, |lu, v| {
            if transpose {
                lu_solve_transpose(lu, v)
            } else {
                lu.solve(&v)
            }
        })
    }

    /// [`IterationMatrix::solve`] (or the transposed solve) for a right-hand side of dual
    /// numbers over `P`: the real factors applied in `T`'s arithmetic, so each part of the
    /// dual numbers is solved with the same `M` (forward-mode derivatives of a stage).
    pub(crate) fn solve_lifted<T>(&self, rhs: &DMatrix<T>, transpose: bool) -> Result<DMatrix<T>>
    where
        T: ad_core::Scalar<Primitive = P>,
    {
        let lift = |m: DMatrix<P>| m.map(|x| T::constant(x.as_f64()));
        self.per_factor(rhs, |lu, mut v| {
            let (l, u) = (lift(lu.l()), lift(lu.u()));
            if transpose {
                let mut y = l.tr_solve_lower_triangular(&u.tr_solve_upper_triangular(&v)?)?;
                lu.p().inv_permute_rows(&mut y);
                Some(y)
            } else {
                lu.p().permute_rows(&mut v);
                u.solve_upper_triangular(&l.solve_lower_triangular(&v)?)
            }
        })
    }

    /// `solve(factor, column)` for the whole state (dense: the state flattened column-major
    /// as one column) or for each row with its block's factor.
    fn per_factor<T: ad_core::nalgebra::Scalar>(
        &self,
        rhs: &DMatrix<T>,
        solve: impl Fn(&LU<P, Dyn, Dyn>, DMatrix<T>) -> Option<DMatrix<T>>,
    ) -> Result<DMatrix<T>> {
        let (b, d) = rhs.shape();
        let solve = |lu: &LU<P, Dyn, Dyn>, v: DMatrix<T>| {
            solve(lu, v).ok_or_else(|| Error::SingularIterationMatrix {
                c: self.c,
                block: None,
                reason: "a triangular solve met a zero pivot".into(),
            })
        };
        match &self.factors {
            Factors::Dense(lu) => {
                if lu.l().nrows() != b * d {
                    return Err(shape_error(lu.l().nrows(), (b, d)));
                }
                let v = DMatrix::from_column_slice(b * d, 1, rhs.as_slice());
                let x = solve(lu, v)?;
                Ok(DMatrix::from_column_slice(b, d, x.as_slice()))
            }
            Factors::Blocks(lus) => {
                if lus.len() != b || lus.iter().any(|lu| lu.l().nrows() != d) {
                    return Err(shape_error(lus.len(), (b, d)));
                }
                let mut out = rhs.clone();
                for (r, lu) in lus.iter().enumerate() {
                    let x = solve(lu, DMatrix::from_fn(d, 1, |i, _| rhs[(r, i)].clone()))?;
                    for i in 0..d {
                        out[(r, i)] = x[(i, 0)].clone();
                    }
                }
                Ok(out)
            }
        }
    }
}

fn shape_error(size: usize, got: (usize, usize)) -> Error {
    Error::Shape {
        what: format!(
            "the right-hand side of an iteration-matrix solve (factorised for size {size})"
        ),
        expected: (size, 1),
        got,
    }
}

/// `x` with `Aᵀ x = v` from `P A = L U`: `Aᵀ = Uᵀ Lᵀ P`, so `Uᵀ w = v`, `Lᵀ y = w`,
/// `x = Pᵀ y`.
fn lu_solve_transpose<P: Precision>(lu: &LU<P, Dyn, Dyn>, v: DMatrix<P>) -> Option<DMatrix<P>> {
    let w = lu.u().tr_solve_upper_triangular(&v)?;
    let mut y = lu.l().tr_solve_lower_triangular(&w)?;
    lu.p().inv_permute_rows(&mut y);
    Some(y)
}

/// When the simplified Newton iteration stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NewtonSettings {
    /// Relative tolerance of the scaled increment norm (the step's `rtol`).
    pub rtol: f64,
    /// Absolute tolerance (the step's `atol`).
    pub atol: f64,
    /// Stop when the predicted remaining error `θ/(1 − θ)·‖Δ‖` is below this fraction of the
    /// tolerance (Hairer's κ, default 0.03: the iteration error stays far below the step's).
    pub kappa: f64,
    /// Most iterations before giving up (default 10).
    pub max_iterations: usize,
    /// The contraction rate above which the iteration is declared diverged (default 2, as
    /// Diffrax's VeryChord). A step that cannot be retried smaller sets it infinite and
    /// relies on `max_iterations`.
    pub diverged_above: f64,
    /// Equal column blocks of the state whose scaled RMS norms are taken apart, the largest
    /// deciding (default 1: one norm). Tangent-aware planning stacks `[y | u_1 | …]`: its
    /// `y` must converge as if alone, so that a replay of the planned step converges too.
    pub blocks: usize,
    /// Fewest iterations before the test may pass (default 1). With a matrix far from the
    /// current Jacobian (one reused from an earlier step) a small first increment does not
    /// mean a small error: 2 makes the test use an observed rate.
    pub min_iterations: usize,
}

impl Default for NewtonSettings {
    fn default() -> Self {
        Self {
            rtol: 1e-7,
            atol: 1e-9,
            kappa: 0.03,
            max_iterations: 10,
            diverged_above: 2.0,
            blocks: 1,
            min_iterations: 1,
        }
    }
}

/// How a Newton iteration ended. Divergence is an outcome, not an error: the caller rejects
/// the step and retries a smaller one.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<P: Precision> {
    /// Converged to within `kappa × tolerance`.
    Converged {
        /// The solution.
        z: DMatrix<P>,
        /// Iterations taken.
        iterations: usize,
    },
    /// The increments grew (contraction rate ≥ 1) or would not shrink enough in the
    /// iterations left.
    Diverged {
        /// The observed contraction rate.
        rate: f64,
        /// Iterations taken.
        iterations: usize,
    },
    /// `max_iterations` ran out before the test passed.
    NotConverged {
        /// The last scaled increment norm.
        increment: f64,
    },
}

/// Solve `residual(z) = 0` by simplified Newton from `start`: `z ← z + Δ` with
/// `M Δ = −residual(z)`, `M` fixed. The increments' RMS norm is scaled by
/// `atol + rtol·|z|`; the iteration stops when `θ/(1 − θ)·‖Δ‖ ≤ κ` with `θ` the observed
/// rate (the first iteration, with no rate yet, needs `‖Δ‖ ≤ κ`). A NaN residual is a
/// divergence.
pub fn newton<P: Precision>(
    matrix: &IterationMatrix<P>,
    start: &DMatrix<P>,
    settings: &NewtonSettings,
    mut residual: impl FnMut(&DMatrix<P>) -> Result<DMatrix<P>>,
) -> Result<Outcome<P>> {
    let mut z = start.clone();
    let mut previous: Option<f64> = None;
    for iteration in 1..=settings.max_iterations {
        let r = residual(&z)?;
        if !all_finite(&r) {
            return Ok(Outcome::Diverged {
                rate: f64::INFINITY,
                iterations: iteration,
            });
        }
        let delta = matrix.solve(&(-r))?;
        z += &delta;
        let norm = scaled_rms(&delta, &z, settings);
        if !norm.is_finite() {
            return Ok(Outcome::Diverged {
                rate: f64::INFINITY,
                iterations: iteration,
            });
        }
        // η·‖Δ‖ bounds the distance to the solution: η = θ/(1 − θ) once a rate θ is seen,
        // 1 before (a conservative first test).
        let eta = match previous {
            Some(prev) if prev > 0.0 => {
                let rate = norm / prev;
                if rate > settings.diverged_above {
                    return Ok(Outcome::Diverged {
                        rate,
                        iterations: iteration,
                    });
                }
                if rate >= 1.0 {
                    previous = Some(norm);
                    continue;
                }
                rate / (1.0 - rate)
            }
            Some(_) => 0.0,
            None => 1.0,
        };
        if iteration >= settings.min_iterations && eta * norm <= settings.kappa {
            return Ok(Outcome::Converged {
                z,
                iterations: iteration,
            });
        }
        previous = Some(norm);
    }
    Ok(Outcome::NotConverged {
        increment: previous.unwrap_or(f64::NAN),
    })
}

/// RMS of `delta / (atol + rtol·|z|)`, the largest over `s.blocks` equal column blocks.
fn scaled_rms<P: Precision>(delta: &DMatrix<P>, z: &DMatrix<P>, s: &NewtonSettings) -> f64 {
    let blocks = s.blocks.max(1);
    let cols = delta.ncols() / blocks;
    if blocks > 1 && cols * blocks == delta.ncols() && cols > 0 {
        return (0..blocks)
            .map(|b| {
                let d = delta.columns(b * cols, cols).into_owned();
                let zb = z.columns(b * cols, cols).into_owned();
                scaled_rms(&d, &zb, &NewtonSettings { blocks: 1, ..*s })
            })
            .fold(0.0, f64::max);
    }
    let n = delta.len().max(1) as f64;
    let sum: f64 = delta
        .iter()
        .zip(z.iter())
        .map(|(d, z)| {
            let e = d.as_f64() / (s.atol + s.rtol * z.as_f64().abs());
            e * e
        })
        .sum();
    (sum / n).sqrt()
}
