//! Optimisers and the training step.

use ad_core::nalgebra::DMatrix;
use ad_core::{Tape, Var};

use crate::error::Result;
use crate::params::ParamSet;

/// Updates parameters from their gradients.
pub trait Optimizer {
    /// One update of `params` with `grads` (one tensor per parameter, same shapes).
    fn step(&mut self, params: &mut ParamSet, grads: &[DMatrix<f64>]) -> Result<()>;
}

/// Stochastic gradient descent with (heavy-ball) momentum, as `torch.optim.SGD`:
/// `v ← μ v + g`, `θ ← θ − lr v`.
#[derive(Clone, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum μ (0 for plain SGD).
    pub momentum: f64,
    velocity: Vec<DMatrix<f64>>,
}

impl Sgd {
    /// SGD with learning rate `lr` and momentum `momentum`.
    pub fn new(lr: f64, momentum: f64) -> Self {
        Self {
            lr,
            momentum,
            velocity: Vec::new(),
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut ParamSet, grads: &[DMatrix<f64>]) -> Result<()> {
        params.check_matches(grads, "Sgd::step gradients")?;
        if self.velocity.is_empty() {
            self.velocity = grads
                .iter()
                .map(|g| DMatrix::zeros(g.nrows(), g.ncols()))
                .collect();
        }
        params.check_matches(
            &self.velocity,
            "Sgd state (was it used with other parameters?)",
        )?;
        for ((p, g), v) in params
            .values_mut()
            .iter_mut()
            .zip(grads)
            .zip(&mut self.velocity)
        {
            *v *= self.momentum;
            *v += g;
            *p -= &*v * self.lr;
        }
        Ok(())
    }
}

/// Adam (Kingma & Ba 2015) with the standard bias correction, as `torch.optim.Adam`.
#[derive(Clone, Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first-moment estimate.
    pub beta1: f64,
    /// Decay of the second-moment estimate.
    pub beta2: f64,
    /// Added to the denominator for stability.
    pub eps: f64,
    steps: i32,
    m: Vec<DMatrix<f64>>,
    v: Vec<DMatrix<f64>>,
}

impl Adam {
    /// Adam with learning rate `lr` and the usual β₁ = 0.9, β₂ = 0.999, ε = 1e-8.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            steps: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut ParamSet, grads: &[DMatrix<f64>]) -> Result<()> {
        params.check_matches(grads, "Adam::step gradients")?;
        if self.m.is_empty() {
            self.m = grads
                .iter()
                .map(|g| DMatrix::zeros(g.nrows(), g.ncols()))
                .collect();
            self.v = self.m.clone();
        }
        params.check_matches(&self.m, "Adam state (was it used with other parameters?)")?;
        self.steps += 1;
        let c1 = 1.0 - self.beta1.powi(self.steps);
        let c2 = 1.0 - self.beta2.powi(self.steps);
        for (((p, g), m), v) in params
            .values_mut()
            .iter_mut()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            for (((p, &g), m), v) in p
                .iter_mut()
                .zip(g.iter())
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                *m = self.beta1 * *m + (1.0 - self.beta1) * g;
                *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
                let m_hat = *m / c1;
                let v_hat = *v / c2;
                *p -= self.lr * m_hat / (v_hat.sqrt() + self.eps);
            }
        }
        Ok(())
    }
}

/// One training step: reset `tape`, put `params` on it, build the loss with `loss`, run
/// backward and update with `opt`. Returns the loss value.
pub fn train_step<O: Optimizer + ?Sized>(
    tape: &Tape<f64>,
    params: &mut ParamSet,
    opt: &mut O,
    loss: impl for<'t> FnOnce(&'t Tape<f64>, &[Var<'t, f64>]) -> Result<Var<'t, f64>>,
) -> Result<f64> {
    tape.reset()?;
    let vars = params.to_tape(tape);
    let l = loss(tape, &vars)?;
    let value = l.scalar_value()?;
    let mut grads = tape.backward(l)?;
    let g = params.grads(&mut grads, &vars)?;
    opt.step(params, &g)?;
    Ok(value)
}
