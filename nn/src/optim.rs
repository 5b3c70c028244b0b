//! Optimisers and the training step.

use ad_core::nalgebra::DMatrix;
use ad_core::{Precision, Tape, Var};

use crate::error::{Error, Result};
use crate::params::ParamSet;

/// Updates parameters of precision `P` (`f64` by default, or `f32`) from their gradients.
///
/// A step is all-or-nothing: invalid hyper-parameters, gradients of the wrong count or shape,
/// non-finite gradients, or an update that would overflow are refused with an error before
/// any parameter or optimiser state changes. [`Sgd`] and [`Adam`] keep their state (velocity,
/// moments) in `f64` for either precision and round each updated parameter once.
pub trait Optimizer<P: Precision = f64> {
    /// One update of `params` with `grads` (one tensor per parameter, same shapes).
    fn step(&mut self, params: &mut ParamSet<P>, grads: &[DMatrix<P>]) -> Result<()>;
}

fn hyper(
    optimizer: &'static str,
    name: &'static str,
    value: f64,
    ok: bool,
    expected: &'static str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Hyperparameter {
            optimizer,
            name,
            value,
            expected,
        })
    }
}

/// `lr` must be finite and ≥ 0.
fn check_lr(optimizer: &'static str, lr: f64) -> Result<()> {
    hyper(
        optimizer,
        "lr",
        lr,
        lr.is_finite() && lr >= 0.0,
        "the learning rate must be finite and >= 0",
    )
}

/// A decay rate in [0, 1).
fn check_decay(optimizer: &'static str, name: &'static str, v: f64) -> Result<()> {
    hyper(
        optimizer,
        name,
        v,
        (0.0..1.0).contains(&v),
        "must be in [0, 1)",
    )
}

/// Refuse gradients of the wrong count or shape, and non-finite entries (named by index,
/// parameter name and entry).
fn check_grads<P: Precision>(params: &ParamSet<P>, grads: &[DMatrix<P>], what: &str) -> Result<()> {
    params.check_matches(grads, what)?;
    for (index, (g, name)) in grads.iter().zip(params.names()).enumerate() {
        if let Some(k) = g.iter().position(|x| !x.as_f64().is_finite()) {
            let (row, col) = (k % g.nrows(), k / g.nrows());
            return Err(Error::NonFiniteGradient {
                index,
                name: name.clone(),
                row,
                col,
                value: g[k].as_f64(),
            });
        }
    }
    Ok(())
}

/// The first non-finite entry of `m` as an error about parameter `index`.
fn check_update<P: Precision, Q: Precision>(
    optimizer: &'static str,
    quantity: &'static str,
    params: &ParamSet<P>,
    index: usize,
    m: &DMatrix<Q>,
) -> Result<()> {
    match m.iter().position(|x| !x.as_f64().is_finite()) {
        None => Ok(()),
        Some(k) => Err(Error::NonFiniteUpdate {
            optimizer,
            quantity,
            index,
            name: params.names()[index].clone(),
            row: k % m.nrows(),
            col: k / m.nrows(),
            value: m[k].as_f64(),
        }),
    }
}

fn zeros_like<P: Precision>(grads: &[DMatrix<P>]) -> Vec<DMatrix<f64>> {
    grads
        .iter()
        .map(|g| DMatrix::zeros(g.nrows(), g.ncols()))
        .collect()
}

/// Stochastic gradient descent with (heavy-ball) momentum, as `torch.optim.SGD`:
/// `v ← μ v + g`, `θ ← θ − lr v`.
///
/// The fields are checked by every [`Optimizer::step`]: `lr` finite and ≥ 0, `momentum` in
/// [0, 1).
#[derive(Clone, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum μ (0 for plain SGD).
    pub momentum: f64,
    velocity: Vec<DMatrix<f64>>,
}

impl Sgd {
    /// SGD with learning rate `lr` and momentum `momentum`. Out-of-range values are refused
    /// by the first [`Optimizer::step`]; [`Sgd::try_new`] refuses them here.
    pub fn new(lr: f64, momentum: f64) -> Self {
        Self {
            lr,
            momentum,
            velocity: Vec::new(),
        }
    }

    /// [`Sgd::new`], refusing a non-finite or negative `lr` and a `momentum` outside [0, 1)
    /// with [`Error::Hyperparameter`].
    pub fn try_new(lr: f64, momentum: f64) -> Result<Self> {
        let s = Self::new(lr, momentum);
        s.validate()?;
        Ok(s)
    }

    /// Check the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        check_lr("Sgd", self.lr)?;
        check_decay("Sgd", "momentum", self.momentum)
    }
}

