//! Gradient strategies side by side on one neural ODE — by default taped `odeint` against
//! the backsolve adjoint, the seed textbook's `compare_backprop_methods`: NFE, gradient
//! agreement, tape size, held bytes, recomputations, drift and time.
//!
//! ```sh
//! cargo run --release --example compare_backprop                     # dim 64, batch 32, 50 times
//! cargo run --release --example compare_backprop -- --problem examples/problems/seed.json
//! cargo run --release --example compare_backprop -- --json --reps 20
//! cargo run --release --example compare_backprop -- --modes taped,aca,checkpointed:2,auto:3000000
//! ```
//! `--modes` takes comma-separated strategy names (`taped`, `backsolve`,
//! `backsolve-checkpointed:K`, `aca`, `checkpointed:K`, `auto:BYTES`; default
//! `taped,backsolve`); every mode's gradient is compared with the first mode's. With
//! `--problem FILE` (a `costate-problem/1` file) it also prints each mode's error against the
//! file's `tight` reference gradients. With `--json` it prints one JSON object with an entry
//! per mode, keyed by the mode's name as given, in the problem file's layout, beside the CPU,
//! the product kernel and the threads. The product-bound table is headed by the same three
//! (`COSTATE_PRODUCT_KERNEL=matrixmultiply` or `gemm` pins the kernel, to compare them).
//! `--precision
//! f32` runs the tape, the solve and the gradients in `f32` (the file's values rounded once);
//! gradient errors are then those of the `f32` run.

mod support;

use std::error::Error;
use std::str::FromStr;
use std::time::Instant;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::Tape;
use costate::ad_core::TextTable;
use costate::nn::json::nested;
use costate::nn::problem::GradientSet;
use costate::nn::{BackwardStats, Footprint, Problem, ProblemGradients, Strategy};
use serde_json::json;
use support::cli::{self, ArgError, Cli, Flag, Matches};
use support::report::{bytes, median, peak_rss_bytes, product_setup};

/// The scalar the solves run in.
#[derive(Clone, Copy, PartialEq)]
enum Precision {
    F64,
    F32,
}

struct Args {
    problem: Option<String>,
    json: bool,
    reps: usize,
    precision: Precision,
    /// The requested modes: the name as given and the strategy it parses to.
    modes: Vec<(String, Strategy)>,
}

const CLI: Cli = Cli {
    name: "compare_backprop",
    about: "Gradient strategies side by side on one neural ODE: NFE, agreement, memory, time.",
    flags: &[
        Flag::value(
            "--problem",
            "FILE",
            "a costate-problem/1 file (default: the seed workload)",
        ),
        Flag::switch("--json", "print one JSON object with an entry per mode"),
        Flag::value("--reps", "N", "timed repetitions of each mode (default 20)"),
        Flag::value(
            "--modes",
            "M1,M2,...",
            "strategy names, compared with the first (default taped,backsolve)",
        ),
        Flag::value("--precision", "P", "f64 or f32 (default f64)"),
    ],
};

/// Parse `--modes`: comma-separated strategy names, no repeats.
fn parse_modes(list: &str) -> Result<Vec<(String, Strategy)>, String> {
    let mut modes: Vec<(String, Strategy)> = Vec::new();
    for name in list.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(format!("{list:?} has an empty entry"));
        }
        let strategy = Strategy::from_str(name).map_err(|e| e.to_string())?;
        if modes.iter().any(|(n, _)| n == name) {
            return Err(format!("{name:?} is listed twice"));
        }
        modes.push((name.to_owned(), strategy));
    }
    Ok(modes)
}

fn parse_args(m: &Matches) -> Result<Args, ArgError> {
    Ok(Args {
        problem: m.parse("--problem", cli::existing_file)?,
        json: m.has("--json"),
        reps: m.parse_or("--reps", 20, cli::positive)?,
        precision: match m.parse_or("--precision", "f64", cli::one_of(&["f64", "f32"]))? {
            "f32" => Precision::F32,
            _ => Precision::F64,
        },
        modes: match m.parse("--modes", parse_modes)? {
            Some(modes) => modes,
            None => parse_modes("taped,backsolve")?,
        },
    })
}

impl Precision {
    fn name(self) -> &'static str {
        match self {
            Precision::F64 => "f64",
            Precision::F32 => "f32",
        }
    }
}

/// What one mode produced.
struct Run {
    /// The mode's name as given on the command line.
    name: String,
    /// Loss, gradients and statistics of the first repetition.
    g: ProblemGradients,
    time_ms: f64,
}

impl Run {
    /// What ran (for `auto:BYTES`, the strategy it chose).
    fn ran(&self) -> &str {
        &self.g.strategy.name
    }

