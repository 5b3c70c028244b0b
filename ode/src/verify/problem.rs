//! A problem to check: a solve plus a linear loss on its outputs, and the derivatives of
//! that loss by every route the crate offers (reverse through any strategy, forward on
//! `Dual64`, central differences, forward-over-reverse Hessian-vector products).

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::{Scalar, Tape};

use super::{max_abs, max_abs_diff, relative, Result, VerifyError};
use crate::dynamics::Dynamics;
use crate::engine::SolveStats;
use crate::input::check_grid;
use crate::options::Options;
use crate::solve::{odeint_with, solve};
use crate::strategy::Strategy;

/// A solve `h' = f_θ(t, h)`, `h(t_0) = h0`, on `grid`, and the loss
/// `L = Σ_i ⟨g_i, h(t_i)⟩` with `g_i = cotangents[i]` (`None`: the loss does not read
/// `h(t_i)`). A linear loss loses nothing: a gradient through a solve depends on the loss
/// only through these output cotangents, so put `∂L/∂h(t_i)` of your loss here.
#[derive(Clone, Debug)]
pub struct GradientProblem<F> {
    /// The vector field.
    pub dynamics: F,
    /// The initial state (batch × dim).
    pub h0: DMatrix<f64>,
    /// The output times, strictly increasing or strictly decreasing.
    pub grid: Vec<f64>,
    /// The parameters θ, in the order the dynamics read them.
    pub params: Vec<DMatrix<f64>>,
    /// One cotangent per grid time (each the shape of `h0`), `None` where the loss does not
    /// read the output.
    pub cotangents: Vec<Option<DMatrix<f64>>>,
}

/// A vector in a [`GradientProblem`]'s input space `(h0, t, θ)`: a gradient, a direction, or
/// a Hessian-vector product.
#[derive(Clone, Debug, PartialEq)]
pub struct ProblemVector {
    /// The `h0` part (the shape of `h0`).
    pub h0: DMatrix<f64>,
    /// The grid part, 1 × (grid points).
    pub t: DMatrix<f64>,
    /// One part per parameter, each the shape of its parameter.
    pub params: Vec<DMatrix<f64>>,
}

/// What [`GradientProblem::hessian_vector_product`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct HessianVectorProduct {
    /// The gradient of the loss (the real parts).
    pub gradient: ProblemVector,
    /// `H v`: the derivative of the gradient along the direction (the dual parts).
    pub hvp: ProblemVector,
}

impl ProblemVector {
    /// Zeros in every part, shaped like `problem`'s inputs.
    pub fn zeros_like<F>(problem: &GradientProblem<F>) -> Self {
        let zeros = |m: &DMatrix<f64>| DMatrix::zeros(m.nrows(), m.ncols());
        Self {
            h0: zeros(&problem.h0),
            t: DMatrix::zeros(1, problem.grid.len()),
            params: problem.params.iter().map(zeros).collect(),
        }
    }

