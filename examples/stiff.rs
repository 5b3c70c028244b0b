//! Stiff problems: dopri5 against the implicit methods (kvaerno3, kvaerno5), their gradients
//! against tight references, and fitting Robertson's rate constants with Adam.
//!
//! ```sh
//! cargo run --release --example stiff
//! cargo run --release --example stiff -- --problems robertson --methods kvaerno5 --reps 9
//! cargo run --release --example stiff -- --json stiff.json --no-fit
//! ```
//!
//! The problems are the files in `examples/problems/stiff/` (copies of the anchors'
//! `costate-stiff-problem/1` files): Robertson's kinetics to t = 1e5, Van der Pol with
//! μ = 1000, a 20-dimensional linear system with eigenvalues down to −1e6, and a Robertson
//! whose rate constants a 3-16-16-3 MLP modulates. Each file carries the field, the loss
//! `L = Σᵢ Σⱼ wⱼ yⱼ(tᵢ)`, reference gradients from Kvaerno5 at rtol 1e-12 (checked against
//! Radau or the exact solution) and Diffrax's figures at the benchmark tolerances.
//!
//! Per problem, tolerance, method and gradient strategy: accepted and rejected steps,
//! evaluations of f, Jacobians and LU factorisations, the untaped solve's time, the
//! gradient's time (forward + backward), the gradient's error against the reference (worst
//! over y0 and each parameter of max |error| / max |reference|), the bytes the solution holds
//! between forward and backward and the peak heap over forward + backward. dopri5 is given
//! `--explicit-steps` steps (default 20 000): on these problems its stability limit needs
//! millions, so it stops with `TooManySteps` and the row says how far it got.
//!
//! Then a fit: Robertson's three log rate constants, started 0.5–0.7 away from the truth in
//! log space, fitted by Adam to noisy observations of the solution (1 % noise), with the
//! taped kvaerno5 gradient.

mod support;

use std::time::Instant;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::Tape;
use costate::heap::CountingAlloc;
use costate::nn::{Adam, Optimizer, ParamSet};
use costate::ode::jacobian::{jacobian, Jacobian};
use costate::ode::newton::IterationMatrix;
use costate::ode::{
    method_by_name, odeint_with, solve, Backsolve, Dynamics, Error as OdeError, Options,
    SolveStats, Strategy,
};
use support::cli::{self, ArgError, Cli, Flag, Matches};
use support::report::{bytes, median};
use support::stiff::{Model, StiffField, StiffProblem};

#[global_allocator]
static HEAP: CountingAlloc = CountingAlloc::new();

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const CLI: Cli = Cli {
    name: "stiff",
    about: "Stiff problems: dopri5 against kvaerno3/5, gradients against references, a Robertson fit.",
    flags: &[
        Flag::value("--problems", "LIST", "robertson,vdp,linear,neural (default all four)"),
        Flag::value("--methods", "LIST", "dopri5,kvaerno3,kvaerno5 (default all three)"),
        Flag::value("--strategies", "LIST", "gradient strategies (default taped,checkpointed:8,interpolating,backsolve; backsolve's backward runs dopri5)"),
        Flag::value("--reps", "N", "timed repetitions of each solve and gradient (default 5)"),
        Flag::value("--explicit-steps", "N", "step budget of dopri5 (default 20000)"),
        Flag::value("--tangents", "N", "also run taped with tangent-aware step control along N directions (default 1; 0 skips)"),
        Flag::value("--fit-iterations", "N", "Adam iterations of the Robertson fit (default 150)"),
        Flag::switch("--no-fit", "skip the fit"),
        Flag::switch("--no-blocks", "skip the Jacobian / LU cost at the seed's shape (batch 32 × dim 64)"),
        Flag::value("--json", "FILE", "also write one record per problem, tolerance, method and strategy"),
    ],
};

const PROBLEM_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/problems/stiff");

struct Args {
    problems: Vec<String>,
    methods: Vec<String>,
    strategies: Vec<Strategy>,
    reps: usize,
    explicit_steps: usize,
    fit_iterations: usize,
    tangents: usize,
    blocks: bool,
    json: Option<String>,
}

