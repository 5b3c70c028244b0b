//! `gradcheck` of a small tanh MLP's parameters, with its report table and what it costs.
//!
//! The MLP maps a 32 × 8 batch through 8 → 16 → 16 → 1 (tanh after the hidden layers) and
//! takes the mean squared error to fixed targets: 433 parameters in six inputs. The check runs
//! the loss once on `Tape<f64>` with a reverse pass, once on `Tape<Dual64>` per parameter and
//! twice on `Tape<f64>` per parameter for central differences. Besides the report, the example
//! times one run of each kind, and each check (Dual64 only, finite differences only, both)
//! against the same number of runs made back to back without it: the check's own overhead.
//!
//! Run with `cargo run --release -p ad-core --example gradcheck`.

use std::time::{Duration, Instant};

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::{gradcheck, CheckError, GradcheckSettings, Scalar, Tape, TapeFunction, Var};

const BATCH: usize = 32;
const WIDTHS: [usize; 4] = [8, 16, 16, 1];

/// Deterministic, irregular values in `[-scale, scale]`.
fn filled(rows: usize, cols: usize, seed: f64, scale: f64) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |i, j| {
        scale * (seed + 1.3 * i as f64 + 0.7 * j as f64 + 0.37 * (i * j) as f64).sin()
    })
}

/// `mean((mlp(x) − y)²)` with parameters `[W1, b1, W2, b2, W3, b3]` as the inputs.
struct MlpLoss {
    x: DMatrix<f64>,
    y: DMatrix<f64>,
}

impl TapeFunction for MlpLoss {
    type Error = ad_core::Error;

    fn eval<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        p: &[Var<'t, T>],
    ) -> Result<Var<'t, T>, Self::Error> {
        let mut h = tape.constant(self.x.map(T::constant));
        let layers = p.len() / 2;
        for (l, wb) in p.chunks(2).enumerate() {
            h = h.linear(wb[0], wb[1])?;
            if l + 1 < layers {
                h = h.tanh();
            }
        }
        h.mse(tape.constant(self.y.map(T::constant)))
    }
}

fn parameters() -> Vec<DMatrix<f64>> {
    WIDTHS
        .windows(2)
        .enumerate()
        .flat_map(|(l, w)| {
            let scale = 1.0 / (w[0] as f64).sqrt();
            [
                filled(w[1], w[0], 0.3 + l as f64, scale),
                filled(1, w[1], 2.1 + l as f64, 0.1),
            ]
        })
        .collect()
}

/// Median wall time of `repeats` calls of `f`.
fn median(repeats: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[repeats / 2]
}

/// One run of the loss on a fresh tape of `T`; with `reverse`, followed by its gradient.
fn one_run<T: Scalar>(fun: &MlpLoss, params: &[DMatrix<T>], reverse: bool) {
    let tape = Tape::<T>::new();
    let vars: Vec<Var<'_, T>> = params.iter().map(|p| tape.var(p.clone())).collect();
    let loss = fun.eval(&tape, &vars).expect("the MLP evaluates");
    if reverse {
        std::hint::black_box(tape.backward(loss).expect("the MLP differentiates"));
    } else {
        std::hint::black_box(loss.value().expect("the loss has a value"));
    }
}

fn main() -> Result<(), CheckError> {
    let fun = MlpLoss {
        x: filled(BATCH, WIDTHS[0], 0.1, 1.5),
        y: filled(BATCH, 1, 4.2, 0.5),
    };
    let params = parameters();
    let settings = GradcheckSettings::default();
    let report = gradcheck(&fun, &params, &settings)?;
    println!("{report}");

    let n: usize = params.iter().map(DMatrix::len).sum();
    // Seeded at one entry, as in the check's runs.
    let mut dual_params: Vec<DMatrix<Dual64>> =
        params.iter().map(|p| p.map(Dual64::from)).collect();
    dual_params[0][0].eps = 1.0;
    let reverse = median(201, || one_run(&fun, &params, true));
    let forward = median(201, || one_run(&fun, &params, false));
    let dual = median(201, || one_run(&fun, &dual_params, false));
    println!(
        "{n} parameters; one run (median of 201): f64 forward + backward {reverse:?}, f64 forward {forward:?}, Dual64 forward {dual:?}"
    );
    let only_dual = GradcheckSettings {
        finite_differences: false,
        ..settings.clone()
    };
    let only_fd = GradcheckSettings {
        dual: false,
        ..settings.clone()
    };
    // The check against the same runs made back to back, both timed as whole batches so that
    // preemption on a busy machine hits them alike.
    let runs_alone = |duals: usize, shifted: usize| {
        median(5, || {
            one_run(&fun, &params, true);
            (0..duals).for_each(|_| one_run(&fun, &dual_params, false));
            (0..shifted).for_each(|_| one_run(&fun, &params, false));
        })
    };
    for (name, s, duals, shifted) in [
        ("Dual64 only", &only_dual, n, 0),
        ("finite differences only", &only_fd, 0, 2 * n),
        ("both (default)", &settings, n, 2 * n),
    ] {
        let check = median(5, || {
            std::hint::black_box(gradcheck(&fun, &params, s).expect("checks"));
        });
        let alone = runs_alone(duals, shifted);
        println!(
            "gradcheck, {name}: {check:?}; its {} runs alone: {alone:?} (ratio {:.2}; medians of 5)",
            1 + duals + shifted,
            check.as_secs_f64() / alone.as_secs_f64()
        );
    }
    Ok(())
}
