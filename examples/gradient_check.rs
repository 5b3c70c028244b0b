//! The gradient-verification exercise: four dynamics, every gradient strategy, rtol from
//! 1e-3 to 1e-10, with `ode::verify` doing the work.
//!
//! ```sh
//! cargo run --release --example gradient_check
//! cargo run --release --example gradient_check -- --json
//! cargo run --release --example gradient_check -- --svg target/tolerance.svg
//! ```
//!
//! The dynamics, written as a user would (1×1 parameters broadcast by themselves):
//! a tanh MLP `h' = tanh(h W1ᵀ + b1) W2ᵀ + b2`; Lotka–Volterra with learnable α, β, γ, δ;
//! `h' = h Aᵀ` with learnable A; `h' = sin(t) · h Wᵀ`. The loss is the sum of every output.
//!
//! For each: the adjoint-equation residual along the trajectory (tape VJPs against `Dual64`
//! Jacobians); every strategy's gradient at rtol 1e-8 against central finite differences
//! and against a `Dual64` directional derivative of the same solve; and the tolerance
//! study: each strategy's gradient error against a taped dopri8 reference at rtol 1e-12
//! for rtol = 1e-3 … 1e-10 (atol = rtol·1e-2), with the fitted log–log slope.
//!
//! A fifth problem is one where *exact* is not *right* under primal step control:
//! `h' = a − h` from `h0 = a = 1` over `[0, 10]`, at an equilibrium, so the state's error
//! estimate is zero and the steps grow by the maximum factor while `dL/da = 1 − e^{−10}` still
//! moves. Its tolerance study runs twice, with `ErrorControl::Primal` and with
//! `ErrorControl::WithTangents` (one direction), against the closed-form gradient: with
//! tangents the exact strategies' error falls with rtol (fitted slope reported), without it
//! stays flat; `ode::verify::convergence_check` gives its verdict on both.
//! `--json` prints `{"dynamics": [{"name", "strategy", "rtol", "grad_rel_err",
//! "fd_rel_err"}…], "slopes": [{"name", "strategy", "slope"}…], "equilibrium": [{"control",
//! "strategy", "rtol", "grad_rel_err", "forward_nfe"}…], "equilibrium_slopes": […],
//! "convergence": [{"control", "verdict"}…]}`. A log–log chart of
//! error against rtol (colour: dynamics; marker: strategy; the exact strategies coincide
//! with taped, so only taped is drawn for them) goes to `target/gradient_check.svg`
//! (`--svg PATH` to override).

mod support;

use std::time::Instant;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::num_dual::Dual64;
use costate::ad_core::{Result as TapeResult, Scalar, Var};
use costate::ode::verify::{
    adjoint_residual, convergence_check, tolerance_study, ConvergenceOptions, ConvergenceReport,
    GradientProblem, ProblemVector, Reference, ResidualPoints, StudyOptions, ToleranceReport,
};
use costate::ode::{Dynamics, ErrorControl, Options, Strategy};
use serde_json::json;
use support::chart::{Axis, Chart, Marker, Series};
use support::cli::{self, ArgError, Cli, Flag, Matches};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The strategies compared (`Strategy` parses these names).
const STRATEGIES: [&str; 5] = [
    "taped",
    "backsolve",
    "backsolve-checkpointed:4",
    "aca",
    "checkpointed:4",
];

/// The tolerance sweep.
const RTOLS: [f64; 8] = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10];

/// The tolerance of the agreement table.
const AGREEMENT_RTOL: f64 = 1e-8;

/// The central-difference step.
const FD_STEP: f64 = 1e-5;

/// `h' = tanh(h W1ᵀ + b1) W2ᵀ + b2`.
#[derive(Clone, Debug)]
struct Mlp;

impl<T: Scalar> Dynamics<T> for Mlp {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.matmul_t(p[0])?
            .add(p[1])?
            .tanh()
            .matmul_t(p[2])?
            .add(p[3])
    }
}

