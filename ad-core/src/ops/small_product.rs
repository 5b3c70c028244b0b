//! Direct `f64`/`f32` products for tiny shapes, such as a 20-row batch through a 2→50→2 layer.
//!
//! `matrixmultiply` packs both operands into a freshly allocated, aligned buffer on every
//! call; for products of a few thousand multiply-adds the packing and the allocation cost
//! more than the arithmetic. These loops read the operands in place and write each output
//! entry once (no zero-fill):
//!
//! * `C = A · op(B)` (A not transposed): each column of C is a combination of A's contiguous
//!   columns, `C[:, j] = Σ_p op(B)[p, j] · A[:, p]`, computed eight (then four, then one)
//!   rows at a time in registers, summed in order of p;
//! * `C = Aᵀ · B`: each entry is a dot product of two contiguous columns, summed in four
//!   fixed lanes (entry p goes to lane p mod 4), added as (0+2)+(1+3), then the last
//!   k mod 4 entries in order; four entries of a column at a time share the loads.
//!
//! The order of every sum depends only on the shape, so results are bitwise reproducible (and
//! do not depend on the thread count: these run on the calling thread). They differ in the
//! last bits from `matrixmultiply`'s blocked order, which larger products keep using.

use std::mem::MaybeUninit;

/// Products with `m·n·k` up to this many multiply-adds take the direct loops. Measured with
/// `ad-core/benches/small_product.rs` (AMD EPYC, one thread, output allocation included): at
/// the spiral's shapes (20×2·2×50, 20×50·50×2, 50×20·20×2, 2×20·20×50) the direct loops take
/// 0.5–0.75× the time of `matrixmultiply`; at m·n·k = 4000 (20×4·4×50) 0.9×; at 16×16×16
/// (4096) they lose (1.1×), and beyond they fall further behind.
pub(crate) const DIRECT_MAX: usize = 4000;

/// Whether `C (m×n) = op(A) · op(B)` with inner size `k` takes the direct loops.
#[inline]
pub(crate) fn is_direct(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> bool {
    // Aᵀ·Bᵀ has neither contiguous columns nor contiguous dots: left to matrixmultiply.
    !(ta && tb) && m.saturating_mul(n).saturating_mul(k) <= DIRECT_MAX && has_fma()
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "aarch64")]
#[inline]
fn has_fma() -> bool {
    true
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline]
fn has_fma() -> bool {
    false
}

/// A real type the direct loops run on: `f64` or `f32`.
pub(crate) trait Lane: Copy + 'static {
    /// Zero.
    const ZERO: Self;
    /// `self · a + b`, fused.
    fn fma(self, a: Self, b: Self) -> Self;
    /// `self · a`.
    fn mul(self, a: Self) -> Self;
    /// `self + a`.
    fn add(self, a: Self) -> Self;
}

macro_rules! lane {
    ($f:ty) => {
        impl Lane for $f {
            const ZERO: Self = 0.0;
            #[inline(always)]
            fn fma(self, a: Self, b: Self) -> Self {
                self.mul_add(a, b)
            }
            #[inline(always)]
            fn mul(self, a: Self) -> Self {
                self * a
            }
            #[inline(always)]
            fn add(self, a: Self) -> Self {
                self + a
            }
        }
    };
}
lane!(f64);
lane!(f32);

/// One operand in column-major storage: its entries and its number of rows.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a, F> {
    /// The entries, column by column.
    pub(crate) data: &'a [F],
    /// Rows of the stored matrix (the column stride).
    pub(crate) rows: usize,
    /// Whether the product uses the transpose.
    pub(crate) transposed: bool,
}

impl<'a, F> Operand<'a, F> {
    /// A column-major `rows × (data.len() / rows)` matrix, used transposed or not.
    pub(crate) fn new(data: &'a [F], rows: usize, transposed: bool) -> Self {
        Self {
            data,
            rows,
            transposed,
        }
    }
}

