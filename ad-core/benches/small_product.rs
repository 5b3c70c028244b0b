//! Where tiny `f64` products stop being faster through the direct loops of
//! `ad-core/src/ops/small_product.rs` than through `matrixmultiply`.
//!
//! For each shape (the spiral's four layer products and their VJP products, then square and
//! lopsided shapes around the threshold), both kernels compute `C = op(A) · op(B)` into a
//! freshly allocated buffer, as the tape does; the best of 30 batches of 2000 calls is
//! printed, with the ratio direct / matrixmultiply and the largest difference between them.
//! The module is compiled into this bench by path (it is crate-private).
//!
//! Run with `MATMUL_NUM_THREADS=1 cargo bench -p ad-core --bench small_product`.

use std::hint::black_box;
use std::time::Instant;

#[allow(dead_code)]
#[path = "../src/ops/small_product.rs"]
mod small_product;

use small_product::Operand;

/// `(m, k, n, A transposed, B transposed)`.
type Case = (usize, usize, usize, bool, bool);

const CASES: &[Case] = &[
    // The spiral (batch 20, 2 → 50 → 2): forward x Wᵀ, then x̄ = ȳ W and W̄ = ȳᵀ x.
    (20, 2, 50, false, true),
    (20, 50, 2, false, true),
    (20, 2, 50, false, false),
    (20, 50, 2, false, false),
    (50, 20, 2, true, false),
    (2, 20, 50, true, false),
    // Around the threshold.
    (8, 8, 8, false, false),
    (12, 12, 12, false, false),
    (20, 4, 50, false, true),
    (20, 50, 4, false, true),
    (16, 16, 16, false, false),
    (64, 2, 64, false, true),
    (24, 24, 24, false, false),
    (32, 32, 32, false, false),
    (32, 32, 32, true, false),
    // The seed bench's layer: 32×64 through 64-wide layers.
    (32, 64, 64, false, true),
];

fn with_output(len: usize, fill: impl FnOnce(*mut f64)) -> Vec<f64> {
    let mut c = Vec::<f64>::with_capacity(len);
    fill(c.as_mut_ptr());
    // SAFETY: both kernels write all `len` entries.
    unsafe { c.set_len(len) };
    c
}

fn through_matrixmultiply(
    a: Operand<'_, f64>,
    b: Operand<'_, f64>,
    (m, k, n): (usize, usize, usize),
) -> Vec<f64> {
    let strides = |x: Operand<'_, f64>| {
        if x.transposed {
            (x.rows as isize, 1)
        } else {
            (1, x.rows as isize)
        }
    };
    let ((rsa, csa), (rsb, csb)) = (strides(a), strides(b));
    with_output(m * n, |c| {
        // SAFETY: the buffers hold the m×k, k×n operands with these strides and m·n outputs.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                1.0,
                a.data.as_ptr(),
                rsa,
                csa,
                b.data.as_ptr(),
                rsb,
                csb,
                0.0,
                c,
                1,
                m as isize,
            )
        }
    })
}

fn direct(a: Operand<'_, f64>, b: Operand<'_, f64>, (m, k, n): (usize, usize, usize)) -> Vec<f64> {
    let mut c = Vec::<f64>::with_capacity(m * n);
    small_product::product(a, b, (m, k, n), &mut c.spare_capacity_mut()[..m * n]);
    // SAFETY: `product` writes all m·n entries.
    unsafe { c.set_len(m * n) };
    c
}

/// Best time of one call, in ns.
fn best_ns(f: impl Fn() -> Vec<f64>) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..30 {
        let t = Instant::now();
        for _ in 0..2000 {
            black_box(f());
        }
        best = best.min(t.elapsed().as_secs_f64() / 2000.0);
    }
    best * 1e9
}

fn main() {
    if !small_product::is_direct(1, 1, 1, false, false) {
        println!("no AVX2/FMA on this machine: the direct loops are not used");
        return;
    }
    println!("direct loops for m·n·k ≤ {}", small_product::DIRECT_MAX);
    for &(m, k, n, ta, tb) in CASES {
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let a: Vec<f64> = (0..ar * ac)
            .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5)
            .collect();
        let b: Vec<f64> = (0..br * bc)
            .map(|i| ((i * 104_729) % 1000) as f64 / 1000.0 - 0.5)
            .collect();
        let (a, b) = (Operand::new(&a, ar, ta), Operand::new(&b, br, tb));
        let shape = (m, k, n);
        let diff = through_matrixmultiply(a, b, shape)
            .iter()
            .zip(direct(a, b, shape))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        let t_mm = best_ns(|| through_matrixmultiply(a, b, shape));
        let t_direct = best_ns(|| direct(a, b, shape));
        let op = |t: bool| if t { "ᵀ" } else { "" };
        println!(
            "{m:>3}×{k:<3}{}·{k:>3}×{n:<3}{} m·n·k {:>6}: matrixmultiply {t_mm:>6.0} ns, direct {t_direct:>6.0} ns, ratio {:.2}, max diff {diff:.1e}",
            op(ta),
            op(tb),
            m * n * k,
            t_direct / t_mm
        );
    }
}
