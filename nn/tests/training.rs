//! Training: short Adam and SGD runs lower the loss in both gradient modes; the optimisers'
//! updates follow their formulas and reject mismatched gradients.

use ad_core::nalgebra::DMatrix;
use ad_core::Tape;
use nn::{
    train_step, Activation, Adam, Error, NeuralOde, OdeFunc, Optimizer, ParamSet, Sgd, Strategy,
};
use ode::Options;
use rand::SeedableRng;

/// h0: four points on the unit circle; target: the same points rotated by 60° and shrunk.
fn data() -> (DMatrix<f64>, DMatrix<f64>) {
    let angles = [0.3f64, 1.9, 3.4, 5.0];
    let h0 = DMatrix::from_fn(4, 2, |i, j| {
        if j == 0 {
            angles[i].cos()
        } else {
            angles[i].sin()
        }
    });
    let rot = std::f64::consts::FRAC_PI_3;
    let target = DMatrix::from_fn(4, 2, |i, j| {
        let a = angles[i] + rot;
        0.7 * if j == 0 { a.cos() } else { a.sin() }
    });
    (h0, target)
}

/// Losses of `steps` training steps from a seeded init.
fn train(mode: Strategy, opt: &mut dyn Optimizer, steps: usize) -> Vec<f64> {
    let func = OdeFunc::new(2, &[16], Activation::Tanh).unwrap();
    let mut params = func
        .mlp
        .init_params(&mut rand::rngs::StdRng::seed_from_u64(3));
    let model = NeuralOde {
        options: Options::default().tolerances(1e-6, 1e-8),
        ..NeuralOde::new(func, mode)
    };
    let (h0, target) = data();
    let tape = Tape::new();
    (0..steps)
        .map(|_| {
            train_step(&tape, &mut params, opt, |tape, p| {
                let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
                let sol = model.forward(tape, tape.constant(h0.clone()), t, p)?;
                Ok(sol.last().mse(tape.constant(target.clone()))?)
            })
            .unwrap()
        })
        .collect()
}

#[test]
fn adam_lowers_the_loss_in_both_modes() {
    let mut runs = Vec::new();
    for mode in [Strategy::Taped, Strategy::backsolve()] {
        let losses = train(mode.clone(), &mut Adam::new(0.05), 40);
        let factor = losses[39] / losses[0];
        eprintln!(
            "Adam {}: {:.4e} -> {:.4e} (x{factor:.3})",
            mode.name(),
            losses[0],
            losses[39]
        );
        // Measured: x0.0048 in both modes.
        assert!(factor < 0.02, "{}: {losses:?}", mode.name());
        assert!(losses.iter().all(|l| l.is_finite()));
        runs.push(losses);
    }
    // Same init, same data: the two modes' gradients agree to the tolerance, so the runs
    // start identically and stay close.
    assert_eq!(runs[0][0], runs[1][0]);
    let rel = (runs[0][39] - runs[1][39]).abs() / runs[0][39];
    assert!(
        rel < 1e-2,
        "taped and adjoint runs drifted apart: {rel:.2e}"
    );
}

#[test]
fn sgd_with_momentum_lowers_the_loss() {
    for mode in [Strategy::Taped, Strategy::backsolve()] {
        let losses = train(mode.clone(), &mut Sgd::new(0.1, 0.9), 40);
        let factor = losses[39] / losses[0];
        eprintln!(
            "Sgd {}: {:.4e} -> {:.4e} (x{factor:.3})",
            mode.name(),
            losses[0],
            losses[39]
        );
        // Measured: x0.0092 in both modes.
        assert!(factor < 0.05, "{}: {losses:?}", mode.name());
    }
}

#[test]
fn train_step_reports_the_loss_before_the_update() {
    // Zero learning rate: parameters stay put and the loss repeats exactly.
    let losses = train(Strategy::Taped, &mut Sgd::new(0.0, 0.0), 3);
    assert_eq!(losses[0], losses[1]);
    assert_eq!(losses[1], losses[2]);
}

