//! The reference scripts' problem files (`examples/problems/*.json`, copies of the
//! torchdiffeq anchors' files): they load, round-trip exactly, and both gradient modes reproduce torchdiffeq's
//! step sequence and reach the file's `tight` gradients at least about as well as
//! torchdiffeq does at the same tolerances.

use costate::nalgebra::DMatrix;
use costate::nn::problem::{GradientSet, ProblemFile};
use costate::nn::{Loss, Problem, Strategy};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/problems/");

fn load(name: &str) -> Option<Problem> {
    let path = format!("{DIR}{name}");
    Some(Problem::load(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// The gradients of a run, in the reference's layout.
struct Grads {
    loss: f64,
    h0: DMatrix<f64>,
    /// weight, bias, weight, bias, ...
    theta: Vec<DMatrix<f64>>,
    t: DMatrix<f64>,
    nfe_forward: usize,
    nfe_backward: usize,
}

fn from_reference(g: &GradientSet) -> Grads {
    let tensors = g.tensors().unwrap();
    let nfe = |k: &str| g.extra.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    Grads {
        loss: g
            .extra
            .get("loss")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN),
        h0: tensors.h0,
        theta: tensors.params,
        t: tensors.t.expect("reference has grad_t"),
        nfe_forward: nfe("nfe_forward"),
        nfe_backward: nfe("nfe_backward"),
    }
}

/// One mode through the pipeline, in the reference's layout.
fn run(p: &Problem, mode: Strategy) -> Grads {
    let g = p.gradients(&mode).unwrap();
    Grads {
        loss: g.loss,
        h0: g.h0,
        theta: g.params,
        t: g.t,
        nfe_forward: g.forward.nfe,
        nfe_backward: g.backward.map_or(0, |s| s.nfe),
    }
}

fn max_abs_diff(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// Max abs error of dL/dh0, dL/dθ (over every tensor) and dL/dt against `truth`.
fn errors(g: &Grads, truth: &Grads) -> [f64; 3] {
    assert_eq!(g.theta.len(), truth.theta.len());
    let theta = g
        .theta
        .iter()
        .zip(&truth.theta)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f64::max);
    [
        max_abs_diff(&g.h0, &truth.h0),
        theta,
        max_abs_diff(&g.t, &truth.t),
    ]
}

const QUANTITIES: [&str; 3] = ["dL/dh0", "dL/dθ", "dL/dt"];

/// Both modes on `name`: forward NFE as torchdiffeq's, loss as the tight one, and each
/// checked gradient's error against `tight` at most twice torchdiffeq's for that mode.
/// `checked` picks which of dL/dh0, dL/dθ, dL/dt are held to the bound.
fn compare_with_torchdiffeq(name: &str, checked: [bool; 3]) {
    let Some(p) = load(name) else { return };
    let reference = p
        .file
        .reference
        .clone()
        .expect("problem file has a reference block");
    let tight = from_reference(&reference.tight);
    let mut lines = Vec::new();
    for (mode, theirs) in [
        (Strategy::Taped, &reference.odeint),
        (Strategy::backsolve(), &reference.odeint_adjoint),
    ] {
        let theirs = from_reference(theirs);
        let start = std::time::Instant::now();
        let mine = run(&p, mode.clone());
        let elapsed = start.elapsed();
        assert_eq!(
            mine.nfe_forward,
            theirs.nfe_forward,
            "{name} {}: forward NFE differs from torchdiffeq's",
            mode.name()
        );
        let rel_loss = (mine.loss - tight.loss).abs() / tight.loss.abs();
        assert!(
            rel_loss < 1e-6,
            "{name} {}: loss {} vs tight {}",
            mode.name(),
            mine.loss,
            tight.loss
        );
        let (e_mine, e_theirs) = (errors(&mine, &tight), errors(&theirs, &tight));
        lines.push(format!(
            "{name} {} ({:.2?}, NFE {} + {}; torchdiffeq {} + {}):",
            mode.name(),
            elapsed,
            mine.nfe_forward,
            mine.nfe_backward,
            theirs.nfe_forward,
            theirs.nfe_backward
        ));
        for k in 0..3 {
            lines.push(format!(
                "  {:7} costate {:.3e}  torchdiffeq {:.3e}  ratio {:.3}{}",
                QUANTITIES[k],
                e_mine[k],
                e_theirs[k],
                e_mine[k] / e_theirs[k],
                if checked[k] { "" } else { " (not checked)" }
            ));
        }
        eprintln!("{}", lines.join("\n"));
        lines.clear();
        for k in (0..3).filter(|&k| checked[k]) {
            assert!(
                e_mine[k] <= 2.0 * e_theirs[k],
                "{name} {}: {} error {:.3e} > 2 x torchdiffeq's {:.3e}",
                mode.name(),
                QUANTITIES[k],
                e_mine[k],
                e_theirs[k]
            );
        }
    }
}

#[test]
fn seed_matches_torchdiffeq_nfe_and_accuracy() {
    compare_with_torchdiffeq("seed.json", [true, true, true]);
}

#[test]
fn spiral_small_matches_torchdiffeq_nfe_and_accuracy() {
    compare_with_torchdiffeq("spiral_small.json", [true, true, true]);
}

/// `to_file` → JSON text → `from_json` gives back the same problem, bit for bit.
fn round_trip(name: &str) {
    let Some(p) = load(name) else { return };
    let text = serde_json::to_string(&p.to_file()).unwrap();
    let q = Problem::from_json(&text).unwrap();
    assert_eq!(q.params, p.params, "{name}: params");
    assert_eq!(q.h0, p.h0, "{name}: h0");
    assert_eq!(q.t, p.t, "{name}: t");
    assert_eq!(q.loss, p.loss, "{name}: loss");
    assert_eq!(q.func, p.func, "{name}: model");
    assert_eq!(
        (q.options.rtol, q.options.atol),
        (p.options.rtol, p.options.atol)
    );
    assert_eq!(q.options.method.name, p.options.method.name);
    assert!(p.file.reference.is_some(), "{name}: reference block read");
    assert_eq!(
        q.file.reference, p.file.reference,
        "{name}: reference block"
    );
    assert_eq!(
        q.file.generator, p.file.generator,
        "{name}: generator block"
    );
    assert_eq!(q.file, p.file, "{name}: whole file");
    // The loaded numbers are the file's: compare with an independent parse of the text.
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}{name}")).unwrap()).unwrap();
    let (r, c) = p.h0.shape();
    let h0_last = raw["h0"][r - 1][c - 1].as_f64().unwrap();
    assert_eq!(p.h0[(r - 1, c - 1)], h0_last);
    let w = &raw["model"]["layers"][0]["weight"][1][0];
    assert_eq!(p.params.values()[0][(1, 0)], w.as_f64().unwrap());
    // And a second trip through a ProblemFile value changes nothing.
    let file: ProblemFile = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_string(&file).unwrap(), text);
}