    fn backward<R: Default>(&self, f: impl Fn(&BackwardStats) -> R) -> R {
        self.g.backward.as_ref().map_or_else(R::default, f)
    }

    fn footprint(&self) -> Footprint {
        self.g.footprint.unwrap_or_default()
    }
}

fn run<P: costate::ad_core::Precision>(
    problem: &Problem,
    name: &str,
    mode: &Strategy,
    reps: usize,
) -> Result<Run, Box<dyn Error>> {
    let tape = Tape::<P>::new();
    let mut times = Vec::with_capacity(reps);
    let mut first = None;
    for _ in 0..reps {
        // Free the previous repetition's tape outside the timed region.
        tape.reset()?;
        let start = Instant::now();
        let g = problem.gradients_on(&tape, mode)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        first.get_or_insert(g);
    }
    Ok(Run {
        name: name.to_owned(),
        g: first.ok_or("no repetition ran")?.widen(),
        time_ms: median(&times),
    })
}

fn max_abs_diff(a: &[&DMatrix<f64>], b: &[&DMatrix<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x - *y).abs().max())
        .fold(0.0, f64::max)
}

/// One quantity's error: name, max abs, relative to max |ref|.
type QuantityError = (String, f64, f64);

/// Max abs and relative (max abs / max |ref|) error of a run against a reference set.
fn error_vs(run: &Run, reference: &GradientSet) -> Result<Vec<QuantityError>, Box<dyn Error>> {
    let reference = reference.tensors()?;
    let worst_and_scale = |a: &[DMatrix<f64>], b: &[DMatrix<f64>]| {
        let abs = a.iter().zip(b).map(|(x, y)| (x - y).abs().max());
        let scale = b.iter().map(|y| y.abs().max());
        (abs.fold(0.0, f64::max), scale.fold(0.0, f64::max))
    };
    let mut out = vec![(
        "dL/dh0",
        worst_and_scale(
            std::slice::from_ref(&run.g.h0),
            std::slice::from_ref(&reference.h0),
        ),
    )];
    out.push(("dL/dθ", worst_and_scale(&run.g.params, &reference.params)));
    if let Some(gt) = &reference.t {
        out.push((
            "dL/dt",
            worst_and_scale(std::slice::from_ref(&run.g.t), std::slice::from_ref(gt)),
        ));
    }
    Ok(out
        .into_iter()
        .map(|(n, (a, m))| (n.to_owned(), a, if m > 0.0 { a / m } else { a }))
        .collect())
}

fn to_json(r: &Run) -> serde_json::Value {
    let layers: Vec<serde_json::Value> = r
        .g
        .params
        .chunks(2)
        .map(|wb| json!({"weight": nested(&wb[0]), "bias": wb[1].iter().copied().collect::<Vec<f64>>()}))
        .collect();
    json!({
        "loss": r.g.loss,
        "grad_h0": nested(&r.g.h0),
        "grad_layers": layers,
        "grad_t": r.g.t.iter().copied().collect::<Vec<f64>>(),
        "nfe_forward": r.g.forward.nfe,
        "nfe_backward": r.backward(|b| b.nfe),
        "accepted_forward": r.g.forward.accepted,
        "rejected_forward": r.g.forward.rejected,
        "tape_nodes": r.footprint().tape_nodes,
        "held_bytes": r.footprint().held_bytes,
        "recomputed_steps": r.backward(|b| b.recomputed_steps),
        "max_drift": r.backward(|b| b.max_drift()),
        "strategy_reason": r.g.strategy.reason,
        "time_ms": r.time_ms,
    })
}

fn main() {
    cli::run_main(&CLI, parse_args, compare);
}

/// The layers' weight matrices (out × in), without the biases.
fn weights(problem: &Problem) -> impl Iterator<Item = &DMatrix<f64>> {
    let p = &problem.params;
    p.names()
        .iter()
        .zip(p.values())
        .filter(|(name, _)| name.ends_with(".weight"))
        .map(|(_, w)| w)
}

/// Seconds the matrix products of one evaluation of f take at this process's own product
/// rate: each layer's `x Wᵀ` (batch × in · (out × in)ᵀ) timed on its own through the tape's
/// `matmul_t`, so on the kernel the solves use (`ad_core::product_kernel`), median of 15
/// (after 3 warm-up runs), summed over the layers, at the thread count in effect
/// (`MATMUL_NUM_THREADS`, lowered by `ad_core::set_max_threads`).
fn product_seconds_per_evaluation<P: costate::ad_core::Precision>(
    problem: &Problem,
) -> Result<f64, Box<dyn Error>> {
    let tape = Tape::<P>::new();
    let _values_only = tape.no_grad();
    let batch = problem.h0.nrows();
    let mut total = 0.0;
    for w in weights(problem) {
        let x = DMatrix::from_fn(batch, w.ncols(), |i, j| {
            P::round_from(((i + 3 * j) as f64).sin())
        });
        let (x, w) = (tape.constant(x), tape.constant(w.map(P::round_from)));
        let mut times = Vec::new();
        for rep in 0..18 {
            let mark = tape.mark();
            let start = Instant::now();
            x.matmul_t(w)?;
            let elapsed = start.elapsed().as_secs_f64();
            tape.rewind(mark)?;
            if rep >= 3 {
                times.push(elapsed);
            }
        }
        total += median(&times);
    }
    Ok(total)
}

