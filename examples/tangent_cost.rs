//! What tangent-aware step control costs (`ErrorControl::WithTangents`) on problems whose
//! gradient primal control already resolves: the seed workload and the T = 100 horizon.
//!
//! ```sh
//! cargo run --release --example tangent_cost
//! cargo run --release --example tangent_cost -- --reps 9 --workload seed
//! cargo run --release --example tangent_cost -- --problem examples/problems/spiral_small.json
//! ```
//!
//! For each workload, primal control and one tangent direction run alternately (A B A B …,
//! `--reps` times each, medians quoted): the untaped forward (`ode::solve`) and the taped
//! forward + backward. Printed: accepted steps, evaluations of f (real and on dual numbers),
//! the median times and their ratio, and how far the tangent-aware gradient is from the
//! primal one (both converged here: they differ by the tolerance, not more).
//!
//! The bound: along a direction in `(h0, θ)`, a dual product `(x + εu)(W + εw)ᵀ` is three
//! real products where the forward does one, so the planning solve costs at least 3 times
//! the forward's product work, and the strategy's forward then replays its steps (once
//! more): at least 4× a product-bound forward, before any extra steps the tangents need.

mod support;

use std::time::Instant;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::Tape;
use costate::nn::{NeuralOde, Problem};
use costate::ode::{solve, ErrorControl, Options, SolveStats, Strategy};
use support::cli::{self, ArgError, Cli, Flag, Matches};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CLI: Cli = Cli {
    name: "tangent_cost",
    about: "What tangent-aware step control costs on the seed workload and the T = 100 horizon.",
    flags: &[
        Flag::value(
            "--workload",
            "W",
            "seed (50 outputs in [0, 1]), horizon (T = 100) or both (default both)",
        ),
        Flag::value(
            "--problem",
            "FILE",
            "a problem file instead of the workloads (examples/problems/*.json)",
        ),
        Flag::value(
            "--reps",
            "N",
            "alternating repetitions of each measurement (default 5)",
        ),
    ],
};

struct Args {
    seed: bool,
    horizon: bool,
    problem: Option<String>,
    reps: usize,
}

fn parse_args(m: &Matches) -> std::result::Result<Args, ArgError> {
    let workload = m.parse_or(
        "--workload",
        "both",
        cli::one_of(&["seed", "horizon", "both"]),
    )?;
    Ok(Args {
        seed: workload != "horizon",
        horizon: workload != "seed",
        problem: m.parse("--problem", cli::existing_file)?,
        reps: m.parse_or("--reps", 5, cli::positive)?,
    })
}

/// One timed run: milliseconds, the forward's counts, and the gradient (taped runs).
struct Timed {
    ms: f64,
    stats: SolveStats,
    grad: Option<Vec<DMatrix<f64>>>,
}

/// One kind of timed run.
type Run = fn(&Problem, &Options) -> Result<Timed>;

fn forward(p: &Problem, opts: &Options) -> Result<Timed> {
    let start = Instant::now();
    let (_, stats) = solve(&p.func, &p.h0, &p.t, p.params.values(), opts)?;
    Ok(Timed {
        ms: start.elapsed().as_secs_f64() * 1e3,
        stats,
        grad: None,
    })
}

fn taped(p: &Problem, opts: &Options) -> Result<Timed> {
    let model = NeuralOde {
        func: p.func.clone(),
        strategy: Strategy::Taped,
        options: opts.clone(),
    };
    let tape = Tape::<f64>::new();
    let params = p.params.to_tape(&tape);
    let h0 = tape.var(p.h0.clone());
    let t = tape.constant(DMatrix::from_row_slice(1, p.t.len(), &p.t));
    let start = Instant::now();
    let sol = model.forward(&tape, h0, t, &params)?;
    let loss = p.loss.apply(&tape, &sol.outputs)?;
    let mut grads = tape.backward(loss)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let mut grad = vec![grads.take_or_zeros(h0)?];
    grad.extend(p.params.grads(&mut grads, &params)?);
    Ok(Timed {
        ms,
        stats: sol.stats,
        grad: Some(grad),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// max |a − b| over max |b|, over every tensor.
fn rel_diff(a: &[DMatrix<f64>], b: &[DMatrix<f64>]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs().max())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs().max()).fold(0.0, f64::max);
    diff / scale
}

fn measure(name: &str, p: &Problem, reps: usize) -> Result<()> {
    let primal = Options {
        error_control: ErrorControl::Primal,
        ..p.options.clone()
    };
    let tangents = primal.clone().with_tangents(1);
    println!(
        "\n{name}: batch {} × dim {}, t ∈ [{}, {}], {} outputs, {} rtol {:e} atol {:e}",
        p.h0.nrows(),
        p.h0.ncols(),
        p.t[0],
        p.t[p.t.len() - 1],
        p.t.len() - 1,
        primal.method.name,
        primal.rtol,
        primal.atol
    );
    println!(
        "{:<28} {:>7} {:>7} {:>9} {:>10} {:>10} {:>7}",
        "run", "steps", "NFE", "dual NFE", "primal ms", "tangent ms", "ratio"
    );
    let kinds: [(&str, Run); 2] = [
        ("forward (solve)", forward),
        ("taped forward + backward", taped),
    ];
    for (kind, run) in kinds {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (mut last_a, mut last_b) = (None, None);
        for _ in 0..reps {
            let x = run(p, &primal)?;
            a.push(x.ms);
            last_a = Some(x);
            let y = run(p, &tangents)?;
            b.push(y.ms);
            last_b = Some(y);
        }
        let (ta, tb) = (median(a), median(b));
        let (Some(x), Some(y)) = (last_a, last_b) else {
            return Err("no repetition ran".into());
        };
        println!(
            "{kind:<28} {:>7} {:>7} {:>9} {ta:>10.2} {tb:>10.2} {:>6.2}x",
            format!("{}/{}", x.stats.accepted, y.stats.accepted),
            format!("{}/{}", x.stats.nfe, y.stats.nfe),
            y.stats.tangent_nfe,
            tb / ta
        );
        if let (Some(gx), Some(gy)) = (&x.grad, &y.grad) {
            println!(
                "{:<28} tangent-aware gradient against the primal one: {:.2e} relative",
                "",
                rel_diff(gy, gx)
            );
        }
    }
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    println!(
        "tangent-aware step control, one direction, against primal control; medians of {} alternating runs",
        args.reps
    );
    println!("steps and NFE: primal/tangents (the tangent run's NFE is its replayed forward's)");
    if let Some(path) = &args.problem {
        measure(path, &Problem::load(path)?, args.reps)?;
        return Ok(());
    }
    if args.seed {
        measure("seed", &support::workloads::synthetic_seed()?, args.reps)?;
    }
    if args.horizon {
        measure("horizon", &support::workloads::horizon()?, args.reps)?;
    }
    println!(
        "\nbound: a dual product (x + εu)(W + εw)ᵀ is 3 real products, so planning costs ≥ 3× a\n\
         product-bound forward and the replay 1× more: ≥ 4× before extra steps"
    );
    Ok(())
}

fn main() {
    cli::run_main(&CLI, parse_args, run);
}
