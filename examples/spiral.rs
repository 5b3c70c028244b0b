//! torchdiffeq's `ode_demo`: learn the spiral dy/dt = (y³) A from short random segments.
//!
//! `cargo run --release --example spiral -- [--mode taped|adjoint] [--iters 200] [--precision f64|f32] [--json] [--svg PATH] [--quiet]`
//!
//! True dynamics dy/dt = y³ A with A = [[-0.1, 2], [-2, -0.1]], y0 = [2, 0], 1000 points on
//! [0, 25]. Each iteration draws 20 random start points and fits 10-point segments with an
//! `OdeFunc` (2 → 50 → 2, tanh, applied to y³), loss = mean |pred − true|, Adam. Ends with a
//! phase-plane plot of the true and learned trajectories, equal aspect, the gradient strategy
//! in its title (default `target/spiral.svg`).
//! `--precision f32` trains in `f32` (parameters, tape, solves, updates), as `ode_demo` does.

mod support;

use std::error::Error;
use std::time::Instant;

// `dmatrix!` expands to paths through `nalgebra::`: the re-export under that name serves it.
use costate::ad_core::nalgebra::{self, dmatrix, DMatrix};
use costate::ad_core::{Precision, Result as TapeResult, Scalar, Tape, Var};
use costate::nn::{train_step_ode, Activation, Adam, Input, NeuralOde, OdeFunc, Strategy};
use costate::ode::{self, Dynamics, Options};
use costate::rand::{Rng, SeedableRng};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use support::chart::{Axis, Chart, Series};
use support::cli::{self, ArgError, Cli, Flag, Matches};
use support::report::median;

const DATA_SIZE: usize = 1000;
const BATCH_TIME: usize = 10;
const BATCH_SIZE: usize = 20;

/// The true field dy/dt = y³ A.
#[derive(Clone)]
struct Spiral;

impl<T: Scalar> Dynamics<T> for Spiral {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let a = dmatrix![-0.1, 2.0; -2.0, -0.1].map(T::constant);
        h.powi(3).matmul(h.tape().constant(a))
    }
}

struct Args {
    mode: Strategy,
    iters: usize,
    /// Train in f32 rather than f64.
    f32: bool,
    json: bool,
    quiet: bool,
    svg: String,
}

const CLI: Cli = Cli {
    name: "spiral",
    about: "torchdiffeq's ode_demo: learn the spiral dy/dt = y³ A from short random segments.",
    flags: &[
        Flag::value(
            "--mode",
            "NAME",
            "gradient strategy: taped, adjoint, aca, checkpointed:K, ... (default taped)",
        ),
        Flag::value("--iters", "N", "Adam iterations (default 200)"),
        Flag::value("--precision", "P", "f64 or f32 (default f64)"),
        Flag::switch("--json", "print one JSON object instead of the summary"),
        Flag::value(
            "--svg",
            "PATH",
            "the phase-plane chart (default target/spiral.svg)",
        ),
        Flag::switch("--quiet", "no progress bar"),
    ],
};

fn parse_args(m: &Matches) -> Result<Args, ArgError> {
    Ok(Args {
        // Any strategy name: taped, adjoint / backsolve, aca, checkpointed:K, ...
        mode: m.parse_or("--mode", Strategy::Taped, str::parse::<Strategy>)?,
        iters: m.parse_or("--iters", 200, cli::positive)?,
        f32: m.parse_or("--precision", "f64", cli::one_of(&["f64", "f32"]))? == "f32",
        json: m.has("--json"),
        quiet: m.has("--quiet"),
        svg: m.string_or("--svg", "target/spiral.svg"),
    })
}

fn main() {
    cli::run_main(&CLI, parse_args, run);
}

/// What a training run produced: the final parameters (as f64) and per-iteration figures.
struct Training {
    params: costate::nn::ParamSet,
    losses: Vec<f64>,
    times: Vec<f64>,
    nfe_fwd: Vec<f64>,
    nfe_bwd: Vec<f64>,
}

