//! Reversible solvers on the fixed-step, long-horizon training workload of McCallum &
//! Foster (arXiv 2410.11648): the white-dwarf neural ODE of
//! `examples/problems/white_dwarf.json` (y' = mlp([t, y]), 3 → 10 → 2 tanh, 1000 steps of
//! dt = 0.005, a loss on every step).
//!
//! ```sh
//! cargo run --release --example reversible                        # RK4, 5 reps
//! cargo run --release --example reversible -- --method midpoint --reps 9
//! cargo run --release --example reversible -- --json
//! cargo run --release --example reversible -- --train 200        # Adam with the reversible strategy
//! ```
//!
//! Strategies: taped, aca and checkpointed:2/4/8 on the plain method, taped and reversible
//! on McCallum & Foster's reversible scheme over it (coupling 0.999). Per strategy: the
//! median time of one gradient evaluation (forward + backward; the strategies are run in
//! turn, A B C … A B C …, so the shared machine's noise falls on all alike), held bytes
//! (between forward and backward), peak heap during forward + backward (counting allocator,
//! above the live bytes before), forward and backward NFE, the gradient's error against the
//! taped gradient of the same discrete solve and against the file's JAX reference for it,
//! and the reversible backward's worst reconstruction error. Then the ratio of the
//! reversible strategy's time to checkpointed:K's, with both peak heaps.

mod support;

use std::time::Instant;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::{Tape, TextTable};
use costate::heap::CountingAlloc;
use costate::nn::reversible_problem::{BaseSolver, ReversibleProblem, Scheme};
use costate::nn::{Adam, ProblemGradients, Strategy};
use serde_json::json;
use support::cli::{self, ArgError, Cli, Flag, Matches};
use support::report::{bytes, median};

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/problems/white_dwarf.json"
);

/// The checkpointed strategies' slot counts.
const KS: [usize; 3] = [2, 4, 8];

const CLI: Cli = Cli {
    name: "reversible",
    about:
        "Reversible solvers against taped, aca and checkpointed on a 1000-step training workload.",
    flags: &[
        Flag::value("--method", "M", "rk4, midpoint or dopri5 (default rk4)"),
        Flag::value(
            "--reps",
            "N",
            "timed repetitions of each strategy (default 5)",
        ),
        Flag::switch("--json", "print one JSON object instead of the table"),
        Flag::value(
            "--train",
            "N",
            "also train N Adam steps with the reversible strategy",
        ),
    ],
};

struct Args {
    method: String,
    reps: usize,
    json: bool,
    train: Option<usize>,
}

fn parse_args(m: &Matches) -> std::result::Result<Args, ArgError> {
    Ok(Args {
        method: m
            .parse_or(
                "--method",
                "rk4",
                cli::one_of(&["rk4", "midpoint", "dopri5"]),
            )?
            .to_owned(),
        reps: m.parse_or("--reps", 5, cli::positive)?,
        json: m.has("--json"),
        train: m.parse("--train", cli::positive)?,
    })
}

/// One strategy on one discrete solve.
struct Run {
    strategy: Strategy,
    scheme: Scheme,
}

impl Run {
    fn label(&self) -> String {
        match self.scheme {
            Scheme::Base => self.strategy.name(),
            Scheme::Reversible => format!("{} (rev. scheme)", self.strategy.name()),
        }
    }
}

fn runs() -> Vec<Run> {
    let base = [Strategy::Taped, Strategy::StoreEveryStep]
        .into_iter()
        .chain(KS.iter().map(|&slots| Strategy::Checkpointed { slots }));
    let reversible = [Strategy::Taped, Strategy::Reversible { coupling: None }];
    base.map(|strategy| Run {
        strategy,
        scheme: Scheme::Base,
    })
    .chain(reversible.into_iter().map(|strategy| Run {
        strategy,
        scheme: Scheme::Reversible,
    }))
    .collect()
}

/// What one run measured: the gradients of its first repetition, and every repetition's
/// time and peak heap.
struct Measured {
    gradients: ProblemGradients,
    times_ms: Vec<f64>,
    peak_heap: Vec<usize>,
}

/// One gradient evaluation on a fresh tape: the gradients, the time and the peak heap.
fn evaluate(
    problem: &ReversibleProblem,
    solver: &BaseSolver,
    run: &Run,
) -> Result<(ProblemGradients, f64, usize)> {
    let options = problem.options(solver, run.scheme)?;
    let tape = Tape::<f64>::new();
    let before = HEAP.start();
    let start = Instant::now();
    let g = problem.gradients_on(&tape, solver, &options, &run.strategy)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((g, ms, HEAP.peak_above(before)))
}

