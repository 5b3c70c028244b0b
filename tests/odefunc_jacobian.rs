//! `nn::OdeFunc` declares its rows independent (an MLP applied to every sample), so its
//! Jacobian comes in blocks: the same numbers as the dense one, in `dim` sweeps.

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::{Result as TapeResult, Scalar, Var};
use costate::nn::{Activation, OdeFunc};
use costate::ode::jacobian::{jacobian, Jacobian};
use costate::ode::Dynamics;
use costate::rand::{Rng, SeedableRng};

/// The same field, without the declaration.
struct Undeclared(OdeFunc);

impl<T: Scalar> Dynamics<T> for Undeclared {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        self.0.eval(t, h, p)
    }
}

#[test]
fn odefunc_jacobians_come_in_blocks() {
    let func = OdeFunc::new(3, &[8], Activation::Tanh)
        .unwrap()
        .with_time_input()
        .with_subtract_state();
    assert!(Dynamics::<f64>::rows_independent(&func));
    let mut rng = costate::rand::rngs::StdRng::seed_from_u64(4);
    let params = func.mlp.init_params(&mut rng);
    let h = DMatrix::from_fn(5, 3, |_, _| rng.random_range(-1.0..1.0));
    let (blocks, bs) = jacobian::<f64, _>(&func, 0.3, &h, params.values()).unwrap();
    let (dense, ds) = jacobian::<f64, _>(&Undeclared(func), 0.3, &h, params.values()).unwrap();
    assert!(matches!(blocks, Jacobian::Blocks(ref b) if b.len() == 5));
    assert_eq!((bs.sweeps, ds.sweeps), (3 + 1, 15));
    assert!((blocks.to_dense() - dense.to_dense()).abs().max() < 1e-15);
}
