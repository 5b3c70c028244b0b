//! nn on `f32`: a neural ODE trained end to end in `f32` (parameters, tape, solve, optimiser
//! updates) tracks the same training in `f64`; the problem files' gradients in `f32` match
//! `f64` to `f32` accuracy under every strategy; `f32` weights round-trip through a file.

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual32;
use ad_core::{Precision, Tape};
use nn::{train_step_ode, Activation, Adam, Leaf, NeuralOde, OdeFunc, ParamSet, Problem, Strategy};
use ode::Options;
use rand::SeedableRng;

fn problems() -> Vec<Problem> {
    ["seed", "spiral_small"]
        .iter()
        .map(|name| {
            let path = format!(
                "{}/../examples/problems/{name}.json",
                env!("CARGO_MANIFEST_DIR")
            );
            Problem::load(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        })
        .collect()
}

/// `max |a − b| / max |b|`, with `a` widened to f64.
fn gap<P: Precision>(a: &DMatrix<P>, b: &DMatrix<f64>) -> f64 {
    let a = a.map(Precision::as_f64);
    (a - b).abs().max() / b.abs().max().max(1e-30)
}

/// Losses of `steps` Adam steps in precision `P` from the same (f64-drawn) initialisation.
fn train<P: Precision>(strategy: Strategy, steps: usize) -> (Vec<f64>, ParamSet<P>) {
    let func = OdeFunc::new(2, &[16], Activation::Tanh).unwrap();
    let mut params: ParamSet<P> = func
        .mlp
        .init_params(&mut rand::rngs::StdRng::seed_from_u64(3))
        .cast()
        .unwrap();
    let model = NeuralOde {
        options: Options::default().tolerances(1e-5, 1e-7),
        ..NeuralOde::new(func, strategy)
    };
    let h0 = DMatrix::from_fn(8, 2, |i, j| ((i * 2 + j) as f64 * 0.7).sin());
    let target = h0.map(|v| 0.6 * v + 0.1);
    let lift = |m: &DMatrix<f64>| m.map(P::round_from);
    let (h0, target) = (lift(&h0), lift(&target));
    let (tape, mut adam) = (Tape::<P>::new(), Adam::new(0.02));
    let losses = (0..steps)
        .map(|_| {
            train_step_ode(&tape, &mut params, &mut adam, |tape, p| {
                let t =
                    tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]).map(P::round_from));
                let sol = model.forward(tape, tape.constant(h0.clone()), t, p)?;
                Ok((sol.last().mse(tape.constant(target.clone()))?, sol))
            })
            .unwrap()
            .loss
        })
        .collect();
    (losses, params)
}

#[test]
fn training_in_f32_tracks_training_in_f64() {
    for strategy in [
        Strategy::Taped,
        Strategy::backsolve(),
        Strategy::StoreEveryStep,
    ] {
        let (narrow, p32) = train::<f32>(strategy.clone(), 25);
        let (wide, p64) = train::<f64>(strategy.clone(), 25);
        let name = strategy.name();
        assert!(narrow[24] < 0.5 * narrow[0], "{name}: f32 loss {narrow:?}");
        let worst = narrow
            .iter()
            .zip(&wide)
            .map(|(a, b)| (a - b).abs() / b)
            .fold(0.0, f64::max);
        let params = p32
            .values()
            .iter()
            .zip(p64.values())
            .map(|(a, b)| gap(a, b))
            .fold(0.0, f64::max);
        eprintln!(
            "{name}: losses within {worst:.1e}, parameters within {params:.1e} after 25 steps"
        );
        assert!(
            worst < 1e-3 && params < 1e-3,
            "{name}: {worst:.1e} / {params:.1e}"
        );
        // The f32 run really ran in f32: its parameters are not the f64 ones rounded.
        assert_ne!(p32, p64.cast::<f32>().unwrap(), "{name}");
    }
}

