//! Matrix products and the transpose. `f64` and `f32` products run through `matrixmultiply`'s
//! blocked kernels (tiny ones through the direct loops of `small_product`); transposed
//! operands are passed as strided views, never copied.

use nalgebra::DMatrix;
use num_dual::Dual;

use super::{checked_len, fast, small_product, threads, Grads, Op};
use crate::error::{Error, Result};
use crate::scalar::{Precision, Scalar};
use crate::tape::Var;

/// `op(a) · op(b)`, where `op` transposes when asked.
///
/// For `f64` and `f32` this calls the blocked `dgemm`/`sgemm` kernel (the one nalgebra uses)
/// with the operands' strides, so a transposed operand is never copied; `Dual64` and `Dual32`
/// split into real products of their parts. Other scalars (hyper-duals, dual vectors) take
/// nalgebra's generic product on explicit transposes: nalgebra's generic path mishandles
/// strided views.
pub(crate) fn gemm<T: Scalar>(a: &DMatrix<T>, ta: bool, b: &DMatrix<T>, tb: bool) -> DMatrix<T> {
    if let Some(c) = real_gemm::<T, f64>(a, ta, b, tb)
        .or_else(|| real_gemm::<T, f32>(a, ta, b, tb))
        .or_else(|| dual_gemm::<T, f64>(a, ta, b, tb))
        .or_else(|| dual_gemm::<T, f32>(a, ta, b, tb))
    {
        return c;
    }
    match (ta, tb) {
        (false, false) => a * b,
        (true, false) => a.transpose() * b,
        (false, true) => a * b.transpose(),
        (true, true) => a.transpose() * b.transpose(),
    }
}

/// The blocked product when `T` is the real type `F`.
fn real_gemm<T: Scalar, F: Kernel>(
    a: &DMatrix<T>,
    ta: bool,
    b: &DMatrix<T>,
    tb: bool,
) -> Option<DMatrix<T>> {
    fast::from_real(blocked(
        fast::as_real::<T, F>(a)?,
        ta,
        fast::as_real::<T, F>(b)?,
        tb,
    ))
}

/// `op(a) · op(b)` on `Dual<F>` (`Dual64`, `Dual32`) as real products of the parts:
/// (A + εA')(B + εB') = AB + ε(A'B + AB'). Three blocked products (two when an operand has
/// no ε part, as constants and untangented weights do) instead of nalgebra's generic dual
/// loop, which is several times slower per entry; the real part is then bitwise the real
/// product.
fn dual_gemm<T: Scalar, F: Kernel>(
    a: &DMatrix<T>,
    ta: bool,
    b: &DMatrix<T>,
    tb: bool,
) -> Option<DMatrix<T>> {
    let (a, b) = (
        fast::as_real::<T, Dual<F>>(a)?,
        fast::as_real::<T, Dual<F>>(b)?,
    );
    let parts = |m: &DMatrix<Dual<F>>| {
        let re = m.map(|x| x.re);
        let eps = m.map(|x| x.eps);
        let tangent = eps.iter().any(|&e| e != F::zero());
        (re, tangent.then_some(eps))
    };
    let ((a_re, a_eps), (b_re, b_eps)) = (parts(a), parts(b));
    let re = blocked(&a_re, ta, &b_re, tb);
    let eps = match (&a_eps, &b_eps) {
        (None, None) => None,
        (Some(a_eps), None) => Some(blocked(a_eps, ta, &b_re, tb)),
        (None, Some(b_eps)) => Some(blocked(&a_re, ta, b_eps, tb)),
        (Some(a_eps), Some(b_eps)) => {
            Some(blocked(a_eps, ta, &b_re, tb) + blocked(&a_re, ta, b_eps, tb))
        }
    };
    fast::from_real(match eps {
        Some(eps) => re.zip_map(&eps, Dual::new),
        None => re.map(Dual::from_re),
    })
}

