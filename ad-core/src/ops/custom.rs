//! Opaque nodes defined outside this crate: any number of inputs and outputs, a forward
//! computed off the tape, and a VJP supplied by the op.

use nalgebra::DMatrix;

use super::Op;
use crate::error::{Error, Message, Result};
use crate::scalar::Scalar;
use crate::tape::{NodeKey, Parents, Tape, Var};

/// Boxed error a custom op reports; it reaches the caller inside [`Error::Custom`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a custom op's VJP tells its caller besides cotangents (e.g. the step counts of a
/// backward ODE solve). It travels back in the [`crate::Gradients`] of the pass that ran the
/// VJP, found with [`crate::Gradients::report`] under the node's first output.
pub type Report = Box<dyn std::any::Any>;

/// What [`CustomOp::vjp_with_report`] returns: one cotangent per input, and a report.
pub type ReportedVjp<T> = (Vec<Option<DMatrix<T>>>, Option<Report>);

/// An operation that another crate puts on the tape as one opaque node.
///
/// The forward runs outside the tape (it may integrate an ODE, call a solver, ...); backward
/// hands the op the cotangents of its outputs and expects the cotangents of its inputs. The
/// inputs' and outputs' values are kept by the tape and passed back to [`CustomOp::vjp`], so
/// the op itself holds only what else it needs (report those bytes in
/// [`CustomOp::held_bytes`]).
///
/// A hand-written `x ↦ x³`, checked against the built-in ops:
///
/// ```
/// use ad_core::{BoxError, CustomOp, Tape};
/// use ad_core::nalgebra::{dmatrix, DMatrix};
///
/// struct Cube;
///
/// impl CustomOp<f64> for Cube {
///     fn name(&self) -> &str { "cube" }
///     fn forward(&mut self, inputs: &[&DMatrix<f64>]) -> Result<Vec<DMatrix<f64>>, BoxError> {
///         Ok(vec![inputs[0].map(|x| x * x * x)])
///     }
///     fn vjp(
///         &self,
///         inputs: &[&DMatrix<f64>],
///         _outputs: &[&DMatrix<f64>],
///         cotangents: Vec<Option<DMatrix<f64>>>,
///         _wants: &[bool],
///     ) -> Result<Vec<Option<DMatrix<f64>>>, BoxError> {
///         // d(x³) = 3x² dx
///         let g = cotangents[0].as_ref().expect("one output, one cotangent");
///         Ok(vec![Some(g.zip_map(inputs[0], |g, x| 3.0 * x * x * g))])
///     }
///     fn held_bytes(&self) -> usize { 0 }
/// }
///
/// let tape = Tape::new();
/// let x = tape.var(dmatrix![0.5, -2.0; 1.5, 3.0]);
/// let y = tape.custom(Cube, &[x])?[0];
/// let custom = tape.backward(y.sum())?.get(x).unwrap().clone();
/// let builtin = tape.backward(x.powi(3).sum())?.get(x).unwrap().clone();
/// assert!((custom - builtin).abs().max() < 1e-12);
/// assert_eq!(tape.stats().per_op["cube"], 1);
/// # Ok::<(), ad_core::Error>(())
/// ```
pub trait CustomOp<T: Scalar> {
    /// Name used in statistics and error messages.
    fn name(&self) -> &str;

    /// Compute the outputs (at least one) from the input values.
    fn forward(&mut self, inputs: &[&DMatrix<T>]) -> Result<Vec<DMatrix<T>>, BoxError>;

    /// Map output cotangents (`None` for an output nothing depends on) to input cotangents,
    /// one entry per input (`None` means zero). `wants[i]` is false for inputs that need no
    /// gradient; their entries are ignored.
    fn vjp(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        wants: &[bool],
    ) -> Result<Vec<Option<DMatrix<T>>>, BoxError>;

    /// Bytes the op keeps for backward besides its inputs and outputs.
    fn held_bytes(&self) -> usize;

