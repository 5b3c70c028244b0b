//! Products large enough to be split across threads give bitwise the same values and
//! gradients for any thread count: the output is cut into bands, never the sum over k, and
//! large elementwise passes into ranges. The workers are sized once per process
//! (`MATMUL_NUM_THREADS`, above the cores with `MATMUL_NUM_THREADS_FORCE=1`) and so is the
//! product kernel (`COSTATE_PRODUCT_KERNEL`), so the test runs itself as a child process once
//! per count (1, 2, 3, 4) and per kernel this CPU can run, and compares what the children
//! print; a second test lowers the cap in-process with `set_max_threads`. Besides a small
//! network, the fingerprint covers products of many shapes, k up to 9000, every transpose
//! combination, bands along rows and along columns, and the thin shapes `gemm` is never
//! given (see `ad-core/src/ops/linalg.rs`).

use ad_core::nalgebra::DMatrix;
use ad_core::{Precision, Tape};

const CHILD: &str = "COSTATE_THREADS_TEST_CHILD";

/// The bits of a forward+backward through two products big enough to be threaded (15.7M
/// and 10.5M multiply-adds, above 2²⁰ per band even for four bands), a tanh over 81920
/// entries, an RK-style combination, binary ops and backward's gradient accumulation.
fn fingerprint() -> Vec<u64> {
    let mut bits = run::<f64>();
    bits.extend(run::<f32>());
    bits.extend(products::<f64>());
    bits.extend(products::<f32>());
    bits
}

/// (m, k, n) of `y = a·b` (a m×k, b k×n); the backward also computes `G·bᵀ` (inner n) and
/// `aᵀ·G` (inner m), and `matmul_t` runs `a·cᵀ` (c n×k).
const SHAPES: &[(usize, usize, usize)] = &[
    (256, 1000, 256),
    // Bands of at most 64×64 where the whole is wider: gemm would block k = 1000 as 512 + 488
    // in the bands and as 500 + 500 in the whole.
    (48, 1000, 128),
    (128, 1000, 40),
    (64, 1500, 300),
    (300, 1200, 40),
    (40, 2000, 301),
    (20, 5000, 200),
    (16, 9000, 16),
    (1200, 64, 48),
    // aᵀ·G is 16×32 over 5000: bands of 16×16 would take gemm's dot-product kernel.
    (5000, 16, 32),
    (67, 1025, 129),
    (513, 3, 1031),
];

/// The bits of every shape's products, each first checked against a plain sum in `f64`.
fn products<P: Precision>() -> Vec<u64> {
    let mut bits = Vec::new();
    for &(m, k, n) in SHAPES {
        let tape = Tape::<P>::new();
        let lift = |r: usize, c: usize, s: usize| {
            DMatrix::from_fn(r, c, |i, j| {
                P::round_from((((i * 31 + j * 17 + s) % 97) as f64 / 97.0 - 0.5) * 2.0)
            })
        };
        let (a0, b0, c0, g0) = (lift(m, k, 1), lift(k, n, 2), lift(n, k, 3), lift(m, n, 4));
        let (a, b, c) = (
            tape.var(a0.clone()),
            tape.var(b0.clone()),
            tape.var(c0.clone()),
        );
        let y = a.matmul(b).unwrap();
        let yt = a.matmul_t(c).unwrap();
        let g = tape.constant(g0.clone());
        let loss = y
            .mul(g)
            .unwrap()
            .sum()
            .add(yt.mul(g).unwrap().sum())
            .unwrap();
        let grads = tape.backward(loss).unwrap();
        let f = |x: &DMatrix<P>| x.map(|v| v.as_f64());
        let (a0, b0, c0, g0) = (f(&a0), f(&b0), f(&c0), f(&g0));
        let checks = [
            (y.value().unwrap(), &a0 * &b0),
            (yt.value().unwrap(), &a0 * c0.transpose()),
            (
                grads.get(a).unwrap().clone(),
                &g0 * b0.transpose() + &g0 * &c0,
            ),
            (grads.get(b).unwrap().clone(), a0.transpose() * &g0),
            (grads.get(c).unwrap().clone(), g0.transpose() * &a0),
        ];
        let tol = if std::mem::size_of::<P>() == 4 {
            1e-4
        } else {
            1e-12
        };
        for (i, (got, want)) in checks.iter().enumerate() {
            let scale = want.abs().max().max(1.0);
            let err = (f(got) - want).abs().max();
            assert!(
                err <= tol * scale * (k.max(m).max(n) as f64).sqrt(),
                "shape {m}×{k}×{n}, product {i}: error {err:e} at scale {scale}"
            );
            bits.extend(got.iter().map(|v| v.as_f64().to_bits()));
        }
    }
    bits
}

