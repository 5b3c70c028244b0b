//! What a solve returns: the outputs on the caller's tape, the forward's counts and steps,
//! and what the gradient strategy did.

use ad_core::nalgebra::DMatrix;
use ad_core::{Gradients, Scalar, Var};

use crate::controller::StepRecord;
use crate::engine::SolveStats;
use crate::error::Result;
use crate::strategy::{BackwardStats, StrategyReport};

/// The outputs of a solve: the state at every grid time (`outputs[0]` is `h0`), the
/// forward's counts and accepted steps, and what the gradient strategy did.
pub struct Solution<'t, T: Scalar> {
    /// `h(t_0), …, h(t_n)` on the caller's tape.
    pub outputs: Vec<Var<'t, T>>,
    /// Counts of the forward solve.
    pub stats: SolveStats,
    /// The forward's accepted steps in order: start time, end time, signed step size.
    pub steps: Vec<StepRecord>,
    /// The strategy that ran, the states it stored, and why it was chosen.
    pub strategy: StrategyReport,
    /// The solve's opaque node (its first output), whose VJP reports [`BackwardStats`]; for
    /// taped solves, the identity node on its inputs, whose VJP runs after the steps'.
    pub(crate) node: Option<Var<'t, T>>,
}

impl<'t, T: Scalar> Solution<'t, T> {
    /// What the backward pass `grads` did inside this solve: backward NFE, steps,
    /// recomputations, drift. For a taped solve, the VJPs through its recorded steps (the
    /// caller's own backward ran them). `None` for a pass that did not reach the solve (or
    /// ran through [`ad_core::Tape::vjp_wrt`], which keeps no reports), and for a solve
    /// of which no input needs a gradient.
    pub fn backward_stats(&self, grads: &Gradients<T>) -> Option<BackwardStats> {
        grads.report::<BackwardStats>(self.node?).cloned()
    }

    /// Accepted step times of the forward: `t_0`, then the end of every accepted step.
    pub fn step_times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self.steps.first().map(|s| s.t).into_iter().collect();
        t.extend(self.steps.iter().map(|s| s.t1));
        t
    }

    /// *Held bytes* as `docs/design.md` defines them: bytes the tape keeps alive for
    /// backward (its [`ad_core::TapeStats::held_bytes`], which includes what an opaque
    /// node stores, e.g. checkpoints) less the outputs `h(t_1..t_n)` themselves. Call it
    /// between forward and backward, before recording the loss.
    pub fn held_bytes(&self) -> Result<usize> {
        let Some(first) = self.outputs.first() else {
            return Ok(0);
        };
        let mut outputs = 0;
        for v in &self.outputs[1..] {
            if v.requires_grad()? {
                let (r, c) = v.shape()?;
                outputs += r * c * std::mem::size_of::<T>();
            }
        }
        Ok(first.tape().stats().held_bytes.saturating_sub(outputs))
    }

    /// The last output, `h(t_n)`.
    pub fn last(&self) -> Var<'t, T> {
        self.outputs[self.outputs.len() - 1]
    }

    /// The trajectory as one differentiable tensor: `h(t_0), …, h(t_n)` stacked row-block
    /// by row-block, `((n+1)·batch) × d` (rows `i·batch .. (i+1)·batch` are `h(t_i)`). A
    /// loss over every output time is then one expression, e.g.
    /// `sol.stack()?.mse(targets)?` with the targets stacked the same way.
    pub fn stack(&self) -> Result<Var<'t, T>> {
        let tape = self.outputs[0].tape();
        Ok(tape.concat_rows(&self.outputs)?)
    }

    /// The outputs' values, `h(t_0), …, h(t_n)`, for plotting or printing (no tape node).
    pub fn values(&self) -> Result<Vec<DMatrix<T>>> {
        Ok(self
            .outputs
            .iter()
            .map(|v| v.value())
            .collect::<ad_core::Result<_>>()?)
    }

    /// `Σ_i loss(i, h(t_i))` over every output time: `loss` returns a 1×1 variable for
    /// output `i` (`i = 0` is `h(t_0)`; return a zero, or skip it with [`Solution::stack`]
    /// and a weight, to leave it out). One node sums the terms.
    ///
    /// ```
    /// use ad_core::{nalgebra::DMatrix, Tape};
    /// use ode::{odeint, Options};
    /// # use ad_core::{Result as TapeResult, Scalar, Var};
    /// # #[derive(Clone)]
    /// # struct Decay;
    /// # impl<T: Scalar> ode::Dynamics<T> for Decay {
    /// #     fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
    /// #         Ok(-h)
    /// #     }
    /// # }
    /// let tape = Tape::<f64>::new();
    /// let h0 = tape.var(DMatrix::from_element(2, 1, 1.0));
    /// let t = tape.constant(DMatrix::from_row_slice(1, 3, &[0.0, 0.5, 1.0]));
    /// let sol = odeint(&tape, &Decay, h0, t, &[], &Options::default())?;
    /// let targets = [0.9, 0.6, 0.4];
    /// let loss = sol.sum_over_outputs(|i, h| {
    ///     let target = tape.constant(DMatrix::from_element(2, 1, targets[i]));
    ///     h.mse(target)
    /// })?;
    /// // The same loss through the stacked trajectory.
    /// let stacked = tape.constant(DMatrix::from_fn(6, 1, |r, _| targets[r / 2]));
    /// let mean = sol.stack()?.mse(stacked)?;
    /// let (a, b) = (loss.scalar_value()?, 3.0 * mean.scalar_value()?);
    /// assert!((a - b).abs() < 1e-15 * a);
    /// let g = tape.backward(loss)?;
    /// assert!(g.get(h0).is_some());
    /// assert_eq!(sol.values()?.len(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sum_over_outputs(
        &self,
        mut loss: impl FnMut(usize, Var<'t, T>) -> ad_core::Result<Var<'t, T>>,
    ) -> Result<Var<'t, T>> {
        let tape = self.outputs[0].tape();
        let mut terms = Vec::with_capacity(self.outputs.len());
        for (i, &h) in self.outputs.iter().enumerate() {
            let term = loss(i, h)?;
            let shape = term.shape()?;
            if shape != (1, 1) {
                return Err(crate::error::Error::Shape {
                    what: "a term of sum_over_outputs (the loss of one output)".into(),
                    expected: (1, 1),
                    got: shape,
                });
            }
            terms.push((T::constant(1.0), term));
        }
        Ok(tape.fixed_weighted_sum(&terms)?)
    }
}
