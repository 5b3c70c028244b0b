//! Checkpointing between the two extremes: store K intermediate states during the forward
//! pass and use the adjoint method between them (`backsolve-checkpointed:K`), recompute the
//! steps between them exactly (`checkpointed:K`, binomial/revolve), or re-solve them for the
//! dense output that the Gauss and interpolating adjoints read (`gauss:K`,
//! `interpolating:K`), for K = 1, 5, 10, 50 (the continuous adjoints from 5) — against pure
//! backprop (`taped`), pure adjoint (`backsolve`), store-every-step (`aca`), the continuous
//! adjoints over the whole dense output (`gauss`, `interpolating`) and the reversible solver
//! (`reversible`: McCallum & Foster's scheme over the same method with coupling 0.999, whose
//! gradient is compared with the taped gradient of that same reversible solve,
//! `taped-reversible`).
//!
//! ```sh
//! cargo run --release --example checkpointing                      # both workloads, 3 reps
//! cargo run --release --example checkpointing -- --workload horizon --reps 1
//! cargo run --release --example checkpointing -- --problem FILE    # seed workload from a file
//! cargo run --release --example checkpointing -- --json --svg target/ckpt.svg
//! ```
//!
//! Two workloads: `horizon` is `tape_size`'s T = 100 problem (f = mlp(h) − h, 64→64→64→64
//! tanh, h0 32×64, t = [0, 100], L = sum of h(T), same weights and h0); `seed` is
//! `compare_backprop`'s default (64→64→64→64 tanh, h0 32×64, 50 output times in [0, 1],
//! L = sum of h(1), same weights and h0), or a `costate-problem/1` file with `--problem`.
//! Both use dopri5 at rtol 1e-7 / atol 1e-9 (or the file's solver).
//!
//! Per run: the gradient's error relative to the taped one (max abs difference over dL/dh0
//! and every dL/dθ, over the taped gradient's max abs) and relative to a tight-tolerance
//! taped reference (rtol 1e-10, atol 1e-12); held bytes (kept between forward and backward,
//! outputs excluded); peak heap during forward+backward (counting allocator, less the live
//! bytes before); forward and backward NFE; untaped step recomputations; the largest drift
//! of the backward reconstruction of h at a reset (backsolve variants) or the largest
//! reconstruction error of the reversible backward; and the median time of forward+backward
//! over `--reps N` (default 3).
//!
//! Prints a table per workload (or, with `--json`, one object `{"runs": [...]}`) and writes
//! a log-log chart of peak heap against gradient error, one panel per workload (default
//! `target/checkpointing.svg`, `--svg PATH` to override).

mod support;

use std::time::Instant;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::Tape;
use costate::ad_core::TextTable;
use costate::heap::CountingAlloc;
use costate::nn::{Loss, NeuralOde, OdeFunc, ParamSet, Problem, Strategy};
use costate::ode::schedule::min_recomputations;
use costate::ode::{ContinuousAdjoint, Options};
use serde_json::json;
use support::chart::{Axis, Chart, Facets, Marker, Series};
use support::cli::{self, ArgError, Cli, Flag, Matches};
use support::report::{bytes, median};

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The checkpoint counts of the exercise.
const KS: [usize; 4] = [1, 5, 10, 50];

/// Tolerances of the reference gradient.
const REFERENCE_RTOL: f64 = 1e-10;
const REFERENCE_ATOL: f64 = 1e-12;

/// Errors below this are drawn at it on the chart's log axis (the taped run's error is 0).
const ERROR_FLOOR: f64 = 1e-16;

const CLI: Cli = Cli {
    name: "checkpointing",
    about: "Checkpointed gradients between pure backprop and the pure adjoint: error, memory, NFE, time.",
    flags: &[
        Flag::value("--workload", "W", "horizon (T = 100), seed or both (default both)"),
        Flag::value("--problem", "FILE", "a costate-problem/1 file as the seed workload"),
        Flag::value("--reps", "N", "timed repetitions of each run (default 3)"),
        Flag::switch("--json", "print one JSON object {\"runs\": [...]} instead of the tables"),
        Flag::value("--svg", "PATH", "the chart (default target/checkpointing.svg)"),
    ],
};

struct Args {
    horizon: bool,
    seed: bool,
    problem: Option<String>,
    reps: usize,
    json: bool,
    svg: String,
}