    /// A deterministic pseudo-random direction from `seed`: entries uniform in [−1, 1) on
    /// `h0` and every parameter, zero on the grid (a grid direction must be small enough to
    /// keep the grid monotonic; set [`ProblemVector::t`] yourself for one).
    pub fn probe<F>(problem: &GradientProblem<F>, seed: u64) -> Self {
        let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
        // SplitMix64: enough for a reproducible direction, no dependency.
        let mut uniform = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            2.0 * ((z >> 11) as f64 / (1u64 << 53) as f64) - 1.0
        };
        let mut v = Self::zeros_like(problem);
        for m in std::iter::once(&mut v.h0).chain(&mut v.params) {
            m.iter_mut().for_each(|x| *x = uniform());
        }
        v
    }

    /// This vector with parameter `index`'s part replaced; a missing index or a part of
    /// another shape is a [`VerifyError::Shape`].
    pub fn with_param(mut self, index: usize, part: DMatrix<f64>) -> Result<Self> {
        let count = self.params.len();
        let Some(p) = self.params.get_mut(index) else {
            return Err(VerifyError::Shape {
                what: format!("parameter index {index} (of the parameter list (count, 1))"),
                expected: (count, 1),
                got: (index.saturating_add(1), 1),
            });
        };
        same_shape(
            &format!("the direction's theta[{index}] part"),
            &part,
            p.shape(),
        )?;
        *p = part;
        Ok(self)
    }

    /// This vector with its grid part set to zero (to compare gradients over h0 and θ only).
    pub fn without_times(mut self) -> Self {
        self.t.fill(0.0);
        self
    }

    /// Every part with its name: `h0`, `t`, `theta[i]`.
    pub fn parts(&self) -> impl Iterator<Item = (String, &DMatrix<f64>)> {
        [("h0".to_string(), &self.h0), ("t".to_string(), &self.t)]
            .into_iter()
            .chain(
                self.params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("theta[{i}]"), p)),
            )
    }

    /// `max |self − reference| / max |reference|` over every entry of every part (the
    /// absolute difference when the reference is zero). Parts whose shapes differ count as
    /// infinitely far apart.
    pub fn relative_error(&self, reference: &ProblemVector) -> f64 {
        if self.params.len() != reference.params.len() {
            return f64::INFINITY;
        }
        let mut diff = 0.0f64;
        let mut scale = 0.0f64;
        for ((_, a), (_, b)) in self.parts().zip(reference.parts()) {
            if a.shape() != b.shape() {
                return f64::INFINITY;
            }
            diff = diff.max(max_abs_diff(a, b));
            scale = scale.max(max_abs(b));
        }
        relative(diff, scale)
    }

    /// The inner product `Σ ⟨self_p, other_p⟩` over the parts (shapes must match; mismatched
    /// parts give NaN).
    pub fn dot(&self, other: &ProblemVector) -> f64 {
        if self.params.len() != other.params.len() {
            return f64::NAN;
        }
        self.parts()
            .zip(other.parts())
            .map(|((_, a), (_, b))| {
                if a.shape() == b.shape() {
                    a.dot(b)
                } else {
                    f64::NAN
                }
            })
            .sum()
    }

    fn parts_mut(&mut self) -> impl Iterator<Item = &mut DMatrix<f64>> {
        [&mut self.h0, &mut self.t]
            .into_iter()
            .chain(self.params.iter_mut())
    }
}

impl<F> GradientProblem<F> {
    /// A problem with the loss `L = sum of h(t_n)` (a cotangent of ones on the last output);
    /// [`GradientProblem::with_cotangents`] sets another.
    pub fn new(dynamics: F, h0: DMatrix<f64>, grid: Vec<f64>, params: Vec<DMatrix<f64>>) -> Self {
        let n = grid.len();
        let ones = DMatrix::from_element(h0.nrows(), h0.ncols(), 1.0);
        let cotangents = (0..n).map(|i| (i + 1 == n).then(|| ones.clone())).collect();
        Self {
            dynamics,
            h0,
            grid,
            params,
            cotangents,
        }
    }

    /// This problem with the loss `Σ_i ⟨cotangents[i], h(t_i)⟩`.
    pub fn with_cotangents(mut self, cotangents: Vec<Option<DMatrix<f64>>>) -> Self {
        self.cotangents = cotangents;
        self
    }

