//! The Jacobian `∂f/∂h` of a vector field at a point, by forward-mode sweeps on dual numbers:
//! one sweep per state entry in general, one per state *column* when the field declares that
//! its rows (batch samples) are independent ([`Dynamics::rows_independent`]), in which case
//! the Jacobian is block-diagonal over the batch and kept as one `dim × dim` block per row.
//!
//! ```
//! use ad_core::{nalgebra::DMatrix, Result as TapeResult, Scalar, Var};
//! use ode::jacobian::{jacobian, Jacobian};
//! use ode::Dynamics;
//!
//! /// h' = tanh(h Wᵀ), applied to every row alike.
//! #[derive(Clone)]
//! struct Layer;
//! impl<T: Scalar> Dynamics<T> for Layer {
//!     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
//!         Ok(h.matmul_t(p[0])?.tanh())
//!     }
//!     fn rows_independent(&self) -> bool {
//!         true
//!     }
//! }
//!
//! let w = DMatrix::from_row_slice(2, 2, &[0.5, -1.0, 2.0, 0.25]);
//! let h = DMatrix::from_row_slice(3, 2, &[0.1, 0.2, -0.3, 0.4, 0.5, -0.6]);
//! let (jac, stats) = jacobian::<f64, _>(&Layer, 0.0, &h, &[w.clone()])?;
//! // Three rows of two: two sweeps (one per column), not six, and three 2 × 2 blocks.
//! assert_eq!(stats.sweeps, 2 + 1); // + the one-row probe that checks the claim
//! let Jacobian::Blocks(blocks) = &jac else { unreachable!() };
//! // Row 0: ∂tanh(h W^T)_i / ∂h_j = (1 − tanh²) W_ij.
//! let z = (h.row(0) * w.transpose()).map(|x| x.tanh());
//! let expected = 1.0 - z[0] * z[0];
//! assert!((blocks[0][(0, 1)] - expected * w[(0, 1)]).abs() < 1e-15);
//! # Ok::<(), ode::Error>(())
//! ```

use ad_core::nalgebra::DMatrix;
use ad_core::{all_finite, Precision, Scalar, Tape, Var};

use crate::dynamics::Dynamics;
use crate::error::{Error, Result};
use crate::forward::check_field_output;
use crate::tangent_control::DualOf;

/// `∂f/∂h` at one point, over the state flattened column-major (entry `r + c·batch` of a
/// `batch × dim` state).
#[derive(Clone, Debug, PartialEq)]
pub enum Jacobian<P> {
    /// The whole `(batch·dim) × (batch·dim)` matrix.
    Dense(DMatrix<P>),
    /// One `dim × dim` block per row of the state (the field declared its rows independent):
    /// `blocks[r][(i, j)] = ∂f_{r,i}/∂h_{r,j}`; every other entry is zero.
    Blocks(Vec<DMatrix<P>>),
}

impl<P: Precision> Jacobian<P> {
    /// `−Jᵀ`: the Jacobian of the adjoint's `a ↦ −aᵀ ∂f/∂h` (with the same layout).
    pub(crate) fn negated_transpose(&self) -> Self {
        match self {
            Jacobian::Dense(m) => Jacobian::Dense(-m.transpose()),
            Jacobian::Blocks(blocks) => {
                Jacobian::Blocks(blocks.iter().map(|m| -m.transpose()).collect())
            }
        }
    }

    /// The full matrix (for checks and small states: a block-diagonal Jacobian of a large
    /// batch is mostly zeros).
    pub fn to_dense(&self) -> DMatrix<P> {
        match self {
            Jacobian::Dense(m) => m.clone(),
            Jacobian::Blocks(blocks) => {
                let b = blocks.len();
                let d = blocks.first().map_or(0, |m| m.nrows());
                let mut m = DMatrix::from_element(b * d, b * d, P::round_from(0.0));
                for (r, block) in blocks.iter().enumerate() {
                    for i in 0..d {
                        for j in 0..d {
                            // Entry (r, i) of the state is flat index r + i·b.
                            m[(r + i * b, r + j * b)] = block[(i, j)];
                        }
                    }
                }
                m
            }
        }
    }
}