fn parse_args(m: &Matches) -> std::result::Result<Args, ArgError> {
    let workload = m.parse_or(
        "--workload",
        "both",
        cli::one_of(&["horizon", "seed", "both"]),
    )?;
    let args = Args {
        horizon: workload != "seed",
        seed: workload != "horizon",
        problem: m.parse("--problem", cli::existing_file)?,
        reps: m.parse_or("--reps", 3, cli::positive)?,
        json: m.has("--json"),
        svg: m.string_or("--svg", "target/checkpointing.svg"),
    };
    if args.problem.is_some() && !args.seed {
        return Err("--problem replaces the seed workload; use --workload seed or both".into());
    }
    Ok(args)
}

/// One problem to differentiate: vector field, weights, initial state, output times, solver
/// options and loss.
struct Workload {
    name: &'static str,
    description: String,
    func: OdeFunc,
    params: ParamSet,
    h0: DMatrix<f64>,
    t: Vec<f64>,
    options: Options,
    loss: Loss,
}

impl Workload {
    fn from_problem(name: &'static str, description: String, problem: Problem) -> Self {
        Workload {
            name,
            description,
            func: problem.func,
            params: problem.params,
            h0: problem.h0,
            t: problem.t,
            options: problem.options,
            loss: problem.loss,
        }
    }
}

/// `tape_size`'s T = 100 problem, with its weights and h0.
fn horizon() -> Result<Workload> {
    let problem = support::workloads::horizon()?;
    let description = problem.file.description.clone();
    Ok(Workload::from_problem("horizon", description, problem))
}

/// `compare_backprop`'s default workload, with its weights and h0, or a problem file.
fn seed(path: Option<&str>) -> Result<Workload> {
    let problem = match path {
        Some(path) => Problem::load(path)?,
        None => support::workloads::synthetic_seed()?,
    };
    let description = match path {
        Some(path) => format!("{path}: {}", problem.file.description),
        None => format!(
            "f = mlp(h), h0 32×64, {} output times in [0, 1], L = sum of h(1)",
            problem.t.len()
        ),
    };
    Ok(Workload::from_problem("seed", description, problem))
}

/// dL/dh0 and dL/dθ of one run.
struct Grad {
    h0: DMatrix<f64>,
    params: Vec<DMatrix<f64>>,
}

impl Grad {
    fn tensors(&self) -> impl Iterator<Item = &DMatrix<f64>> {
        std::iter::once(&self.h0).chain(&self.params)
    }

    /// max |self − other| over every tensor, over max |other|.
    fn rel_err(&self, other: &Grad) -> f64 {
        let diff = self
            .tensors()
            .zip(other.tensors())
            .map(|(a, b)| (a - b).abs().max())
            .fold(0.0, f64::max);
        let scale = other.tensors().map(|b| b.abs().max()).fold(0.0, f64::max);
        if scale > 0.0 {
            diff / scale
        } else {
            diff
        }
    }
}

/// What one strategy did on one workload.
struct Measured {
    grad: Grad,
    steps: usize,
    stored_states: usize,
    held_bytes: usize,
    peak_heap: usize,
    nfe_forward: usize,
    nfe_backward: usize,
    recomputed_steps: usize,
    /// Backsolve's largest drift, or the reversible backward's largest reconstruction error.
    max_drift: Option<f64>,
    time_ms: f64,
}

/// Run forward and backward `reps` times on a fresh tape each time; counts, memory and the
/// gradient come from the first repetition, the time is the median.
fn measure(w: &Workload, strategy: &Strategy, options: &Options, reps: usize) -> Result<Measured> {
    let model = NeuralOde {
        func: w.func.clone(),
        strategy: strategy.clone(),
        options: options.clone(),
    };
    let mut times = Vec::with_capacity(reps);
    let mut first: Option<Measured> = None;
    for _ in 0..reps {
        let tape = Tape::<f64>::new();
        let params = w.params.to_tape(&tape);
        let h0 = tape.var(w.h0.clone());
        let t = tape.constant(DMatrix::from_row_slice(1, w.t.len(), &w.t));
        let before = HEAP.live();
        HEAP.reset_peak();
        let start = Instant::now();
        let sol = model.forward(&tape, h0, t, &params)?;
        let held_bytes = sol.held_bytes()?;
        let loss = w.loss.apply(&tape, &sol.outputs)?;
        let mut grads = tape.backward(loss)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        let peak_heap = HEAP.peak().saturating_sub(before);
        if first.is_none() {
            let back = sol.backward_stats(&grads);
            first = Some(Measured {
                grad: Grad {
                    h0: grads.take_or_zeros(h0)?,
                    params: w.params.grads(&mut grads, &params)?,
                },
                steps: sol.stats.accepted,
                stored_states: sol.strategy.stored_states,
                held_bytes,
                peak_heap,
                nfe_forward: sol.stats.nfe,
                nfe_backward: back.as_ref().map_or(0, |b| b.nfe),
                recomputed_steps: back.as_ref().map_or(0, |b| b.recomputed_steps),
                max_drift: back
                    .as_ref()
                    .and_then(|b| b.max_drift().or(b.max_reconstruction_error())),
                time_ms: 0.0,
            });
        }
    }
    let mut m = first.ok_or("no repetition ran")?;
    m.time_ms = median(&times);
    Ok(m)
}