    /// Check the problem: a usable grid, a non-empty finite `h0`, finite parameters, one
    /// cotangent per grid time, each finite and shaped like `h0`, and at least one of them.
    pub fn validate(&self) -> Result<()> {
        check_grid(&self.grid)?;
        let (r, c) = self.h0.shape();
        if r == 0 || c == 0 {
            return Err(crate::Error::EmptyState { rows: r, cols: c }.into());
        }
        finite("h0", &self.h0)?;
        for (i, p) in self.params.iter().enumerate() {
            finite(&format!("parameter {i}"), p)?;
        }
        if self.cotangents.len() != self.grid.len() {
            return Err(VerifyError::CotangentCount {
                got: self.cotangents.len(),
                grid: self.grid.len(),
            });
        }
        for (i, g) in self.cotangents.iter().enumerate() {
            if let Some(g) = g {
                let what = format!("cotangent {i}");
                same_shape(&what, g, (r, c))?;
                finite(&what, g)?;
            }
        }
        if self.cotangents.iter().all(Option::is_none) {
            return Err(VerifyError::NoCotangent);
        }
        Ok(())
    }

    /// Check that `v` is shaped like this problem's inputs and finite.
    pub fn check_vector(&self, v: &ProblemVector) -> Result<()> {
        if v.params.len() != self.params.len() {
            return Err(VerifyError::Shape {
                what: "the direction's parameter list (count, 1)".into(),
                expected: (self.params.len(), 1),
                got: (v.params.len(), 1),
            });
        }
        let zeros = ProblemVector::zeros_like(self);
        for ((name, part), (_, want)) in v.parts().zip(zeros.parts()) {
            let what = format!("the direction's {name} part");
            same_shape(&what, part, want.shape())?;
            finite(&what, part)?;
        }
        Ok(())
    }

    /// `L = Σ ⟨g_i, h(t_i)⟩` on the values of any scalar.
    fn loss_of<T: Scalar>(&self, outputs: &[DMatrix<T>]) -> T {
        let mut loss = T::zero();
        for (h, g) in outputs.iter().zip(&self.cotangents) {
            if let Some(g) = g {
                for (h, g) in h.iter().zip(g.iter()) {
                    loss += *h * T::constant(*g);
                }
            }
        }
        loss
    }
}

