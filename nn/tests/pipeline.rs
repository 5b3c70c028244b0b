//! The problem pipeline (`Problem::gradients`, `record_with`, `forward_with`): it gives what
//! the chain written out by hand gives, runs on `Tape<Dual64>` for forward-mode derivatives
//! and Hessian-vector products, and a bad layer in a file is one error at its JSON key.

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::Tape;
use nn::{Error, Leaf, Mlp, ParamSet, Problem, Strategy};
use rand::{Rng, SeedableRng};
use serde_json::Value;

const SPIRAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/problems/spiral_small.json"
);

fn spiral() -> Problem {
    Problem::load(SPIRAL).unwrap_or_else(|e| panic!("{SPIRAL}: {e}"))
}

fn random_like(m: &DMatrix<f64>, rng: &mut impl Rng) -> DMatrix<f64> {
    DMatrix::from_fn(m.nrows(), m.ncols(), |_, _| rng.random_range(-1.0..1.0))
}

fn dot(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    a.component_mul(b).sum()
}

/// `Problem::gradients` equals the chain written out by hand, bit for bit, for a taped and
/// an opaque strategy, footprint included.
#[test]
fn gradients_equal_the_hand_written_chain() {
    let p = spiral();
    for strategy in [
        Strategy::Taped,
        Strategy::backsolve(),
        Strategy::Checkpointed { slots: 2 },
    ] {
        let g = p.gradients(&strategy).unwrap();
        let model = nn::NeuralOde {
            func: p.func.clone(),
            strategy: strategy.clone(),
            options: p.options.clone(),
        };
        let tape = Tape::<f64>::new();
        let vars = p.params.to_tape(&tape);
        let h0 = tape.var(p.h0.clone());
        let t = tape.var(DMatrix::from_row_slice(1, p.t.len(), &p.t));
        let sol = model.forward(&tape, h0, t, &vars).unwrap();
        let (nodes, held) = (tape.stats().nodes, sol.held_bytes().unwrap());
        let loss = p.loss.apply(&tape, &sol.outputs).unwrap();
        let mut grads = tape.backward(loss).unwrap();
        let name = strategy.name();
        assert_eq!(g.loss, loss.scalar_value().unwrap(), "{name}");
        assert_eq!(g.h0, grads.take_or_zeros(h0).unwrap(), "{name}");
        assert_eq!(g.t, grads.take_or_zeros(t).unwrap(), "{name}");
        assert_eq!(
            g.params,
            p.params.grads(&mut grads, &vars).unwrap(),
            "{name}"
        );
        assert_eq!(g.forward, sol.stats, "{name}");
        assert_eq!(g.backward, sol.backward_stats(&grads), "{name}");
        assert_eq!(g.strategy, sol.strategy, "{name}");
        let footprint = g.footprint.expect("gradients measures the footprint");
        assert_eq!((footprint.tape_nodes, footprint.held_bytes), (nodes, held));
        assert!(footprint.held_bytes > 0, "{name}");
    }
}

/// The pipeline's gradients reach the file's tight reference gradients (torchdiffeq's at
/// tight tolerances) as closely as torchdiffeq does at the file's tolerances, on every
/// shipped file's h0 gradient.
#[test]
fn gradients_are_close_to_the_files_reference() {
    for name in ["seed.json", "spiral_small.json"] {
        let path = format!("{}/../examples/problems/{name}", env!("CARGO_MANIFEST_DIR"));
        let p = Problem::load(&path).unwrap();
        let reference = p.file.reference.clone().unwrap();
        let tight = nn::json::matrix(&reference.tight.grad_h0, "tight").unwrap();
        let theirs = nn::json::matrix(&reference.odeint.grad_h0, "odeint").unwrap();
        let g = p.gradients(&Strategy::Taped).unwrap();
        let mine = (&g.h0 - &tight).abs().max();
        let bound = (&theirs - &tight).abs().max();
        assert!(
            mine <= 2.0 * bound,
            "{name}: {mine:e} vs torchdiffeq {bound:e}"
        );
        assert!((g.loss - reference.loss).abs() <= 1e-6 * reference.loss.abs());
    }
}

/// A whole problem on `Tape<Dual64>`, every input (h0, every parameter, the grid) seeded
/// with a random direction: the dual part of the loss is the f64 taped gradient's
/// directional derivative, to rounding.
#[test]
fn dual_numbers_give_the_taped_directional_derivative() {
    let p = spiral();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let dir_h0 = random_like(&p.h0, &mut rng);
    let dir_params: Vec<DMatrix<f64>> = p
        .params
        .values()
        .iter()
        .map(|v| random_like(v, &mut rng))
        .collect();
    // Move the inner times only: the grid must stay increasing for every step size.
    let mut dir_t = DMatrix::zeros(1, p.t.len());
    for i in 1..p.t.len() - 1 {
        dir_t[(0, i)] = rng.random_range(-0.1..0.1);
    }
    let tape = Tape::<Dual64>::new();
    let rec = p
        .record_with(&tape, &Strategy::Taped, |leaf, value| {
            let direction = match leaf {
                Leaf::H0 => &dir_h0,
                Leaf::Time => &dir_t,
                Leaf::Param(k) => &dir_params[k],
            };
            value.zip_map(direction, Dual64::new)
        })
        .unwrap();
    let dual = rec.loss.scalar_value().unwrap();
    let g = p.gradients(&Strategy::Taped).unwrap();
    let mut directional = dot(&g.h0, &dir_h0) + dot(&g.t, &dir_t);
    for (gk, dk) in g.params.iter().zip(&dir_params) {
        directional += dot(gk, dk);
    }
    assert!(
        (dual.re - g.loss).abs() <= 1e-12 * g.loss.abs(),
        "{} vs {}",
        dual.re,
        g.loss
    );
    let rel = (dual.eps - directional).abs() / directional.abs();
    eprintln!(
        "dual {} vs taped directional {directional}: rel {rel:.1e}",
        dual.eps
    );
    assert!(rel <= 1e-10, "rel {rel:e}");
    assert!(directional.abs() > 1e-3, "a direction the loss depends on");
}

