//! The workloads several examples share.

use costate::nn::json::nested;
use costate::nn::problem::{layer_specs, LossSpec, ModelSpec, ProblemFile, SolverSpec};
use costate::nn::{Activation, Mlp, OdeFunc, Problem};
use costate::rand::SeedableRng;

/// The seed workload with fresh weights: dim 64, batch 32, 64→64→64→64 tanh MLP, 50 times in
/// [0, 1], dopri5 at rtol 1e-7 / atol 1e-9, loss = sum of h(1).
pub fn synthetic_seed() -> Result<Problem, costate::nn::Error> {
    let (dim, batch, npts) = (64, 32, 50);
    let func = OdeFunc::new(dim, &[64, 64], Activation::Tanh)?;
    let mut rng = costate::rand::rngs::StdRng::seed_from_u64(0);
    let params = func.mlp.init_params(&mut rng);
    let h0 = Mlp::normal(batch, dim, 0.0, 1.0, &mut rng)?;
    let file = ProblemFile {
        format: costate::nn::problem::PROBLEM_FORMAT.into(),
        description: "synthetic seed workload".into(),
        model: ModelSpec {
            kind: "mlp".into(),
            activation: "tanh".into(),
            input: "h".into(),
            subtract_state: false,
            time_input: false,
            layers: layer_specs(&params),
        },
        h0: nested(&h0),
        t: (0..npts).map(|i| i as f64 / (npts - 1) as f64).collect(),
        solver: SolverSpec {
            method: "dopri5".into(),
            rtol: 1e-7,
            atol: 1e-9,
        },
        loss: LossSpec::SumFinal,
        reference: None,
        generator: None,
    };
    Problem::from_file(file)
}
