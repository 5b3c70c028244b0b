//! How memory scales with the horizon under each gradient strategy: taped memory grows with
//! the steps, store-every-step (`aca`) keeps one state per step, the checkpointed strategies
//! and the adjoint stay (nearly) flat, and `auto` picks by its budget.
//!
//! `cargo run --release --example tape_size [-- --json] [--svg PATH]`
//!
//! f = mlp(h) − h (64→64→64→64 tanh, so the state stays bounded), h0 32×64, t = [0, T] for
//! T in {1, 5, 20, 100}, dopri5 at rtol 1e-7 / atol 1e-9, L = sum of h(T). Strategies:
//! `taped`, `backsolve`, `backsolve-checkpointed:10`, `aca`, `checkpointed:10`, `gauss`,
//! `gauss:10`, `interpolating`, `reversible` (McCallum & Foster's scheme over dopri5 with
//! coupling 0.999: a different discrete solve, so its gap to taped is the two solves'
//! difference) and `auto:8388608` (an 8 MiB budget). Per run: steps, NFE, untaped recomputations, tape
//! nodes, held bytes (kept between forward and backward, outputs excluded), peak heap during
//! forward+backward (counting allocator), the backward's peak as the library reports it
//! (`BackwardStats::peak_bytes`, what the backward itself allocates; for taped an estimate of
//! its pending cotangents), and the gradient gap to taped at the same T.
//! Writes a log-log SVG chart of peak heap against NFE, one line per strategy (default
//! `target/tape_size.svg`).

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

mod support;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::Tape;
use costate::ad_core::TextTable;
use costate::heap::CountingAlloc;
use costate::nn::{Activation, NeuralOde, OdeFunc, ParamSet, Strategy};
use costate::ode::ContinuousAdjoint;
use costate::rand::{Rng, SeedableRng};
use serde_json::json;
use support::chart::{Axis, Chart, Series};
use support::cli::{self, ArgError, Cli, Flag, Matches};
use support::report::bytes;
use support::styles::strategy_style;

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

/// The budget of the `auto` strategy.
const AUTO_BUDGET: usize = 8 * 1024 * 1024;

/// The strategies shown.
fn strategies() -> [Strategy; 10] {
    [
        Strategy::Taped,
        Strategy::backsolve(),
        Strategy::backsolve_checkpointed(10),
        Strategy::StoreEveryStep,
        Strategy::Checkpointed { slots: 10 },
        Strategy::Gauss(ContinuousAdjoint::default()),
        Strategy::Gauss(ContinuousAdjoint::checkpointed(10)),
        Strategy::Interpolating(ContinuousAdjoint::default()),
        Strategy::Reversible { coupling: None },
        Strategy::Auto {
            budget_bytes: AUTO_BUDGET,
            strict: false,
        },
    ]
}

struct Row {
    horizon: f64,
    mode: Strategy,
    /// What ran (for `auto`, the strategy it chose).
    ran: String,
    reason: String,
    recomputed_steps: usize,
    accepted: usize,
    rejected: usize,
    nfe_forward: usize,
    nfe_backward: usize,
    tape_nodes: usize,
    held_bytes: usize,
    peak_heap: usize,
    /// The library's own account of the backward's peak.
    reported_backward_peak: Option<usize>,
    grad_h0: DMatrix<f64>,
    grad_params: Vec<DMatrix<f64>>,
}

fn measure(
    func: &OdeFunc,
    params: &ParamSet,
    h0: &DMatrix<f64>,
    horizon: f64,
    mode: Strategy,
) -> Result<Row> {
    let model = NeuralOde::new(func.clone(), mode.clone());
    let tape = Tape::<f64>::new();
    let vars = params.to_tape(&tape);
    let h0v = tape.var(h0.clone());
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, horizon]));
    let before = HEAP.live();
    HEAP.reset_peak();
    let sol = model.forward(&tape, h0v, t, &vars)?;
    let (tape_nodes, held_bytes) = (tape.stats().nodes, sol.held_bytes()?);
    let mut grads = tape.backward(sol.last().sum())?;
    let peak_heap = HEAP.peak().saturating_sub(before);
    let back = sol.backward_stats(&grads);
    Ok(Row {
        horizon,
        mode,
        ran: sol.strategy.name.clone(),
        reason: sol.strategy.reason.clone(),
        recomputed_steps: back.as_ref().map_or(0, |s| s.recomputed_steps),
        accepted: sol.stats.accepted,
        rejected: sol.stats.rejected,
        nfe_forward: sol.stats.nfe,
        nfe_backward: back.as_ref().map_or(0, |s| s.nfe),
        tape_nodes,
        held_bytes,
        peak_heap,
        reported_backward_peak: back.as_ref().map(|s| s.peak_bytes),
        grad_h0: grads.take_or_zeros(h0v)?,
        grad_params: params.grads(&mut grads, &vars)?,
    })
}

const CLI: Cli = Cli {
    name: "tape_size",
    about: "How memory scales with the horizon under each gradient strategy.",
    flags: &[
        Flag::switch("--json", "print one JSON object instead of the table"),
        Flag::value("--svg", "PATH", "the chart (default target/tape_size.svg)"),
    ],
};

struct Args {
    json: bool,
    svg: String,
}

fn parse_args(m: &Matches) -> std::result::Result<Args, ArgError> {
    Ok(Args {
        json: m.has("--json"),
        svg: m.string_or("--svg", "target/tape_size.svg"),
    })
}