fn one_tensor(values: &[f64]) -> ParamSet {
    let mut p = ParamSet::new();
    p.push("w", DMatrix::from_row_slice(1, values.len(), values));
    p
}

#[test]
fn sgd_momentum_follows_its_formula() {
    // v1 = g1, p1 = p0 − lr v1; v2 = μ v1 + g2, p2 = p1 − lr v2.
    let mut p = one_tensor(&[1.0, -2.0]);
    let mut opt = Sgd::new(0.5, 0.9);
    let g1 = DMatrix::from_row_slice(1, 2, &[0.2, -0.4]);
    let g2 = DMatrix::from_row_slice(1, 2, &[1.0, 0.0]);
    opt.step(&mut p, std::slice::from_ref(&g1)).unwrap();
    assert_eq!(p.values()[0], DMatrix::from_row_slice(1, 2, &[0.9, -1.8]));
    opt.step(&mut p, std::slice::from_ref(&g2)).unwrap();
    let expect = [0.9 - 0.5 * (0.9 * 0.2 + 1.0), -1.8 - 0.5 * (0.9 * -0.4)];
    for (x, e) in p.values()[0].iter().zip(expect) {
        assert!((x - e).abs() < 1e-15, "{x} vs {e}");
    }
}

#[test]
fn adam_follows_its_formula() {
    let mut p = one_tensor(&[1.0, -2.0, 0.5]);
    let mut opt = Adam::new(0.1);
    let g1 = DMatrix::from_row_slice(1, 3, &[3.0, -0.001, 0.0]);
    // First step: m̂ = g, v̂ = g², so each entry moves by lr·g/(|g| + ε) ≈ lr·sign(g).
    opt.step(&mut p, std::slice::from_ref(&g1)).unwrap();
    let v = &p.values()[0];
    assert!((v[0] - (1.0 - 0.1 * 3.0 / (3.0 + 1e-8))).abs() < 1e-15);
    assert!((v[1] - (-2.0 + 0.1 * 0.001 / (0.001 + 1e-8))).abs() < 1e-15);
    assert_eq!(v[2], 0.5);
    // Second step with bias correction.
    let g2 = DMatrix::from_row_slice(1, 3, &[1.0, 1.0, 1.0]);
    let before = v.clone();
    opt.step(&mut p, std::slice::from_ref(&g2)).unwrap();
    let (b1, b2): (f64, f64) = (0.9, 0.999);
    for k in 0..3 {
        let m = b1 * (1.0 - b1) * g1[k] + (1.0 - b1) * g2[k];
        let s = b2 * (1.0 - b2) * g1[k] * g1[k] + (1.0 - b2) * g2[k] * g2[k];
        let m_hat = m / (1.0 - b1 * b1);
        let s_hat = s / (1.0 - b2 * b2);
        let expect = before[k] - 0.1 * m_hat / (s_hat.sqrt() + 1e-8);
        assert!((p.values()[0][k] - expect).abs() < 1e-14, "entry {k}");
    }
}