/// Lotka–Volterra on `[prey, predator]` rows: `x' = αx − βxy`, `y' = δxy − γy`.
#[derive(Clone, Debug)]
struct LotkaVolterra;

impl<T: Scalar> Dynamics<T> for LotkaVolterra {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (alpha, beta, gamma, delta) = (p[0], p[1], p[2], p[3]);
        let (x, y) = (h.slice_cols(0, 1)?, h.slice_cols(1, 1)?);
        let xy = x.mul(y)?;
        let dx = x.mul(alpha)?.sub(xy.mul(beta)?)?;
        let dy = xy.mul(delta)?.sub(y.mul(gamma)?)?;
        h.tape().concat_cols(&[dx, dy])
    }
}

/// `h' = h Aᵀ` (rows of h are samples, so this is `A h` per sample).
#[derive(Clone, Debug)]
struct LinearA;

impl<T: Scalar> Dynamics<T> for LinearA {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.matmul_t(p[0])
    }
}

/// `h' = sin(t) · h Wᵀ`.
#[derive(Clone, Debug)]
struct SinTW;

impl<T: Scalar> Dynamics<T> for SinTW {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.matmul_t(p[0])?.mul(t.sin())
    }
}

/// `h' = a − h`: at `h0 = a` the state never moves, while `dh/da = 1 − e^{−t}` does.
#[derive(Clone, Debug)]
struct Relax;

impl<T: Scalar> Dynamics<T> for Relax {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        p[0].sub(h)
    }
}

/// The strategies of the equilibrium study.
const EQUILIBRIUM_STRATEGIES: [&str; 4] = ["taped", "aca", "checkpointed:4", "backsolve"];

/// The equilibrium problem's two tolerance studies (primal control, then one tangent
/// direction) and its convergence checks at rtol 1e-6.
struct Equilibrium {
    studies: Vec<(&'static str, ToleranceReport)>,
    checks: Vec<(&'static str, ConvergenceReport)>,
}

fn equilibrium() -> Result<Equilibrium> {
    let one = DMatrix::from_element(1, 1, 1.0);
    let t1: f64 = 10.0;
    let problem = GradientProblem::new(Relax, one.clone(), vec![0.0, t1], vec![one]);
    // L = h(10) = a + (h0 − a) e^{−10}: dL/dh0 = e^{−10}, dL/da = 1 − e^{−10}.
    let truth = ProblemVector::zeros_like(&problem)
        .with_param(0, DMatrix::from_element(1, 1, 1.0 - (-t1).exp()))?;
    let truth = ProblemVector {
        h0: DMatrix::from_element(1, 1, (-t1).exp()),
        ..truth
    };
    let strategies: Vec<Strategy> = EQUILIBRIUM_STRATEGIES
        .iter()
        .map(|s| s.parse())
        .collect::<std::result::Result<_, _>>()?;
    let mut studies = Vec::new();
    let mut checks = Vec::new();
    for (control, error_control) in [
        ("primal", ErrorControl::Primal),
        ("tangents", ErrorControl::with_tangents()),
    ] {
        let base = Options {
            error_control,
            ..Options::default()
        };
        let study = StudyOptions {
            base: base.clone(),
            reference: Reference::Given(truth.clone()),
            include_times: false,
            ..StudyOptions::default()
        };
        studies.push((
            control,
            tolerance_study(&problem, &strategies, &RTOLS, &study)?,
        ));
        let opts = base.tolerances(1e-6, 1e-6 * 1e-2);
        checks.push((
            control,
            convergence_check(&problem, &opts, &ConvergenceOptions::default())?,
        ));
    }
    Ok(Equilibrium { studies, checks })
}

fn print_equilibrium(eq: &Equilibrium) {
    println!(
        "
equilibrium h' = a − h, h0 = a = 1, t ∈ [0, 10]: gradient error against the closed form \
         (dL/dh0 = e^-10, dL/da = 1 − e^-10), primal step control against one tangent direction"
    );
    print!("{:>8}", "rtol");
    for (control, _) in &eq.studies {
        for s in EQUILIBRIUM_STRATEGIES {
            print!(" {:>24}", format!("{s} ({control})"));
        }
    }
    println!();
    for &rtol in &RTOLS {
        print!("{rtol:>8.0e}");
        for (_, study) in &eq.studies {
            for s in EQUILIBRIUM_STRATEGIES {
                let row = study
                    .rows
                    .iter()
                    .find(|r| r.strategy == s && r.rtol == rtol);
                match row {
                    Some(r) => print!(
                        " {:>24}",
                        format!("{:.2e} ({} NFE)", r.grad_rel_err, r.forward_nfe)
                    ),
                    None => print!(" {:>24}", "-"),
                }
            }
        }
        println!();
    }
    print!("{:>8}", "slope");
    for (_, study) in &eq.studies {
        for s in EQUILIBRIUM_STRATEGIES {
            match study.slope(s) {
                Some(x) => print!(" {x:>24.3}"),
                None => print!(" {:>24}", "-"),
            }
        }
    }
    println!();
    for (control, report) in &eq.checks {
        println!(
            "
convergence check at rtol 1e-6 ({control} control):\n{report}"
        );
    }
}

/// Entries `scale · sin(seed + 1.7 i)`: fixed, varied weights without a generator.
fn weights(rows: usize, cols: usize, scale: f64, seed: f64) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |i, j| {
        scale * (seed + 1.7 * (i * cols + j) as f64).sin()
    })
}