/// The distance to the product-bound for taped and backsolve on an MLP field: the FLOPs of
/// the evaluations and VJPs performed (an evaluation's products are F = 2·batch·Σ in·out, a
/// VJP's 2F: the input's and the weights' cotangents), at the product rate this process
/// measures on one core and on all the cores it may use. Taped pulls back every forward
/// evaluation (an overcount by the rejected steps' stages, none on the shipped problems);
/// each backsolve backward evaluation is f plus its VJP. Other strategies mix replays and
/// untaped recomputations and are left out.
fn print_flop_bound(
    problem: &Problem,
    runs: &[Run],
    precision: Precision,
) -> Result<(), Box<dyn Error>> {
    let batch = problem.h0.nrows() as f64;
    let flops_per_eval: f64 = weights(problem)
        .map(|w| 2.0 * batch * (w.nrows() * w.ncols()) as f64)
        .sum();
    let measure = || match precision {
        Precision::F64 => product_seconds_per_evaluation::<f64>(problem),
        Precision::F32 => product_seconds_per_evaluation::<f32>(problem),
    };
    // The products' rate on one core and on every core this process may use, in one run.
    let cores = costate::ad_core::set_max_threads(1);
    let one_core = measure();
    costate::ad_core::set_max_threads(cores);
    let (one_core, all_cores) = (one_core?, measure()?);
    println!("\nproducts measured on: {}", product_setup());
    for (n, seconds) in [(1, one_core), (cores, all_cores)] {
        println!(
            "\nproduct bound ({}, {n} thread{}): one evaluation's products take {:.3} ms here = {:.1} GFLOP/s",
            precision.name(),
            if n == 1 { "" } else { "s" },
            seconds * 1e3,
            flops_per_eval / seconds / 1e9
        );
    }
    let mut t = TextTable::new(&[
        "mode",
        "f evals",
        "VJPs",
        "GFLOP",
        "bound 1 core ms",
        &format!("bound {cores} cores ms"),
        "measured ms",
        "measured / bound 1",
        &format!("measured / bound {cores}"),
    ]);
    for r in runs {
        let (evals, vjps) = match r.ran() {
            "taped" => (r.g.forward.nfe, r.g.forward.nfe),
            "backsolve" => {
                let back = r.backward(|b| b.nfe);
                (r.g.forward.nfe + back, back)
            }
            _ => continue,
        };
        let units = evals as f64 + 2.0 * vjps as f64;
        let (bound_1, bound_n) = (units * one_core * 1e3, units * all_cores * 1e3);
        t.row(vec![
            r.name.clone(),
            evals.to_string(),
            vjps.to_string(),
            format!("{:.2}", units * flops_per_eval / 1e9),
            format!("{bound_1:.2}"),
            format!("{bound_n:.2}"),
            format!("{:.2}", r.time_ms),
            format!("{:.2}", r.time_ms / bound_1),
            format!("{:.2}", r.time_ms / bound_n),
        ]);
    }
    print!("{t}");
    Ok(())
}

/// max |Δ| of dL/dh0, dL/dθ and dL/dt between two runs.
fn gaps(a: &Run, b: &Run) -> [f64; 3] {
    [
        max_abs_diff(&[&a.g.h0], &[&b.g.h0]),
        max_abs_diff(
            &a.g.params.iter().collect::<Vec<_>>(),
            &b.g.params.iter().collect::<Vec<_>>(),
        ),
        max_abs_diff(&[&a.g.t], &[&b.g.t]),
    ]
}

