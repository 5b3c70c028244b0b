//! How memory scales with the horizon in each gradient mode: taped memory grows with the
//! steps, the adjoint's does not.
//!
//! `cargo run --release --example tape_size [-- --json] [--svg PATH]`
//!
//! f = mlp(h) − h (64→64→64→64 tanh, so the state stays bounded), h0 32×64, t = [0, T] for
//! T in {1, 5, 20, 100}, dopri5 at rtol 1e-7 / atol 1e-9, L = sum of h(T). Per mode: steps,
//! NFE, tape nodes, held bytes (kept between forward and backward, outputs excluded), peak
//! heap during forward+backward (counting allocator), and the gradient gap between modes.
//! Writes an SVG chart of held bytes against NFE (default `target/tape_size.svg`).

use std::error::Error;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::Tape;
use costate::heap::CountingAlloc;
use costate::nn::{Activation, NeuralOde, OdeFunc, ParamSet, Strategy};
use costate::report::{bytes, svg_line_chart, Series, Table};
use rand::{Rng, SeedableRng};
use serde_json::json;

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

struct Row {
    horizon: f64,
    mode: Strategy,
    accepted: usize,
    rejected: usize,
    nfe_forward: usize,
    nfe_backward: usize,
    tape_nodes: usize,
    held_bytes: usize,
    peak_heap: usize,
    grad_h0: DMatrix<f64>,
    grad_params: Vec<DMatrix<f64>>,
}

fn measure(
    func: &OdeFunc,
    params: &ParamSet,
    h0: &DMatrix<f64>,
    horizon: f64,
    mode: Strategy,
) -> Result<Row, Box<dyn Error>> {
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
    Ok(Row {
        horizon,
        mode,
        accepted: sol.stats.accepted,
        rejected: sol.stats.rejected,
        nfe_forward: sol.stats.nfe,
        nfe_backward: sol.backward_stats(&grads).map_or(0, |s| s.nfe),
        tape_nodes,
        held_bytes,
        peak_heap,
        grad_h0: grads.take_or_zeros(h0v)?,
        grad_params: params.grads(&mut grads, &vars)?,
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json_out = args.iter().any(|a| a == "--json");
    let svg_path = args
        .iter()
        .position(|a| a == "--svg")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/tape_size.svg".into());

    let func = OdeFunc::new(64, &[64, 64], Activation::Tanh)?.with_subtract_state();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let params = func.mlp.init_params(&mut rng);
    let h0 = DMatrix::from_fn(32, 64, |_, _| rng.random_range(-1.0..1.0));

    let mut rows = Vec::new();
    for horizon in [1.0, 5.0, 20.0, 100.0] {
        for mode in [Strategy::Taped, Strategy::backsolve()] {
            rows.push(measure(&func, &params, &h0, horizon, mode)?);
        }
    }
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

    if json_out {
        let entries: Vec<serde_json::Value> = rows
            .chunks(2)
            .flat_map(|pair| {
                let (dh0, dth) = gap(&pair[0], &pair[1]);
                pair.iter().map(move |r| {
                    json!({"T": r.horizon, "mode": r.mode.name(), "accepted": r.accepted, "rejected": r.rejected,
                           "nfe_forward": r.nfe_forward, "nfe_backward": r.nfe_backward, "tape_nodes": r.tape_nodes,
                           "held_bytes": r.held_bytes, "peak_heap_bytes": r.peak_heap,
                           "grad_gap_h0": dh0, "grad_gap_theta": dth})
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(entries));
    } else {
        let mut table = Table::new(&[
            "T",
            "mode",
            "steps",
            "NFE fwd",
            "NFE bwd",
            "tape nodes",
            "held",
            "peak heap",
            "|Δ dL/dh0|",
            "|Δ dL/dθ|",
        ]);
        for pair in rows.chunks(2) {
            let (dh0, dth) = gap(&pair[0], &pair[1]);
            for r in pair {
                table.row(vec![
                    format!("{}", r.horizon),
                    r.mode.name(),
                    format!("{}+{}", r.accepted, r.rejected),
                    r.nfe_forward.to_string(),
                    r.nfe_backward.to_string(),
                    r.tape_nodes.to_string(),
                    bytes(r.held_bytes),
                    bytes(r.peak_heap),
                    format!("{dh0:.1e}"),
                    format!("{dth:.1e}"),
                ]);
            }
        }
        println!("f = mlp(h) − h, h0 32×64, t = [0, T], dopri5 rtol 1e-7 atol 1e-9; |Δ| = max abs gap taped vs adjoint\n");
        print!("{}", table.render());
    }

    let series = |mode: Strategy, color: &str| Series {
        label: mode.name(),
        points: rows
            .iter()
            .filter(|r| r.mode.name() == mode.name())
            .map(|r| {
                (
                    (r.nfe_forward + r.nfe_backward) as f64,
                    r.held_bytes as f64 / (1024.0 * 1024.0),
                )
            })
            .collect(),
        color: color.into(),
        markers: true,
    };
    let svg = svg_line_chart(
        "Bytes held between forward and backward (T = 1, 5, 20, 100)",
        "NFE (forward + backward)",
        "held MiB",
        &[
            series(Strategy::Taped, "#d62728"),
            series(Strategy::backsolve(), "#1f77b4"),
        ],
    );
    if let Some(dir) = std::path::Path::new(&svg_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&svg_path, svg)?;
    if !json_out {
        println!("\nchart: {svg_path}");
    }
    Ok(())
}
