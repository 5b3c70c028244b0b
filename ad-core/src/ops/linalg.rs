//! Matrix products and the transpose. `f64` and `f32` products run through a blocked kernel
//! chosen once per process for the CPU (`product_kernel`): `gemm`'s AVX-512 kernels on Intel
//! CPUs with AVX-512F, `matrixmultiply`'s elsewhere; tiny products through the direct loops
//! of `small_product`. Transposed operands are passed as strided views, never copied.
//!
//! `gemm` picks its blocking over k from the shape (`m`, `n` and `k`) and takes special paths
//! for thin shapes (dot-product kernels when m·n ≤ 256, matrix–vector kernels when m or n is
//! 1, k ≤ 2), so a band of a threaded product could sum in another order than the whole
//! product. It is therefore called on blocks of at most [`K_BLOCK`] of the sum over k, cut by
//! k alone and accumulated into C in order (so `gemm` never blocks k itself), and only on
//! shapes where every band takes its packed micro-kernel path: k ≥ 3 and bands all at least
//! 8 × 33 (bands are at least eight wide; the other side must be at least 33). It is also
//! used only on products large enough to be split (at least 2²¹ multiply-adds): `gemm` keeps
//! a packing buffer of about the L2 cache's size per thread from its first call, which a
//! small problem should not pay for. Other shapes keep `matrixmultiply`, whose blocking does
//! not depend on the band.

use nalgebra::DMatrix;
use num_dual::Dual;

use super::product_kernel::{product_kernel, ProductKernel};
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

/// The most of the sum over k one `gemm` call takes. `gemm` blocks k itself only above 512
/// (its block is at least 512, or all of k); the blocks here are cut by k alone.
const K_BLOCK: usize = 512;

/// Whether a product of this shape, cut into bands along `extent` (see `threads`), runs on
/// `gemm`: only large products, where every band, for every thread count, takes `gemm`'s
/// packed micro-kernel path (see the module's notes).
fn uses_gemm(m: usize, k: usize, n: usize, extent: usize) -> bool {
    product_kernel() == ProductKernel::GemmAvx512
        && k >= 3
        && threads::may_split(m, n, k, extent)
        && m.min(n) >= 33
}

/// `C = A·B` (β = 0) through a `gemm` kernel `call(k_block, a, b, accumulate)`, over blocks
/// of at most [`K_BLOCK`] of the sum over k: ⌈k / K_BLOCK⌉ blocks of as equal a size as can
/// be (so none has fewer than 3 entries when k ≥ 3), the first written into C, the others
/// added to it, in order.
///
/// # Safety
/// As [`Kernel::gemm`].
unsafe fn k_blocks<F>(
    k: usize,
    a: *const F,
    a_col_stride: isize,
    b: *const F,
    b_row_stride: isize,
    call: impl Fn(usize, *const F, *const F, bool),
) {
    let blocks = k.div_ceil(K_BLOCK);
    let (base, extra) = (k / blocks, k % blocks);
    let mut depth = 0;
    for i in 0..blocks {
        let len = base + usize::from(i < extra);
        // SAFETY: `depth < k`, so column `depth` of op(A) and row `depth` of op(B) exist.
        let (a, b) = unsafe {
            (
                a.offset(depth as isize * a_col_stride),
                b.offset(depth as isize * b_row_stride),
            )
        };
        call(len, a, b, i > 0);
        depth += len;
    }
}

/// A real type with a blocked `matrixmultiply` kernel and a `gemm` one.
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

    /// `gemm`'s kernel for `Self` on this CPU.
    fn gemm_crate() -> GemmFn<Self>;
}

/// A `gemm` crate kernel: m, n, k; dst with its column and row strides; whether to read dst
/// (dst = α·dst + β·lhs·rhs, α ignored when dst is not read); lhs and rhs with column then row
/// strides; α, β; conjugation of dst, lhs, rhs; threads.
type GemmFn<F> = unsafe fn(
    usize,
    usize,
    usize,
    *mut F,
    isize,
    isize,
    bool,
    *const F,
    isize,
    isize,
    *const F,
    isize,
    isize,
    F,
    F,
    bool,
    bool,
    bool,
    gemm_common::Parallelism,
);

/// The signature of [`Kernel::gemm`] and [`wide`].
type KernelFn<F> = unsafe fn(
    usize,
    usize,
    usize,
    *const F,
    (isize, isize),
    *const F,
    (isize, isize),
    *mut F,
    isize,
);

/// As [`Kernel::gemm`] through `gemm`'s kernels for this CPU, over k-blocks (see
/// [`k_blocks`]).
///
/// # Safety
/// As [`Kernel::gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn wide<F: Kernel>(
    m: usize,
    k: usize,
    n: usize,
    a: *const F,
    (rsa, csa): (isize, isize),
    b: *const F,
    (rsb, csb): (isize, isize),
    c: *mut F,
    csc: isize,
) {
    let gemm = F::gemm_crate();
    // SAFETY: forwarded from the caller; each block reads columns `depth..depth + len` of
    // op(A) and rows `depth..depth + len` of op(B); C is written by the first block (β = 1,
    // dst not read) and accumulated into by the others (α = β = 1); no conjugation, one
    // thread.
    unsafe {
        k_blocks(k, a, csa, b, rsb, |len, a, b, accumulate| {
            gemm(
                m,
                n,
                len,
                c,
                csc,
                1,
                accumulate,
                a,
                csa,
                rsa,
                b,
                csb,
                rsb,
                F::one(),
                F::one(),
                false,
                false,
                false,
                gemm_common::Parallelism::None,
            )
        })
    }
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

    fn gemm_crate() -> GemmFn<f64> {
        gemm_f64::gemm::f64::get_gemm_fn()
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

    fn gemm_crate() -> GemmFn<f32> {
        gemm_f32::gemm::f32::get_gemm_fn()
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
    let kernel: KernelFn<F> = if uses_gemm(m, k, n, extent) {
        wide::<F>
    } else {
        F::gemm
    };
    let (a_ptr, b_ptr) = (Shared(a.as_ptr()), Shared(b.as_ptr()));
    // With β = 0 the kernels write every entry of C without reading it, so C needs no
    // zero-fill: it is handed the uninitialised capacity of a fresh buffer.
    fast::filled(m, n, |c| {
        let c_ptr = Shared(c.as_mut_ptr().cast::<F>().cast_const());
        threads::run_bands(count, &|i| {
            let (start, len) = threads::band_range(extent, count, i);
            // SAFETY: the pointers cover m×k, k×n and m×n column-major buffers with the
            // strides given, as the shapes above guarantee; the bands are disjoint column
            // (or row) ranges of the fresh m·n buffer `c`, so no two write the same entry,
            // and the kernel with β = 0 initialises every entry of its band (`gemm` writes
            // its first k-block without reading C). The offsets stay inside the operands:
            // column `start` of op(B) (row `start` of op(A)) exists, as `len > 0`.
            unsafe {
                let (a, b, c) = (a_ptr.get(), b_ptr.get(), c_ptr.get().cast_mut());
                if along_columns {
                    let b = b.offset(start as isize * sb.1);
                    kernel(m, k, len, a, sa, b, sb, c.add(start * m), m as isize);
                } else {
                    let a = a.offset(start as isize * sa.0);
                    kernel(len, k, n, a, sa, b, sb, c.add(start), m as isize);
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
