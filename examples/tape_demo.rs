//! A small network on the tape: value, gradients and tape statistics.
//!
//! Run with `cargo run --release --example tape_demo`.

mod support;

use costate::ad_core::{Result, Tape};
use costate::nalgebra::DMatrix;
use support::cli::{self, Cli};

const CLI: Cli = Cli {
    name: "tape_demo",
    about: "A small network on the tape: value, gradients and tape statistics.",
    flags: &[],
};

fn main() {
    // Errors print with Display: one line that says what went wrong and how to fix it.
    cli::run_main(&CLI, |_| Ok(()), |()| run());
}

fn run() -> Result<()> {
    // A 2-layer tanh MLP, 4 → 8 → 2, on a batch of 3, regressing onto fixed targets.
    let init = |r: usize, c: usize, s: f64| {
        DMatrix::from_fn(r, c, |i, j| ((i * c + j) as f64 * s).sin() * 0.5)
    };
    let tape = Tape::<f64>::new();
    let x = tape.constant(init(3, 4, 0.7));
    let target = tape.constant(init(3, 2, 1.3));
    let w1 = tape.var(init(8, 4, 0.37));
    let b1 = tape.var(DMatrix::zeros(1, 8));
    let w2 = tape.var(init(2, 8, 0.53));
    let b2 = tape.var(DMatrix::from_element(1, 2, 0.1));

    let hidden = x.matmul_t(w1)?.add_row(b1)?.tanh();
    let out = hidden.matmul_t(w2)?.add_row(b2)?;
    let loss = out.mse(target)?;
    let grads = tape.backward(loss)?;

    println!("loss = {:.6}", loss.scalar_value()?);
    for (name, p) in [("W1", w1), ("b1", b1), ("W2", w2), ("b2", b2)] {
        let g = grads.get(p).expect("every parameter reaches the loss");
        println!("dL/d{name}: shape {:?}, norm {:.6}", g.shape(), g.norm());
    }
    let stats = tape.stats();
    println!(
        "\ntape: {} nodes ({} recorded ops), {} bytes held for backward",
        stats.nodes, stats.graph_nodes, stats.held_bytes
    );
    for (op, n) in &stats.per_op {
        println!("  {op:<10} {n}");
    }
    Ok(())
}