impl<F: Dynamics<f64> + Dynamics<Dual64> + Clone + 'static> GradientProblem<F> {
    /// The loss, from an untaped solve.
    pub fn loss(&self, opts: &Options) -> Result<f64> {
        self.validate()?;
        let (outputs, _) = solve(&self.dynamics, &self.h0, &self.grid, &self.params, opts)?;
        Ok(self.loss_of(&outputs))
    }

    /// The gradient of the loss with respect to `h0`, every grid time and every parameter,
    /// by `strategy`.
    pub fn gradient(&self, opts: &Options, strategy: &Strategy) -> Result<ProblemVector> {
        self.validate()?;
        Ok(self.gradient_with_counts(opts, strategy)?.0)
    }

    /// [`GradientProblem::gradient`] with the forward solve's f evaluations and the
    /// backward pass's ([`crate::BackwardStats::nfe`]; for taped, the VJPs through the
    /// recorded evaluations).
    pub fn gradient_with_counts(
        &self,
        opts: &Options,
        strategy: &Strategy,
    ) -> Result<(ProblemVector, usize, Option<usize>)> {
        let (g, forward, backward) = self.gradient_with_stats(opts, strategy)?;
        Ok((g, forward.nfe, backward))
    }

    /// [`GradientProblem::gradient`] with the forward solve's counts and the backward
    /// pass's evaluations.
    pub(crate) fn gradient_with_stats(
        &self,
        opts: &Options,
        strategy: &Strategy,
    ) -> Result<(ProblemVector, SolveStats, Option<usize>)> {
        self.validate()?;
        let (g, forward, backward) = self.reverse::<f64>(opts, strategy, |m, _| m.clone())?;
        Ok((vector_from(g, |x| x), forward, backward))
    }

    /// Central differences of the loss, entry by entry: `(L(x + δ) − L(x − δ)) / 2δ` with
    /// `δ = step · max(1, |x|)`, for every entry of `h0`, the grid and the parameters. Costs
    /// two solves per entry. An adaptive solve's step sizes jump as the inputs move, which
    /// puts noise of about `rtol / δ` on each difference: use tight tolerances (e.g. dopri8
    /// at rtol 1e-12) and a step near 1e-5.
    pub fn finite_difference_gradient(&self, opts: &Options, step: f64) -> Result<ProblemVector> {
        self.validate()?;
        if !(step.is_finite() && step > 0.0) {
            return Err(VerifyError::BadValue {
                what: "finite-difference step",
                index: 0,
                value: step,
            });
        }
        let mut gradient = ProblemVector::zeros_like(self);
        let base = self.inputs();
        let count: Vec<usize> = base.parts().map(|(_, m)| m.len()).collect();
        for (part, &len) in count.iter().enumerate() {
            for k in 0..len {
                let x = base.parts().nth(part).map(|(_, m)| m[k]).unwrap_or(0.0);
                let delta = step * x.abs().max(1.0);
                let at = |dx: f64| {
                    let mut inputs = base.clone();
                    if let Some(m) = inputs.parts_mut().nth(part) {
                        m[k] += dx;
                    }
                    self.with_inputs(inputs).loss(opts)
                };
                let d = (at(delta)? - at(-delta)?) / (2.0 * delta);
                if let Some(m) = gradient.parts_mut().nth(part) {
                    m[k] = d;
                }
            }
        }
        Ok(gradient)
    }

    /// The inputs `(h0, t, θ)` as one vector.
    fn inputs(&self) -> ProblemVector {
        ProblemVector {
            h0: self.h0.clone(),
            t: DMatrix::from_row_slice(1, self.grid.len(), &self.grid),
            params: self.params.clone(),
        }
    }

    /// This problem at other inputs.
    fn with_inputs(&self, inputs: ProblemVector) -> Self {
        Self {
            dynamics: self.dynamics.clone(),
            h0: inputs.h0,
            grid: inputs.t.iter().copied().collect(),
            params: inputs.params,
            cotangents: self.cotangents.clone(),
        }
    }

    /// The gradient parts `[dL/dh0, dL/dt, dL/dθ…]` on a `Tape<T>`, with the inputs lifted
    /// by `lift(value, part)` (part 0: h0, 1: the grid as a row, 2…: parameters), and the
    /// forward and backward f evaluations.
    fn reverse<T: Scalar>(
        &self,
        opts: &Options,
        strategy: &Strategy,
        lift: impl Fn(&DMatrix<f64>, usize) -> DMatrix<T>,
    ) -> Result<(Vec<DMatrix<T>>, SolveStats, Option<usize>)>
    where
        F: Dynamics<T> + Dynamics<crate::DualOf<T>>,
    {
        let tape = Tape::<T>::new();
        let h0 = tape.var(lift(&self.h0, 0));
        let t = tape.var(lift(
            &DMatrix::from_row_slice(1, self.grid.len(), &self.grid),
            1,
        ));
        let params: Vec<_> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, m)| tape.var(lift(m, i + 2)))
            .collect();
        let sol = odeint_with(&tape, &self.dynamics, h0, t, &params, opts, strategy)?;
        let mut terms = Vec::new();
        for (h, g) in sol.outputs.iter().zip(&self.cotangents) {
            if let Some(g) = g {
                terms.push(h.mul(tape.constant(g.map(T::constant)))?.sum());
            }
        }
        let mut loss = terms[0];
        for term in &terms[1..] {
            loss = loss.add(*term)?;
        }
        let mut g = tape.backward(loss)?;
        let backward = sol.backward_stats(&g).map(|b| b.nfe);
        let mut out = vec![g.take_or_zeros(h0)?, g.take_or_zeros(t)?];
        for p in &params {
            out.push(g.take_or_zeros(*p)?);
        }
        Ok((out, sol.stats, backward))
    }
}

