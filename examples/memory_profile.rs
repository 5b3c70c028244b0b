//! The memory-profiling exercise: every gradient strategy across batch sizes, hidden widths
//! and tolerances — forward and backward NFE, held bytes, the peak heap during forward +
//! backward (counting allocator) and the backward peak the library reports itself
//! (`BackwardStats::peak_bytes`) — and a chart of memory against NFE per strategy.
//!
//! ```sh
//! cargo run --release --example memory_profile                 # the full sweep (216 runs)
//! cargo run --release --example memory_profile -- --quick      # 12 runs, a few seconds
//! cargo run --release --example memory_profile -- --json --svg target/memory.svg
//! ```
//!
//! f = mlp(h) − h (dim 32 → hidden → hidden → 32, tanh; contracting, so every strategy's
//! backward stays bounded), h0 batch × 32, t = [0, 1], L = sum of h(1), dopri5 at rtol r and
//! atol r / 100. Sweep: batch {8, 32, 128} × hidden {32, 64, 256} × rtol {1e-3, 1e-5, 1e-7,
//! 1e-9} × the strategies `taped`, `backsolve`, `backsolve-checkpointed:8`, `aca`,
//! `checkpointed:8` and `auto:8388608` (an 8 MiB budget; the table says what it ran).
//!
//! Memory follows `docs/design.md`: *held bytes* are what the tape keeps between forward and
//! backward (outputs excluded); *peak heap* is the counting allocator's maximum of live bytes
//! during forward + backward, above the live bytes before the forward (parameters and h0 are
//! on the tape by then). *Reported* is the library's own account of the backward's peak,
//! which counts only what the backward allocates (so it sits below the forward + backward
//! peak by what the forward left live); for taped it is an estimate of the cotangents its
//! backward keeps pending (its tape is held bytes). Backsolve's held bytes are the smallest
//! everywhere, but its peak heap is not: the summary line lists the configurations where it
//! exceeds taped's.
//!
//! Prints a table (or, with `--json`, `{"runs": [...]}` with the keys `strategy`, `batch`,
//! `hidden`, `rtol`, `nfe_forward`, `nfe_backward`, `held_bytes`, `peak_heap_bytes`, plus
//! `ran_as` (auto's choice) and `reported_backward_peak_bytes`), and
//! writes log-log charts of peak heap against NFE, one panel per batch × hidden width on
//! shared axes, one line per strategy through its tolerances (default
//! `target/memory_profile.svg`).

mod support;

use std::time::Instant;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::Tape;
use costate::ad_core::TextTable;
use costate::heap::CountingAlloc;
use costate::nn::{Activation, NeuralOde, OdeFunc, Strategy};
use costate::ode::Options;
use costate::rand::{Rng, SeedableRng};
use serde_json::json;
use support::chart::{Axis, Chart, Facets, Series};
use support::cli::{self, ArgError, Cli, Flag, Matches};
use support::report::bytes;
use support::styles::strategy_style;

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// State dimension.
const DIM: usize = 32;
/// Checkpoints of the checkpointed strategies.
const K: usize = 8;
/// The budget of the `auto` strategy.
const AUTO_BUDGET: usize = 8 * 1024 * 1024;

const CLI: Cli = Cli {
    name: "memory_profile",
    about: "Every gradient strategy across batch, width and tolerance: NFE, held bytes, peak heap.",
    flags: &[
        Flag::switch(
            "--quick",
            "one configuration, two tolerances (12 runs) instead of 216 runs",
        ),
        Flag::switch(
            "--json",
            "print one JSON object {\"runs\": [...]} instead of the table",
        ),
        Flag::value(
            "--svg",
            "PATH",
            "the chart (default target/memory_profile.svg)",
        ),
    ],
};

struct Args {
    quick: bool,
    json: bool,
    svg: String,
}

fn parse_args(m: &Matches) -> std::result::Result<Args, ArgError> {
    Ok(Args {
        quick: m.has("--quick"),
        json: m.has("--json"),
        svg: m.string_or("--svg", "target/memory_profile.svg"),
    })
}

/// The strategies of the exercise.
fn strategies() -> [Strategy; 6] {
    [
        Strategy::Taped,
        Strategy::backsolve(),
        Strategy::backsolve_checkpointed(K),
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: K },
        Strategy::Auto {
            budget_bytes: AUTO_BUDGET,
            strict: false,
        },
    ]
}

/// One configuration of the sweep.
#[derive(Clone, Copy)]
struct Config {
    batch: usize,
    hidden: usize,
    rtol: f64,
}

