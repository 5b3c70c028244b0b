//! Layer basics: initialisation, a hand-computed MLP, architecture checks.

use ad_core::nalgebra::DMatrix;
use ad_core::Tape;
use nn::{Activation, Error, Input, Linear, Mlp, ModelPart, OdeFunc, ParamSet};
use rand::SeedableRng;

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

#[test]
fn linear_init_is_bounded_by_fan_in_and_reproducible() {
    for (fan_in, fan_out) in [(1, 7), (4, 3), (64, 64), (9, 200)] {
        let layer = Linear::new(fan_in, fan_out);
        let (w, b) = layer.init(&mut rng(5));
        assert_eq!(w.shape(), (fan_out, fan_in));
        assert_eq!(b.shape(), (1, fan_out));
        let bound = 1.0 / (fan_in as f64).sqrt();
        let max = w.iter().chain(b.iter()).fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(max <= bound, "fan_in {fan_in}: {max} > {bound}");
        // The draws fill the range (not e.g. U(0, bound) or a bound of 1/fan_in).
        if w.len() >= 100 {
            assert!(
                max > 0.9 * bound,
                "fan_in {fan_in}: max {max}, bound {bound}"
            );
            assert!(w.iter().any(|&x| x < -0.5 * bound));
            assert!(w.iter().any(|&x| x > 0.5 * bound));
            let mean = w.mean();
            assert!(mean.abs() < 0.2 * bound, "mean {mean}");
        }
        let (w2, b2) = layer.init(&mut rng(5));
        assert_eq!((&w, &b), (&w2, &b2), "same seed, same weights");
        let (w3, _) = layer.init(&mut rng(6));
        assert_ne!(w, w3, "another seed, other weights");
    }
}

#[test]
fn mlp_init_params_names_shapes_and_seed() {
    let mlp = Mlp::new(&[3, 8, 8, 2], Activation::Relu).unwrap();
    assert_eq!(mlp.layers.len(), 3);
    assert_eq!((mlp.in_features(), mlp.out_features()), (3, 2));
    let p = mlp.init_params(&mut rng(1));
    assert_eq!(
        p.names(),
        [
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias",
            "layers.2.weight",
            "layers.2.bias"
        ]
    );
    let shapes: Vec<_> = p.values().iter().map(|v| v.shape()).collect();
    assert_eq!(shapes, [(8, 3), (1, 8), (8, 8), (1, 8), (2, 8), (1, 2)]);
    assert_eq!(p.numel(), 24 + 8 + 64 + 8 + 16 + 2);
    // Layer 1's bound is 1/√8, tighter than layer 0's 1/√3.
    let b1 = 1.0 / 8f64.sqrt();
    assert!(p
        .get("layers.1.weight")
        .unwrap()
        .iter()
        .all(|x| x.abs() <= b1));
    assert_eq!(p, mlp.init_params(&mut rng(1)));
    assert_ne!(p, mlp.init_params(&mut rng(2)));
    mlp.check_params(&p).unwrap();
}

#[test]
fn mlp_new_rejects_degenerate_widths() {
    assert!(matches!(
        Mlp::new(&[3], Activation::Tanh),
        Err(Error::Model {
            part: ModelPart::Layers,
            ..
        })
    ));
    // The zero width is layer 0's output (and layer 1's input): layer 0's weight is 0 × 3.
    assert!(matches!(
        Mlp::new(&[3, 0, 2], Activation::Tanh),
        Err(Error::Model {
            part: ModelPart::Weight(0),
            ..
        })
    ));
}

