//! What a gradient check costs on the seed workload (64→64→64→64 tanh MLP, batch 32, 50
//! output times, dopri5 at 1e-7 / 1e-9): `ad_core::gradcheck` makes one `Dual64` solve per
//! input entry it checks, so its cost is n solves on `Tape<Dual64>` (and 2n f64 solves for
//! finite differences). This times a sample of entries through a chosen strategy and prints
//! the per-solve costs, next to one f64 forward and one f64 forward+backward.
//!
//! ```sh
//! cargo run --release --example gradcheck_cost -- [--strategy NAME] [--per-input N]
//! ```

mod support;

use std::str::FromStr;
use std::time::Instant;

use costate::ad_core::check::Entries;
use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::{gradcheck, GradcheckSettings, Scalar, Tape, TapeFunction, Var};
use costate::nn::{NeuralOde, Problem, Strategy};
use support::cli::{self, ArgError, Cli, Flag, Matches};

/// The problem's loss as a function of [h0, θ...], through one strategy.
struct SeedLoss {
    problem: Problem,
    model: NeuralOde,
}

impl TapeFunction for SeedLoss {
    type Error = costate::nn::Error;
    fn eval<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        x: &[Var<'t, T>],
    ) -> Result<Var<'t, T>, Self::Error> {
        let grid = &self.problem.t;
        let t = tape.constant(DMatrix::from_row_slice(1, grid.len(), grid).map(T::constant));
        let sol = self.model.forward(tape, x[0], t, &x[1..])?;
        self.problem.loss.apply(tape, &sol.outputs)
    }
}

const CLI: Cli = Cli {
    name: "gradcheck_cost",
    about: "What a gradient check (one Dual64 solve per checked entry) costs on the seed workload.",
    flags: &[
        Flag::value(
            "--strategy",
            "NAME",
            "gradient strategy checked (default taped)",
        ),
        Flag::value("--per-input", "N", "entries checked per input (default 4)"),
    ],
};

fn main() {
    cli::run_main(&CLI, parse_args, run);
}

fn parse_args(m: &Matches) -> Result<(Strategy, usize), ArgError> {
    Ok((
        m.parse_or("--strategy", Strategy::Taped, Strategy::from_str)?,
        m.parse_or("--per-input", 4, cli::positive)?,
    ))
}

fn run(&(ref strategy, per_input): &(Strategy, usize)) -> Result<(), Box<dyn std::error::Error>> {
    let problem = support::workloads::synthetic_seed()?;
    let model = problem.model(strategy.clone());
    let mut inputs = vec![problem.h0.clone()];
    inputs.extend(problem.params.values().iter().cloned());
    let n: usize = inputs.iter().map(|m| m.len()).sum();
    let fun = SeedLoss { problem, model };

    // One f64 forward and one f64 forward+backward, for scale (medians of 11).
    let tape = Tape::<f64>::new();
    let time = |backward: bool| -> Result<f64, Box<dyn std::error::Error>> {
        let mut times = Vec::new();
        for _ in 0..11 {
            tape.reset()?;
            let start = Instant::now();
            let vars: Vec<_> = inputs.iter().map(|m| tape.var(m.clone())).collect();
            let loss = fun.eval(&tape, &vars)?;
            if backward {
                tape.backward(loss)?;
            }
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(support::report::median(&times))
    };
    let (forward, forward_backward) = (time(false)?, time(true)?);

    let settings = GradcheckSettings {
        entries: Entries::Sample { per_input },
        ..GradcheckSettings::default()
    };
    let start = Instant::now();
    let report = gradcheck(&fun, &inputs, &settings)?;
    let elapsed = start.elapsed().as_secs_f64();
    let e = &report.evaluations;
    // The check's time is its solves: the reverse run and the shifted f64 runs at the costs
    // timed above, the rest Dual64.
    let f64_runs = e.reverse + e.finite_difference;
    let f64_time = e.reverse as f64 * forward_backward + e.finite_difference as f64 * forward;
    let per_dual = (elapsed - f64_time).max(0.0) / e.dual.max(1) as f64;
    println!("{report}");
    println!(
        "strategy {}; {n} input entries, {} checked",
        strategy.name(),
        e.dual
    );
    println!(
        "one f64 forward solve: {:.2} ms; forward+backward: {:.2} ms",
        forward * 1e3,
        forward_backward * 1e3
    );
    println!(
        "this check: {:.2} s for {} Dual64 + {} f64 solves; one Dual64 solve ≈ {:.2} ms ({:.1}× an f64 forward)",
        elapsed,
        e.dual,
        f64_runs,
        per_dual * 1e3,
        per_dual / forward
    );
    println!(
        "every entry (n = {n}): {n} Dual64 + {} f64 solves ≈ {:.0} s",
        2 * n + 1,
        n as f64 * per_dual + (2 * n + 1) as f64 * forward
    );
    if !report.passed() {
        return Err("the gradient check failed".into());
    }
    Ok(())
}