#[test]
fn problem_file_gradients_in_f32_match_f64_under_every_strategy() {
    for p in problems() {
        for strategy in [
            Strategy::Taped,
            Strategy::backsolve(),
            Strategy::StoreEveryStep,
            Strategy::Checkpointed { slots: 2 },
            Strategy::backsolve_checkpointed(2),
        ] {
            let wide = p.gradients(&strategy).unwrap();
            let narrow = p.gradients_in::<f32>(&strategy).unwrap();
            let worst = std::iter::once(gap(&narrow.h0, &wide.h0))
                .chain(
                    narrow
                        .params
                        .iter()
                        .zip(&wide.params)
                        .map(|(a, b)| gap(a, b)),
                )
                .fold(0.0, f64::max);
            let loss = (f64::from(narrow.loss) - wide.loss).abs() / wide.loss.abs();
            eprintln!(
                "{}: loss {loss:.1e}, gradients {worst:.1e}",
                strategy.name()
            );
            assert!(
                loss < 1e-5 && worst < 1e-3,
                "{}: {loss:.1e} / {worst:.1e}",
                strategy.name()
            );
            // Fewer bytes per node on the tape: the values halve, the node bookkeeping does
            // not (and an f32 solve at rtol 1e-7 may take a few more steps).
            let (a, b) = (narrow.footprint.unwrap(), wide.footprint.unwrap());
            let per_node = |f: nn::Footprint| f.held_bytes as f64 / f.tape_nodes as f64;
            let ratio = per_node(a) / per_node(b);
            eprintln!("  held bytes per node, f32 / f64: {ratio:.2} ({a:?} vs {b:?})");
            // (Only where tensors dominate: the adjoints hold a few hundred bytes of grid.)
            assert!(b.held_bytes < 100_000 || ratio < 0.75, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn dual32_forward_mode_through_a_problem_file_matches_f32_reverse_mode() {
    let p = &problems()[1];
    let reverse = p.gradients_in::<f32>(&Strategy::Taped).unwrap();
    let tape = Tape::<Dual32>::new();
    let rec = p
        .record_with(&tape, &Strategy::Taped, |leaf, value| {
            let mut m = value.map(|v| Dual32::from(v as f32));
            if leaf == Leaf::Param(0) {
                m[(1, 0)].eps = 1.0;
            }
            m
        })
        .unwrap();
    let forward = rec.loss.scalar_value().unwrap().eps;
    let want = reverse.params[0][(1, 0)];
    assert!(
        (forward - want).abs() <= 1e-5 * want.abs().max(1e-3),
        "{forward} vs {want}"
    );
}

#[test]
fn f32_weights_round_trip_through_a_file_bit_for_bit() {
    let func = OdeFunc::new(3, &[5], Activation::Tanh).unwrap();
    let params: ParamSet<f32> = func
        .mlp
        .init_params(&mut rand::rngs::StdRng::seed_from_u64(9))
        .cast()
        .unwrap();
    let path =
        std::env::temp_dir().join(format!("costate-f32-weights-{}.json", std::process::id()));
    nn::weights::save(&params, &path).unwrap();
    let back = nn::weights::load(&path, None)
        .unwrap()
        .cast::<f32>()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(back, params);
}

#[test]
fn values_beyond_f32_are_refused_by_name_not_turned_into_infinities() {
    let mut p = problems().remove(1);
    let name = p.params.names()[2].clone();
    p.params.values_mut()[2][(1, 0)] = -1e39;
    let err = p.gradients_in::<f32>(&Strategy::Taped).unwrap_err();
    match &err {
        nn::Error::Overflow {
            tensor,
            row: 1,
            col: 0,
            precision: "f32",
            ..
        } => assert_eq!(tensor, &name),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("run in f64"), "{err}");
    // f64 holds it (the loss is then finite or a typed error, never an overflow refusal).
    assert!(!matches!(
        p.gradients(&Strategy::Taped),
        Err(nn::Error::Overflow { .. })
    ));
    let mut q = problems().remove(1);
    q.h0[(0, 1)] = 4e38;
    let tape = Tape::<f32>::new();
    assert!(matches!(
        q.record(&tape, &Strategy::backsolve()),
        Err(nn::Error::Overflow { row: 0, col: 1, .. })
    ));
    // A loss cotangent beyond f32 (it was lifted to infinity unchecked).
    let mut c = problems().remove(1);
    match &mut c.loss {
        nn::Loss::Cotangents(v) => v[3][(2, 1)] = 1e39,
        nn::Loss::SumFinal => panic!("spiral_small's loss has cotangents"),
    }
    match c.gradients_in::<f32>(&Strategy::Taped) {
        Err(nn::Error::Overflow {
            tensor,
            row: 2,
            col: 1,
            precision: "f32",
            ..
        }) => assert_eq!(tensor, "loss.cotangents[3]"),
        other => panic!("{:?}", other.map(|g| g.loss)),
    }
    // The tape is still usable.
    let x = tape.var(DMatrix::from_element(1, 1, 2.0f32));
    let g = tape.backward(x.square().sum()).unwrap();
    assert_eq!(g.get(x).unwrap()[(0, 0)], 4.0);
}