impl<P: Precision> Optimizer<P> for Sgd {
    fn step(&mut self, params: &mut ParamSet<P>, grads: &[DMatrix<P>]) -> Result<()> {
        self.validate()?;
        check_grads(params, grads, "Sgd::step gradients")?;
        let mut velocity = if self.velocity.is_empty() {
            zeros_like(grads)
        } else {
            params.check_matches(
                &self.velocity,
                "Sgd state (was it used with other parameters?)",
            )?;
            self.velocity.clone()
        };
        let mut updated = Vec::with_capacity(params.len());
        for (i, ((p, g), v)) in params
            .values()
            .iter()
            .zip(grads)
            .zip(&mut velocity)
            .enumerate()
        {
            let mut p = p.clone();
            for ((p, g), v) in p.iter_mut().zip(g.iter()).zip(v.iter_mut()) {
                *v = *v * self.momentum + g.as_f64();
                *p = P::round_from(p.as_f64() - *v * self.lr);
            }
            check_update("Sgd", "velocity", params, i, v)?;
            check_update("Sgd", "parameter", params, i, &p)?;
            updated.push(p);
        }
        for (p, u) in params.values_mut().iter_mut().zip(updated) {
            *p = u;
        }
        self.velocity = velocity;
        Ok(())
    }
}

/// Adam (Kingma & Ba 2015) with the standard bias correction, as `torch.optim.Adam`.
///
/// The second moment is kept as its square root, `√v ← hypot(√β₂·√v, √(1−β₂)·|g|)`, the same
/// number up to rounding, so any finite gradient (1e200, say) gives a finite step.
///
/// The fields are checked by every [`Optimizer::step`]: `lr` finite and ≥ 0, `beta1` and
/// `beta2` in [0, 1), `eps` finite and > 0 (with `eps = 0` a zero gradient gives 0/0).
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
    /// The square root of the second-moment estimate, `√v`: kept as a root (updated with
    /// `hypot`) so that any finite gradient gives a finite moment; `g²` overflows f64 from
    /// |g| ≈ 1.3e154.
    v: Vec<DMatrix<f64>>,
}

impl Adam {
    /// Adam with learning rate `lr` and the usual β₁ = 0.9, β₂ = 0.999, ε = 1e-8. An invalid
    /// `lr` is refused by the first [`Optimizer::step`]; [`Adam::try_new`] refuses it here.
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

    /// [`Adam::new`], refusing a non-finite or negative `lr` with [`Error::Hyperparameter`].
    pub fn try_new(lr: f64) -> Result<Self> {
        let a = Self::new(lr);
        a.validate()?;
        Ok(a)
    }

    /// Adam with every hyper-parameter given, checked as [`Adam::validate`] does.
    pub fn try_with(lr: f64, beta1: f64, beta2: f64, eps: f64) -> Result<Self> {
        let a = Self {
            beta1,
            beta2,
            eps,
            ..Self::new(lr)
        };
        a.validate()?;
        Ok(a)
    }

    /// Check the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        check_lr("Adam", self.lr)?;
        check_decay("Adam", "beta1", self.beta1)?;
        check_decay("Adam", "beta2", self.beta2)?;
        hyper(
            "Adam",
            "eps",
            self.eps,
            self.eps.is_finite() && self.eps > 0.0,
            "must be finite and > 0",
        )
    }
}

impl<P: Precision> Optimizer<P> for Adam {
    fn step(&mut self, params: &mut ParamSet<P>, grads: &[DMatrix<P>]) -> Result<()> {
        self.validate()?;
        check_grads(params, grads, "Adam::step gradients")?;
        let (mut ms, mut vs) = if self.m.is_empty() {
            (zeros_like(grads), zeros_like(grads))
        } else {
            let what = "Adam state (was it used with other parameters?)";
            params.check_matches(&self.m, what)?;
            params.check_matches(&self.v, what)?;
            (self.m.clone(), self.v.clone())
        };
        let steps = self.steps.saturating_add(1);
        let c1 = 1.0 - self.beta1.powi(steps);
        let c2_root = (1.0 - self.beta2.powi(steps)).sqrt();
        let (b2_root, g2_weight) = (self.beta2.sqrt(), (1.0 - self.beta2).sqrt());
        let mut updated = Vec::with_capacity(params.len());
        for (i, (((p, g), m), v)) in params
            .values()
            .iter()
            .zip(grads)
            .zip(&mut ms)
            .zip(&mut vs)
            .enumerate()
        {
            let mut p = p.clone();
            for (((p, g), m), v) in p
                .iter_mut()
                .zip(g.iter())
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                let g = g.as_f64();
                *m = self.beta1 * *m + (1.0 - self.beta1) * g;
                // v = β₂ v + (1 − β₂) g², in roots: no g² to overflow.
                *v = (b2_root * *v).hypot(g2_weight * g.abs());
                // m̂ / (√v̂ + ε) = m / (√v + ε·√c₂) · √c₂ / c₁, with no m̂ to overflow.
                let direction = (*m / (*v + self.eps * c2_root)) * (c2_root / c1);
                *p = P::round_from(p.as_f64() - self.lr * direction);
            }
            check_update("Adam", "first moment", params, i, m)?;
            check_update("Adam", "second moment", params, i, v)?;
            check_update("Adam", "parameter", params, i, &p)?;
            updated.push(p);
        }
        for (p, u) in params.values_mut().iter_mut().zip(updated) {
            *p = u;
        }
        self.m = ms;
        self.v = vs;
        self.steps = steps;
        Ok(())
    }
}