/// What one strategy did on one configuration.
struct Run {
    config: Config,
    strategy: Strategy,
    ran_as: String,
    nfe_forward: usize,
    nfe_backward: usize,
    held_bytes: usize,
    peak_heap: usize,
    reported_backward_peak: Option<usize>,
}

/// Forward and backward of `strategy` on a fresh tape, measured.
fn measure(config: Config, strategy: &Strategy) -> Result<Run> {
    let func =
        OdeFunc::new(DIM, &[config.hidden, config.hidden], Activation::Tanh)?.with_subtract_state();
    // The same weights and h0 for every strategy of a configuration.
    let mut rng = costate::rand::rngs::StdRng::seed_from_u64(config.hidden as u64);
    let params = func.mlp.init_params(&mut rng);
    let h0 = DMatrix::from_fn(config.batch, DIM, |_, _| rng.random_range(-1.0..1.0));
    let model = NeuralOde {
        func,
        strategy: strategy.clone(),
        options: Options {
            rtol: config.rtol,
            atol: config.rtol / 100.0,
            ..Options::default()
        },
    };
    let tape = Tape::<f64>::new();
    let vars = params.to_tape(&tape);
    let h0v = tape.var(h0);
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
    let before = HEAP.start();
    let sol = model.forward(&tape, h0v, t, &vars)?;
    let held_bytes = sol.held_bytes()?;
    let grads = tape.backward(sol.last().sum())?;
    let peak_heap = HEAP.peak_above(before);
    let back = sol.backward_stats(&grads);
    Ok(Run {
        config,
        strategy: strategy.clone(),
        ran_as: sol.strategy.name.clone(),
        nfe_forward: sol.stats.nfe,
        nfe_backward: back.as_ref().map_or(0, |b| b.nfe),
        held_bytes,
        peak_heap,
        reported_backward_peak: back.map(|b| b.peak_bytes),
    })
}

fn configs(quick: bool) -> Vec<Config> {
    let (batches, hiddens, rtols): (&[usize], &[usize], &[f64]) = if quick {
        (&[8], &[32], &[1e-3, 1e-5])
    } else {
        (&[8, 32, 128], &[32, 64, 256], &[1e-3, 1e-5, 1e-7, 1e-9])
    };
    let mut out = Vec::new();
    for &batch in batches {
        for &hidden in hiddens {
            for &rtol in rtols {
                out.push(Config {
                    batch,
                    hidden,
                    rtol,
                });
            }
        }
    }
    out
}

fn print_table(runs: &[Run]) {
    let mut table = TextTable::new(&[
        "strategy",
        "batch",
        "hidden",
        "rtol",
        "ran as",
        "NFE fwd",
        "NFE bwd",
        "held",
        "peak heap",
        "reported bwd peak",
    ]);
    for r in runs {
        table.row(vec![
            r.strategy.name(),
            r.config.batch.to_string(),
            r.config.hidden.to_string(),
            format!("{:e}", r.config.rtol),
            if r.ran_as == r.strategy.name() {
                "".into()
            } else {
                r.ran_as.clone()
            },
            r.nfe_forward.to_string(),
            r.nfe_backward.to_string(),
            bytes(r.held_bytes),
            bytes(r.peak_heap),
            r.reported_backward_peak.map_or_else(|| "—".into(), bytes),
        ]);
    }
    print!("{table}");
}