fn main() {
    cli::run_main(&CLI, parse_args, run);
}

fn run(args: &Args) -> Result<()> {
    let (json_out, svg_path) = (args.json, &args.svg);

    let func = OdeFunc::new(64, &[64, 64], Activation::Tanh)?.with_subtract_state();
    let mut rng = costate::rand::rngs::StdRng::seed_from_u64(0);
    let params = func.mlp.init_params(&mut rng);
    let h0 = DMatrix::from_fn(32, 64, |_, _| rng.random_range(-1.0..1.0));

    let modes = strategies();
    let mut rows = Vec::new();
    for horizon in [1.0, 5.0, 20.0, 100.0] {
        for mode in &modes {
            rows.push(measure(&func, &params, &h0, horizon, mode.clone())?);
        }
    }
    // Gradient gap of every row to the taped row of the same horizon (each chunk starts
    // with taped).
    let gap = |a: &Row, b: &Row| -> (f64, f64) {
        let dh0 = (&a.grad_h0 - &b.grad_h0).abs().max();
        let dth = a
            .grad_params
            .iter()
            .zip(&b.grad_params)
            .map(|(x, y)| (x - y).abs().max())
            .fold(0.0, f64::max);
        (dh0, dth)
    };
    let gaps: Vec<(f64, f64)> = rows
        .chunks(modes.len())
        .flat_map(|chunk| chunk.iter().map(|r| gap(r, &chunk[0])))
        .collect();

    if json_out {
        let entries: Vec<serde_json::Value> = rows
            .iter()
            .zip(&gaps)
            .map(|(r, &(dh0, dth))| {
                json!({"T": r.horizon, "mode": r.mode.name(), "ran_as": r.ran, "strategy_reason": r.reason,
                       "accepted": r.accepted, "rejected": r.rejected,
                       "nfe_forward": r.nfe_forward, "nfe_backward": r.nfe_backward,
                       "recomputed_steps": r.recomputed_steps, "tape_nodes": r.tape_nodes,
                       "held_bytes": r.held_bytes, "peak_heap_bytes": r.peak_heap,
                       "reported_backward_peak_bytes": r.reported_backward_peak,
                       "grad_gap_h0": dh0, "grad_gap_theta": dth})
            })
            .collect();
        println!("{}", serde_json::Value::Array(entries));
    } else {
        let mut table = TextTable::new(&[
            "T",
            "strategy",
            "ran as",
            "steps",
            "NFE fwd",
            "NFE bwd",
            "recomputed",
            "tape nodes",
            "held",
            "peak heap",
            "reported bwd peak",
            "|Δ dL/dh0|",
            "|Δ dL/dθ|",
        ]);
        for (r, &(dh0, dth)) in rows.iter().zip(&gaps) {
            table.row(vec![
                format!("{}", r.horizon),
                r.mode.name(),
                r.ran.clone(),
                format!("{}+{}", r.accepted, r.rejected),
                r.nfe_forward.to_string(),
                r.nfe_backward.to_string(),
                r.recomputed_steps.to_string(),
                r.tape_nodes.to_string(),
                bytes(r.held_bytes),
                bytes(r.peak_heap),
                r.reported_backward_peak.map_or_else(|| "—".into(), bytes),
                format!("{dh0:.1e}"),
                format!("{dth:.1e}"),
            ]);
        }
        println!("f = mlp(h) − h, h0 32×64, t = [0, T], dopri5 rtol 1e-7 atol 1e-9; |Δ| = max abs gradient gap to taped at the same T\n");
        print!("{table}");
        println!();
        for r in rows
            .iter()
            .filter(|r| matches!(r.mode, Strategy::Auto { .. }))
        {
            println!("T = {}, {}: {}", r.horizon, r.mode.name(), r.reason);
        }
    }

    // Auto first, so that the strategy it chose draws over it.
    let mut order: Vec<_> = modes.iter().collect();
    order.sort_by_key(|mode| !matches!(mode, Strategy::Auto { .. }));
    let mut chart = Chart::new("Peak heap, forward + backward (T = 1, 5, 20, 100 left to right)")
        .x_axis(Axis::log("NFE (forward + backward)"))
        .y_axis(Axis::log("peak heap (counting allocator)"));
    for mode in order {
        let (color, marker) = strategy_style(mode);
        let runs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.mode.name() == mode.name())
            .collect();
        let points = runs
            .iter()
            // What a user pays (held bytes are in the table beside it).
            .map(|r| {
                (
                    (r.nfe_forward + r.nfe_backward) as f64,
                    (r.peak_heap as f64).max(1.0),
                )
            })
            .collect();
        // Auto's points say what it chose.
        let labels = runs
            .iter()
            .map(|r| match r.mode {
                Strategy::Auto { .. } => format!("auto→{}", r.ran),
                _ => String::new(),
            })
            .collect();
        let name = match mode {
            Strategy::Auto { .. } => format!("{} (8 MiB)", mode.name()),
            _ => mode.name(),
        };
        chart = chart.add(
            Series::line_points(name, points)
                .color(color)
                .marker(marker)
                .labels(labels),
        );
    }
    chart.write_svg(svg_path)?;
    if !json_out {
        println!("\nchart: {svg_path}");
    }
    Ok(())
}