/// The strategies of the exercise, grouped by family, each with whether it runs over the
/// reversible scheme.
fn strategies() -> Vec<(Strategy, bool)> {
    let mut v = vec![Strategy::Taped, Strategy::backsolve()];
    v.extend(KS.iter().map(|&k| Strategy::backsolve_checkpointed(k)));
    v.push(Strategy::StoreEveryStep);
    v.extend(KS.iter().map(|&k| Strategy::Checkpointed { slots: k }));
    // A stretch's dense output is the continuous adjoints' working set: K = 1 would hold
    // every step's, as without checkpoints.
    let continuous_ks = || KS.iter().copied().filter(|&k| k > 1);
    v.push(Strategy::Gauss(ContinuousAdjoint::default()));
    v.extend(continuous_ks().map(|k| Strategy::Gauss(ContinuousAdjoint::checkpointed(k))));
    v.push(Strategy::Interpolating(ContinuousAdjoint::default()));
    v.extend(continuous_ks().map(|k| Strategy::Interpolating(ContinuousAdjoint::checkpointed(k))));
    let mut v: Vec<(Strategy, bool)> = v.into_iter().map(|s| (s, false)).collect();
    v.push((Strategy::Taped, true));
    v.push((Strategy::Reversible { coupling: None }, true));
    v
}

/// The coupling of the reversible rows.
const COUPLING: f64 = 0.999;

/// A row's name: the strategy's, `taped-reversible` for the taped reversible solve.
fn row_name(s: &Strategy, reversible: bool) -> String {
    match (s, reversible) {
        (Strategy::Taped, true) => "taped-reversible".into(),
        _ => s.name(),
    }
}

/// The K of a checkpointed strategy.
fn k_of(s: &Strategy) -> Option<usize> {
    match s {
        Strategy::BacksolveCheckpointed { checkpoints, .. } => Some(*checkpoints),
        Strategy::Checkpointed { slots } => Some(*slots),
        Strategy::Gauss(c) | Strategy::Interpolating(c) => c.checkpoints,
        _ => None,
    }
}

fn is_backsolve(s: &Strategy) -> bool {
    matches!(
        s,
        Strategy::Backsolve(_) | Strategy::BacksolveCheckpointed { .. }
    )
}

/// One row of the results.
struct Run {
    workload: &'static str,
    strategy: Strategy,
    /// Over the reversible scheme.
    reversible: bool,
    err_vs_taped: f64,
    err_vs_reference: f64,
    m: Measured,
}

/// Every strategy on one workload, plus the reference's step count.
fn run_workload(w: &Workload, reps: usize, progress: bool) -> Result<(Vec<Run>, usize)> {
    let tight = Options {
        rtol: REFERENCE_RTOL,
        atol: REFERENCE_ATOL,
        ..w.options.clone()
    };
    if progress {
        eprintln!("{}: reference (taped, rtol {REFERENCE_RTOL:e})", w.name);
    }
    let reference = measure(w, &Strategy::Taped, &tight, 1)?;
    let reversible_options = w.options.clone().reversible(COUPLING);
    let mut measured = Vec::new();
    for (s, reversible) in strategies() {
        if progress {
            eprintln!("{}: {}", w.name, row_name(&s, reversible));
        }
        let options = if reversible {
            &reversible_options
        } else {
            &w.options
        };
        let m = measure(w, &s, options, reps)?;
        measured.push((s, reversible, m));
    }
    // Each row against the taped gradient of its own discrete solve.
    let taped_of = |reversible: bool| {
        measured
            .iter()
            .find(|(s, r, _)| matches!(s, Strategy::Taped) && *r == reversible)
            .map(|(_, _, m)| Grad {
                h0: m.grad.h0.clone(),
                params: m.grad.params.clone(),
            })
            .ok_or("no taped run")
    };
    let (taped, taped_reversible) = (taped_of(false)?, taped_of(true)?);
    let runs = measured
        .into_iter()
        .map(|(strategy, reversible, m)| Run {
            workload: w.name,
            err_vs_taped: m.grad.rel_err(if reversible {
                &taped_reversible
            } else {
                &taped
            }),
            err_vs_reference: m.grad.rel_err(&reference.grad),
            strategy,
            reversible,
            m,
        })
        .collect();
    Ok((runs, reference.steps))
}