/// What building a Jacobian cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JacobianStats {
    /// Evaluations of `f` on dual numbers.
    pub sweeps: usize,
}

/// `∂f/∂h` of `f` at `(t, h)` with parameter values `params`, in `T`'s precision, from
/// forward-mode sweeps on [`DualOf<T>`] numbers: `batch × dim` sweeps for a dense Jacobian,
/// `dim` (plus one probe) when `f` declares its rows independent. The probe seeds one entry
/// of one row and checks that no other row moves: a field that claims independent rows but
/// couples them is [`Error::RowsCoupled`], not a silently wrong Jacobian. A NaN or infinite
/// entry is [`Error::NonFinite`]; a dense Jacobian past [`ad_core::MAX_ELEMENTS`] entries is
/// [`ad_core::Error::TooLarge`] (declare independent rows, if they are).
pub fn jacobian<T: Scalar, F: Dynamics<DualOf<T>>>(
    f: &F,
    t: f64,
    h: &DMatrix<T::Primitive>,
    params: &[DMatrix<T::Primitive>],
) -> Result<(Jacobian<T::Primitive>, JacobianStats)> {
    let (b, d) = h.shape();
    if h.is_empty() {
        return Err(Error::EmptyState { rows: b, cols: d });
    }
    let tape = Tape::<DualOf<T>>::new();
    let _no_grad = tape.no_grad();
    let zero = T::Primitive::round_from(0.0);
    let one = T::Primitive::round_from(1.0);
    let lift = |m: &DMatrix<T::Primitive>| m.map(|x| T::Primitive::dual(x, zero));
    let params: Vec<Var<'_, DualOf<T>>> = params.iter().map(|p| tape.constant(lift(p))).collect();
    let time = tape.constant(DMatrix::from_element(
        1,
        1,
        T::Primitive::dual(T::Primitive::round_from(t), zero),
    ));
    let base = tape.mark();
    let mut stats = JacobianStats::default();
    // One sweep with a unit tangent wherever `seeded(r, c)`: the tangent of f.
    let sweep = |seeded: &dyn Fn(usize, usize) -> bool| -> Result<DMatrix<T::Primitive>> {
        stats.sweeps += 1;
        let y = DMatrix::from_fn(b, d, |r, c| {
            T::Primitive::dual(h[(r, c)], if seeded(r, c) { one } else { zero })
        });
        let out = f.eval(time, tape.constant(y), &params)?;
        check_field_output(out, (b, d), t)?;
        let tangent = out.with_value(|m| m.map(|x| T::Primitive::parts(x).1))?;
        tape.rewind(base)?;
        if !all_finite(&tangent) {
            return Err(Error::NonFinite {
                what: "Jacobian of f",
                t,
            });
        }
        Ok(tangent)
    };
    let jac = assemble((b, d), f.rows_independent(), Pass::Column, sweep)?;
    Ok((jac, stats))
}