#[test]
fn seed_round_trips_exactly() {
    round_trip("seed.json");
    let Some(p) = load("seed.json") else { return };
    assert_eq!(p.h0.shape(), (32, 64));
    assert_eq!(p.t.len(), 50);
    assert_eq!(p.params.len(), 6);
    assert_eq!(p.loss, Loss::SumFinal);
    assert_eq!((p.options.rtol, p.options.atol), (1e-7, 1e-9));
}

#[test]
fn spiral_small_round_trips_exactly() {
    round_trip("spiral_small.json");
    let Some(p) = load("spiral_small.json") else {
        return;
    };
    assert_eq!(p.h0.shape(), (20, 2));
    assert_eq!(p.t.len(), 10);
    assert_eq!(p.func.input, costate::nn::Input::Cube);
    assert_eq!(p.func.mlp.layers.len(), 2);
    match &p.loss {
        Loss::Cotangents(v) => assert_eq!(v.len(), 10),
        other => panic!("expected cotangents, got {other:?}"),
    }
}

/// `max |a − b| / max |b|`.
fn rel(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    max_abs_diff(a, b)
        / b.iter()
            .fold(0.0f64, |m, x| m.max(x.abs()))
            .max(f64::MIN_POSITIVE)
}

/// On every problem file, the exact opaque strategies (store every step, K-slot binomial
/// checkpointing for K = 1, 2, 5 and enough for every step) give the taped gradient to
/// 1e-12 relative on h0, every weight and bias and every time, with the same forward NFE.
#[test]
fn exact_strategies_equal_taped_on_the_problem_files() {
    for name in ["seed.json", "spiral_small.json"] {
        let Some(p) = load(name) else { continue };
        let taped = run(&p, Strategy::Taped);
        for strategy in [
            Strategy::StoreEveryStep,
            Strategy::Checkpointed { slots: 1 },
            Strategy::Checkpointed { slots: 2 },
            Strategy::Checkpointed { slots: 5 },
            Strategy::Checkpointed { slots: 1000 },
        ] {
            let mine = run(&p, strategy.clone());
            let mut worst = rel(&mine.h0, &taped.h0).max(rel(&mine.t, &taped.t));
            for (a, b) in mine.theta.iter().zip(&taped.theta) {
                worst = worst.max(rel(a, b));
            }
            eprintln!("{name} {}: rel diff to taped {worst:.1e}", strategy.name());
            assert!(worst <= 1e-12, "{name} {}: {worst:e}", strategy.name());
            assert_eq!(mine.nfe_forward, taped.nfe_forward);
            assert_eq!(mine.loss, taped.loss, "{name} {}", strategy.name());
        }
    }
}