/// The loss `L = Σ_i sum h(t_i)`: a cotangent of ones on every output.
fn sum_of_outputs<F>(problem: GradientProblem<F>) -> GradientProblem<F> {
    let ones = DMatrix::from_element(problem.h0.nrows(), problem.h0.ncols(), 1.0);
    let cotangents = vec![Some(ones); problem.grid.len()];
    problem.with_cotangents(cotangents)
}

/// What one dynamics' checks produced.
struct Checked {
    name: &'static str,
    residual: f64,
    residual_points: usize,
    /// Per strategy at [`AGREEMENT_RTOL`]: error against FD, against Dual64.
    agreement: Vec<(String, f64, f64)>,
    study: ToleranceReport,
}

fn check<F>(name: &'static str, problem: GradientProblem<F>) -> Result<Checked>
where
    F: Dynamics<f64> + Dynamics<Dual64> + Clone + 'static,
{
    let strategies: Vec<Strategy> = STRATEGIES
        .iter()
        .map(|s| s.parse())
        .collect::<std::result::Result<_, _>>()?;
    let study = StudyOptions {
        finite_difference_step: Some(FD_STEP),
        ..StudyOptions::default()
    };
    let report = tolerance_study(&problem, &strategies, &RTOLS, &study)?;

    let opts = Options::default().tolerances(AGREEMENT_RTOL, AGREEMENT_RTOL * 1e-2);
    let residual = adjoint_residual(&problem, &opts, &ResidualPoints::AcceptedSteps)?;
    // A direction on h0 and θ, plus a small one on the grid times.
    let mut direction = ProblemVector::probe(&problem, 7);
    direction.t.iter_mut().enumerate().for_each(|(i, t)| {
        *t = 1e-2 * (i as f64 + 1.0).cos();
    });
    let dual = problem.directional_derivative(&opts, &direction)?;
    let mut agreement = Vec::new();
    for s in &strategies {
        let g = problem.gradient(&opts, s)?;
        let dual_err = (g.dot(&direction) - dual).abs() / dual.abs();
        let fd_err = report
            .rows
            .iter()
            .find(|r| r.strategy == s.name() && r.rtol == AGREEMENT_RTOL)
            .and_then(|r| r.fd_rel_err)
            .unwrap_or(f64::NAN);
        agreement.push((s.name(), fd_err, dual_err));
    }
    Ok(Checked {
        name,
        residual: residual.max_relative,
        residual_points: residual.points.len(),
        agreement,
        study: report,
    })
}

fn problems() -> Result<Vec<Checked>> {
    let mlp = GradientProblem::new(
        Mlp,
        weights(4, 2, 1.0, 0.3),
        vec![0.0, 0.5, 1.0],
        vec![
            weights(16, 2, 0.8, 1.0),
            weights(1, 16, 0.3, 2.0),
            weights(2, 16, 0.5, 3.0),
            weights(1, 2, 0.2, 4.0),
        ],
    );
    let one = |x: f64| DMatrix::from_element(1, 1, x);
    let lotka_volterra = GradientProblem::new(
        LotkaVolterra,
        DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 2.0, 0.5]),
        vec![0.0, 0.5, 1.0, 1.5, 2.0],
        vec![one(1.5), one(1.0), one(3.0), one(1.0)],
    );
    let linear = GradientProblem::new(
        LinearA,
        weights(2, 3, 1.0, 5.0),
        vec![0.0, 1.0, 2.0],
        vec![DMatrix::from_row_slice(
            3,
            3,
            &[-0.2, 1.0, 0.0, -1.0, -0.2, 0.3, 0.0, -0.3, -0.5],
        )],
    );
    let sin_w = GradientProblem::new(
        SinTW,
        DMatrix::from_row_slice(1, 2, &[0.7, -0.5]),
        vec![0.0, 1.0, 2.0, 3.0],
        vec![DMatrix::from_row_slice(2, 2, &[0.4, -1.2, 0.9, 0.1])],
    );
    Ok(vec![
        check("mlp", sum_of_outputs(mlp))?,
        check("lotka-volterra", sum_of_outputs(lotka_volterra))?,
        check("linear", sum_of_outputs(linear))?,
        check("sin-t-w", sum_of_outputs(sin_w))?,
    ])
}