#[test]
fn optimisers_reject_mismatched_gradients() {
    let mut opts: Vec<(&str, Box<dyn Optimizer>)> = vec![
        ("adam", Box::new(Adam::new(0.1))),
        ("sgd", Box::new(Sgd::new(0.1, 0.9))),
    ];
    for (name, opt) in &mut opts {
        let mut p = one_tensor(&[1.0, 2.0]);
        p.push("b", DMatrix::zeros(2, 2));
        let good = [DMatrix::zeros(1, 2), DMatrix::zeros(2, 2)];
        // Wrong shape.
        let wrong_shape = [DMatrix::zeros(2, 1), DMatrix::zeros(2, 2)];
        match opt.step(&mut p, &wrong_shape) {
            Err(Error::Mismatch(m)) => assert!(m.contains("`w`"), "{name}: {m}"),
            other => panic!("{name}: expected Mismatch, got {other:?}"),
        }
        // Wrong count.
        assert!(
            matches!(opt.step(&mut p, &good[..1]), Err(Error::Mismatch(_))),
            "{name}"
        );
        // Parameters untouched by the rejected steps.
        assert_eq!(p.values()[0], DMatrix::from_row_slice(1, 2, &[1.0, 2.0]));
        opt.step(&mut p, &good).unwrap();
        // The state now belongs to these parameters; others are refused.
        let mut other = one_tensor(&[1.0, 2.0, 3.0]);
        other.push("b", DMatrix::zeros(2, 2));
        let g = [DMatrix::zeros(1, 3), DMatrix::zeros(2, 2)];
        assert!(
            matches!(opt.step(&mut other, &g), Err(Error::Mismatch(_))),
            "{name}: state of other parameters"
        );
    }
}

type Boxed = Box<dyn Optimizer>;

fn two_tensors() -> ParamSet {
    let mut p = one_tensor(&[1.0, -2.0]);
    p.push("b", DMatrix::from_row_slice(2, 2, &[0.5, 0.25, -0.75, 2.0]));
    p
}

fn good_grads() -> Vec<DMatrix<f64>> {
    vec![
        DMatrix::from_row_slice(1, 2, &[0.2, -0.4]),
        DMatrix::from_row_slice(2, 2, &[1.0, 0.0, -3.0, 0.5]),
    ]
}

fn expect_hyper<T: std::fmt::Debug>(r: nn::Result<T>, field: &str) {
    match r {
        Err(Error::Hyperparameter { name, .. }) => assert_eq!(name, field),
        other => panic!("{field}: expected Hyperparameter, got {other:?}"),
    }
}

#[test]
fn checked_constructors_refuse_bad_hyperparameters() {
    for lr in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.1] {
        expect_hyper(Sgd::try_new(lr, 0.0), "lr");
        expect_hyper(Adam::try_new(lr), "lr");
        expect_hyper(Adam::try_with(lr, 0.9, 0.999, 1e-8), "lr");
    }
    for m in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
        expect_hyper(Sgd::try_new(0.1, m), "momentum");
    }
    for b in [1.0, -0.1, f64::NAN, 2.0] {
        expect_hyper(Adam::try_with(0.1, b, 0.999, 1e-8), "beta1");
        expect_hyper(Adam::try_with(0.1, 0.9, b, 1e-8), "beta2");
    }
    for eps in [0.0, -1e-8, f64::NAN, f64::INFINITY] {
        expect_hyper(Adam::try_with(0.1, 0.9, 0.999, eps), "eps");
    }
    // The message names the optimiser, the field and the value.
    let msg = Adam::try_with(0.1, 1.0, 0.999, 1e-8)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("Adam") && msg.contains("beta1 = 1"), "{msg}");
    // Valid values construct optimisers that behave like the unchecked ones.
    let mut a = Adam::try_with(0.1, 0.0, 0.5, 1e-6).unwrap();
    let mut b = Adam::new(0.1);
    (b.beta1, b.beta2, b.eps) = (0.0, 0.5, 1e-6);
    let (mut p, mut q) = (two_tensors(), two_tensors());
    a.step(&mut p, &good_grads()).unwrap();
    b.step(&mut q, &good_grads()).unwrap();
    assert_eq!(p, q);
    assert_ne!(p, two_tensors());
    let mut s = Sgd::try_new(0.0, 0.0).unwrap();
    s.step(&mut p, &good_grads()).unwrap();
    assert_eq!(p, q, "lr = 0 is allowed and moves nothing");
}