/// Backsolve against taped, per configuration: the ratio of their peak heaps.
fn print_backsolve_vs_taped(runs: &[Run]) {
    let peak = |c: &Config, name: &str| {
        runs.iter()
            .find(|r| {
                r.strategy.name() == name
                    && r.config.batch == c.batch
                    && r.config.hidden == c.hidden
                    && r.config.rtol == c.rtol
            })
            .map(|r| r.peak_heap)
    };
    let mut ratios: Vec<(Config, f64)> = runs
        .iter()
        .filter(|r| matches!(r.strategy, Strategy::Taped))
        .filter_map(|r| {
            let b = peak(&r.config, "backsolve")?;
            Some((r.config, b as f64 / r.peak_heap as f64))
        })
        .collect();
    ratios.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Held bytes make backsolve look smallest everywhere; peak heap does not always agree.
    let above: Vec<&(Config, f64)> = ratios.iter().filter(|(_, r)| *r > 1.0).collect();
    println!(
        "backsolve's peak heap exceeds taped's in {} of {} configurations{}",
        above.len(),
        ratios.len(),
        if above.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                above
                    .iter()
                    .map(|(c, r)| format!(
                        "batch {} hidden {} rtol {:e} ({r:.2}x)",
                        c.batch, c.hidden, c.rtol
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    if let (Some(lo), Some(hi)) = (ratios.first(), ratios.last()) {
        println!(
            "backsolve's peak heap / taped's: from {:.3} (batch {}, hidden {}, rtol {:e}) to {:.3} (batch {}, hidden {}, rtol {:e})",
            lo.1, lo.0.batch, lo.0.hidden, lo.0.rtol, hi.1, hi.0.batch, hi.0.hidden, hi.0.rtol
        );
    }
}

/// Small multiples: one panel per batch × hidden width (rows: batch, columns: width), on
/// shared axes; in each, one line per strategy through its tolerances (rtol 1e-3 at the
/// fewest evaluations).
fn chart(runs: &[Run]) -> Facets {
    let mut batches: Vec<usize> = runs.iter().map(|r| r.config.batch).collect();
    let mut hiddens: Vec<usize> = runs.iter().map(|r| r.config.hidden).collect();
    for v in [&mut batches, &mut hiddens] {
        v.sort_unstable();
        v.dedup();
    }
    let (lo, hi) = runs.iter().fold((f64::INFINITY, 0.0f64), |(a, b), r| {
        (a.min(r.config.rtol), b.max(r.config.rtol))
    });
    let mut facets = Facets::new(
        format!(
            "Peak heap against NFE per configuration (one point per rtol, {hi:e} … {lo:e}; {} runs)",
            runs.len()
        ),
        hiddens.len(),
    )
    .size(
        (380 * hiddens.len() as u32 + 280).max(900),
        300 * batches.len() as u32 + 80,
    );
    for &batch in &batches {
        for &hidden in &hiddens {
            let mut panel = Chart::new(format!("batch {batch} · hidden {hidden}"))
                .x_axis(Axis::log("NFE (forward + backward)"))
                .y_axis(Axis::log("peak heap (MiB)"));
            // Auto first, so that the strategy it chose draws over it.
            let mut order = strategies();
            order.rotate_right(1);
            for strategy in order {
                let (color, marker) = strategy_style(&strategy);
                let mut points: Vec<(f64, f64, f64)> = runs
                    .iter()
                    .filter(|r| {
                        r.strategy.name() == strategy.name()
                            && r.config.batch == batch
                            && r.config.hidden == hidden
                    })
                    .map(|r| {
                        (
                            r.config.rtol,
                            (r.nfe_forward + r.nfe_backward) as f64,
                            r.peak_heap as f64 / (1024.0 * 1024.0),
                        )
                    })
                    .collect();
                // Loose to tight tolerance.
                points.sort_by(|a, b| b.0.total_cmp(&a.0));
                panel = panel.add(
                    Series::line_points(
                        strategy.name(),
                        points.iter().map(|&(_, x, y)| (x, y)).collect(),
                    )
                    .color(color)
                    .marker(marker),
                );
            }
            facets = facets.panel(panel);
        }
    }
    facets
}

fn to_json(r: &Run) -> serde_json::Value {
    json!({
        "strategy": r.strategy.name(),
        "batch": r.config.batch,
        "hidden": r.config.hidden,
        "rtol": r.config.rtol,
        "nfe_forward": r.nfe_forward,
        "nfe_backward": r.nfe_backward,
        "held_bytes": r.held_bytes,
        "peak_heap_bytes": r.peak_heap,
        "ran_as": r.ran_as,
        "reported_backward_peak_bytes": r.reported_backward_peak,
    })
}

fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    let mut runs = Vec::new();
    let configs = configs(args.quick);
    for (i, config) in configs.iter().enumerate() {
        if !args.json {
            eprintln!(
                "[{}/{}] batch {}, hidden {}, rtol {:e}",
                i + 1,
                configs.len(),
                config.batch,
                config.hidden,
                config.rtol
            );
        }
        for strategy in strategies() {
            runs.push(measure(*config, &strategy)?);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    chart(&runs).write_svg(&args.svg)?;
    if args.json {
        let runs: Vec<serde_json::Value> = runs.iter().map(to_json).collect();
        println!("{}", json!({ "runs": runs }));
    } else {
        println!(
            "f = mlp(h) − h ({DIM} → hidden → hidden → {DIM}, tanh), h0 batch × {DIM}, t = [0, 1], dopri5 at rtol r / atol r/100; K = {K}, auto budget {AUTO_BUDGET} B\n"
        );
        print_table(&runs);
        println!();
        print_backsolve_vs_taped(&runs);
        println!("{} runs in {wall:.1} s; chart: {}", runs.len(), args.svg);
    }
    Ok(())
}

fn main() {
    cli::run_main(&CLI, parse_args, run);
}