/// 2 → 3 → 1 with known weights, evaluated on the tape and by hand.
#[test]
fn mlp_forward_matches_hand_computation() {
    let w0 = [[0.5, -1.0], [0.25, 0.75], [-0.3, 0.2]];
    let b0 = [0.1, -0.2, 0.05];
    let w1 = [1.5, -0.5, 2.0];
    let b1 = 0.3;
    let xs = [[1.0, 2.0], [-0.5, 0.25], [0.0, 0.0]];
    let hand = |act: ActFn, x: [f64; 2]| {
        let mut y = b1;
        for j in 0..3 {
            let z = w0[j][0] * x[0] + w0[j][1] * x[1] + b0[j];
            y += w1[j] * act(z);
        }
        y
    };
    let mut params = ParamSet::new();
    params.push("layers.0.weight", DMatrix::from_fn(3, 2, |i, j| w0[i][j]));
    params.push("layers.0.bias", DMatrix::from_row_slice(1, 3, &b0));
    params.push("layers.1.weight", DMatrix::from_row_slice(1, 3, &w1));
    params.push("layers.1.bias", DMatrix::from_element(1, 1, b1));
    type ActFn = fn(f64) -> f64;
    let acts: [(Activation, ActFn); 5] = [
        (Activation::Tanh, f64::tanh),
        (Activation::Relu, |z| z.max(0.0)),
        (Activation::Softplus, |z| z.exp().ln_1p()),
        (Activation::Sigmoid, |z| 1.0 / (1.0 + (-z).exp())),
        (Activation::Identity, |z| z),
    ];
    for (activation, f) in acts {
        let mlp = Mlp::new(&[2, 3, 1], activation).unwrap();
        mlp.check_params(&params).unwrap();
        let tape = Tape::<f64>::new();
        let vars = params.to_tape(&tape);
        let x = tape.constant(DMatrix::from_fn(3, 2, |i, j| xs[i][j]));
        let y = mlp.forward(x, &vars).unwrap().value().unwrap();
        assert_eq!(y.shape(), (3, 1));
        for (i, x) in xs.iter().enumerate() {
            let expect = hand(f, *x);
            assert!(
                (y[(i, 0)] - expect).abs() < 1e-14,
                "{activation:?} row {i}: {} vs {expect}",
                y[(i, 0)]
            );
        }
    }
    // Wrong number of parameter variables is a tape error, not a panic.
    let mlp = Mlp::new(&[2, 3, 1], Activation::Tanh).unwrap();
    let tape = Tape::<f64>::new();
    let vars = params.to_tape(&tape);
    let x = tape.constant(DMatrix::zeros(1, 2));
    assert!(mlp.forward(x, &vars[..3]).is_err());
}

#[test]
fn activation_names() {
    assert_eq!(Activation::from_name("tanh"), Some(Activation::Tanh));
    assert_eq!(Activation::from_name("relu"), Some(Activation::Relu));
    assert_eq!(
        Activation::from_name("softplus"),
        Some(Activation::Softplus)
    );
    assert_eq!(Activation::from_name("sigmoid"), Some(Activation::Sigmoid));
    assert_eq!(
        Activation::from_name("identity"),
        Some(Activation::Identity)
    );
    assert_eq!(Activation::from_name("Tanh"), None);
    assert_eq!(Activation::from_name("gelu"), None);
}

#[test]
fn check_params_rejects_wrong_shapes_and_counts() {
    let mlp = Mlp::new(&[2, 3, 1], Activation::Tanh).unwrap();
    let good = mlp.init_params(&mut rng(0));
    mlp.check_params(&good).unwrap();
    // Transposed weight.
    let mut bad = good.clone();
    bad.values_mut()[0] = DMatrix::zeros(2, 3);
    match mlp.check_params(&bad) {
        Err(Error::Model {
            part: ModelPart::Weight(0),
            message,
        }) => assert!(message.contains("layers.0.weight"), "{message}"),
        other => panic!("expected a Model error at layer 0's weight, got {other:?}"),
    }
    // Bias as a column.
    let mut bad = good.clone();
    bad.values_mut()[1] = DMatrix::zeros(3, 1);
    match mlp.check_params(&bad) {
        Err(Error::Model {
            part: ModelPart::Bias(0),
            message,
        }) => assert!(message.contains("layers.0.bias"), "{message}"),
        other => panic!("expected a Model error at layer 0's bias, got {other:?}"),
    }
    // Last bias of the wrong width.
    let mut bad = good.clone();
    bad.values_mut()[3] = DMatrix::zeros(1, 2);
    assert!(matches!(
        mlp.check_params(&bad),
        Err(Error::Model {
            part: ModelPart::Bias(1),
            ..
        })
    ));
    // Missing tensor.
    let mut missing = ParamSet::new();
    for (n, v) in good.names().iter().zip(good.values()).take(3) {
        missing.push(n.clone(), v.clone());
    }
    assert!(matches!(
        mlp.check_params(&missing),
        Err(Error::Model {
            part: ModelPart::Layers,
            ..
        })
    ));
    // Another architecture's parameters.
    let other = Mlp::new(&[2, 4, 1], Activation::Tanh)
        .unwrap()
        .init_params(&mut rng(0));
    assert!(matches!(
        mlp.check_params(&other),
        Err(Error::Model {
            part: ModelPart::Weight(0),
            ..
        })
    ));
}