/// `∂f/∂h` at `(t, h)` from one recording of `f` on a local tape and vector-Jacobian
/// products (the real parts, for a dual-number `T`): `dim` VJPs when `f` declares its rows
/// independent (cotangent `e_j` in every row at once gives row `j` of every block, plus one
/// probe VJP that checks the claim), else `batch × dim`. For the implicit stages of a solve,
/// whose strategies hold only `F: Dynamics<T>`. Returns the evaluations of `f` it made (one).
pub(crate) fn jacobian_by_vjps<T: Scalar, F: Dynamics<T>>(
    f: &F,
    t: f64,
    t_value: &DMatrix<T>,
    h: &DMatrix<T>,
    params: &[DMatrix<T>],
) -> Result<(Jacobian<T::Primitive>, usize)> {
    let (b, d) = h.shape();
    let local = Tape::<T>::new();
    let hv = local.var(h.clone());
    let tv = local.constant(t_value.clone());
    let pv: Vec<Var<'_, T>> = params.iter().map(|p| local.constant(p.clone())).collect();
    let out = f.eval(tv, hv, &pv)?;
    check_field_output(out, (b, d), t)?;
    let pull = |seeded: &dyn Fn(usize, usize) -> bool| -> Result<DMatrix<T::Primitive>> {
        let cotangent =
            DMatrix::from_fn(b, d, |r, c| if seeded(r, c) { T::one() } else { T::zero() });
        let g = local.vjp_wrt(&[(out, cotangent)], &[hv])?;
        let g = g
            .into_iter()
            .next()
            .unwrap_or_else(|| DMatrix::zeros(b, d))
            .map(|x| T::Primitive::round_from(x.primal()));
        if !all_finite(&g) {
            return Err(Error::NonFinite {
                what: "Jacobian of f",
                t,
            });
        }
        Ok(g)
    };
    Ok((assemble((b, d), f.rows_independent(), Pass::Row, pull)?, 1))
}

/// What one pass seeded with a unit tangent (or cotangent) on some entries gives: a column
/// of `J` (forward mode, `J e`) or a row (reverse mode, `eᵀ J`), as a state-shaped matrix.
#[derive(Clone, Copy)]
enum Pass {
    Column,
    Row,
}

/// The Jacobian of a `batch × dim` state from passes seeded where `seeded(r, c)`: `dim`
/// passes (plus one probe that refuses coupled rows) when the rows are independent, each
/// seeding one column in every row and giving one column (or row) of every block; else
/// `batch × dim` passes, refused past `MAX_ELEMENTS` before any of them.
fn assemble<P: Precision>(
    (b, d): (usize, usize),
    rows_independent: bool,
    kind: Pass,
    mut pass: impl FnMut(&dyn Fn(usize, usize) -> bool) -> Result<DMatrix<P>>,
) -> Result<Jacobian<P>> {
    let zero = P::round_from(0.0);
    if rows_independent {
        if b > 1 {
            // Entry (0, 0) alone: nothing in rows 1.. may respond.
            let probe = pass(&|r, c| r == 0 && c == 0)?;
            if let Some(row) = (1..b).find(|&r| (0..d).any(|c| probe[(r, c)] != zero)) {
                return Err(Error::RowsCoupled { row });
            }
        }
        let mut blocks = vec![DMatrix::from_element(d, d, zero); b];
        for k in 0..d {
            let g = pass(&|_, c| c == k)?;
            for (r, block) in blocks.iter_mut().enumerate() {
                for x in 0..d {
                    let at = match kind {
                        Pass::Column => (x, k),
                        Pass::Row => (k, x),
                    };
                    block[at] = g[(r, x)];
                }
            }
        }
        return Ok(Jacobian::Blocks(blocks));
    }
    let n = b * d;
    if n.checked_mul(n).is_none_or(|e| e > ad_core::MAX_ELEMENTS) {
        return Err(Error::Tape(ad_core::Error::TooLarge {
            op: "jacobian (dense: declare Dynamics::rows_independent if the rows are)",
            rows: n,
            cols: n,
            limit: ad_core::MAX_ELEMENTS,
        }));
    }
    let mut dense = DMatrix::from_element(n, n, zero);
    for c in 0..d {
        for r in 0..b {
            // Entry (r, c) of the state is flat index r + c·b.
            let g = pass(&|rr, cc| rr == r && cc == c)?;
            for (k, x) in g.iter().enumerate() {
                match kind {
                    Pass::Column => dense[(k, r + c * b)] = *x,
                    Pass::Row => dense[(r + c * b, k)] = *x,
                }
            }
        }
    }
    Ok(Jacobian::Dense(dense))
}