/// max |a − b| over dL/dy0 and every dL/dθ, over max |b|.
fn rel_err(a: &ProblemGradients, b_h0: &DMatrix<f64>, b_params: &[DMatrix<f64>]) -> f64 {
    let ours = std::iter::once(&a.h0).chain(&a.params);
    let theirs: Vec<&DMatrix<f64>> = std::iter::once(b_h0).chain(b_params).collect();
    let diff = ours
        .zip(&theirs)
        .map(|(x, y)| (x - *y).abs().max())
        .fold(0.0, f64::max);
    let scale = theirs.iter().map(|y| y.abs().max()).fold(0.0, f64::max);
    diff / scale
}

/// A measured run with its errors.
struct Row<'a> {
    run: &'a Run,
    m: Measured,
    err_vs_taped: f64,
    err_vs_jax: f64,
    reconstruction: Option<f64>,
}

impl Row<'_> {
    fn time_ms(&self) -> f64 {
        median(&self.m.times_ms)
    }

    fn peak_heap(&self) -> usize {
        self.m.peak_heap.iter().copied().max().unwrap_or(0)
    }

    fn held(&self) -> usize {
        self.m.gradients.footprint.map_or(0, |f| f.held_bytes)
    }

    fn nfe_backward(&self) -> usize {
        self.m.gradients.backward.as_ref().map_or(0, |b| b.nfe)
    }
}

fn measure_all<'a>(
    problem: &ReversibleProblem,
    solver: &BaseSolver,
    runs: &'a [Run],
    reps: usize,
) -> Result<Vec<Row<'a>>> {
    let mut measured: Vec<Option<Measured>> = runs.iter().map(|_| None).collect();
    // One untimed round warms caches and the allocator; then the strategies take turns.
    for round in 0..=reps {
        for (run, slot) in runs.iter().zip(&mut measured) {
            let (g, ms, peak) = evaluate(problem, solver, run)?;
            if round == 0 {
                *slot = Some(Measured {
                    gradients: g,
                    times_ms: Vec::new(),
                    peak_heap: Vec::new(),
                });
            } else if let Some(m) = slot {
                m.times_ms.push(ms);
                m.peak_heap.push(peak);
            }
        }
    }
    let measured: Vec<Measured> = measured.into_iter().flatten().collect();
    let taped_of = |scheme: Scheme| {
        runs.iter()
            .zip(&measured)
            .find(|(r, _)| r.scheme == scheme && matches!(r.strategy, Strategy::Taped))
            .map(|(_, m)| (m.gradients.h0.clone(), m.gradients.params.clone()))
            .ok_or("no taped run")
    };
    let taped = [taped_of(Scheme::Base)?, taped_of(Scheme::Reversible)?];
    Ok(runs
        .iter()
        .zip(measured)
        .map(|(run, m)| {
            let (h0, params) = &taped[usize::from(run.scheme == Scheme::Reversible)];
            let jax = &solver.reference(run.scheme).gradients;
            Row {
                run,
                err_vs_taped: rel_err(&m.gradients, h0, params),
                err_vs_jax: rel_err(&m.gradients, &jax.h0, &jax.params),
                reconstruction: m
                    .gradients
                    .backward
                    .as_ref()
                    .and_then(|b| b.max_reconstruction_error()),
                m,
            }
        })
        .collect())
}

fn print_table(problem: &ReversibleProblem, solver: &BaseSolver, rows: &[Row], reps: usize) {
    println!(
        "white dwarf: y' = mlp([t, y]), 3→10→2 tanh, {} steps of dt = {} with {} ({}), \
         loss on every step; reversible scheme: coupling {}; median of {reps} runs, \
         strategies in turn\n",
        problem.nsteps, problem.dt, solver.name, solver.method.name, problem.coupling
    );
    let mut table = TextTable::new(&[
        "strategy",
        "ms",
        "held",
        "peak heap",
        "NFE fwd",
        "NFE bwd",
        "err vs taped",
        "err vs JAX",
        "reconstruction",
    ]);
    for r in rows {
        table.row(vec![
            r.run.label(),
            format!("{:.2}", r.time_ms()),
            bytes(r.held()),
            bytes(r.peak_heap()),
            r.m.gradients.forward.nfe.to_string(),
            r.nfe_backward().to_string(),
            format!("{:.2e}", r.err_vs_taped),
            format!("{:.2e}", r.err_vs_jax),
            r.reconstruction
                .map_or_else(|| "—".to_string(), |e| format!("{e:.1e}")),
        ]);
    }
    print!("{table}");
    println!(
        "\nerr = max abs difference over dL/dy0 and dL/dθ / max abs of the reference: the taped \
         gradient of the same discrete solve, and JAX's (the file's `checkpointed` for the \
         plain method, `reversible` for the scheme)\n"
    );
}

