//! The per-step workload of a neural-ODE adjoint: a 64→64→64→64 tanh MLP on a 32×64 batch.
//!
//! Three PyTorch-convention linear layers `y = x Wᵀ + b` (one `linear` node each), tanh after
//! the first two. Benchmarks:
//!
//! * `forward`: record the forward pass on a tape, then rewind to the mark that holds the
//!   input and parameter leaves (the rewind, which frees the recorded tensors, is timed too);
//! * `forward_no_grad`: the same under `Tape::no_grad`;
//! * `forward_vjp`: forward + `vjp_wrt` of a fixed random 32×64 cotangent with respect to the
//!   input and all six parameters (what an ODE adjoint needs per step);
//! * `gemm_32x64x64`: one raw 32×64 · 64×64 `f64` product through `matrixmultiply::dgemm` on
//!   preallocated buffers: this machine's gemm rate, measured in the same run.
//!
//! After the criterion groups (only under `cargo bench`), a short interleaved timing prints the
//! FLOP bound: FLOPs / measured gemm rate, with forward = 3 · 2·32·64·64 FLOPs and
//! forward + VJP = 3× that (two products per layer backward), and each pass's ratio to it.
//!
//! Run with `cargo bench -p ad-core --bench mlp -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::Instant;

use ad_core::nalgebra::DMatrix;
use ad_core::{Mark, Tape, Var};
use criterion::{criterion_group, Criterion};

const BATCH: usize = 32;
const WIDTH: usize = 64;
const LAYERS: usize = 3;

/// Deterministic uniform values in `[-scale, scale)` (SplitMix64), so runs are comparable.
fn random(rows: usize, cols: usize, seed: u64, scale: f64) -> DMatrix<f64> {
    let mut state = seed;
    DMatrix::from_fn(rows, cols, |_, _| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
    })
}

/// The MLP's leaves on a tape: the input batch and (W, b) per layer.
struct Mlp<'t> {
    x: Var<'t, f64>,
    layers: Vec<(Var<'t, f64>, Var<'t, f64>)>,
}

impl<'t> Mlp<'t> {
    fn new(tape: &'t Tape<f64>) -> Self {
        let scale = 1.0 / (WIDTH as f64).sqrt();
        let x = tape.var(random(BATCH, WIDTH, 1, 1.0));
        let layers = (0..LAYERS as u64)
            .map(|l| {
                let w = tape.var(random(WIDTH, WIDTH, 10 + l, scale));
                let b = tape.var(random(1, WIDTH, 20 + l, scale));
                (w, b)
            })
            .collect();
        Self { x, layers }
    }

    fn forward(&self) -> Var<'t, f64> {
        let mut h = self.x;
        for (i, &(w, b)) in self.layers.iter().enumerate() {
            h = h.linear(w, b).unwrap();
            if i + 1 < self.layers.len() {
                h = h.tanh();
            }
        }
        h
    }

    /// The input followed by every parameter: what `vjp_wrt` differentiates with respect to.
    fn wrt(&self) -> Vec<Var<'t, f64>> {
        let mut wrt = vec![self.x];
        for &(w, b) in &self.layers {
            wrt.push(w);
            wrt.push(b);
        }
        wrt
    }
}

/// Preallocated operands of one 32×64 · 64×64 product.
struct Gemm {
    a: DMatrix<f64>,
    b: DMatrix<f64>,
    c: DMatrix<f64>,
}

impl Gemm {
    fn new() -> Self {
        Self {
            a: random(BATCH, WIDTH, 3, 1.0),
            b: random(WIDTH, WIDTH, 4, 1.0),
            c: DMatrix::zeros(BATCH, WIDTH),
        }
    }

    /// `c = a · b`, column-major, the kernel `ad-core` uses for `f64` products.
    fn run(&mut self) {
        let (m, k, n) = (BATCH, WIDTH, WIDTH);
        // SAFETY: a is m×k, b is k×n and c is m×n, all column-major and contiguous.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                1.0,
                self.a.as_ptr(),
                1,
                m as isize,
                self.b.as_ptr(),
                1,
                k as isize,
                0.0,
                self.c.as_mut_ptr(),
                1,
                m as isize,
            );
        }
        black_box(&mut self.c);
    }
}

fn forward_flops() -> f64 {
    (LAYERS * 2 * BATCH * WIDTH * WIDTH) as f64
}