    /// [`CustomOp::vjp`] plus a [`Report`] for the caller. The tape calls this one; the
    /// default runs `vjp` and reports nothing, so only ops with something to say override it.
    fn vjp_with_report(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        wants: &[bool],
    ) -> Result<ReportedVjp<T>, BoxError> {
        Ok((self.vjp(inputs, outputs, cotangents, wants)?, None))
    }
}

/// What a custom node stores: the op and the keys of its output nodes.
pub(crate) struct CustomNode<T: Scalar> {
    pub(crate) op: Box<dyn CustomOp<T>>,
    pub(crate) outputs: Vec<NodeKey>,
}

impl<T: Scalar> CustomNode<T> {
    /// Run the op's VJP and check that what it returns fits its inputs.
    pub(crate) fn vjp(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        wants: &[bool],
    ) -> Result<ReportedVjp<T>> {
        let name = self.op.name();
        let (grads, report) = self
            .op
            .vjp_with_report(inputs, outputs, cotangents, wants)
            .map_err(|source| Error::Custom {
                op: name.to_owned(),
                source,
            })?;
        if grads.len() != inputs.len() {
            return Err(custom_error(
                name,
                format!(
                    "its VJP returned {} cotangents for {} inputs",
                    grads.len(),
                    inputs.len()
                ),
            ));
        }
        for (i, (g, x)) in grads.iter().zip(inputs).enumerate() {
            if let Some(g) = g {
                if wants[i] && g.shape() != x.shape() {
                    return Err(custom_error(
                        name,
                        format!(
                            "its VJP returned a {:?} cotangent for input {i} of shape {:?}",
                            g.shape(),
                            x.shape()
                        ),
                    ));
                }
            }
        }
        Ok((grads, report))
    }
}

fn custom_error(op: &str, message: String) -> Error {
    Error::Custom {
        op: op.to_owned(),
        source: Box::new(Message(message)),
    }
}

impl<T: Scalar> Tape<T> {
    /// Run `op`'s forward on the inputs' values and record it as one node; returns one `Var`
    /// per output. If no input requires a gradient, the outputs are stored as constants and
    /// the op is dropped.
    pub fn custom<'t>(
        &'t self,
        mut op: impl CustomOp<T> + 'static,
        inputs: &[Var<'t, T>],
    ) -> Result<Vec<Var<'t, T>>> {
        const NAME: &str = "custom";
        for v in inputs {
            self.check(v, NAME)?;
        }
        let (outputs, requires_grad) = {
            let arena = self.borrow(NAME)?;
            let mut values = Vec::with_capacity(inputs.len());
            let mut requires_grad = false;
            for v in inputs {
                let node = arena.node(v, NAME)?;
                requires_grad |= node.requires_grad;
                values.push(&node.value);
            }
            let outputs = op.forward(&values).map_err(|source| Error::Custom {
                op: op.name().to_owned(),
                source,
            })?;
            (outputs, requires_grad && self.is_grad_enabled())
        };
        if outputs.is_empty() {
            return Err(custom_error(
                op.name(),
                "its forward returned no output".into(),
            ));
        }
        let mut arena = self.borrow_mut(NAME)?;
        if !requires_grad {
            return Ok(outputs
                .into_iter()
                .map(|v| self.insert(&mut arena, v, Op::Constant, Parents::new(), false))
                .collect());
        }
        let parents = inputs.iter().map(|v| v.key).collect();
        let node = CustomNode {
            op: Box::new(op),
            outputs: Vec::with_capacity(outputs.len()),
        };
        let custom = self.insert(
            &mut arena,
            DMatrix::zeros(0, 0),
            Op::Custom(Box::new(node)),
            parents,
            true,
        );
        let vars: Vec<Var<'t, T>> = outputs
            .into_iter()
            .map(|v| {
                let parents = std::iter::once(custom.key).collect();
                self.insert(&mut arena, v, Op::CustomOutput, parents, true)
            })
            .collect();
        if let Some(Op::Custom(node)) = arena.nodes.get_mut(custom.key).map(|n| &mut n.op) {
            node.outputs = vars.iter().map(|v| v.key).collect();
        }
        Ok(vars)
    }
}
