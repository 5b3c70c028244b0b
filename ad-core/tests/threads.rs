//! Products large enough to be split across threads give bitwise the same values and
//! gradients for any thread count: the output is cut into bands, never the sum over k, and
//! large elementwise passes into ranges. The workers are sized once per process
//! (`MATMUL_NUM_THREADS`), so the test runs itself as a child process once per count and
//! compares what the children print; a second test lowers the cap in-process with
//! `set_max_threads`.

use ad_core::nalgebra::DMatrix;
use ad_core::{Precision, Tape};

const CHILD: &str = "COSTATE_THREADS_TEST_CHILD";

/// The bits of a forward+backward through two products big enough to be threaded (15.7M
/// and 10.5M multiply-adds, above 2²⁰ per band even for four bands), a tanh over 81920
/// entries, an RK-style combination, binary ops and backward's gradient accumulation.
fn fingerprint() -> Vec<u64> {
    let mut bits = run::<f64>();
    bits.extend(run::<f32>());
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
        println!("fingerprint {digest:016x} over {} values", bits.len());
        return;
    }
    let run = |threads: &str| -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "threaded_products_do_not_depend_on_the_thread_count",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("MATMUL_NUM_THREADS", threads)
            .output()
            .expect("the test binary runs itself");
        assert!(out.status.success(), "child with {threads} threads failed");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // libtest prints the child's line after its own "test … " prefix.
        let at = stdout
            .find("fingerprint ")
            .unwrap_or_else(|| panic!("no fingerprint in {stdout:?}"));
        stdout[at..].lines().next().unwrap_or_default().to_owned()
    };
    let one = run("1");
    assert_eq!(one, run("2"), "2 threads");
    assert_eq!(one, run("4"), "4 threads");
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