#[test]
fn step_refuses_bad_hyperparameters_set_on_the_fields() {
    let mut p = two_tensors();
    let mut adam = Adam::new(f64::NAN);
    expect_hyper(adam.step(&mut p, &good_grads()), "lr");
    adam.lr = 0.1;
    adam.beta1 = 1.0;
    expect_hyper(adam.step(&mut p, &good_grads()), "beta1");
    adam.beta1 = 0.9;
    adam.beta2 = 1.0;
    expect_hyper(adam.step(&mut p, &good_grads()), "beta2");
    adam.beta2 = 0.999;
    adam.eps = 0.0;
    expect_hyper(adam.step(&mut p, &good_grads()), "eps");
    assert_eq!(p, two_tensors(), "refused steps leave the parameters");
    // Repaired, its first step is a first step (no hidden step count or state).
    adam.eps = 1e-8;
    adam.step(&mut p, &good_grads()).unwrap();
    let mut q = two_tensors();
    Adam::new(0.1).step(&mut q, &good_grads()).unwrap();
    assert_eq!(p, q);

    let mut p = two_tensors();
    let mut sgd = Sgd::new(f64::INFINITY, 0.0);
    expect_hyper(sgd.step(&mut p, &good_grads()), "lr");
    sgd.lr = 0.5;
    sgd.momentum = 1.0;
    expect_hyper(sgd.step(&mut p, &good_grads()), "momentum");
    assert_eq!(p, two_tensors());
    sgd.momentum = 0.9;
    sgd.step(&mut p, &good_grads()).unwrap();
    // First step: v = g, p = p0 − lr g.
    assert_eq!(p.values()[0], DMatrix::from_row_slice(1, 2, &[0.9, -1.8]));
}

#[test]
fn non_finite_gradients_are_refused_before_any_update() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let opts: Vec<(&str, Boxed, Boxed)> = vec![
            ("adam", Box::new(Adam::new(0.1)), Box::new(Adam::new(0.1))),
            (
                "sgd",
                Box::new(Sgd::new(0.1, 0.9)),
                Box::new(Sgd::new(0.1, 0.9)),
            ),
        ];
        for (name, mut opt, mut fresh) in opts {
            // One good step first, so the optimiser has state to keep.
            let mut p = two_tensors();
            opt.step(&mut p, &good_grads()).unwrap();
            let mut q = two_tensors();
            fresh.step(&mut q, &good_grads()).unwrap();
            let before = p.clone();
            // Tensor 0 is fine, tensor 1 has the bad entry at row 1, column 0.
            let mut g = good_grads();
            g[1][(1, 0)] = bad;
            match opt.step(&mut p, &g) {
                Err(Error::NonFiniteGradient {
                    index,
                    name: param,
                    row,
                    col,
                    value,
                }) => {
                    assert_eq!((index, param.as_str(), row, col), (1, "b", 1, 0), "{name}");
                    assert!(value.is_nan() == bad.is_nan(), "{name}");
                }
                other => panic!("{name}: expected NonFiniteGradient, got {other:?}"),
            }
            assert_eq!(p, before, "{name}: no tensor updated, not even tensor 0");
            // The state is untouched: the next good step matches an optimiser that never
            // saw the bad gradient.
            opt.step(&mut p, &good_grads()).unwrap();
            fresh.step(&mut q, &good_grads()).unwrap();
            assert_eq!(p, q, "{name}");
        }
    }
}