fn run<P: Precision>() -> Vec<u64> {
    let tape = Tape::<P>::new();
    let lift = |m: DMatrix<f64>| m.map(P::round_from);
    let x = tape.var(lift(DMatrix::from_fn(256, 192, |i, j| {
        ((i * 7 + j * 3) as f64).sin()
    })));
    let w = tape.var(lift(DMatrix::from_fn(320, 192, |i, j| {
        ((i + 2 * j) as f64 * 0.01).cos()
    })));
    let v = tape.var(lift(DMatrix::from_fn(320, 128, |i, j| {
        ((i * j) as f64 * 1e-3).sin()
    })));
    let y = x.matmul_t(w).unwrap().tanh().matmul(v).unwrap();
    let c = |x: f64| P::round_from(x);
    let z = tape
        .fixed_weighted_sum(&[(c(0.3), y), (c(-1.1), y.square()), (c(0.7), y.sin())])
        .unwrap();
    // Same-shape binary ops and their VJPs, and gradient accumulation (y is read 6 times).
    let one = c(1.0);
    let z = z
        .sub(y)
        .unwrap()
        .mul(y)
        .unwrap()
        .div(y.square().add_scalar(one))
        .unwrap();
    let loss = z.square().sum();
    let grads = tape.backward(loss).unwrap();
    let mut bits = vec![loss.value().unwrap()[(0, 0)].as_f64().to_bits()];
    for var in [x, w, v] {
        bits.extend(grads.get(var).unwrap().iter().map(|g| g.as_f64().to_bits()));
    }
    bits
}

#[test]
fn threaded_products_do_not_depend_on_the_thread_count() {
    if std::env::var_os(CHILD).is_some() {
        let bits = fingerprint();
        let digest = bits.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ b).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let kernel = ad_core::product_kernel_setting().expect("the kernel setting is valid");
        println!(
            "fingerprint {digest:016x} over {} values on {kernel}",
            bits.len()
        );
        return;
    }
    // Each kernel this CPU can run, pinned: gemm's AVX-512 kernels only where there is
    // AVX-512F (ad-core chooses them itself only on Intel, see `ad_core::product_kernel`).
    let mut kernels = vec!["matrixmultiply"];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        kernels.push("gemm");
    }
    let mut prints = Vec::new();
    for kernel in kernels {
        let one = child(kernel, "1");
        assert!(one.contains(&format!("on {kernel}")), "{one}");
        for threads in ["2", "3", "4"] {
            assert_eq!(one, child(kernel, threads), "{kernel}, {threads} threads");
        }
        prints.push(one);
    }
    // The kernels sum in different orders: if both ran, their bits differ somewhere (so the
    // pin took effect), though each matched an f64 sum above.
    if let [a, b] = &prints[..] {
        let digest = |p: &String| p.split(" on ").next().unwrap_or_default().to_owned();
        assert_ne!(
            digest(a),
            digest(b),
            "matrixmultiply and gemm gave the same bits"
        );
    }
}

/// The fingerprint line a child test process prints with `kernel` pinned and `threads`.
fn child(kernel: &str, threads: &str) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "threaded_products_do_not_depend_on_the_thread_count",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("MATMUL_NUM_THREADS", threads)
        .env("MATMUL_NUM_THREADS_FORCE", "1")
        .env("COSTATE_PRODUCT_KERNEL", kernel)
        .output()
        .expect("the test binary runs itself");
    assert!(
        out.status.success(),
        "child on {kernel} with {threads} threads failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // libtest prints the child's line after its own "test … " prefix.
    let at = stdout
        .find("fingerprint ")
        .unwrap_or_else(|| panic!("no fingerprint in {stdout:?}"));
    stdout[at..].lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_run_time_cap_gives_the_same_bits() {
    if std::env::var_os(CHILD).is_some() {
        return; // the children run only the fingerprint above
    }
    let all = fingerprint();
    let before = ad_core::set_max_threads(1);
    let one = fingerprint();
    ad_core::set_max_threads(before);
    assert_eq!(one, all);
    assert_eq!(fingerprint(), all);
}