/// Reversible time / checkpointed:K time, and both peak heaps.
fn ratios<'a>(rows: &'a [Row<'a>]) -> Vec<(usize, f64, usize, usize)> {
    let Some(rev) = rows
        .iter()
        .find(|r| matches!(r.run.strategy, Strategy::Reversible { .. }))
    else {
        return Vec::new();
    };
    KS.iter()
        .filter_map(|&k| {
            let c = rows.iter().find(
                |r| matches!(r.run.strategy, Strategy::Checkpointed { slots } if slots == k),
            )?;
            Some((
                k,
                rev.time_ms() / c.time_ms(),
                rev.peak_heap(),
                c.peak_heap(),
            ))
        })
        .collect()
}

fn print_ratios(rows: &[Row]) {
    let mut table = TextTable::new(&[
        "K",
        "reversible / checkpointed:K time",
        "reversible peak heap",
        "checkpointed:K peak heap",
    ]);
    for (k, ratio, rev, ckpt) in ratios(rows) {
        table.row(vec![
            k.to_string(),
            format!("{ratio:.2}"),
            bytes(rev),
            bytes(ckpt),
        ]);
    }
    print!("{table}");
}

fn to_json(r: &Row) -> serde_json::Value {
    json!({
        "strategy": r.run.strategy.name(),
        "scheme": match r.run.scheme { Scheme::Base => "base", Scheme::Reversible => "reversible" },
        "time_ms": r.time_ms(),
        "times_ms": r.m.times_ms,
        "held_bytes": r.held(),
        "peak_heap_bytes": r.peak_heap(),
        "nfe_forward": r.m.gradients.forward.nfe,
        "nfe_backward": r.nfe_backward(),
        "grad_rel_err_vs_taped": r.err_vs_taped,
        "grad_rel_err_vs_jax": r.err_vs_jax,
        "max_reconstruction_error": r.reconstruction,
    })
}

/// `steps` Adam steps on the weights with the reversible strategy, printing the loss.
fn train(
    problem: &ReversibleProblem,
    solver: &BaseSolver,
    steps: usize,
    json: bool,
) -> Result<Vec<f64>> {
    let options = problem.options(solver, Scheme::Reversible)?;
    let strategy = Strategy::Reversible { coupling: None };
    let mut params = problem.params.clone();
    let mut opt = Adam::new(1e-2);
    let tape = Tape::<f64>::new();
    let y0 = problem.y0.clone();
    let every = (steps / 10).max(1);
    let mut losses = Vec::with_capacity(steps);
    if !json {
        println!(
            "\ntraining: Adam(1e-2), reversible strategy on the reversible {} scheme",
            solver.name
        );
    }
    for step in 0..steps {
        let loss = costate::nn::train_step(&tape, &mut params, &mut opt, |tape, p| {
            let sol = problem.solve(tape, tape.constant(y0.clone()), p, &options, &strategy)?;
            problem.loss(tape, solver, &sol.outputs)
        })?;
        losses.push(loss);
        if !json && (step % every == 0 || step + 1 == steps) {
            println!("step {step:>5}: loss {loss:.6}");
        }
    }
    Ok(losses)
}

fn run(args: &Args) -> Result<()> {
    let problem = ReversibleProblem::load(FILE)?;
    let solver = problem.solver(&args.method)?;
    let runs = runs();
    let rows = measure_all(&problem, solver, &runs, args.reps)?;
    let losses = match args.train {
        Some(steps) if !args.json => {
            print_table(&problem, solver, &rows, args.reps);
            print_ratios(&rows);
            Some(train(&problem, solver, steps, false)?)
        }
        Some(steps) => Some(train(&problem, solver, steps, true)?),
        None => {
            if !args.json {
                print_table(&problem, solver, &rows, args.reps);
                print_ratios(&rows);
            }
            None
        }
    };
    if args.json {
        let ratios: Vec<serde_json::Value> = ratios(&rows)
            .into_iter()
            .map(|(k, ratio, rev, ckpt)| {
                json!({"k": k, "time_ratio": ratio, "reversible_peak_heap_bytes": rev, "checkpointed_peak_heap_bytes": ckpt})
            })
            .collect();
        let runs: Vec<serde_json::Value> = rows.iter().map(to_json).collect();
        println!(
            "{}",
            json!({
                "method": solver.name,
                "reps": args.reps,
                "runs": runs,
                "reversible_vs_checkpointed": ratios,
                "training_losses": losses,
            })
        );
    }
    Ok(())
}

fn main() {
    cli::run_main(&CLI, parse_args, run);
}
