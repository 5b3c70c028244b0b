//! A NaN weight behind a ReLU used to vanish (relu(NaN) was 0), so a `NeuralOde` ran and
//! returned finite values. It must now fail, naming the non-finite derivative, in every
//! gradient strategy, and leave the tape usable.

use ad_core::nalgebra::DMatrix;
use ad_core::Tape;
use nn::rand::SeedableRng;
use nn::{Activation, NeuralOde, OdeFunc, Strategy};

#[test]
fn a_nan_weight_behind_relu_is_an_error_in_every_strategy() {
    let func = OdeFunc::new(3, &[8], Activation::Relu).unwrap();
    let mut params = func
        .mlp
        .init_params(&mut nn::rand::rngs::StdRng::seed_from_u64(1));
    params.values_mut()[0][(0, 0)] = f64::NAN;
    for name in ["taped", "backsolve", "aca", "checkpointed:2"] {
        let model = NeuralOde::new(func.clone(), name.parse::<Strategy>().unwrap());
        let tape = Tape::new();
        let p = params.to_tape(&tape);
        let h0 = tape.constant(DMatrix::from_element(2, 3, 0.5));
        let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
        let before = tape.len();
        let e = model
            .forward(&tape, h0, t, &p)
            .err()
            .expect("a NaN weight is an error");
        assert!(
            matches!(
                &e,
                nn::Error::Ode(ode::Error::NonFinite {
                    what: "derivative",
                    ..
                })
            ),
            "{name}: {e}"
        );
        assert_eq!(tape.len(), before, "{name}: the tape is as it was");
        let ok = tape.constant(DMatrix::from_element(1, 1, 2.0)).square();
        assert_eq!(ok.scalar_value().unwrap(), 4.0);
    }
}

/// A wrong-width or NaN `h0` is reported as what it is: a shape error naming `h0` (it was a
/// `linear` shape mismatch from the first layer) and a non-finite initial state (it was
/// "the dynamics blew up").
#[test]
fn a_bad_h0_is_named_as_h0() {
    let func = OdeFunc::new(3, &[8], Activation::Tanh).unwrap();
    let params = func
        .mlp
        .init_params(&mut nn::rand::rngs::StdRng::seed_from_u64(1));
    let model = NeuralOde::new(func, Strategy::Taped);
    let tape = Tape::new();
    let p = params.to_tape(&tape);
    let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
    let wide = tape.constant(DMatrix::from_element(2, 4, 0.5));
    let e = model.forward(&tape, wide, t, &p).err().unwrap();
    assert!(
        matches!(
            &e,
            nn::Error::Ode(ode::Error::Shape {
                expected: (2, 3),
                got: (2, 4),
                ..
            })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("h0"), "{e}");
    let mut nan = DMatrix::from_element(2, 3, 0.5);
    nan[(1, 2)] = f64::NAN;
    let e = model
        .forward(&tape, tape.constant(nan), t, &p)
        .err()
        .unwrap();
    assert!(
        matches!(
            &e,
            nn::Error::Ode(ode::Error::NonFiniteInitialState { row: 1, col: 2, .. })
        ),
        "{e}"
    );
    assert!(!e.to_string().contains("blew up"), "{e}");
}