/// `args.iters` Adam iterations in precision `P` from `params`.
fn train<P: Precision>(
    args: &Args,
    model: &NeuralOde,
    mut params: costate::nn::ParamSet<P>,
    true_y: &[DMatrix<f64>],
    batch_t: &DMatrix<f64>,
    rng: &mut costate::rand::rngs::StdRng,
) -> Result<Training, Box<dyn Error>> {
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.iters as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let tape = Tape::<P>::new();
    let mut opt = Adam::new(1e-2);
    let lift = |m: &DMatrix<f64>| m.map(P::round_from);
    let (mut losses, mut times) = (Vec::new(), Vec::new());
    let (mut nfe_fwd, mut nfe_bwd) = (Vec::new(), Vec::new());
    for _ in 0..args.iters {
        // 20 distinct start indices, as np.random.choice(..., replace=False).
        let mut starts: Vec<usize> = Vec::with_capacity(BATCH_SIZE);
        while starts.len() < BATCH_SIZE {
            let s = rng.random_range(0..DATA_SIZE - BATCH_TIME);
            if !starts.contains(&s) {
                starts.push(s);
            }
        }
        let batch_y0 = lift(&DMatrix::from_fn(BATCH_SIZE, 2, |i, j| {
            true_y[starts[i]][(0, j)]
        }));
        let batch_y: Vec<DMatrix<P>> = (0..BATCH_TIME)
            .map(|k| {
                lift(&DMatrix::from_fn(BATCH_SIZE, 2, |i, j| {
                    true_y[starts[i] + k][(0, j)]
                }))
            })
            .collect();
        let start = Instant::now();
        let stats = train_step_ode(&tape, &mut params, &mut opt, |tape, p| {
            let sol = model.forward(
                tape,
                tape.constant(batch_y0.clone()),
                tape.constant(lift(batch_t)),
                p,
            )?;
            let terms: Vec<(P, Var<'_, P>)> = sol
                .outputs
                .iter()
                .zip(&batch_y)
                .map(|(pred, y)| {
                    Ok((
                        P::round_from(1.0 / BATCH_TIME as f64),
                        pred.sub(tape.constant(y.clone()))?.abs().mean(),
                    ))
                })
                .collect::<TapeResult<_>>()?;
            Ok((tape.fixed_weighted_sum(&terms)?, sol))
        })?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        let loss = stats.loss;
        losses.push(loss);
        nfe_fwd.push(stats.nfe_forward as f64);
        nfe_bwd.push(stats.nfe_backward as f64);
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Training {
        params: params.cast()?,
        losses,
        times,
        nfe_fwd,
        nfe_bwd,
    })
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let t: Vec<f64> = (0..DATA_SIZE)
        .map(|i| 25.0 * i as f64 / (DATA_SIZE - 1) as f64)
        .collect();
    let y0 = dmatrix![2.0, 0.0];
    let (true_y, _) = ode::solve(&Spiral, &y0, &t, &[], &Options::default())?;

    // ode_demo's network: weights ~ N(0, 0.1), biases 0.
    let func = OdeFunc::new(2, &[50], Activation::Tanh)?.with_input(Input::Cube);
    let mut rng = costate::rand::rngs::StdRng::seed_from_u64(0);
    let mut params = func.mlp.init_params(&mut rng);
    for (name, v) in params.names().to_vec().iter().zip(params.values_mut()) {
        *v = if name.ends_with("weight") {
            costate::nn::Mlp::normal(v.nrows(), v.ncols(), 0.0, 0.1, &mut rng)?
        } else {
            v.map(|_| 0.0)
        };
    }
    let model = NeuralOde::new(func, args.mode.clone());
    let batch_t = DMatrix::from_row_slice(1, BATCH_TIME, &t[..BATCH_TIME]);

    let run = if args.f32 {
        train::<f32>(args, &model, params.cast()?, &true_y, &batch_t, &mut rng)?
    } else {
        train::<f64>(args, &model, params, &true_y, &batch_t, &mut rng)?
    };
    let Training {
        params,
        losses,
        times,
        nfe_fwd,
        nfe_bwd,
    } = run;

    let bwd_nfe = median(&nfe_bwd) as usize;

    // Learned trajectory over the whole interval, from the true y0.
    let (learned, _) = ode::solve(&model.func, &y0, &t, params.values(), &Options::default())?;
    let points = |ys: &[DMatrix<f64>]| ys.iter().map(|y| (y[(0, 0)], y[(0, 1)])).collect();
    Chart::new(format!(
        "Spiral: true and learned trajectories ({}, {} iterations, {})",
        model.strategy.name(),
        args.iters,
        if args.f32 { "f32" } else { "f64" }
    ))
    .x_axis(Axis::linear("y₁"))
    .y_axis(Axis::linear("y₂"))
    .equal_aspect()
    .size(900, 720)
    .add(Series::line("true", points(&true_y)).color(0x2ca02c))
    .add(Series::line("learned", points(&learned)).color(0x1f77b4))
    .write_svg(&args.svg)?;

    let window = (args.iters / 10).max(1);
    let first = median(&losses[..window]);
    let last = median(&losses[losses.len() - window..]);
    let traj_err = learned
        .iter()
        .zip(&true_y)
        .map(|(a, b)| (a - b).abs().max())
        .fold(0.0, f64::max);
    if args.json {
        println!(
            "{}",
            json!({"mode": model.strategy.name(), "iters": args.iters, "precision": if args.f32 { "f32" } else { "f64" }, "loss_first": first, "loss_last": last,
                   "iteration_ms_median": median(&times), "nfe_forward_median": median(&nfe_fwd),
                   "nfe_backward": bwd_nfe, "trajectory_max_error": traj_err, "svg": args.svg})
        );
    } else {
        println!(
            "mode {} · {} iterations · Adam(1e-2) · {}",
            model.strategy.name(),
            args.iters,
            if args.f32 { "f32" } else { "f64" }
        );
        println!("loss (median of first / last {window} iterations): {first:.4} → {last:.4}  ({:.1}× lower)", first / last);
        println!(
            "iteration time: median {:.3} ms (min {:.3} ms)",
            median(&times),
            times.iter().copied().fold(f64::INFINITY, f64::min)
        );
        println!(
            "forward NFE per iteration: median {}{}",
            median(&nfe_fwd),
            if bwd_nfe > 0 {
                format!(", backward NFE {bwd_nfe}")
            } else {
                String::new()
            }
        );
        println!("learned vs true trajectory over [0, 25]: max |Δy| = {traj_err:.3}");
        println!("plot: {}", args.svg);
    }
    Ok(())
}