fn print_tables(checked: &[Checked]) {
    println!(
        "Agreement at rtol {AGREEMENT_RTOL:e}: relative error of each strategy's gradient \
         against central differences (step {FD_STEP:e}, dopri8 at rtol 1e-12) and of \
         ⟨gradient, v⟩ against a Dual64 directional derivative of the same solve\n"
    );
    println!(
        "{:<16} {:<26} {:>10} {:>10}",
        "dynamics", "strategy", "vs FD", "vs Dual64"
    );
    for c in checked {
        for (s, fd, dual) in &c.agreement {
            println!("{:<16} {:<26} {fd:>10.2e} {dual:>10.2e}", c.name, s);
        }
    }
    println!(
        "\nAdjoint-equation residual (tape VJP against Dual64 Jacobian) at every accepted step:"
    );
    for c in checked {
        println!(
            "  {:<16} max relative {:.2e} over {} points",
            c.name, c.residual, c.residual_points
        );
    }
    for c in checked {
        println!(
            "\n{}: gradient error against the reference ({}), FD floor {:.1e}",
            c.name,
            c.study.reference,
            c.study.fd_vs_reference.unwrap_or(f64::NAN)
        );
        print!("{:>8}", "rtol");
        for s in STRATEGIES {
            print!(" {s:>24}");
        }
        println!();
        for &rtol in &RTOLS {
            print!("{rtol:>8.0e}");
            for s in STRATEGIES {
                let row = c
                    .study
                    .rows
                    .iter()
                    .find(|r| r.strategy == s && r.rtol == rtol);
                print!(" {:>24.2e}", row.map_or(f64::NAN, |r| r.grad_rel_err));
            }
            println!();
        }
        print!("{:>8}", "slope");
        for s in STRATEGIES {
            match c.study.slope(s) {
                Some(x) => print!(" {x:>24.3}"),
                None => print!(" {:>24}", "-"),
            }
        }
        println!();
    }
}

