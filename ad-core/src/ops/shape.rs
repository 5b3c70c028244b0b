//! Ops that move entries around: bias (row-broadcast) add, broadcast, column concat and slice.

use nalgebra::DMatrix;
use smallvec::SmallVec;

use super::reduce::{sum_cols, sum_rows};
use super::{buffer, Grads, Op};
use crate::error::{Error, Result, Shape};
use crate::scalar::Scalar;
use crate::tape::{Tape, Var};

impl<'t, T: Scalar> Var<'t, T> {
    /// Add the 1×c row `bias` to every row of `self` (r×c): a layer's bias.
    pub fn add_row(self, bias: Var<'t, T>) -> Result<Var<'t, T>> {
        self.tape.apply("add_row", &[self, bias], |x| {
            let (x, b) = (x[0], x[1]);
            if b.nrows() != 1 || b.ncols() != x.ncols() {
                return Err(Error::ShapeMismatch {
                    op: "add_row",
                    left: x.shape(),
                    right: b.shape(),
                    expected: "the bias must be one row with as many columns as the left operand",
                });
            }
            // One pass over contiguous columns (column-major), writing the output directly.
            let r = x.nrows();
            let mut data = Vec::with_capacity(x.len());
            if r > 0 {
                for (col, &bj) in x.as_slice().chunks_exact(r).zip(b.iter()) {
                    data.extend(col.iter().map(|&v| v + bj));
                }
            }
            Ok((DMatrix::from_vec(r, x.ncols(), data), Op::AddRow))
        })
    }

    /// Repeat a 1×1, 1×c or r×1 value to `rows × cols`. A result of more than
    /// [`crate::MAX_ELEMENTS`] entries is [`Error::TooLarge`].
    pub fn broadcast(self, rows: usize, cols: usize) -> Result<Var<'t, T>> {
        self.tape.apply("broadcast", &[self], |x| {
            let (r, c) = x[0].shape();
            if (r != 1 && r != rows) || (c != 1 && c != cols) {
                return Err(Error::ShapeMismatch {
                    op: "broadcast",
                    left: (r, c),
                    right: (rows, cols),
                    expected: "each dimension must be 1 or already equal to the target",
                });
            }
            let x = x[0];
            let mut data = buffer("broadcast", rows, cols)?;
            // Column-major; `r` and `c` are 1 or the target, and nonzero whenever the result
            // has an entry to fill.
            if rows > 0 {
                for j in 0..cols {
                    data.extend((0..rows).map(|i| x[(i % r, j % c)]));
                }
            }
            Ok((DMatrix::from_vec(rows, cols, data), Op::Broadcast))
        })
    }

    /// Columns `start .. start + len`.
    pub fn slice_cols(self, start: usize, len: usize) -> Result<Var<'t, T>> {
        self.tape.apply("slice_cols", &[self], |x| {
            let x = x[0];
            if start.checked_add(len).is_none_or(|end| end > x.ncols()) {
                return Err(Error::InvalidArgument {
                    op: "slice_cols",
                    message: format!(
                        "columns {start}..{} are out of range for a {}x{} value",
                        start.saturating_add(len),
                        x.nrows(),
                        x.ncols()
                    ),
                });
            }
            Ok((x.columns(start, len).into_owned(), Op::SliceCols(start)))
        })
    }
}