/// A comma-separated list, each entry checked by `check`.
fn list(
    check: impl Fn(&str) -> std::result::Result<(), String>,
) -> impl Fn(&str) -> std::result::Result<Vec<String>, String> {
    move |v| {
        v.split(',')
            .map(|s| check(s).map(|()| s.to_string()))
            .collect()
    }
}

fn parse_args(m: &Matches) -> std::result::Result<Args, ArgError> {
    let all = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let problem = |p: &str| cli::one_of(&["robertson", "vdp", "linear", "neural"])(p).map(|_| ());
    let method = |m: &str| {
        Options::with_method(m)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let strategies = |v: &str| {
        v.split(',')
            .map(|s| s.parse::<Strategy>().map_err(|e| e.to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()
    };
    Ok(Args {
        problems: m
            .parse("--problems", list(problem))?
            .unwrap_or_else(|| all(&["robertson", "vdp", "linear", "neural"])),
        methods: m
            .parse("--methods", list(method))?
            .unwrap_or_else(|| all(&["dopri5", "kvaerno3", "kvaerno5"])),
        strategies: match m.parse("--strategies", strategies)? {
            Some(s) => s,
            None => strategies("taped,checkpointed:8,interpolating,backsolve")?,
        },
        reps: m.parse_or("--reps", 5, cli::positive)?,
        explicit_steps: m.parse_or("--explicit-steps", 20_000, cli::positive)?,
        fit_iterations: if m.has("--no-fit") {
            0
        } else {
            m.parse_or("--fit-iterations", 150, cli::positive)?
        },
        tangents: m.parse_or("--tangents", 1, cli::count)?,
        blocks: !m.has("--no-blocks"),
        json: m.value("--json").map(str::to_owned),
    })
}

fn main() {
    cli::run_main(&CLI, parse_args, run);
}

/// One gradient run: its counts, time, error and memory.
struct GradientRun {
    stats: SolveStats,
    ms: f64,
    rel: f64,
    elem: f64,
    held: usize,
    peak: usize,
    loss_rel: f64,
}

/// What one gradient computation returns: the forward's counts, the gradient keyed as the
/// reference, the held bytes and the loss.
struct Computed {
    stats: SolveStats,
    keyed: Vec<(String, Vec<f64>)>,
    held: usize,
    loss: f64,
}

/// One gradient under `strategy`: forward + backward on a fresh tape.
fn gradient(
    p: &StiffProblem,
    opts: &Options,
    strategy: &Strategy,
) -> std::result::Result<Computed, OdeError> {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(p.y0.clone());
    let params: Vec<_> = p.params.iter().map(|m| tape.var(m.clone())).collect();
    let t = tape.constant(DMatrix::from_row_slice(1, p.grid.len(), &p.grid));
    let sol = odeint_with(&tape, &p.field, h0, t, &params, opts, strategy)?;
    let loss = p.loss(&sol.outputs)?;
    let held = sol.held_bytes()?;
    let value = loss.value()?[(0, 0)];
    let mut g = tape.backward(loss)?;
    let gy0 = g.take_or_zeros(h0)?;
    let gp = params
        .iter()
        .map(|v| g.take_or_zeros(*v))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Computed {
        stats: sol.stats,
        keyed: p.keyed(&gy0, &gp),
        held,
        loss: value,
    })
}

fn measure_gradient(
    p: &StiffProblem,
    opts: &Options,
    strategy: &Strategy,
    reps: usize,
) -> std::result::Result<GradientRun, OdeError> {
    let before = HEAP.start();
    let Computed {
        stats,
        keyed,
        held,
        loss,
    } = gradient(p, opts, strategy)?;
    let peak = HEAP.peak_above(before);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        gradient(p, opts, strategy)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let (rel, elem) = p.errors(&keyed);
    Ok(GradientRun {
        stats,
        ms: median(&times),
        rel,
        elem,
        held,
        peak,
        loss_rel: (loss - p.reference_loss).abs() / p.reference_loss.abs(),
    })
}

/// Backsolve with dopri5 backwards: it refuses an implicit backward method (it would
/// integrate h backwards through the stiff field); the explicit one shows why.
fn explicit_backward(strategy: &Strategy) -> Strategy {
    match strategy {
        Strategy::Backsolve(b) if b.method.is_none() => Strategy::Backsolve(Backsolve {
            method: method_by_name("dopri5").ok(),
            ..b.clone()
        }),
        other => other.clone(),
    }
}

fn options(method: &str, rtol: f64, atol: f64, explicit_steps: usize) -> Result<Options> {
    let implicit = method != "dopri5";
    Ok(Options {
        max_num_steps: if implicit { 200_000 } else { explicit_steps },
        ..Options::with_method(method)?.tolerances(rtol, atol)
    })
}

fn json_record(fields: &[(&str, serde_json::Value)]) -> serde_json::Value {
    serde_json::Value::Object(
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

fn run(args: &Args) -> Result<()> {
    let mut records = Vec::new();
    for name in &args.problems {
        let p = StiffProblem::load(&format!("{PROBLEM_DIR}/{name}.json"))?;
        println!("\n{}: {}", p.name, p.description);
        for fig in &p.diffrax {
            println!(
                "  Diffrax {} rtol {:e}: {} accepted / {} rejected, gradient error {:.1e}",
                fig.solver, fig.rtol, fig.accepted, fig.rejected, fig.grad_rel
            );
        }
        println!(
            "{:<9} {:<6} {:<17} {:>11} {:>7} {:>5} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
            "method",
            "rtol",
            "strategy",
            "acc/rej",
            "NFE",
            "jac",
            "LU",
            "fail",
            "solve ms",
            "grad ms",
            "loss err",
            "grad err",
            "elem err",
            "held",
            "peak heap"
        );
        for &(rtol, atol) in &p.tolerances {
            for method in &args.methods {
                let opts = options(method, rtol, atol, args.explicit_steps)?;
                let mut times = Vec::with_capacity(args.reps);
                let mut solved = None;
                for _ in 0..args.reps {
                    let start = Instant::now();
                    let r = solve(&p.field, &p.y0, &p.grid, &p.params, &opts);
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                    match r {
                        Ok((_, s)) => solved = Some(s),
                        Err(e) => {
                            solved = None;
                            println!("{method:<9} {rtol:<6.0e} {:<17} {e}", "(solve)");
                            records.push(json_record(&[
                                ("problem", p.name.clone().into()),
                                ("method", method.clone().into()),
                                ("rtol", rtol.into()),
                                ("strategy", "none".into()),
                                ("error", e.to_string().into()),
                            ]));
                            break;
                        }
                    }
                }
                let Some(solve_stats) = solved else { continue };
                let solve_ms = median(&times);
                // The strategies under primal control, then taped with tangent-aware control
                // (its own steps: the columns up to `fail` are the planning solve's).
                let mut runs: Vec<(String, Strategy, bool)> = args
                    .strategies
                    .iter()
                    .map(|s| match s {
                        Strategy::Backsolve(_) => {
                            ("backsolve(dopri5)".to_string(), explicit_backward(s), false)
                        }
                        other => (other.to_string(), other.clone(), false),
                    })
                    .collect();
                if args.tangents > 0 && method != "dopri5" {
                    runs.push((
                        format!("taped+tangents:{}", args.tangents),
                        Strategy::Taped,
                        true,
                    ));
                }
                for (label, strategy, tangents) in &runs {
                    let (label, strategy) = (label.as_str(), strategy);
                    let run_opts = if *tangents {
                        opts.clone().with_tangents(args.tangents)
                    } else {
                        opts.clone()
                    };
                    let g = match measure_gradient(&p, &run_opts, strategy, args.reps) {
                        Ok(g) => g,
                        Err(e) => {
                            println!("{method:<9} {rtol:<6.0e} {label:<17} {e}");
                            records.push(json_record(&[
                                ("problem", p.name.clone().into()),
                                ("method", method.clone().into()),
                                ("rtol", rtol.into()),
                                ("strategy", label.into()),
                                ("accepted", solve_stats.accepted.into()),
                                ("rejected", solve_stats.rejected.into()),
                                ("nfe", solve_stats.nfe.into()),
                                ("jacobians", solve_stats.jacobians.into()),
                                ("solve_ms", solve_ms.into()),
                                ("error", e.to_string().into()),
                            ]));
                            continue;
                        }
                    };
                    let shown = if *tangents { g.stats } else { solve_stats };
                    println!(
                        "{method:<9} {rtol:<6.0e} {label:<17} {:>11} {:>7} {:>5} {:>5} {:>5} {:>8.2} {:>8.2} {:>8.1e} {:>8.1e} {:>8.1e} {:>10} {:>10}",
                        format!("{}/{}", shown.accepted, shown.rejected),
                        shown.nfe,
                        shown.jacobians,
                        shown.factorizations,
                        shown.newton_failures,
                        solve_ms,
                        g.ms,
                        g.loss_rel,
                        g.rel,
                        g.elem,
                        bytes(g.held),
                        bytes(g.peak)
                    );
                    records.push(json_record(&[
                        ("problem", p.name.clone().into()),
                        ("method", method.clone().into()),
                        ("rtol", rtol.into()),
                        ("atol", atol.into()),
                        ("strategy", label.into()),
                        (
                            "error_control",
                            if *tangents { "tangents" } else { "primal" }.into(),
                        ),
                        ("accepted", shown.accepted.into()),
                        ("rejected", shown.rejected.into()),
                        ("nfe", shown.nfe.into()),
                        ("tangent_nfe", shown.tangent_nfe.into()),
                        ("jacobians", shown.jacobians.into()),
                        ("factorizations", shown.factorizations.into()),
                        ("newton_iterations", shown.newton_iterations.into()),
                        ("newton_failures", shown.newton_failures.into()),
                        ("solve_ms", solve_ms.into()),
                        ("gradient_ms", g.ms.into()),
                        ("gradient_nfe", g.stats.nfe.into()),
                        ("loss_rel_err_vs_reference", g.loss_rel.into()),
                        ("grad_rel_err_vs_reference", g.rel.into()),
                        ("grad_elem_err_vs_reference", g.elem.into()),
                        ("held_bytes", g.held.into()),
                        ("peak_heap_bytes", g.peak.into()),
                    ]));
                }
            }
        }
    }
    if args.blocks {
        block_structure(args.reps)?;
    }
    if args.fit_iterations > 0 {
        fit_robertson(args.fit_iterations)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&records)?)?;
        println!("\nwrote {} records to {path}", records.len());
    }
    Ok(())
}

/// A small deterministic generator for the observation noise (xorshift64*, Box–Muller).
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Fit Robertson's log rate constants to noisy observations with Adam.
fn fit_robertson(iterations: usize) -> Result<()> {
    let base = StiffProblem::load(&format!("{PROBLEM_DIR}/robertson.json"))?;
    let field = StiffField {
        model: Model::Robertson { log_rates: true },
    };
    let truth = base.params[0].map(f64::ln);
    let opts = Options {
        max_num_steps: 200_000,
        ..Options::with_method("kvaerno5")?.tolerances(1e-6, 1e-10)
    };
    let (clean, _) = solve(
        &field,
        &base.y0,
        &base.grid,
        std::slice::from_ref(&truth),
        &opts,
    )?;
    // Observations: 1 % multiplicative noise; each species scaled to order one in the loss.
    let mut noise = Noise(0x5EED_CAFE);
    let data: Vec<DMatrix<f64>> = clean[1..]
        .iter()
        .map(|y| y.map(|v| v * (1.0 + 0.01 * noise.normal())))
        .collect();
    let scale = DMatrix::from_row_slice(1, 3, &[1.0, 1e4, 1.0]);
    let mut params = ParamSet::new();
    params.push(
        "log_k",
        &truth + DMatrix::from_row_slice(1, 3, &[0.5, -0.7, 0.6]),
    );
    let mut adam = Adam::new(0.05);
    println!(
        "\nfit: Robertson's log k from 20 noisy observations (1 % noise), Adam lr 0.05, kvaerno5 rtol 1e-6, taped gradients"
    );
    println!("true log k: {:?}", truth.as_slice());
    let start = Instant::now();
    let mut first = None;
    let mut last = 0.0;
    for it in 0..iterations {
        let tape = Tape::<f64>::new();
        let vars = params.to_tape(&tape);
        let h0 = tape.constant(base.y0.clone());
        let t = tape.constant(DMatrix::from_row_slice(1, base.grid.len(), &base.grid));
        let sol = odeint_with(&tape, &field, h0, t, &vars, &opts, &Strategy::Taped)?;
        let s = tape.constant(scale.clone());
        let mut loss = None;
        for (y, d) in sol.outputs[1..].iter().zip(&data) {
            let r = y.sub(tape.constant(d.clone()))?.mul(s)?;
            let term = r.mul(r)?.sum();
            loss = Some(match loss {
                Some(l) => term.add(l)?,
                None => term,
            });
        }
        let loss = loss.ok_or("no observations")?;
        let value = loss.value()?[(0, 0)];
        let mut g = tape.backward(loss)?;
        let grads = params.grads(&mut g, &vars)?;
        adam.step(&mut params, &grads)?;
        first.get_or_insert(value);
        last = value;
        if it % 25 == 0 || it + 1 == iterations {
            println!(
                "  iteration {it:>4}: loss {value:.3e}, log k {:?}, {} steps",
                params.values()[0].as_slice(),
                sol.stats.accepted
            );
        }
    }
    let first = first.unwrap_or(f64::NAN);
    println!(
        "loss {first:.3e} → {last:.3e} ({:.1} orders of magnitude) in {iterations} iterations, {:.1} s",
        (first / last).log10(),
        start.elapsed().as_secs_f64()
    );
    let err = (&params.values()[0] - &truth).abs().max();
    println!("largest |log k − true log k| = {err:.3}");
    Ok(())
}

/// The seed's field with its row independence hidden: the Jacobian is then dense.
#[derive(Clone)]
struct Dense<F>(F);

impl<T: costate::ad_core::Scalar, F: Dynamics<T>> Dynamics<T> for Dense<F> {
    fn eval<'t>(
        &self,
        t: costate::ad_core::Var<'t, T>,
        h: costate::ad_core::Var<'t, T>,
        params: &[costate::ad_core::Var<'t, T>],
    ) -> costate::ad_core::Result<costate::ad_core::Var<'t, T>> {
        self.0.eval(t, h, params)
    }
}

/// `J` and the LU of `I − c·J` for the seed's neural field at its shape (batch 32 × dim 64),
/// with the rows declared independent (32 blocks of 64 × 64 from 64 dual sweeps and a
/// probe) and, once, dense (2048 × 2048 from 2048 sweeps).
fn block_structure(reps: usize) -> Result<()> {
    let p = support::workloads::synthetic_seed()?;
    let params = p.params.values();
    let c = 0.26 * 0.05;
    let (batch, dim) = p.h0.shape();
    println!(
        "\nblock structure: the seed's neural field (64→64→64→64 tanh), batch {batch} × dim {dim}, c = γ·dt = {c}"
    );
    println!(
        "{:<34} {:>8} {:>12} {:>10} {:>10}",
        "Jacobian", "sweeps", "matrix", "J ms", "LU ms"
    );
    let time = |f: &mut dyn FnMut() -> Result<()>, n: usize| -> Result<f64> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            f()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(&times))
    };
    let (blocks, stats) = jacobian::<f64, _>(&p.func, 0.0, &p.h0, params)?;
    let j_ms = time(
        &mut || {
            jacobian::<f64, _>(&p.func, 0.0, &p.h0, params)?;
            Ok(())
        },
        reps,
    )?;
    let lu_ms = time(
        &mut || {
            IterationMatrix::new(&blocks, c)?;
            Ok(())
        },
        reps,
    )?;
    let entries = |j: &Jacobian<f64>| match j {
        Jacobian::Dense(m) => m.len(),
        Jacobian::Blocks(b) => b.iter().map(|m| m.len()).sum(),
    };
    println!(
        "{:<34} {:>8} {:>12} {j_ms:>10.2} {lu_ms:>10.2}",
        "rows independent (32 blocks)",
        stats.sweeps,
        bytes(entries(&blocks) * 8)
    );
    let dense_field = Dense(p.func.clone());
    let start = Instant::now();
    let (dense, stats) = jacobian::<f64, _>(&dense_field, 0.0, &p.h0, params)?;
    let j_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    IterationMatrix::new(&dense, c)?;
    let lu_ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{:<34} {:>8} {:>12} {j_ms:>10.2} {lu_ms:>10.2}",
        "dense (rows not declared)",
        stats.sweeps,
        bytes(entries(&dense) * 8)
    );
    let diff = (dense.to_dense() - blocks.to_dense()).abs().max();
    println!("largest difference between the two: {diff:.1e}");
    Ok(())
}