/// A real type with a blocked `matrixmultiply` kernel.
pub(crate) trait Kernel: Precision + small_product::Lane {
    /// `C = A·B` (β = 0) with the given strides.
    ///
    /// # Safety
    /// As `matrixmultiply::dgemm`: the pointers cover m×k, k×n and m×n matrices with these
    /// strides, and `c` is not aliased.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        a_strides: (isize, isize),
        b: *const Self,
        b_strides: (isize, isize),
        c: *mut Self,
        c_col_stride: isize,
    );
}

impl Kernel for f64 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f64,
        (rsa, csa): (isize, isize),
        b: *const f64,
        (rsb, csb): (isize, isize),
        c: *mut f64,
        csc: isize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, 1, csc) }
    }
}

impl Kernel for f32 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        (rsa, csa): (isize, isize),
        b: *const f32,
        (rsb, csb): (isize, isize),
        c: *mut f32,
        csc: isize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, 1, csc) }
    }
}

fn blocked<F: Kernel>(a: &DMatrix<F>, ta: bool, b: &DMatrix<F>, tb: bool) -> DMatrix<F> {
    // Column-major r×c: element (i, j) at i + j·r, so strides are (1, r); transposed, (r, 1).
    let strides = |m: &DMatrix<F>, t: bool| {
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
        return DMatrix::<F>::zeros(m, n);
    }
    if small_product::is_direct(m, k, n, ta, tb) {
        let (a, b) = (
            small_product::Operand::new(a.as_slice(), a.nrows(), ta),
            small_product::Operand::new(b.as_slice(), b.nrows(), tb),
        );
        return fast::filled(m, n, |c| small_product::product(a, b, (m, k, n), c));
    }
    let (sa, sb) = (strides(a, ta), strides(b, tb));
    // Cut C into bands along its longer side (see `threads`); band 0 runs inline.
    let along_columns = n >= m;
    let extent = if along_columns { n } else { m };
    let count = threads::bands(m, n, k, extent);
    let band = extent.div_ceil(count).next_multiple_of(8);
    let (a_ptr, b_ptr) = (Shared(a.as_ptr()), Shared(b.as_ptr()));
    // With β = 0 the kernel writes every entry of C without reading it, so C needs no
    // zero-fill: it is handed the uninitialised capacity of a fresh buffer.
    fast::filled(m, n, |c| {
        let c_ptr = Shared(c.as_mut_ptr().cast::<F>().cast_const());
        threads::run_bands(count, &|i| {
            let start = i * band;
            if start >= extent {
                return;
            }
            let len = band.min(extent - start);
            // SAFETY: the pointers cover m×k, k×n and m×n column-major buffers with the
            // strides given, as the shapes above guarantee; the bands are disjoint column
            // (or row) ranges of the fresh m·n buffer `c`, so no two write the same entry,
            // and the kernel with β = 0 initialises every entry of its band. The offsets stay
            // inside the operands: column `start` of op(B) (row `start` of op(A)) exists.
            unsafe {
                let (a, b, c) = (a_ptr.get(), b_ptr.get(), c_ptr.get().cast_mut());
                if along_columns {
                    let b = b.offset(start as isize * sb.1);
                    F::gemm(m, k, len, a, sa, b, sb, c.add(start * m), m as isize);
                } else {
                    let a = a.offset(start as isize * sa.0);
                    F::gemm(len, k, n, a, sa, b, sb, c.add(start), m as isize);
                }
            }
        });
    })
}

/// A pointer shared with the product's bands, which read (A, B) or write disjoint parts (C).
#[derive(Clone, Copy)]
struct Shared<F>(*const F);

impl<F> Shared<F> {
    /// The pointer (a method, so closures capture the whole `Shared`, not its field).
    fn get(self) -> *const F {
        self.0
    }
}

// SAFETY: the bands only read A and B, and write disjoint entries of C (see `blocked`).
unsafe impl<F> Send for Shared<F> {}
// SAFETY: as above.
unsafe impl<F> Sync for Shared<F> {}

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
