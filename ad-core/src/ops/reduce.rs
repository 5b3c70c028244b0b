//! Reductions (sums, mean) and the mean-squared-error loss.

use std::any::Any;

use nalgebra::DMatrix;
use num_dual::{Dual32, Dual64};

use super::{checked_len, fast, same_shape, Grads, Op};
use crate::error::{Error, Result};
use crate::scalar::Scalar;
use crate::tape::Var;

/// Reduction kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reduce {
    /// All entries → 1×1.
    Sum,
    /// Add the rows together: r×c → 1×c.
    SumRows,
    /// Add the columns together: r×c → r×1.
    SumCols,
    /// Mean of all entries → 1×1.
    Mean,
}

impl Reduce {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reduce::Sum => "sum",
            Reduce::SumRows => "sum_rows",
            Reduce::SumCols => "sum_cols",
            Reduce::Mean => "mean",
        }
    }

    fn forward<T: Scalar>(self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        Ok(match self {
            Reduce::Sum => DMatrix::from_element(1, 1, total(x)),
            Reduce::SumRows => {
                checked_len::<T>("sum_rows", 1, x.ncols())?;
                sum_rows(x)
            }
            Reduce::SumCols => {
                checked_len::<T>("sum_cols", x.nrows(), 1)?;
                sum_cols(x)
            }
            Reduce::Mean => {
                not_empty("mean", x)?;
                DMatrix::from_element(1, 1, total(x) / T::constant(x.len() as f64))
            }
        })
    }

    /// Every input entry receives the cotangent of the output entry it was summed into.
    pub(crate) fn vjp<T: Scalar>(self, (r, c): (usize, usize), g: DMatrix<T>) -> DMatrix<T> {
        match self {
            Reduce::Sum => DMatrix::from_element(r, c, g[(0, 0)]),
            Reduce::Mean => {
                DMatrix::from_element(r, c, g[(0, 0)] / T::constant((r * c).max(1) as f64))
            }
            Reduce::SumRows => DMatrix::from_fn(r, c, |_, j| g[(0, j)]),
            Reduce::SumCols => DMatrix::from_fn(r, c, |i, _| g[(i, 0)]),
        }
    }
}

/// Error unless `x` has an entry: a mean of nothing is undefined (not 0).
fn not_empty<T: Scalar>(op: &'static str, x: &DMatrix<T>) -> Result<()> {
    if x.is_empty() {
        Err(Error::EmptyInput {
            op,
            shape: x.shape(),
        })
    } else {
        Ok(())
    }
}

/// Every entry added together. `f32` (and `Dual32`) sums accumulate in `f64` and round once: a sequential
/// `f32` sum of n terms can be off by n·2⁻²⁴ of their magnitude (2e-3 at n = 32768), where
/// this stays within an ulp or two; other scalars add in their own arithmetic, in order.
fn total<T: Scalar>(x: &DMatrix<T>) -> T {
    if let Some(x) = fast::as_real::<T, f32>(x) {
        return T::constant(x.iter().map(|&v| f64::from(v)).sum());
    }
    if let Some(x) = fast::as_real::<T, Dual32>(x) {
        let wide: Dual64 = x.iter().map(|v| widen(*v)).sum();
        let mut narrow = Some(narrow(wide));
        if let Some(v) = (&mut narrow as &mut dyn Any).downcast_mut::<Option<T>>() {
            return v.take().unwrap_or_else(T::zero);
        }
    }
    x.sum()
}

/// A `Dual32` as a `Dual64` (exact).
fn widen(v: Dual32) -> Dual64 {
    Dual64::new(f64::from(v.re), f64::from(v.eps))
}

/// A `Dual64` rounded to a `Dual32`.
fn narrow(v: Dual64) -> Dual32 {
    Dual32::new(v.re as f32, v.eps as f32)
}

/// `x` computed on `f64` (for `f32`) or `Dual64` (for `Dual32`) by `wide`, rounded back;
/// `None` for other scalars.
fn in_wide<T: Scalar>(
    x: &DMatrix<T>,
    wide_f64: impl Fn(&DMatrix<f32>) -> DMatrix<f64>,
    wide_dual: impl Fn(&DMatrix<Dual64>) -> DMatrix<Dual64>,
) -> Option<DMatrix<T>> {
    if let Some(x) = fast::as_real::<T, f32>(x) {
        return fast::from_real(wide_f64(x).map(|v| v as f32));
    }
    let x = fast::as_real::<T, Dual32>(x)?;
    fast::from_real(wide_dual(&x.map(widen)).map(narrow))
}

/// The rows of an `f32` matrix added together in `f64` (1×c), each column top to bottom.
fn sum_rows_f32_in_f64(x: &DMatrix<f32>) -> DMatrix<f64> {
    let r = x.nrows();
    if r == 0 {
        return DMatrix::zeros(1, x.ncols());
    }
    let sums = x
        .as_slice()
        .chunks_exact(r)
        .map(|col| col.iter().fold(0.0f64, |acc, &v| acc + f64::from(v)));
    DMatrix::from_iterator(1, x.ncols(), sums)
}