#[test]
fn overflowing_updates_are_refused() {
    // SGD: finite gradient and learning rate whose product overflows the parameter.
    let mut p = one_tensor(&[1.0, -2.0]);
    let mut sgd = Sgd::new(1e10, 0.0);
    let g = [DMatrix::from_row_slice(1, 2, &[1.0, 1e300])];
    match sgd.step(&mut p, &g) {
        Err(Error::NonFiniteUpdate {
            quantity,
            index,
            row,
            col,
            ..
        }) => assert_eq!((quantity, index, row, col), ("parameter", 0, 0, 1)),
        other => panic!("expected NonFiniteUpdate, got {other:?}"),
    }
    assert_eq!(p, one_tensor(&[1.0, -2.0]));
    // Adam: any finite gradient gives a finite step (g² overflowed its second moment, and the
    // step was refused): the first step moves every entry by lr·sign(g) whatever |g| is, and
    // later steps stay finite however large or small the gradient gets.
    let mut adam = Adam::new(0.1);
    let g = [DMatrix::from_row_slice(1, 2, &[1e200, 1.0])];
    adam.step(&mut p, &g).unwrap();
    assert!((p.values()[0][0] - 0.9).abs() < 1e-12, "{}", p.values()[0]);
    // (ε = 1e-8 shows at |g| = 1: the step is lr / (1 + 1e-8).)
    assert!(
        (p.values()[0][1] + 2.1 - 1e-9).abs() < 1e-15,
        "{}",
        p.values()[0]
    );
    for g in [f64::MAX, -f64::MAX, 1e-300, 0.0, 1e300] {
        adam.step(&mut p, &[DMatrix::from_row_slice(1, 2, &[g, g])])
            .unwrap();
        assert!(
            p.values()[0].iter().all(|x| x.is_finite()),
            "{g}: {}",
            p.values()[0]
        );
    }
    // The root form is the textbook update to rounding at moderate gradients.
    let mut q = one_tensor(&[1.0, -2.0]);
    let mut adam = Adam::new(0.01);
    let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
    let mut expect = [1.0f64, -2.0];
    for k in 1..=5 {
        let g = [0.3 * k as f64, -1.7 / k as f64];
        adam.step(&mut q, &[DMatrix::from_row_slice(1, 2, &g)])
            .unwrap();
        for i in 0..2 {
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
            let (mh, vh) = (
                m[i] / (1.0 - 0.9f64.powi(k)),
                v[i] / (1.0 - 0.999f64.powi(k)),
            );
            expect[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
        }
    }
    for (got, want) in q.values()[0].iter().zip(expect) {
        assert!((got - want).abs() < 1e-13, "{got} vs {want}");
    }
}

#[test]
fn train_step_refuses_a_nan_gradient_and_keeps_the_parameters() {
    let tape = Tape::new();
    let mut p = two_tensors();
    let mut opt = Adam::new(0.1);
    // L = Σ (w ⊙ [NaN, 1]) + Σ b: the gradient of `w` has a NaN in column 0.
    let r = train_step(&tape, &mut p, &mut opt, |tape, v| {
        let c = tape.constant(DMatrix::from_row_slice(1, 2, &[f64::NAN, 1.0]));
        Ok(tape.fixed_weighted_sum(&[(1.0, v[0].mul(c)?.sum()), (1.0, v[1].sum())])?)
    });
    match r {
        Err(Error::NonFiniteGradient {
            index, name, col, ..
        }) => assert_eq!((index, name.as_str(), col), (0, "w", 0)),
        other => panic!("expected NonFiniteGradient, got {other:?}"),
    }
    assert_eq!(p, two_tensors());
    // A NaN learning rate is refused by train_step as well.
    let mut bad = Sgd::new(f64::NAN, 0.0);
    let r = train_step(&tape, &mut p, &mut bad, |_, v| Ok(v[1].sum()));
    expect_hyper(r, "lr");
    assert_eq!(p, two_tensors());
    // A finite loss then trains: L = Σ b moves every entry of b by −lr (first Adam step).
    let l = train_step(&tape, &mut p, &mut opt, |_, v| Ok(v[1].sum())).unwrap();
    assert_eq!(l, 0.5 + 0.25 - 0.75 + 2.0);
    for (x, x0) in p.values()[1].iter().zip(two_tensors().values()[1].iter()) {
        assert!((x - (x0 - 0.1)).abs() < 1e-6, "{x} vs {x0}");
    }
    assert_eq!(
        p.values()[0],
        two_tensors().values()[0],
        "w has zero gradient"
    );
}