/// `C = op(A) · op(B)` into `c` (m×n column-major, all of it written), for shapes
/// [`is_direct`] accepts. `k ≥ 1`.
pub(crate) fn product<F: Lane>(
    a: Operand<'_, F>,
    b: Operand<'_, F>,
    (m, k, n): (usize, usize, usize),
    c: &mut [MaybeUninit<F>],
) {
    debug_assert!(k >= 1 && c.len() == m * n && !(a.transposed && b.transposed));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `is_direct` admitted this product only where AVX2 and FMA are present.
    unsafe {
        product_avx2_fma(a, b, (m, k, n), c)
    }
    #[cfg(not(target_arch = "x86_64"))]
    product_generic(a, b, (m, k, n), c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2_fma<F: Lane>(
    a: Operand<'_, F>,
    b: Operand<'_, F>,
    shape: (usize, usize, usize),
    c: &mut [MaybeUninit<F>],
) {
    product_generic(a, b, shape, c);
}

#[inline(always)]
fn product_generic<F: Lane>(
    a: Operand<'_, F>,
    b: Operand<'_, F>,
    (m, k, n): (usize, usize, usize),
    c: &mut [MaybeUninit<F>],
) {
    if a.transposed {
        dots(a, b, (m, k, n), c);
    } else {
        columns(a, b, (m, k, n), c);
    }
}

/// `C[:, j] = Σ_p op(B)[p, j] · A[:, p]` (A m×k stored as is), eight then four rows at a
/// time held in registers across the whole sum, the last rows one by one.
#[inline(always)]
fn columns<F: Lane>(
    a: Operand<'_, F>,
    b: Operand<'_, F>,
    (m, k, n): (usize, usize, usize),
    c: &mut [MaybeUninit<F>],
) {
    for (j, col) in c.chunks_exact_mut(m.max(1)).enumerate().take(n) {
        // op(B)[:, j] is B's column j, or B's row j when transposed.
        let (bj, step) = if b.transposed {
            (&b.data[j..], b.rows)
        } else {
            (&b.data[j * b.rows..], 1)
        };
        // Direct calls only: a closure here would not inherit the caller's FMA feature.
        let mut i = 0;
        while i + 8 <= m {
            rows_block::<F, 8>(a, bj, step, k, i, &mut col[i..i + 8]);
            i += 8;
        }
        if i + 4 <= m {
            rows_block::<F, 4>(a, bj, step, k, i, &mut col[i..i + 4]);
            i += 4;
        }
        while i < m {
            rows_block::<F, 1>(a, bj, step, k, i, &mut col[i..=i]);
            i += 1;
        }
    }
}

/// Rows `i .. i + W` of one output column: `Σ_p bj[p·step] · A[i.., p]`, summed in order of p.
#[inline(always)]
fn rows_block<F: Lane, const W: usize>(
    a: Operand<'_, F>,
    bj: &[F],
    step: usize,
    k: usize,
    i: usize,
    out: &mut [MaybeUninit<F>],
) {
    let mut acc = [F::ZERO; W];
    let (a0, b0) = (&a.data[i..i + W], bj[0]);
    for l in 0..W {
        acc[l] = a0[l].mul(b0);
    }
    for p in 1..k {
        let start = p * a.rows + i;
        let (x, y) = (&a.data[start..start + W], bj[p * step]);
        for l in 0..W {
            acc[l] = x[l].fma(y, acc[l]);
        }
    }
    for (o, v) in out.iter_mut().zip(acc) {
        o.write(v);
    }
}

/// `C[i, j] = ⟨A[:, i], B[:, j]⟩` (A k×m, B k×n, both stored as is), four output rows at a
/// time so they share the loads of B's column.
#[inline(always)]
fn dots<F: Lane>(
    a: Operand<'_, F>,
    b: Operand<'_, F>,
    (m, k, n): (usize, usize, usize),
    c: &mut [MaybeUninit<F>],
) {
    for (j, col) in c.chunks_exact_mut(m.max(1)).enumerate().take(n) {
        let y = &b.data[j * b.rows..j * b.rows + k];
        let mut i = 0;
        while i + 4 <= m {
            let x = |q: usize| &a.data[(i + q) * a.rows..(i + q) * a.rows + k];
            let d = dot4([x(0), x(1), x(2), x(3)], y);
            for (o, v) in col[i..i + 4].iter_mut().zip(d) {
                o.write(v);
            }
            i += 4;
        }
        while i < m {
            let x = &a.data[i * a.rows..i * a.rows + k];
            col[i].write(dot1(x, y));
            i += 1;
        }
    }
}

const LANES: usize = 4;

/// Four dot products with one right-hand side. Each is summed in four fixed lanes (entry p
/// goes to lane p mod 4 while full groups of four remain), reduced as (0+2)+(1+3), then the
/// last k mod 4 entries are added in order.
#[inline(always)]
fn dot4<F: Lane>(x: [&[F]; 4], y: &[F]) -> [F; 4] {
    let k = y.len();
    let full = k - k % LANES;
    let mut acc = [[F::ZERO; LANES]; 4];
    let mut p = 0;
    while p < full {
        let yc: &[F; LANES] = y[p..p + LANES].try_into().expect("LANES entries");
        for q in 0..4 {
            let xc: &[F; LANES] = x[q][p..p + LANES].try_into().expect("LANES entries");
            for l in 0..LANES {
                acc[q][l] = xc[l].fma(yc[l], acc[q][l]);
            }
        }
        p += LANES;
    }
    let mut out = [F::ZERO; 4];
    for q in 0..4 {
        let a = acc[q];
        let mut s = (a[0].add(a[2])).add(a[1].add(a[3]));
        for r in full..k {
            s = x[q][r].fma(y[r], s);
        }
        out[q] = s;
    }
    out
}

/// One dot product summed exactly as each of [`dot4`]'s: in four fixed lanes, reduced as
/// (0+2)+(1+3), then the last k mod 4 entries in order (a quarter of the work of a `dot4`
/// with one row repeated, for outputs with fewer than four rows left).
#[inline(always)]
fn dot1<F: Lane>(x: &[F], y: &[F]) -> F {
    let k = y.len();
    let full = k - k % LANES;
    let mut acc = [F::ZERO; LANES];
    let mut p = 0;
    while p < full {
        for l in 0..LANES {
            acc[l] = x[p + l].fma(y[p + l], acc[l]);
        }
        p += LANES;
    }
    let mut s = (acc[0].add(acc[2])).add(acc[1].add(acc[3]));
    for r in full..k {
        s = x[r].fma(y[r], s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `op(A)·op(B)` by the textbook triple loop, `a` and `b` column-major.
    fn reference(
        a: Operand<'_, f64>,
        b: Operand<'_, f64>,
        (m, k, n): (usize, usize, usize),
    ) -> Vec<f64> {
        let at = |x: Operand<'_, f64>, r: usize, c: usize| {
            if x.transposed {
                x.data[c + r * x.rows]
            } else {
                x.data[r + c * x.rows]
            }
        };
        let mut c = vec![0.0; m * n];
        for j in 0..n {
            for i in 0..m {
                c[i + j * m] = (0..k).map(|p| at(a, i, p) * at(b, p, j)).sum();
            }
        }
        c
    }

    fn run<F: Lane>(a: Operand<'_, F>, b: Operand<'_, F>, shape: (usize, usize, usize)) -> Vec<F> {
        let len = shape.0 * shape.2;
        let mut c = Vec::with_capacity(len);
        product(a, b, shape, &mut c.spare_capacity_mut()[..len]);
        // SAFETY: `product` wrote all `len` entries.
        unsafe { c.set_len(len) };
        c
    }

    /// Every shape with m, n over the row/column block remainders and k over the unrolled
    /// remainders, each transposition the direct path takes.
    fn cases(mut check: impl FnMut(Operand<'_, f64>, Operand<'_, f64>, (usize, usize, usize))) {
        for (ta, tb) in [(false, false), (false, true), (true, false)] {
            for m in [1, 2, 3, 4, 5, 7, 8, 9, 13, 20] {
                for k in [1, 2, 3, 4, 5, 8, 9, 50] {
                    for n in [1, 2, 3, 5] {
                        let (ar, ac) = if ta { (k, m) } else { (m, k) };
                        let (br, bc) = if tb { (n, k) } else { (k, n) };
                        // Small integers: every partial sum is exact, whatever its order.
                        let a: Vec<f64> =
                            (0..ar * ac).map(|i| ((i * 7) % 11) as f64 - 5.0).collect();
                        let b: Vec<f64> =
                            (0..br * bc).map(|i| ((i * 5) % 13) as f64 - 6.0).collect();
                        check(
                            Operand::new(&a, ar, ta),
                            Operand::new(&b, br, tb),
                            (m, k, n),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exact_on_integer_entries_for_every_block_remainder() {
        if !has_fma() {
            return; // the direct path is not taken on this machine
        }
        cases(|a, b, shape| {
            assert_eq!(
                run(a, b, shape),
                reference(a, b, shape),
                "{shape:?} ta={} tb={}",
                a.transposed,
                b.transposed
            );
        });
    }

    #[test]
    fn f32_exact_on_integer_entries_for_every_block_remainder() {
        if !has_fma() {
            return;
        }
        cases(|a, b, shape| {
            // The same small integers are exact in f32 too (every partial sum is below 2²⁴).
            let narrow = |x: Operand<'_, f64>| x.data.iter().map(|&v| v as f32).collect::<Vec<_>>();
            let (na, nb) = (narrow(a), narrow(b));
            let got = run(
                Operand::new(&na, a.rows, a.transposed),
                Operand::new(&nb, b.rows, b.transposed),
                shape,
            );
            let want: Vec<f32> = reference(a, b, shape).iter().map(|&v| v as f32).collect();
            assert_eq!(
                got, want,
                "{shape:?} ta={} tb={}",
                a.transposed, b.transposed
            );
        });
    }

    #[test]
    fn close_to_the_reference_on_fractional_entries() {
        if !has_fma() {
            return;
        }
        cases(|a, b, shape| {
            let frac =
                |x: Operand<'_, f64>| x.data.iter().map(|v| v / 3.0 + 0.1).collect::<Vec<_>>();
            let (fa, fb) = (frac(a), frac(b));
            let (a, b) = (
                Operand::new(&fa, a.rows, a.transposed),
                Operand::new(&fb, b.rows, b.transposed),
            );
            let (got, want) = (run(a, b, shape), reference(a, b, shape));
            // Each entry is a sum of k products of magnitude ≤ 4.5, which in any order is
            // within k·ε times the sum of their magnitudes.
            let k = shape.1 as f64;
            let bound = k * f64::EPSILON * 4.5 * k;
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= bound, "{shape:?}: {g} vs {w}");
            }
            // Same shape, same bits.
            assert_eq!(run(a, b, shape), got);
        });
    }
}