fn compare(args: &Args) -> Result<(), Box<dyn Error>> {
    let problem = match &args.problem {
        Some(path) => Problem::load(path)?,
        None => support::workloads::synthetic_seed()?,
    };
    let runs = args
        .modes
        .iter()
        .map(|(name, mode)| match args.precision {
            Precision::F64 => run::<f64>(&problem, name, mode, args.reps),
            Precision::F32 => run::<f32>(&problem, name, mode, args.reps),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let reference = problem.file.reference.as_ref();

    if args.json {
        let mut obj = serde_json::Map::new();
        for r in &runs {
            obj.insert(r.name.clone(), to_json(r));
        }
        obj.insert("peak_rss_bytes".into(), json!(peak_rss_bytes()));
        obj.insert("precision".into(), json!(args.precision.name()));
        obj.insert("cpu".into(), json!(support::report::cpu_model()));
        obj.insert(
            "product_kernel".into(),
            match costate::ad_core::product_kernel_setting() {
                Ok(kernel) => json!(kernel.name()),
                Err(e) => json!({ "error": e.to_string() }),
            },
        );
        let threads = costate::ad_core::thread_setting();
        obj.insert(
            "threads".into(),
            match threads {
                Ok(n) => json!(n),
                Err(e) => json!({ "error": e.to_string() }),
            },
        );
        println!("{}", serde_json::Value::Object(obj));
        return Ok(());
    }

    let (b, d) = (problem.h0.nrows(), problem.h0.ncols());
    println!(
        "neural ODE: batch {b}, dim {d}, {} parameters, {} output times in [{}, {}], {} at rtol {:e} / atol {:e}, in {}; median of {} runs\n",
        problem.params.numel(),
        problem.t.len(),
        problem.t[0],
        problem.t[problem.t.len() - 1],
        problem.options.method.name,
        problem.options.rtol,
        problem.options.atol,
        args.precision.name(),
        args.reps
    );
    let first = &runs[0];
    let mut table = TextTable::new(&[
        "mode",
        "ran as",
        "loss",
        "NFE fwd",
        "NFE bwd",
        "steps",
        "recomputed",
        "tape nodes",
        "held",
        "max drift",
        "|Δ dL/dh0|",
        "|Δ dL/dθ|",
        "|Δ dL/dt|",
        "fwd+bwd ms",
    ]);
    for (i, r) in runs.iter().enumerate() {
        let gap = gaps(r, first);
        let gap = |j: usize| {
            if i == 0 {
                "(ref)".to_string()
            } else {
                format!("{:.2e}", gap[j])
            }
        };
        table.row(vec![
            r.name.clone(),
            r.ran().to_owned(),
            format!("{:.10}", r.g.loss),
            r.g.forward.nfe.to_string(),
            r.backward(|b| b.nfe).to_string(),
            format!("{}+{}", r.g.forward.accepted, r.g.forward.rejected),
            r.backward(|b| b.recomputed_steps).to_string(),
            r.footprint().tape_nodes.to_string(),
            bytes(r.footprint().held_bytes),
            r.backward(|b| b.max_drift())
                .map_or_else(|| "—".into(), |d| format!("{d:.1e}")),
            gap(0),
            gap(1),
            gap(2),
            format!("{:.3}", r.time_ms),
        ]);
    }
    print!("{table}");
    println!(
        "\n|Δ| = max abs gradient difference against the first mode ({}); max |dL/dh0| {:.3}, max |dL/dθ| {:.3}",
        first.name,
        first.g.h0.abs().max(),
        first.g.params.iter().map(|g| g.abs().max()).fold(0.0, f64::max),
    );
    for r in runs.iter().filter(|r| r.ran() != r.name) {
        println!("{}: {}", r.name, r.g.strategy.reason);
    }
    if let Some(reference) = reference {
        println!("\nerror against the file's tight reference (max abs / relative to max |ref|):");
        let mut t = TextTable::new(&["mode", "quantity", "max abs", "rel"]);
        for r in &runs {
            for (q, abs, rel) in error_vs(r, &reference.tight)? {
                t.row(vec![
                    format!("costate {}", r.name),
                    q,
                    format!("{abs:.2e}"),
                    format!("{rel:.2e}"),
                ]);
            }
        }
        for (name, g) in [
            ("torchdiffeq odeint", &reference.odeint),
            ("torchdiffeq adjoint", &reference.odeint_adjoint),
        ] {
            let h0 = costate::nn::json::matrix(&g.grad_h0, "reference")?;
            let th = costate::nn::json::matrix(&reference.tight.grad_h0, "reference")?;
            t.row(vec![
                name.into(),
                "dL/dh0".into(),
                format!("{:.2e}", (&h0 - &th).abs().max()),
                format!("{:.2e}", (&h0 - &th).abs().max() / th.abs().max()),
            ]);
        }
        print!("{t}");
        if let Some(nfe) = reference.odeint.extra.get("nfe_forward") {
            println!("torchdiffeq forward NFE on this file: {nfe}");
        }
    }
    print_flop_bound(&problem, &runs, args.precision)?;
    if let Some(rss) = peak_rss_bytes() {
        println!("\npeak RSS of this process: {}", bytes(rss));
    }
    Ok(())
}
