//! A bouncing ball learned from its bounce times: gradients through every bounce.
//!
//! ```sh
//! cargo run --release --example bouncing_ball
//! cargo run --release --example bouncing_ball -- --bounces 6 --iterations 300 --svg target/ball.svg
//! ```
//!
//! The ball falls from height `H` under gravity `g = 9.81` and bounces with restitution `e`:
//! each bounce is an event (`ode::event::odeint_event`, the height crossing zero downwards),
//! then a reset `v ↦ −e v` in tape ops, then the next solve from the event time. The bounce
//! times are `t_n = t_1 (1 + 2e + … + 2e^{n−1})` with `t_1 = √(2H/g)`. Observed: the true
//! ball's bounce times (H = 1.5, e = 0.7) with 1 ms of noise. Learned: `e` and `H` from a
//! wrong start (0.4 and 0.8), by Adam on the squared bounce-time error, the gradient of every
//! bounce time w.r.t. both through all the bounces before it. Printed: the loss, the learned
//! values and their error against the truth, the bounce times against the closed form; an
//! SVG of the learned and true trajectories (default `target/bouncing_ball.svg`).

mod support;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::{Result as TapeResult, Scalar, Tape, Var};
use costate::nn::{Adam, Optimizer, ParamSet};
use costate::ode::event::{odeint_event, Crossing, EventFunctions, EventOutcome, Events};
use costate::ode::{Dynamics, Options, Strategy};
use support::chart::{Axis, Chart, Series};
use support::cli::{self, ArgError, Cli, Flag, Matches};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CLI: Cli = Cli {
    name: "bouncing_ball",
    about: "A bouncing ball's restitution and drop height learned from its bounce times.",
    flags: &[
        Flag::value("--bounces", "N", "bounces observed and fitted (default 5)"),
        Flag::value("--iterations", "N", "Adam iterations (default 1500)"),
        Flag::value(
            "--svg",
            "PATH",
            "the trajectory chart (default target/bouncing_ball.svg)",
        ),
    ],
};

const G: f64 = 9.81;
const TRUE_E: f64 = 0.7;
const TRUE_H: f64 = 1.5;

struct Args {
    bounces: usize,
    iterations: usize,
    svg: String,
}

fn parse_args(m: &Matches) -> std::result::Result<Args, ArgError> {
    Ok(Args {
        bounces: m.parse_or("--bounces", 5, cli::positive)?,
        iterations: m.parse_or("--iterations", 1500, cli::positive)?,
        svg: m.string_or("--svg", "target/bouncing_ball.svg"),
    })
}

fn main() {
    cli::run_main(&CLI, parse_args, run);
}

/// h = [height, velocity], h' = [v, −g].
#[derive(Clone, Copy)]
struct Fall;

impl<T: Scalar> Dynamics<T> for Fall {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (r, _) = h.shape()?;
        let gravity = h
            .tape()
            .constant(DMatrix::from_element(r, 1, T::constant(-G)));
        h.tape().concat_cols(&[h.slice_cols(1, 1)?, gravity])
    }
}

/// The height: the floor is at zero.
struct Floor;

impl<T: Scalar> EventFunctions<T> for Floor {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.slice_cols(0, 1)
    }
}

/// The closed-form bounce times.
fn closed_form(height: f64, e: f64, n: usize) -> Vec<f64> {
    let t1 = (2.0 * height / G).sqrt();
    let mut out = Vec::with_capacity(n);
    let (mut t, mut gap) = (t1, 2.0 * e * t1);
    for _ in 0..n {
        out.push(t);
        t += gap;
        gap *= e;
    }
    out
}

/// Bounce times (as variables) and, with `samples`, the trajectory's heights at that many
/// times per flight.
struct Flight<'t> {
    times: Vec<Var<'t, f64>>,
    path: Vec<(f64, f64)>,
}

fn fly<'t>(
    tape: &'t Tape<f64>,
    height: Var<'t, f64>,
    e: Var<'t, f64>,
    bounces: usize,
    samples: usize,
) -> Result<Flight<'t>> {
    let zero = tape.constant(DMatrix::zeros(1, 1));
    let mut h = tape.concat_cols(&[height, zero])?;
    let mut t0 = tape.constant(DMatrix::zeros(1, 1));
    let opts = Options::default().tolerances(1e-10, 1e-12);
    let events = Events {
        functions: &Floor,
        crossings: vec![Crossing::Falling],
        t_max: 1e3,
    };
    let mut flight = Flight {
        times: Vec::with_capacity(bounces),
        path: Vec::new(),
    };
    let mut span = (2.0 * height.scalar_value()? / G).sqrt() * 2.0;
    for _ in 0..bounces {
        let start = t0.scalar_value()?;
        let grid: Vec<f64> = (1..samples)
            .map(|i| start + span * i as f64 / samples as f64)
            .collect();
        let sol = odeint_event(
            tape,
            &Fall,
            h,
            t0,
            &grid,
            &[],
            &events,
            &opts,
            &Strategy::Taped,
        )?;
        for (t, y) in sol.times.iter().zip(&sol.outputs) {
            flight.path.push((*t, y.value()?[(0, 0)]));
        }
        let EventOutcome::Fired { time, state, t, .. } = sol.outcome else {
            return Err("the ball never reached the floor".into());
        };
        flight.path.push((t, 0.0));
        // The bounce: height 0, velocity −e v.
        let v = state.slice_cols(1, 1)?.mul(e)?;
        h = tape.concat_cols(&[zero, -v])?;
        span = (t - start) * e.scalar_value()?;
        t0 = time;
        flight.times.push(time);
    }
    Ok(flight)
}