impl<T: Scalar> Tape<T> {
    /// Place same-row-count variables side by side: `[x₁ | x₂ | …]`. A result of more than
    /// [`crate::MAX_ELEMENTS`] entries is [`Error::TooLarge`].
    pub fn concat_cols<'t>(&'t self, parts: &[Var<'t, T>]) -> Result<Var<'t, T>> {
        self.apply("concat_cols", parts, |x| {
            let (rows, cols) = joined_shape("concat_cols", x, Axis::Cols)?;
            let mut data = buffer("concat_cols", rows, cols)?;
            for p in x {
                // Column-major storage: concatenating along columns appends the buffers.
                data.extend_from_slice(p.as_slice());
            }
            Ok((DMatrix::from_vec(rows, cols, data), Op::Concat))
        })
    }

    /// Stack same-column-count variables on top of each other: `[x₁; x₂; …]`, e.g. a
    /// trajectory's states as one `(n·batch) × d` tensor. A result of more than
    /// [`crate::MAX_ELEMENTS`] entries is [`Error::TooLarge`].
    pub fn concat_rows<'t>(&'t self, parts: &[Var<'t, T>]) -> Result<Var<'t, T>> {
        self.apply("concat_rows", parts, |x| {
            let (rows, cols) = joined_shape("concat_rows", x, Axis::Rows)?;
            let mut data = buffer("concat_rows", rows, cols)?;
            // Column-major storage: each output column is the parts' columns in turn.
            for j in 0..cols {
                for p in x {
                    data.extend_from_slice(p.column(j).as_slice());
                }
            }
            Ok((DMatrix::from_vec(rows, cols, data), Op::ConcatRows))
        })
    }
}

/// The axis parts are joined along.
#[derive(Clone, Copy)]
pub(crate) enum Axis {
    Rows,
    Cols,
}

/// The shape of `parts` joined along `axis`: at least one part, all with the same extent
/// across it; the extent along it saturates (a saturated count is over the limit too).
fn joined_shape<T: Scalar>(op: &'static str, parts: &[&DMatrix<T>], axis: Axis) -> Result<Shape> {
    let Some(first) = parts.first() else {
        return Err(Error::InvalidArgument {
            op,
            message: "needs at least one part".into(),
        });
    };
    let (across, expected) = match axis {
        Axis::Rows => (
            first.ncols(),
            "every part must have the same number of columns",
        ),
        Axis::Cols => (
            first.nrows(),
            "every part must have the same number of rows",
        ),
    };
    let mut along: usize = 0;
    for p in parts {
        let (this_along, this_across) = match axis {
            Axis::Rows => (p.nrows(), p.ncols()),
            Axis::Cols => (p.ncols(), p.nrows()),
        };
        if this_across != across {
            return Err(Error::ShapeMismatch {
                op,
                left: first.shape(),
                right: p.shape(),
                expected,
            });
        }
        along = along.saturating_add(this_along);
    }
    Ok(match axis {
        Axis::Rows => (along, across),
        Axis::Cols => (across, along),
    })
}

/// y = x + 1 bᵀ:  x̄ = ȳ,  b̄ = Σ_rows ȳ.
pub(crate) fn add_row_vjp<T: Scalar>(g: DMatrix<T>, wants: &[bool]) -> Grads<T> {
    let gb = wants[1].then(|| sum_rows(&g));
    let mut out = Grads::new();
    out.push(wants[0].then_some(g));
    out.push(gb);
    out
}

/// Each input entry receives the sum of the cotangents of its copies.
pub(crate) fn broadcast_vjp<T: Scalar>((r, c): (usize, usize), g: DMatrix<T>) -> DMatrix<T> {
    let g = if r == 1 && g.nrows() != 1 {
        sum_rows(&g)
    } else {
        g
    };
    if c == 1 && g.ncols() != 1 {
        sum_cols(&g)
    } else {
        g
    }
}

/// Each part receives its own block of the cotangent: rows for `concat_rows`, columns for
/// `concat_cols`.
pub(crate) fn concat_vjp<T: Scalar>(
    axis: Axis,
    parts: &[&DMatrix<T>],
    g: &DMatrix<T>,
    wants: &[bool],
) -> Grads<T> {
    let mut start = 0;
    let mut out: SmallVec<_> = SmallVec::new();
    for (p, &w) in parts.iter().zip(wants) {
        let len = match axis {
            Axis::Rows => p.nrows(),
            Axis::Cols => p.ncols(),
        };
        out.push(w.then(|| match axis {
            Axis::Rows => g.rows(start, len).into_owned(),
            Axis::Cols => g.columns(start, len).into_owned(),
        }));
        start += len;
    }
    out
}

/// The slice's cotangent lands in its columns; the rest is zero.
pub(crate) fn slice_cols_vjp<T: Scalar>(
    (r, c): (usize, usize),
    start: usize,
    g: DMatrix<T>,
) -> DMatrix<T> {
    let mut x = DMatrix::zeros(r, c);
    x.columns_mut(start, g.ncols()).copy_from(&g);
    x
}
