//! A named collection of parameter tensors that goes onto a tape and takes gradients back.

use ad_core::nalgebra::DMatrix;
use ad_core::{Gradients, Tape, Var};

use crate::error::{Error, Result};

/// Named parameter tensors (`"layers.0.weight"`, ...), in a fixed order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamSet {
    names: Vec<String>,
    values: Vec<DMatrix<f64>>,
}

impl ParamSet {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a tensor.
    pub fn push(&mut self, name: impl Into<String>, value: DMatrix<f64>) {
        self.names.push(name.into());
        self.values.push(value);
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.values.iter().map(|v| v.len()).sum()
    }

    /// The names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The values, in order.
    pub fn values(&self) -> &[DMatrix<f64>] {
        &self.values
    }

    /// Mutable access to the values (shapes must be kept).
    pub fn values_mut(&mut self) -> &mut [DMatrix<f64>] {
        &mut self.values
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&DMatrix<f64>> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.values[i])
    }

    /// Put every tensor on `tape` as a gradient-requiring leaf, in order.
    pub fn to_tape<'t>(&self, tape: &'t Tape<f64>) -> Vec<Var<'t, f64>> {
        self.values.iter().map(|v| tape.var(v.clone())).collect()
    }

    /// The gradients of `vars` (as returned by [`ParamSet::to_tape`]), zeros where the loss
    /// does not depend on a tensor.
    pub fn grads(
        &self,
        grads: &mut Gradients<f64>,
        vars: &[Var<'_, f64>],
    ) -> Result<Vec<DMatrix<f64>>> {
        if vars.len() != self.len() {
            return Err(Error::Mismatch(format!(
                "{} variables for {} parameter tensors",
                vars.len(),
                self.len()
            )));
        }
        Ok(vars
            .iter()
            .map(|&v| grads.take_or_zeros(v))
            .collect::<ad_core::Result<_>>()?)
    }

    /// Check that `other` (gradients, optimiser state) has one tensor of the same shape per
    /// parameter.
    pub fn check_matches(&self, other: &[DMatrix<f64>], what: &str) -> Result<()> {
        if other.len() != self.len() {
            return Err(Error::Mismatch(format!(
                "{what}: {} tensors for {} parameters",
                other.len(),
                self.len()
            )));
        }
        for ((name, p), o) in self.names.iter().zip(&self.values).zip(other) {
            if p.shape() != o.shape() {
                return Err(Error::Mismatch(format!(
                    "{what}: `{name}` is {:?} but got {:?}",
                    p.shape(),
                    o.shape()
                )));
            }
        }
        Ok(())
    }
}