/// The columns of an `f32` matrix added together in `f64` (r×1), left to right.
fn sum_cols_f32_in_f64(x: &DMatrix<f32>) -> DMatrix<f64> {
    let mut s = DMatrix::<f64>::zeros(x.nrows(), 1);
    for col in x.as_slice().chunks_exact(x.nrows().max(1)) {
        for (s, &v) in s.iter_mut().zip(col) {
            *s += f64::from(v);
        }
    }
    s
}

/// The rows added together (1×c).
///
/// Each column is summed top to bottom from zero (as `column.sum()` does), four columns at
/// a time so their dependency chains interleave. `f32` columns accumulate in `f64` and round
/// once (`Dual32` in `Dual64`), as [`total`] does.
pub(crate) fn sum_rows<T: Scalar>(x: &DMatrix<T>) -> DMatrix<T> {
    in_wide(x, sum_rows_f32_in_f64, sum_rows_in_order).unwrap_or_else(|| sum_rows_in_order(x))
}

fn sum_rows_in_order<T: Scalar>(x: &DMatrix<T>) -> DMatrix<T> {
    let (r, c) = x.shape();
    if r == 0 {
        return DMatrix::zeros(1, c);
    }
    let mut sums = Vec::with_capacity(c);
    let groups = x.as_slice().chunks_exact(4 * r);
    let rest = groups.remainder();
    for group in groups {
        let (c0, tail) = group.split_at(r);
        let (c1, tail) = tail.split_at(r);
        let (c2, c3) = tail.split_at(r);
        let mut s = [T::zero(); 4];
        for i in 0..r {
            s[0] += c0[i];
            s[1] += c1[i];
            s[2] += c2[i];
            s[3] += c3[i];
        }
        sums.extend_from_slice(&s);
    }
    for col in rest.chunks_exact(r) {
        sums.push(col.iter().fold(T::zero(), |acc, &v| acc + v));
    }
    DMatrix::from_vec(1, c, sums)
}

/// The columns added together (r×1); `f32` (`Dual32`) rows accumulate in `f64` (`Dual64`)
/// and round once.
pub(crate) fn sum_cols<T: Scalar>(x: &DMatrix<T>) -> DMatrix<T> {
    in_wide(x, sum_cols_f32_in_f64, sum_cols_in_order).unwrap_or_else(|| sum_cols_in_order(x))
}

fn sum_cols_in_order<T: Scalar>(x: &DMatrix<T>) -> DMatrix<T> {
    let mut s = DMatrix::zeros(x.nrows(), 1);
    for c in x.column_iter() {
        s += c;
    }
    s
}

impl<'t, T: Scalar> Var<'t, T> {
    fn reduce(self, op: Reduce) -> Var<'t, T> {
        self.or_faulty(self.tape.apply(op.name(), &[self], |x| {
            Ok((op.forward(x[0])?, Op::Reduce(op)))
        }))
    }

    /// Sum of all entries (1×1).
    pub fn sum(self) -> Var<'t, T> {
        self.reduce(Reduce::Sum)
    }

    /// The rows added together: r×c → 1×c (a sum over the batch).
    pub fn sum_rows(self) -> Var<'t, T> {
        self.reduce(Reduce::SumRows)
    }

    /// The columns added together: r×c → r×1 (a sum over features).
    pub fn sum_cols(self) -> Var<'t, T> {
        self.reduce(Reduce::SumCols)
    }

    /// Mean of all entries (1×1). Of an empty input it is undefined: the result then carries
    /// [`Error::EmptyInput`], which its first fallible use reports.
    pub fn mean(self) -> Var<'t, T> {
        self.reduce(Reduce::Mean)
    }

    /// Mean squared error `mean((self − target)²)` (1×1); gradients flow to both sides.
    /// Empty operands are [`Error::EmptyInput`].
    pub fn mse(self, target: Var<'t, T>) -> Result<Var<'t, T>> {
        self.tape.apply("mse", &[self, target], |x| {
            same_shape("mse", x[0].shape(), x[1].shape())?;
            not_empty("mse", x[0])?;
            let n = T::constant(x[0].len() as f64);
            let sq: T = x[0]
                .iter()
                .zip(x[1].iter())
                .map(|(&p, &t)| (p - t) * (p - t))
                .sum();
            Ok((DMatrix::from_element(1, 1, sq / n), Op::Mse))
        })
    }
}

/// L = Σ (p − t)² / n:  p̄ = 2 ḡ (p − t) / n,  t̄ = −p̄.
pub(crate) fn mse_vjp<T: Scalar>(
    p: &DMatrix<T>,
    t: &DMatrix<T>,
    g: &DMatrix<T>,
    wants: &[bool],
) -> Grads<T> {
    let k = g[(0, 0)] * T::constant(2.0) / T::constant(p.len().max(1) as f64);
    let gp = (p - t) * k;
    let gt = wants[1].then(|| -&gp);
    let mut out = Grads::new();
    out.push(wants[0].then_some(gp));
    out.push(gt);
    out
}