impl<F: Dynamics<f64> + Dynamics<Dual64> + Clone + 'static> GradientProblem<F> {
    /// The derivative of the loss along `direction` (on `h0`, the grid and θ) from one
    /// forward-mode solve on `Dual64`: it takes the same steps as the f64 solve, so it
    /// equals `⟨gradient by the taped strategy, direction⟩` to rounding.
    pub fn directional_derivative(&self, opts: &Options, direction: &ProblemVector) -> Result<f64> {
        self.validate()?;
        self.check_vector(direction)?;
        let h0 = self.h0.zip_map(&direction.h0, Dual64::new);
        let grid: Vec<Dual64> = self
            .grid
            .iter()
            .zip(direction.t.iter())
            .map(|(&t, &dt)| Dual64::new(t, dt))
            .collect();
        let params: Vec<DMatrix<Dual64>> = self
            .params
            .iter()
            .zip(&direction.params)
            .map(|(p, v)| p.zip_map(v, Dual64::new))
            .collect();
        let (outputs, _) = solve(&self.dynamics, &h0, &grid, &params, opts)?;
        Ok(self.loss_of(&outputs).eps)
    }

    /// The whole gradient in forward mode: one `Dual64` solve per entry of `h0`, the grid
    /// and θ (so only for small problems); equal to the taped gradient to rounding.
    pub fn forward_mode_gradient(&self, opts: &Options) -> Result<ProblemVector> {
        self.validate()?;
        let mut gradient = ProblemVector::zeros_like(self);
        let lens: Vec<usize> = gradient.parts().map(|(_, m)| m.len()).collect();
        for (part, &len) in lens.iter().enumerate() {
            for k in 0..len {
                let mut unit = ProblemVector::zeros_like(self);
                if let Some(m) = unit.parts_mut().nth(part) {
                    m[k] = 1.0;
                }
                let d = self.directional_derivative(opts, &unit)?;
                if let Some(m) = gradient.parts_mut().nth(part) {
                    m[k] = d;
                }
            }
        }
        Ok(gradient)
    }

    /// Forward over reverse: the gradient by `strategy` on a `Tape<Dual64>` whose inputs
    /// carry `direction` as their tangent. The dual parts are `H v`, the Hessian of the
    /// loss (in `h0`, t and θ) times the direction; every strategy supports it. For the
    /// exact strategies it is the taped HVP to rounding; for backsolve it is accurate to
    /// the tolerance, like its gradient.
    pub fn hessian_vector_product(
        &self,
        opts: &Options,
        strategy: &Strategy,
        direction: &ProblemVector,
    ) -> Result<HessianVectorProduct> {
        self.validate()?;
        self.check_vector(direction)?;
        let tangents: Vec<&DMatrix<f64>> = direction.parts().map(|(_, m)| m).collect();
        let (g, _, _) = self.reverse::<Dual64>(opts, strategy, |m, part| {
            m.zip_map(tangents[part], Dual64::new)
        })?;
        Ok(HessianVectorProduct {
            gradient: vector_from(g.clone(), |x: Dual64| x.re),
            hvp: vector_from(g, |x: Dual64| x.eps),
        })
    }
}

/// A vector from the parts `[h0, t, θ…]`, mapping each entry.
fn vector_from<T: Scalar>(parts: Vec<DMatrix<T>>, entry: impl Fn(T) -> f64) -> ProblemVector {
    let mut parts = parts.into_iter().map(|m| m.map(&entry));
    let h0 = parts.next().unwrap_or_else(|| DMatrix::zeros(0, 0));
    let t = parts.next().unwrap_or_else(|| DMatrix::zeros(0, 0));
    ProblemVector {
        h0,
        t,
        params: parts.collect(),
    }
}

fn same_shape(what: &str, m: &DMatrix<f64>, expected: (usize, usize)) -> Result<()> {
    if m.shape() != expected {
        return Err(VerifyError::Shape {
            what: what.into(),
            expected,
            got: m.shape(),
        });
    }
    Ok(())
}

fn finite(what: &str, m: &DMatrix<f64>) -> Result<()> {
    if m.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(VerifyError::NonFinite { what: what.into() })
    }
}