/// Forward, then the VJP of the cotangent `g` with respect to `wrt`, then rewind. `g` is moved
/// into the seed and back, so no copy of it is timed.
fn forward_vjp<'t>(
    tape: &'t Tape<f64>,
    mlp: &Mlp<'t>,
    wrt: &[Var<'t, f64>],
    g: &mut DMatrix<f64>,
    mark: Mark,
) {
    let y = mlp.forward();
    let mut seeds = [(y, std::mem::take(g))];
    black_box(tape.vjp_wrt(&seeds, wrt).unwrap());
    *g = std::mem::take(&mut seeds[0].1);
    tape.rewind(mark).unwrap();
}

fn bench_mlp(c: &mut Criterion) {
    let tape = Tape::<f64>::new();
    let mlp = Mlp::new(&tape);
    let wrt = mlp.wrt();
    let mark = tape.mark();
    let cotangent = random(BATCH, WIDTH, 5, 1.0);

    let mut group = c.benchmark_group("mlp");
    group.bench_function("forward", |bench| {
        bench.iter(|| {
            let y = mlp.forward();
            black_box(y);
            tape.rewind(mark).unwrap();
        })
    });
    group.bench_function("forward_no_grad", |bench| {
        bench.iter(|| {
            {
                let _guard = tape.no_grad();
                black_box(mlp.forward());
            }
            tape.rewind(mark).unwrap();
        })
    });
    group.bench_function("forward_vjp", |bench| {
        let mut g = cotangent.clone();
        bench.iter(|| forward_vjp(&tape, &mlp, &wrt, &mut g, mark))
    });
    let mut gemm = Gemm::new();
    group.bench_function("gemm_32x64x64", |bench| bench.iter(|| gemm.run()));
    group.finish();
}

/// Median of `samples` timings of `reps` calls each, in seconds per call.
fn median_time(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Interleaved timing of gemm, forward (taped and no-grad) and forward + VJP, then the
/// FLOP-bound ratios.
fn flop_bound_summary() {
    let tape = Tape::<f64>::new();
    let mlp = Mlp::new(&tape);
    let wrt = mlp.wrt();
    let mark = tape.mark();
    let cotangent = random(BATCH, WIDTH, 5, 1.0);
    let mut gemm = Gemm::new();

    let time = |reps: usize, f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..reps {
            f();
        }
        start.elapsed().as_secs_f64() / reps as f64
    };
    let mut run_gemm = || gemm.run();
    let mut run_fwd = || {
        black_box(mlp.forward());
        tape.rewind(mark).unwrap();
    };
    let mut run_no_grad = || {
        {
            let _guard = tape.no_grad();
            black_box(mlp.forward());
        }
        tape.rewind(mark).unwrap();
    };
    let mut g = cotangent;
    let mut run_vjp = || forward_vjp(&tape, &mlp, &wrt, &mut g, mark);
    // Short samples, interleaved, so that a burst of load on a shared machine hits all four
    // alike and the medians skip it.
    let (mut tg, mut tf, mut tn, mut tv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let deadline = Instant::now() + std::time::Duration::from_secs(3);
    while Instant::now() < deadline || tg.len() < 20 {
        tg.push(time(200, &mut run_gemm));
        tf.push(time(50, &mut run_fwd));
        tn.push(time(50, &mut run_no_grad));
        tv.push(time(20, &mut run_vjp));
    }
    let (tg, tf, tn, tv) = (
        median_time(&mut tg),
        median_time(&mut tf),
        median_time(&mut tn),
        median_time(&mut tv),
    );
    let gemm_flops = (2 * BATCH * WIDTH * WIDTH) as f64;
    let rate = gemm_flops / tg;
    let fwd_bound = forward_flops() / rate;
    let vjp_bound = 3.0 * forward_flops() / rate;
    println!();
    println!("FLOP bound (interleaved medians):");
    println!(
        "  gemm 32x64x64     {:8.2} µs  = {:.2} GFLOP/s",
        tg * 1e6,
        rate * 1e-9
    );
    println!(
        "  forward           {:8.2} µs  bound {:8.2} µs  ratio {:.2}",
        tf * 1e6,
        fwd_bound * 1e6,
        tf / fwd_bound
    );
    println!(
        "  forward no-grad   {:8.2} µs  bound {:8.2} µs  ratio {:.2}",
        tn * 1e6,
        fwd_bound * 1e6,
        tn / fwd_bound
    );
    println!(
        "  forward + VJP     {:8.2} µs  bound {:8.2} µs  ratio {:.2}  (target ≤ 1.5)",
        tv * 1e6,
        vjp_bound * 1e6,
        tv / vjp_bound
    );
}

criterion_group!(benches, bench_mlp);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only when benchmarking (`cargo bench` passes --bench), not under `cargo test`.
    if std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--list") {
        flop_bound_summary();
    }
}