fn print_table(w: &Workload, runs: &[Run], reference_steps: usize, reps: usize) {
    println!(
        "{} — {}; {} at rtol {:e} / atol {:e}; reference: taped at rtol {REFERENCE_RTOL:e} / atol {REFERENCE_ATOL:e} ({reference_steps} steps); median of {reps} runs\n",
        w.name, w.description, w.options.method.name, w.options.rtol, w.options.atol
    );
    let mut table = TextTable::new(&[
        "strategy",
        "K",
        "err vs taped",
        "err vs ref",
        "steps",
        "stored",
        "held",
        "peak heap",
        "NFE fwd",
        "NFE bwd",
        "recomputed",
        "t(N,K)",
        "drift / recon",
        "ms",
    ]);
    let dash = || "—".to_string();
    for r in runs {
        table.row(vec![
            row_name(&r.strategy, r.reversible),
            k_of(&r.strategy).map_or_else(dash, |k| k.to_string()),
            format!("{:.2e}", r.err_vs_taped),
            format!("{:.2e}", r.err_vs_reference),
            r.m.steps.to_string(),
            r.m.stored_states.to_string(),
            bytes(r.m.held_bytes),
            bytes(r.m.peak_heap),
            r.m.nfe_forward.to_string(),
            r.m.nfe_backward.to_string(),
            r.m.recomputed_steps.to_string(),
            match r.strategy {
                Strategy::Checkpointed { slots } => {
                    min_recomputations(r.m.steps, slots).to_string()
                }
                _ => dash(),
            },
            r.m.max_drift.map_or_else(dash, |d| format!("{d:.1e}")),
            format!("{:.1}", r.m.time_ms),
        ]);
    }
    print!("{table}");
    let exact = runs
        .iter()
        .filter(|r| r.strategy.is_exact() && !matches!(r.strategy, Strategy::Taped))
        .map(|r| r.err_vs_taped)
        .fold(0.0, f64::max);
    println!(
        "\nexact strategies (aca, checkpointed:K, reversible): largest error vs the taped gradient of the same solve {exact:.2e}\n\
         err = max abs gradient difference over dL/dh0 and dL/dθ / max abs of the taped (or reference) gradient;\n\
         drift / recon = backsolve's largest drift of h at a reset, or the reversible backward's largest reconstruction error;\n\
         stored = states the forward kept; t(N,K) = Griewank's fewest untaped advances for N steps and K slots, first forward sweep included\n"
    );
}

/// A strategy's family: its name with K replaced by the letter.
fn family(s: &Strategy) -> &'static str {
    match s {
        Strategy::Taped => "taped",
        Strategy::Backsolve(_) => "backsolve",
        Strategy::BacksolveCheckpointed { .. } => "backsolve-checkpointed:K",
        Strategy::StoreEveryStep => "aca",
        Strategy::Checkpointed { .. } => "checkpointed:K",
        Strategy::Auto { .. } => "auto",
        Strategy::Reversible { .. } => "reversible",
        Strategy::Gauss(c) if c.checkpoints.is_some() => "gauss:K",
        Strategy::Gauss(_) => "gauss",
        Strategy::Interpolating(c) if c.checkpoints.is_some() => "interpolating:K",
        Strategy::Interpolating(_) => "interpolating",
    }
}