#[test]
fn odefunc_from_mlp_checks_widths() {
    let square = Mlp::new(&[3, 8, 3], Activation::Tanh).unwrap();
    let f = OdeFunc::from_mlp(square.clone(), Input::Cube, false, true).unwrap();
    assert_eq!(f.dim(), 3);
    assert!(f.subtract_state && !f.time_input);
    assert_eq!(f.input, Input::Cube);
    // A square MLP cannot also read t.
    assert!(matches!(
        OdeFunc::from_mlp(square, Input::State, true, false),
        Err(Error::Model {
            part: ModelPart::Weight(0),
            ..
        })
    ));
    // 4 inputs: the state (3) plus time.
    let with_t = Mlp::new(&[4, 8, 3], Activation::Tanh).unwrap();
    let f = OdeFunc::from_mlp(with_t.clone(), Input::State, true, false).unwrap();
    assert_eq!(f.dim(), 3);
    assert!(matches!(
        OdeFunc::from_mlp(with_t, Input::State, false, false),
        Err(Error::Model {
            part: ModelPart::Weight(0),
            ..
        })
    ));
    // Output width differs from the input's state part.
    let wrong = Mlp::new(&[3, 8, 2], Activation::Tanh).unwrap();
    assert!(matches!(
        OdeFunc::from_mlp(wrong, Input::State, false, false),
        Err(Error::Model {
            part: ModelPart::Weight(0),
            ..
        })
    ));
}

#[test]
fn odefunc_builders() {
    let f = OdeFunc::new(3, &[8], Activation::Tanh).unwrap();
    assert_eq!(f.mlp.in_features(), 3);
    let g = f.clone().with_time_input();
    assert_eq!(g.mlp.in_features(), 4);
    assert!(g.time_input);
    // Idempotent: the first layer grows only once.
    assert_eq!(g.clone().with_time_input().mlp.in_features(), 4);
    assert_eq!(g.dim(), 3);
    let h = f.with_subtract_state().with_input(Input::Cube);
    assert!(h.subtract_state);
    assert_eq!(h.input, Input::Cube);
    assert!(OdeFunc::new(0, &[8], Activation::Tanh).is_err());
}

/// The vector field itself: f(t, h) = mlp([h³, t]) − h on known weights.
#[test]
fn odefunc_eval_matches_hand_computation() {
    use ode::Dynamics;
    let f = OdeFunc::new(2, &[], Activation::Tanh)
        .unwrap()
        .with_time_input()
        .with_input(Input::Cube)
        .with_subtract_state();
    // One layer 3 → 2: y = [h0³, h1³, t] Wᵀ + b.
    let w = [[0.5, -1.0, 2.0], [0.25, 0.75, -3.0]];
    let b = [0.1, -0.2];
    let tape = Tape::<f64>::new();
    let params = [
        tape.var(DMatrix::from_fn(2, 3, |i, j| w[i][j])),
        tape.var(DMatrix::from_row_slice(1, 2, &b)),
    ];
    let h = tape.var(DMatrix::from_row_slice(2, 2, &[1.5, -0.5, 0.2, 2.0]));
    let t = tape.scalar(0.7);
    let out = f.eval(t, h, &params).unwrap().value().unwrap();
    for r in 0..2 {
        let hv = [h.value().unwrap()[(r, 0)], h.value().unwrap()[(r, 1)]];
        for c in 0..2 {
            let expect =
                w[c][0] * hv[0].powi(3) + w[c][1] * hv[1].powi(3) + w[c][2] * 0.7 + b[c] - hv[c];
            assert!((out[(r, c)] - expect).abs() < 1e-14, "({r},{c})");
        }
    }
}