fn run(args: &Args) -> Result<()> {
    // Observations: the true bounce times with 1 ms of deterministic pseudo-noise.
    let truth = closed_form(TRUE_H, TRUE_E, args.bounces);
    let observed: Vec<f64> = truth
        .iter()
        .enumerate()
        .map(|(i, t)| t + 1e-3 * ((i as f64 * 2.399).sin()))
        .collect();
    println!(
        "observed bounce times (H = {TRUE_H}, e = {TRUE_E}, 1 ms noise): {:?}",
        observed
            .iter()
            .map(|t| format!("{t:.4}"))
            .collect::<Vec<_>>()
    );
    let mut params = ParamSet::new();
    params.push("e", DMatrix::from_element(1, 1, 0.4));
    params.push("H", DMatrix::from_element(1, 1, 0.8));
    let mut adam = Adam::new(0.02);
    let mut first = None;
    let mut loss_value = f64::NAN;
    let start = std::time::Instant::now();
    for it in 0..args.iterations {
        let tape = Tape::<f64>::new();
        let vars = params.to_tape(&tape);
        let flight = fly(&tape, vars[1], vars[0], args.bounces, 2)?;
        let mut loss: Option<Var<'_, f64>> = None;
        for (t, obs) in flight.times.iter().zip(&observed) {
            let r = t.add_scalar(-obs);
            let term = r.mul(r)?;
            loss = Some(match loss {
                Some(l) => l.add(term)?,
                None => term,
            });
        }
        let loss = loss.ok_or("no bounces")?;
        loss_value = loss.scalar_value()?;
        first.get_or_insert(loss_value);
        let mut grads = tape.backward(loss)?;
        let g = params.grads(&mut grads, &vars)?;
        adam.step(&mut params, &g)?;
        if it % 250 == 0 || it + 1 == args.iterations {
            println!(
                "iteration {it:>5}: loss {loss_value:.3e}, e = {:.5}, H = {:.5}",
                params.values()[0][(0, 0)],
                params.values()[1][(0, 0)]
            );
        }
    }
    let (e, height) = (params.values()[0][(0, 0)], params.values()[1][(0, 0)]);
    println!(
        "loss {:.3e} → {loss_value:.3e} in {} iterations ({:.2} s); learned e = {e:.5} (true {TRUE_E}, error {:.1e}), H = {height:.5} (true {TRUE_H}, error {:.1e})",
        first.unwrap_or(f64::NAN),
        args.iterations,
        start.elapsed().as_secs_f64(),
        (e - TRUE_E).abs(),
        (height - TRUE_H).abs()
    );
    // The learned ball's bounce times: solved with events against the closed form.
    let tape = Tape::<f64>::new();
    let ev = tape.constant(DMatrix::from_element(1, 1, e));
    let hv = tape.constant(DMatrix::from_element(1, 1, height));
    let learned = fly(&tape, hv, ev, args.bounces, 40)?;
    let closed = closed_form(height, e, args.bounces);
    println!(
        "{:>7} {:>14} {:>14} {:>10}",
        "bounce", "event solve", "closed form", "|diff|"
    );
    for (n, (t, c)) in learned.times.iter().zip(&closed).enumerate() {
        let t = t.scalar_value()?;
        println!(
            "{:>7} {t:>14.10} {c:>14.10} {:>10.1e}",
            n + 1,
            (t - c).abs()
        );
    }
    let truth_tape = Tape::<f64>::new();
    let true_flight = fly(
        &truth_tape,
        truth_tape.constant(DMatrix::from_element(1, 1, TRUE_H)),
        truth_tape.constant(DMatrix::from_element(1, 1, TRUE_E)),
        args.bounces,
        40,
    )?;
    if let Some(dir) = std::path::Path::new(&args.svg).parent() {
        std::fs::create_dir_all(dir)?;
    }
    Chart::new("Bouncing ball: true and learned trajectories")
        .x_axis(Axis::linear("t"))
        .y_axis(Axis::linear("height"))
        .add(Series::line("true (H = 1.5, e = 0.7)", true_flight.path).color(0x2ca02c))
        .add(Series::line("learned", learned.path).color(0x1f77b4))
        .write_svg(&args.svg)?;
    println!("wrote {}", args.svg);
    Ok(())
}