/// Forward-over-reverse: parameters on `Tape<Dual64>` with a direction `v` as their dual
/// part, backward through the pipeline; the dual part of dL/dθ is the Hessian-vector
/// product H v, checked against central differences of f64 gradients (fixed-step RK4, so
/// both differentiate the same discrete solve).
#[test]
fn hessian_vector_product_matches_finite_differences_of_gradients() {
    let mut p = spiral();
    p.options.method = ode::method_by_name("rk4").unwrap();
    p.options.step_size = Some(0.05);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let v: Vec<DMatrix<f64>> = p
        .params
        .values()
        .iter()
        .map(|x| random_like(x, &mut rng))
        .collect();
    let tape = Tape::<Dual64>::new();
    let rec = p
        .record_with(&tape, &Strategy::Taped, |leaf, value| match leaf {
            Leaf::Param(k) => value.zip_map(&v[k], Dual64::new),
            _ => value.map(Dual64::from),
        })
        .unwrap();
    let g = rec.backward().unwrap();
    let hvp: Vec<DMatrix<f64>> = g.params.iter().map(|m| m.map(|x| x.eps)).collect();
    let gradient_at = |eps: f64| -> Vec<DMatrix<f64>> {
        let mut q = p.clone();
        for (x, d) in q.params.values_mut().iter_mut().zip(&v) {
            *x += d * eps;
        }
        q.gradients(&Strategy::Taped).unwrap().params
    };
    // The difference's error is its O(eps²) truncation: measured worst 4.2e-5 at eps 1e-3,
    // 4.2e-7 at 1e-4, 4.2e-9 at 1e-5 (rounding stays near 1e-11 there).
    let eps = 1e-5;
    let (plus, minus) = (gradient_at(eps), gradient_at(-eps));
    let mut worst = 0.0f64;
    for (k, h) in hvp.iter().enumerate() {
        let fd = (&plus[k] - &minus[k]) / (2.0 * eps);
        let rel = (h - &fd).abs().max() / fd.abs().max();
        worst = worst.max(rel);
    }
    eprintln!("HVP vs central differences of gradients: worst rel {worst:.1e}");
    assert!(worst <= 1e-6, "worst rel {worst:e}");
    // The reverse pass's real part is the f64 gradient.
    let f64_grads = p.gradients(&Strategy::Taped).unwrap().params;
    for (d, f) in g.params.iter().zip(&f64_grads) {
        let re = d.map(|x| x.re);
        assert!((&re - f).abs().max() <= 1e-12 * f.abs().max());
    }
}

/// A layer whose weight does not chain is one `Format` error at its JSON key, carrying the
/// model constructor's message (the one validator), not a second check's.
#[test]
fn a_bad_layer_shape_is_one_error_at_its_json_key() {
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(SPIRAL).unwrap()).unwrap();
    // Layer 1 gets one input column too many.
    for row in doc["model"]["layers"][1]["weight"].as_array_mut().unwrap() {
        row.as_array_mut().unwrap().push(Value::from(0.5));
    }
    let (key, message) = match Problem::from_json(&doc.to_string()) {
        Err(Error::Format { key, message }) => (key, message),
        other => panic!("expected a Format error, got {other:?}"),
    };
    assert_eq!(key, "model.layers[1].weight");
    // The same weights given to the model constructor directly: the same message.
    let p = spiral();
    let mut params = ParamSet::new();
    for (k, (name, value)) in p.params.names().iter().zip(p.params.values()).enumerate() {
        let value = if k == 2 {
            value.clone().insert_column(value.ncols(), 0.5)
        } else {
            value.clone()
        };
        params.push(name.clone(), value);
    }
    match Mlp::from_params(&params, p.func.mlp.activation) {
        Err(Error::Model {
            part: nn::ModelPart::Weight(1),
            message: direct,
        }) => assert_eq!(message, direct),
        other => panic!("expected a Model error at layer 1's weight, got {other:?}"),
    }
    let hidden = p.params.values()[0].nrows();
    assert!(
        message.contains(&format!("{}", hidden + 1)) && message.contains(&hidden.to_string()),
        "{message}"
    );
    assert!(!message.contains("model."), "one error, one key: {message}");
}

/// A lift that changes a shape is refused, naming the tensor.
#[test]
fn a_lift_that_changes_a_shape_is_refused() {
    let p = spiral();
    let tape = Tape::<f64>::new();
    let result = p.forward_with(&tape, &Strategy::Taped, |leaf, value| match leaf {
        Leaf::Param(1) => DMatrix::zeros(1, value.ncols() + 1),
        _ => value.clone(),
    });
    match result {
        Err(Error::Mismatch(m)) => assert!(m.contains("layers.0.bias"), "{m}"),
        Err(other) => panic!("expected Mismatch, got {other:?}"),
        Ok(_) => panic!("a lift of the wrong shape was accepted"),
    }
}
