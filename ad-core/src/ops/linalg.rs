//! Matrix products and the transpose. `f64` products run through `matrixmultiply`'s blocked
//! kernel (tiny ones through the direct loops of `small_product`); transposed operands are
//! passed as strided views, never copied.

use std::any::Any;

use nalgebra::DMatrix;
use num_dual::Dual64;

use super::{checked_len, fast, small_product, Grads, Op};
use crate::error::{Error, Result};
use crate::scalar::Scalar;
use crate::tape::Var;

/// `op(a) · op(b)`, where `op` transposes when asked.
///
/// For `f64` this calls the blocked `dgemm` kernel (the one nalgebra uses) with the operands'
/// strides, so a transposed operand is never copied; `Dual64` splits into `f64` products of
/// its parts. Other scalars (hyper-duals, dual vectors) take nalgebra's generic product on
/// explicit transposes: nalgebra's generic path mishandles strided views.
pub(crate) fn gemm<T: Scalar>(a: &DMatrix<T>, ta: bool, b: &DMatrix<T>, tb: bool) -> DMatrix<T> {
    if let (Some(a64), Some(b64)) = (
        (a as &dyn Any).downcast_ref::<DMatrix<f64>>(),
        (b as &dyn Any).downcast_ref::<DMatrix<f64>>(),
    ) {
        let c = dgemm(a64, ta, b64, tb);
        let mut c = Some(c);
        if let Some(c) = (&mut c as &mut dyn Any).downcast_mut::<Option<DMatrix<T>>>() {
            return c.take().unwrap_or_else(|| DMatrix::zeros(0, 0));
        }
    }
    if let (Some(a), Some(b)) = (
        (a as &dyn Any).downcast_ref::<DMatrix<Dual64>>(),
        (b as &dyn Any).downcast_ref::<DMatrix<Dual64>>(),
    ) {
        let c = dual_gemm(a, ta, b, tb);
        let mut c = Some(c);
        if let Some(c) = (&mut c as &mut dyn Any).downcast_mut::<Option<DMatrix<T>>>() {
            return c.take().unwrap_or_else(|| DMatrix::zeros(0, 0));
        }
    }
    match (ta, tb) {
        (false, false) => a * b,
        (true, false) => a.transpose() * b,
        (false, true) => a * b.transpose(),
        (true, true) => a.transpose() * b.transpose(),
    }
}

/// `op(a) · op(b)` on `Dual64` as `f64` products of the parts: (A + εA')(B + εB') =
/// AB + ε(A'B + AB'). Three blocked products (two when an operand has no ε part, as
/// constants and untangented weights do) instead of nalgebra's generic dual loop, which is
/// several times slower per entry; the real part is then bitwise the `f64` product.
fn dual_gemm(a: &DMatrix<Dual64>, ta: bool, b: &DMatrix<Dual64>, tb: bool) -> DMatrix<Dual64> {
    let parts = |m: &DMatrix<Dual64>| {
        let re = m.map(|x| x.re);
        let eps = m.map(|x| x.eps);
        let tangent = eps.iter().any(|&e| e != 0.0);
        (re, tangent.then_some(eps))
    };
    let ((a_re, a_eps), (b_re, b_eps)) = (parts(a), parts(b));
    let re = dgemm(&a_re, ta, &b_re, tb);
    let eps = match (&a_eps, &b_eps) {
        (None, None) => None,
        (Some(a_eps), None) => Some(dgemm(a_eps, ta, &b_re, tb)),
        (None, Some(b_eps)) => Some(dgemm(&a_re, ta, b_eps, tb)),
        (Some(a_eps), Some(b_eps)) => {
            Some(dgemm(a_eps, ta, &b_re, tb) + dgemm(&a_re, ta, b_eps, tb))
        }
    };
    match eps {
        Some(eps) => re.zip_map(&eps, Dual64::new),
        None => re.map(Dual64::from_re),
    }
}