/// What one training step through an ODE solve did: the loss, the solve's NFE forward and
/// backward, the bytes its tape held between forward and backward, and the gradient
/// strategy that ran (see [`train_step_ode`]).
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// The loss value before the update.
    pub loss: f64,
    /// Evaluations of the vector field in the forward solve.
    pub nfe_forward: usize,
    /// Evaluations in the backward pass (for taped solves, the VJPs through the recorded
    /// evaluations: [`ode::BackwardStats::nfe`]).
    pub nfe_backward: usize,
    /// Held bytes ([`ode::Solution::held_bytes`]) between forward and backward, measured
    /// after `loss` returns, so the loss's own nodes count too.
    pub held_bytes: usize,
    /// The strategy that ran (for `Auto`, the one it chose).
    pub strategy: String,
}

/// One training step through an ODE solve, like [`train_step`], but `loss` returns the
/// solution it built the loss from as well, and the step returns its [`StepStats`]: no
/// second gradient evaluation to learn what the step cost.
///
/// ```
/// use ad_core::{nalgebra::DMatrix, Tape};
/// use nn::{train_step_ode, Activation, Adam, NeuralOde, OdeFunc, Strategy};
/// use nn::rand::SeedableRng;
///
/// let func = OdeFunc::new(2, &[8], Activation::Tanh)?;
/// let mut params = func.mlp.init_params(&mut nn::rand::rngs::StdRng::seed_from_u64(0));
/// let model = NeuralOde::new(func, Strategy::StoreEveryStep);
/// let (tape, mut opt) = (Tape::new(), Adam::new(0.01));
/// let stats = train_step_ode(&tape, &mut params, &mut opt, |tape, p| {
///     let t = tape.constant(DMatrix::from_row_slice(1, 2, &[0.0, 1.0]));
///     let sol = model.forward(tape, tape.constant(DMatrix::from_element(3, 2, 0.5)), t, p)?;
///     Ok((sol.last().square().mean(), sol))
/// })?;
/// assert!(stats.nfe_forward > 0 && stats.nfe_backward > 0 && stats.held_bytes > 0);
/// assert_eq!(stats.strategy, "aca");
/// # Ok::<(), nn::Error>(())
/// ```
pub fn train_step_ode<P: Precision, O: Optimizer<P> + ?Sized>(
    tape: &Tape<P>,
    params: &mut ParamSet<P>,
    opt: &mut O,
    loss: impl for<'t> FnOnce(&'t Tape<P>, &[Var<'t, P>]) -> Result<(Var<'t, P>, ode::Solution<'t, P>)>,
) -> Result<StepStats> {
    tape.reset()?;
    let vars = params.to_tape(tape);
    let (l, sol) = loss(tape, &vars)?;
    let value = l.scalar_value()?.as_f64();
    let held_bytes = sol.held_bytes()?;
    let mut grads = tape.backward(l)?;
    let nfe_backward = sol.backward_stats(&grads).map_or(0, |b| b.nfe);
    let g = params.grads(&mut grads, &vars)?;
    opt.step(params, &g)?;
    Ok(StepStats {
        loss: value,
        nfe_forward: sol.stats.nfe,
        nfe_backward,
        held_bytes,
        strategy: sol.strategy.name.clone(),
    })
}

/// One training step: reset `tape`, put `params` on it, build the loss with `loss`, run
/// backward and update with `opt`, in `f64` or `f32` (`P`). Returns the loss value (as an
/// `f64`) ([`train_step_ode`] also returns
/// what the solve cost).
pub fn train_step<P: Precision, O: Optimizer<P> + ?Sized>(
    tape: &Tape<P>,
    params: &mut ParamSet<P>,
    opt: &mut O,
    loss: impl for<'t> FnOnce(&'t Tape<P>, &[Var<'t, P>]) -> Result<Var<'t, P>>,
) -> Result<f64> {
    tape.reset()?;
    let vars = params.to_tape(tape);
    let l = loss(tape, &vars)?;
    let value = l.scalar_value()?.as_f64();
    let mut grads = tape.backward(l)?;
    let g = params.grads(&mut grads, &vars)?;
    opt.step(params, &g)?;
    Ok(value)
}
