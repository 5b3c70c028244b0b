//! What a solve returns: the outputs on the caller's tape, the forward's counts and steps,
//! and what the gradient strategy did.

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
    /// The solve's opaque node (its first output), whose VJP reports [`BackwardStats`].
    pub(crate) node: Option<Var<'t, T>>,
}

impl<'t, T: Scalar> Solution<'t, T> {
    /// What the backward pass `grads` did inside this solve's node: backward NFE, steps,
    /// recomputations, drift. `None` for taped solves, and for a pass that did not reach the
    /// node (or ran through [`ad_core::Tape::vjp_wrt`], which keeps no reports).
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
}