fn dgemm(a: &DMatrix<f64>, ta: bool, b: &DMatrix<f64>, tb: bool) -> DMatrix<f64> {
    // Column-major r×c: element (i, j) at i + j·r, so strides are (1, r); transposed, (r, 1).
    let strides = |m: &DMatrix<f64>, t: bool| {
        if t {
            (m.nrows() as isize, 1)
        } else {
            (1, m.nrows() as isize)
        }
    };
    let (m, k) = if ta {
        (a.ncols(), a.nrows())
    } else {
        a.shape()
    };
    let n = if tb { b.nrows() } else { b.ncols() };
    if m == 0 || n == 0 || k == 0 {
        return DMatrix::<f64>::zeros(m, n);
    }
    if small_product::is_direct(m, k, n, ta, tb) {
        let (a, b) = (
            small_product::Operand::new(a.as_slice(), a.nrows(), ta),
            small_product::Operand::new(b.as_slice(), b.nrows(), tb),
        );
        return fast::filled(m, n, |c| small_product::product(a, b, (m, k, n), c));
    }
    let (rsa, csa) = strides(a, ta);
    let (rsb, csb) = strides(b, tb);
    // With β = 0 the kernel writes every entry of C without reading it, so C needs no
    // zero-fill: it is handed the uninitialised capacity of a fresh buffer.
    fast::filled(m, n, |c| {
        // SAFETY: the pointers cover m×k, k×n and m×n column-major buffers with the strides
        // given, as the shapes above guarantee; `c` is a fresh m·n buffer, not aliased, and
        // dgemm with β = 0 initialises all of it.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                0.0,
                c.as_mut_ptr().cast::<f64>(),
                1,
                m as isize,
            );
        }
    })
}

impl<'t, T: Scalar> Var<'t, T> {
    /// Matrix product `self · other` ((m×k)·(k×n) → m×n); an m×n of more than
    /// [`crate::MAX_ELEMENTS`] entries is [`Error::TooLarge`].
    pub fn matmul(self, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.tape.apply("matmul", &[self, other], |x| {
            if x[0].ncols() != x[1].nrows() {
                return Err(Error::ShapeMismatch {
                    op: "matmul",
                    left: x[0].shape(),
                    right: x[1].shape(),
                    expected: "the left operand's columns must equal the right operand's rows",
                });
            }
            checked_len::<T>("matmul", x[0].nrows(), x[1].ncols())?;
            Ok((gemm(x[0], false, x[1], false), Op::MatMul))
        })
    }

    /// Product with the transpose `self · otherᵀ` ((m×k)·(n×k)ᵀ → m×n), the form of a
    /// PyTorch-convention linear layer `x Wᵀ`; no transposed copy is made. An m×n of more
    /// than [`crate::MAX_ELEMENTS`] entries is [`Error::TooLarge`].
    pub fn matmul_t(self, other: Var<'t, T>) -> Result<Var<'t, T>> {
        self.tape.apply("matmul_t", &[self, other], |x| {
            if x[0].ncols() != x[1].ncols() {
                return Err(Error::ShapeMismatch {
                    op: "matmul_t",
                    left: x[0].shape(),
                    right: x[1].shape(),
                    expected: "both operands must have the same number of columns (self · otherᵀ)",
                });
            }
            checked_len::<T>("matmul_t", x[0].nrows(), x[1].nrows())?;
            Ok((gemm(x[0], false, x[1], true), Op::MatMulT))
        })
    }

    /// The transpose.
    pub fn transpose(self) -> Var<'t, T> {
        self.or_faulty(self.tape.apply("transpose", &[self], |x| {
            Ok((x[0].transpose(), Op::Transpose))
        }))
    }
}

/// C = A B:  Ā = C̄ Bᵀ,  B̄ = Aᵀ C̄.
pub(crate) fn matmul_vjp<T: Scalar>(
    a: &DMatrix<T>,
    b: &DMatrix<T>,
    g: &DMatrix<T>,
    wants: &[bool],
) -> Grads<T> {
    let mut out = Grads::new();
    out.push(wants[0].then(|| gemm(g, false, b, true)));
    out.push(wants[1].then(|| gemm(a, true, g, false)));
    out
}

/// C = A Bᵀ:  Ā = C̄ B,  B̄ = C̄ᵀ A.
pub(crate) fn matmul_t_vjp<T: Scalar>(
    a: &DMatrix<T>,
    b: &DMatrix<T>,
    g: &DMatrix<T>,
    wants: &[bool],
) -> Grads<T> {
    let mut out = Grads::new();
    out.push(wants[0].then(|| gemm(g, false, b, false)));
    out.push(wants[1].then(|| gemm(g, true, a, false)));
    out
}