/// One panel per workload on shared axes. Colour: the family; marker: plain (●), with K
/// checkpoints (■, labelled with K), reversible (▲). Only the K values are written beside
/// the points; the legend names the families.
fn chart(runs: &[Run]) -> Facets {
    let families = [
        ("taped", 0xd62728),
        ("backsolve", 0x1f77b4),
        ("backsolve-checkpointed:K", 0x17becf),
        ("aca", 0x2ca02c),
        ("checkpointed:K", 0xff7f0e),
        ("gauss", 0xe377c2),
        ("gauss:K", 0xe377c2),
        ("interpolating", 0x7f7f7f),
        ("interpolating:K", 0x7f7f7f),
        ("reversible", 0x8c564b),
    ];
    let workloads: Vec<(&str, &str)> = [
        ("horizon", "horizon workload: T = 100"),
        ("seed", "seed workload: 50 outputs in [0, 1]"),
    ]
    .into_iter()
    .filter(|(w, _)| runs.iter().any(|r| r.workload == *w))
    .collect();
    let mut facets = Facets::new(
        "Peak heap against gradient error (gradient error drawn at 1e-16 when smaller)",
        workloads.len(),
    )
    .size(1500, 680);
    for (workload, title) in workloads {
        let mut chart = Chart::new(title)
            .x_axis(Axis::log("peak heap during forward + backward (MiB)"))
            .y_axis(Axis::log("gradient error relative to taped"));
        for (name, color) in families {
            // Runs of one family that land on the same spot share a marker: "K=5,10,50".
            let mut points: Vec<((f64, f64), Vec<usize>)> = Vec::new();
            for r in runs
                .iter()
                .filter(|r| r.workload == workload && family(&r.strategy) == name)
            {
                let (x, y) = (
                    r.m.peak_heap as f64 / (1024.0 * 1024.0),
                    r.err_vs_taped.max(ERROR_FLOOR),
                );
                let near = |&(px, py): &(f64, f64)| {
                    (px / x).ln().abs() < 0.005 && (py / y).ln().abs() < 0.01
                };
                match (k_of(&r.strategy), points.iter_mut().find(|(p, _)| near(p))) {
                    (Some(k), Some((_, ks))) if !ks.is_empty() => ks.push(k),
                    (k, _) => points.push(((x, y), k.into_iter().collect())),
                }
            }
            if points.is_empty() {
                continue;
            }
            let labels = points
                .iter()
                .map(|(_, ks)| {
                    let ks: Vec<String> = ks.iter().map(|k| k.to_string()).collect();
                    if ks.is_empty() {
                        String::new()
                    } else {
                        format!("K={}", ks.join(","))
                    }
                })
                .collect();
            let marker = if name.ends_with(":K") {
                Marker::Square
            } else if name == "reversible" {
                Marker::Triangle
            } else {
                Marker::Circle
            };
            let xy = points.into_iter().map(|(p, _)| p).collect();
            chart = chart.add(
                Series::scatter(name, xy)
                    .color(color)
                    .marker(marker)
                    .labels(labels),
            );
        }
        facets = facets.panel(chart);
    }
    facets
}

fn to_json(r: &Run) -> serde_json::Value {
    json!({
        "workload": r.workload,
        "strategy": row_name(&r.strategy, r.reversible),
        "k": k_of(&r.strategy),
        "grad_rel_err_vs_taped": r.err_vs_taped,
        "grad_rel_err_vs_reference": r.err_vs_reference,
        "held_bytes": r.m.held_bytes,
        "peak_heap_bytes": r.m.peak_heap,
        "nfe_forward": r.m.nfe_forward,
        "nfe_backward": r.m.nfe_backward,
        "recomputed_steps": r.m.recomputed_steps,
        "max_drift": if is_backsolve(&r.strategy) { r.m.max_drift } else { None },
        "max_reconstruction_error": if r.reversible { r.m.max_drift } else { None },
        "time_ms": r.m.time_ms,
    })
}

fn run(args: &Args) -> Result<()> {
    let mut workloads = Vec::new();
    if args.horizon {
        workloads.push(horizon()?);
    }
    if args.seed {
        workloads.push(seed(args.problem.as_deref())?);
    }
    let mut all = Vec::new();
    for w in &workloads {
        let (runs, reference_steps) = run_workload(w, args.reps, !args.json)?;
        if !args.json {
            print_table(w, &runs, reference_steps, args.reps);
        }
        all.extend(runs);
    }
    chart(&all).write_svg(&args.svg)?;
    if args.json {
        let runs: Vec<serde_json::Value> = all.iter().map(to_json).collect();
        println!("{}", json!({ "runs": runs }));
    } else {
        println!("chart: {}", args.svg);
    }
    Ok(())
}

fn main() {
    cli::run_main(&CLI, parse_args, run);
}
