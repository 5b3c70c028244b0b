//! The workloads several examples share.

use costate::ad_core::nalgebra::DMatrix;
use costate::nn::{Activation, Loss, Mlp, OdeFunc, Problem};
use costate::ode::{method_by_name, Options};
use costate::rand::Rng;
use costate::rand::SeedableRng;

/// The seed workload with fresh weights: dim 64, batch 32, 64→64→64→64 tanh MLP, 50 times in
/// [0, 1], dopri5 at rtol 1e-7 / atol 1e-9, loss = sum of h(1).
pub fn synthetic_seed() -> Result<Problem, costate::nn::Error> {
    let (dim, batch, npts) = (64, 32, 50);
    let func = OdeFunc::new(dim, &[64, 64], Activation::Tanh)?;
    let mut rng = costate::rand::rngs::StdRng::seed_from_u64(0);
    let params = func.mlp.init_params(&mut rng);
    let h0 = Mlp::normal(batch, dim, 0.0, 1.0, &mut rng)?;
    let t = (0..npts).map(|i| i as f64 / (npts - 1) as f64).collect();
    let options = Options {
        method: method_by_name("dopri5")?,
        ..Options::default().tolerances(1e-7, 1e-9)
    };
    let mut problem = Problem::new(func, params, h0, t, options, Loss::SumFinal)?;
    problem.file.description = "synthetic seed workload".into();
    Ok(problem)
}

/// `tape_size`'s T = 100 horizon: f = mlp(h) − h (64→64→64→64 tanh), h0 32×64 uniform in
/// [−1, 1), t = [0, 100], default options (dopri5, rtol 1e-7, atol 1e-9), loss = sum of h(100).
#[allow(dead_code)]
pub fn horizon() -> Result<Problem, costate::nn::Error> {
    let func = OdeFunc::new(64, &[64, 64], Activation::Tanh)?.with_subtract_state();
    let mut rng = costate::rand::rngs::StdRng::seed_from_u64(0);
    let params = func.mlp.init_params(&mut rng);
    let h0 = DMatrix::from_fn(32, 64, |_, _| rng.random_range(-1.0..1.0));
    let mut problem = Problem::new(
        func,
        params,
        h0,
        vec![0.0, 100.0],
        Options::default(),
        Loss::SumFinal,
    )?;
    problem.file.description = "f = mlp(h) − h, h0 32×64, t = [0, 100], L = sum of h(100)".into();
    Ok(problem)
}
