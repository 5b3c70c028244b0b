//! The affine map of a dense layer, `x Wᵀ + b`, as one node: one output tensor instead of
//! two (product, then bias), and no copy of the cotangent in backward.

use nalgebra::DMatrix;

use super::linalg::gemm;
use super::reduce::sum_rows;
use super::{checked_len, Grads, Op};
use crate::error::{Error, Result};
use crate::scalar::Scalar;
use crate::tape::Var;

impl<'t, T: Scalar> Var<'t, T> {
    /// `self · weightᵀ + bias` for `self` r×in, `weight` out×in (PyTorch's layout) and `bias`
    /// 1×out: a dense layer in one node. Equal to `self.matmul_t(weight)?.add_row(bias)?`
    /// (an r×out of more than [`crate::MAX_ELEMENTS`] entries is [`Error::TooLarge`]).
    pub fn linear(self, weight: Var<'t, T>, bias: Var<'t, T>) -> Result<Var<'t, T>> {
        self.tape.apply("linear", &[self, weight, bias], |v| {
            let (x, w, b) = (v[0], v[1], v[2]);
            if x.ncols() != w.ncols() {
                return Err(Error::ShapeMismatch {
                    op: "linear",
                    left: x.shape(),
                    right: w.shape(),
                    expected:
                        "the input's columns must equal the weight's columns (weight is out x in)",
                });
            }
            if b.shape() != (1, w.nrows()) {
                return Err(Error::ShapeMismatch {
                    op: "linear",
                    left: w.shape(),
                    right: b.shape(),
                    expected: "the bias must be 1 x out, out being the weight's rows",
                });
            }
            checked_len::<T>("linear", x.nrows(), w.nrows())?;
            let mut y = gemm(x, false, w, true);
            for (col, &bj) in y
                .as_mut_slice()
                .chunks_exact_mut(x.nrows().max(1))
                .zip(b.iter())
            {
                for v in col {
                    *v += bj;
                }
            }
            Ok((y, Op::Linear))
        })
    }
}

/// y = x Wᵀ + 1 bᵀ:  x̄ = ȳ W,  W̄ = ȳᵀ x,  b̄ = Σ_rows ȳ.
pub(crate) fn linear_vjp<T: Scalar>(
    x: &DMatrix<T>,
    w: &DMatrix<T>,
    g: &DMatrix<T>,
    wants: &[bool],
) -> Grads<T> {
    let mut out = Grads::new();
    out.push(wants[0].then(|| gemm(g, false, w, false)));
    out.push(wants[1].then(|| gemm(g, true, x, false)));
    out.push(wants[2].then(|| sum_rows(g)));
    out
}