fn to_json(checked: &[Checked], eq: &Equilibrium) -> serde_json::Value {
    let mut rows = Vec::new();
    let mut slopes = Vec::new();
    for c in checked {
        for r in &c.study.rows {
            rows.push(json!({
                "name": c.name,
                "strategy": r.strategy,
                "rtol": r.rtol,
                "grad_rel_err": r.grad_rel_err,
                "fd_rel_err": r.fd_rel_err,
            }));
        }
        for s in &c.study.slopes {
            slopes.push(json!({ "name": c.name, "strategy": s.strategy, "slope": s.slope }));
        }
    }
    let mut eq_rows = Vec::new();
    let mut eq_slopes = Vec::new();
    for (control, study) in &eq.studies {
        for r in &study.rows {
            eq_rows.push(json!({
                "control": control,
                "strategy": r.strategy,
                "rtol": r.rtol,
                "grad_rel_err": r.grad_rel_err,
                "forward_nfe": r.forward_nfe,
            }));
        }
        for s in &study.slopes {
            eq_slopes.push(json!({ "control": control, "strategy": s.strategy, "slope": s.slope }));
        }
    }
    let convergence: Vec<_> = eq
        .checks
        .iter()
        .map(|(control, r)| json!({ "control": control, "verdict": format!("{:?}", r.verdict) }))
        .collect();
    json!({
        "dynamics": rows,
        "slopes": slopes,
        "equilibrium": eq_rows,
        "equilibrium_slopes": eq_slopes,
        "convergence": convergence,
    })
}

/// Error against rtol, log–log: a colour per dynamics, a marker per drawn strategy, and the
/// line err = rtol for the eye.
fn chart(checked: &[Checked]) -> Chart {
    let colors = [0x1f77b4, 0xd62728, 0x2ca02c, 0x9467bd];
    let drawn = [
        ("taped", Marker::Circle),
        ("backsolve", Marker::Square),
        ("backsolve-checkpointed:4", Marker::Triangle),
    ];
    let mut chart = Chart::new("Gradient error against tolerance (taped = aca = checkpointed:4)")
        .x_axis(Axis::log("rtol (atol = rtol · 1e-2)"))
        .y_axis(Axis::log(
            "relative gradient error vs taped dopri8 at rtol 1e-12",
        ))
        .size(1240, 640);
    for (c, color) in checked.iter().zip(colors) {
        for (strategy, marker) in drawn {
            let points = c
                .study
                .rows
                .iter()
                .filter(|r| r.strategy == strategy)
                .map(|r| (r.rtol, r.grad_rel_err))
                .collect();
            let slope = c
                .study
                .slope(strategy)
                .map_or("-".into(), |x| format!("{x:.2}"));
            let name = format!("{} · {strategy} (slope {slope})", c.name);
            chart = chart.add(
                Series::line_points(name, points)
                    .color(color)
                    .marker(marker),
            );
        }
    }
    let guide = RTOLS.iter().map(|&r| (r, r)).collect();
    chart.add(Series::line("err = rtol", guide).color(0x7f7f7f))
}

struct Args {
    json: bool,
    svg: String,
}

fn run(args: &Args) -> Result<()> {
    let (json_output, svg) = (args.json, &args.svg);
    let start = Instant::now();
    let checked = problems()?;
    let eq = equilibrium()?;
    let elapsed = start.elapsed();
    chart(&checked).write_svg(svg)?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&to_json(&checked, &eq))?);
        eprintln!("took {:.2} s; chart: {svg}", elapsed.as_secs_f64());
    } else {
        print_tables(&checked);
        print_equilibrium(&eq);
        println!("\nchart: {svg}\ntook {:.2} s", elapsed.as_secs_f64());
    }
    Ok(())
}

const CLI: Cli = Cli {
    name: "gradient_check",
    about: "Every gradient strategy verified on four dynamics and across tolerances (ode::verify).",
    flags: &[
        Flag::switch("--json", "print one JSON object instead of the tables"),
        Flag::value(
            "--svg",
            "PATH",
            "the error-against-rtol chart (default target/gradient_check.svg)",
        ),
    ],
};

fn parse_args(m: &Matches) -> std::result::Result<Args, ArgError> {
    Ok(Args {
        json: m.has("--json"),
        svg: m.string_or("--svg", "target/gradient_check.svg"),
    })
}

fn main() {
    cli::run_main(&CLI, parse_args, run);
}
