//! The opaque node every non-taped strategy records: its inputs `[h0, t (1×n), θ…]`, the
//! untaped forward's outputs `h(t_1..t_n)`, and the strategy's backward behind one trait.

use ad_core::nalgebra::DMatrix;
use ad_core::{Scalar, Var};

use crate::error::{Error, Result};
use crate::forward::Forward;
use crate::input::SolveInput;
use crate::solution::Solution;
use crate::strategy::{BackwardStats, StrategyReport};

impl<'t, T: Scalar> SolveInput<'_, 't, T> {
    /// Record an opaque strategy's node, inputs `[h0, t (1×n), θ…]` and outputs
    /// `h(t_1), …, h(t_n)` from `forward` (`h(t_0)` is `h0` itself), and wrap it in a
    /// [`Solution`].
    pub fn record_node<B: NodeBackward<T> + 'static>(
        &self,
        row: Var<'t, T>,
        forward: Forward<T>,
        backward: B,
        strategy: StrategyReport,
    ) -> Result<Solution<'t, T>> {
        let mut inputs = vec![self.h0, row];
        inputs.extend_from_slice(self.params);
        let node = SolveNode {
            outputs: forward.outputs,
            backward,
        };
        let node_outputs = self.tape.custom(node, &inputs).map_err(Error::from_tape)?;
        let mut outputs = vec![self.h0];
        outputs.extend_from_slice(&node_outputs);
        Ok(Solution {
            outputs,
            stats: forward.stats,
            steps: forward.steps,
            strategy,
            node: node_outputs.first().copied(),
        })
    }
}

/// The backward pass of an opaque strategy's node: from the inputs `[h0, t (1×n), θ…]`,
/// the outputs `h(t_1..t_n)` and their cotangents to the inputs' cotangents and a report.
pub(crate) trait NodeBackward<T: Scalar> {
    /// The node's name in tape statistics and errors.
    fn name(&self) -> &'static str;

    fn backward(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
    ) -> Result<(Vec<Option<DMatrix<T>>>, BackwardStats)>;

    /// Bytes kept for the backward beyond the node's inputs and outputs.
    fn held_bytes(&self) -> usize;

    /// The solve's time grid (output `i` of the node is at `grid[i + 1]`).
    fn grid(&self) -> &[f64];
}

/// An opaque strategy's node on the caller's tape: the untaped forward's outputs (handed
/// over when the node is recorded) and the strategy's backward.
struct SolveNode<T: Scalar, B> {
    outputs: Vec<DMatrix<T>>,
    backward: B,
}

impl<T: Scalar, B: NodeBackward<T>> ad_core::CustomOp<T> for SolveNode<T, B> {
    fn name(&self) -> &str {
        self.backward.name()
    }

    fn forward(
        &mut self,
        _inputs: &[&DMatrix<T>],
    ) -> std::result::Result<Vec<DMatrix<T>>, ad_core::BoxError> {
        Ok(std::mem::take(&mut self.outputs))
    }

    fn vjp(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        wants: &[bool],
    ) -> std::result::Result<Vec<Option<DMatrix<T>>>, ad_core::BoxError> {
        Ok(self.vjp_with_report(inputs, outputs, cotangents, wants)?.0)
    }

    fn vjp_with_report(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> std::result::Result<ad_core::ReportedVjp<T>, ad_core::BoxError> {
        // A NaN cotangent would surface as a NaN state deep in the backward solve: name it.
        for (i, g) in cotangents.iter().enumerate() {
            if let Some(g) = g {
                if !ad_core::all_finite(g) {
                    let t = self.backward.grid().get(i + 1).copied().unwrap_or(f64::NAN);
                    return Err(Box::new(Error::NonFiniteCotangent { output: i + 1, t }));
                }
            }
        }
        let (grads, stats) = self.backward.backward(inputs, outputs, cotangents)?;
        Ok((grads, Some(Box::new(stats))))
    }

    fn held_bytes(&self) -> usize {
        self.backward.held_bytes()
    }
}
