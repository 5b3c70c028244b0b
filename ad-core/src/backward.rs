//! Reverse sweep: walk the arena from the output back to the leaves, consuming each
//! intermediate cotangent as soon as it has been pulled back.

use nalgebra::DMatrix;
use slotmap::SecondaryMap;
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::ops::{Op, Report};
use crate::scalar::{all_finite, Scalar};
use crate::tape::{Arena, NodeKey, Tape, Var};

/// What a reverse sweep gathers: cotangents of the leaves, reports of custom nodes.
type Pulled<T> = (
    SecondaryMap<NodeKey, DMatrix<T>>,
    SecondaryMap<NodeKey, Report>,
);

/// Gradients of one backward pass, keyed by leaf `Var`, and the [`Report`]s of the custom
/// nodes whose VJPs ran in it.
pub struct Gradients<T: Scalar> {
    tape: u64,
    grads: SecondaryMap<NodeKey, DMatrix<T>>,
    reports: SecondaryMap<NodeKey, Report>,
}

impl<T: Scalar> std::fmt::Debug for Gradients<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gradients")
            .field("len", &self.grads.len())
            .finish()
    }
}

impl<T: Scalar> Gradients<T> {
    /// The gradient of a leaf, or `None` if the output does not depend on it (or it is not a
    /// leaf of the tape this pass ran on).
    pub fn get(&self, var: Var<'_, T>) -> Option<&DMatrix<T>> {
        if var.tape.id() != self.tape {
            return None;
        }
        self.grads.get(var.key)
    }

    /// Move a leaf's gradient out, or zeros of its shape if the output does not depend on it.
    pub fn take_or_zeros(&mut self, var: Var<'_, T>) -> Result<DMatrix<T>> {
        if var.tape.id() != self.tape {
            return Err(Error::ForeignVar {
                op: "Gradients::take_or_zeros",
            });
        }
        match self.grads.remove(var.key) {
            Some(g) => Ok(g),
            None => {
                let (r, c) = var.shape()?;
                Ok(DMatrix::zeros(r, c))
            }
        }
    }

    /// What the VJP of the custom node whose first output is `output` reported in this
    /// pass, if it ran and reported an `R` (e.g. `ode::BackwardStats` of a solve).
    pub fn report<R: 'static>(&self, output: Var<'_, T>) -> Option<&R> {
        if output.tape.id() != self.tape {
            return None;
        }
        self.reports.get(output.key)?.downcast_ref::<R>()
    }

    /// Number of leaves with a gradient.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// Whether no leaf received a gradient.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }
}

impl<T: Scalar> Tape<T> {
    /// Gradients of a 1×1 `loss` with respect to every gradient-requiring leaf.
    ///
    /// Not from inside a custom op's VJP on the same tape ([`Error::NestedBackward`]).
    pub fn backward(&self, loss: Var<'_, T>) -> Result<Gradients<T>> {
        self.not_in_backward("backward")?;
        let shape = loss.shape()?;
        if shape != (1, 1) {
            return Err(Error::ShapeMismatch {
                op: "backward",
                left: shape,
                right: (1, 1),
                expected: "the loss must be 1x1; reduce it with sum() or mean(), or use vjp() with a cotangent",
            });
        }
        let (grads, reports) = self.pullback(
            "backward",
            &[(loss, DMatrix::from_element(1, 1, T::one()))],
            None,
        )?;
        Ok(Gradients {
            tape: self.id(),
            grads,
            reports,
        })
    }

    /// Vector-Jacobian product: the cotangent of `output` pulled back to every
    /// gradient-requiring leaf. The cotangent must be finite
    /// ([`Error::NonFiniteCotangent`]).
    pub fn vjp(&self, output: Var<'_, T>, cotangent: DMatrix<T>) -> Result<Gradients<T>> {
        let (grads, reports) = self.pullback("vjp", &[(output, cotangent)], None)?;
        Ok(Gradients {
            tape: self.id(),
            grads,
            reports,
        })
    }

    /// Vector-Jacobian product restricted to `wrt`: only nodes that lead to one of these are
    /// visited. Returns one cotangent per entry of `wrt`: for a leaf, its gradient; for an
    /// intermediate, the cotangent accumulated at its node (what backward would pull back
    /// through it); zeros where there is no path, and for constants and values computed
    /// from constants only (they are not differentiated). The seeds' cotangents add up and
    /// must be finite ([`Error::NonFiniteCotangent`]).
    pub fn vjp_wrt(
        &self,
        seeds: &[(Var<'_, T>, DMatrix<T>)],
        wrt: &[Var<'_, T>],
    ) -> Result<Vec<DMatrix<T>>> {
        self.not_in_backward("vjp_wrt")?;
        // A foreign Var's key could name a node of this tape: refuse it before looking it up.
        for v in wrt {
            self.check(v, "vjp_wrt")?;
        }
        let (mut grads, _reports) = self.pullback("vjp_wrt", seeds, Some(wrt))?;
        wrt.iter()
            .enumerate()
            .map(|(i, v)| {
                // A Var listed again later keeps its gradient for that later entry.
                if wrt[i + 1..].iter().any(|w| w.key == v.key) {
                    grads.get(v.key).cloned()
                } else {
                    grads.remove(v.key)
                }
            })
            .zip(wrt)
            .map(|(g, v)| match g {
                Some(g) => Ok(g),
                None => {
                    let (r, c) = v.shape()?;
                    Ok(DMatrix::zeros(r, c))
                }
            })
            .collect()
    }

    /// The reverse sweep from `seeds`; with `wrt`, restricted to the nodes that lead to one
    /// of them, and also returning the cotangents of the intermediates among them.
    fn pullback(
        &self,
        name: &'static str,
        seeds: &[(Var<'_, T>, DMatrix<T>)],
        wrt: Option<&[Var<'_, T>]>,
    ) -> Result<Pulled<T>> {
        let _running = self.enter_backward(name)?;
        let arena = self.borrow(name)?;
        let mut pending: Vec<Option<DMatrix<T>>> = Vec::new();
        let mut end = 0;
        for (i, (v, g)) in seeds.iter().enumerate() {
            self.check(v, name)?;
            let node = arena.node(v, name)?;
            if g.shape() != node.value.shape() {
                return Err(Error::ShapeMismatch {
                    op: "vjp",
                    left: node.value.shape(),
                    right: g.shape(),
                    expected: "the cotangent must have the output's shape",
                });
            }
            if !all_finite(g) {
                let at = g.iter().position(|x| !x.primal().is_finite()).unwrap_or(0);
                return Err(Error::NonFiniteCotangent {
                    op: name,
                    seed: i,
                    entry: (at % g.nrows().max(1), at / g.nrows().max(1)),
                });
            }
            end = end.max(node.pos + 1);
            if pending.len() < end {
                pending.resize(end, None);
            }
            accumulate(&mut pending[node.pos], g.clone());
        }
        let reach = match wrt {
            Some(wrt) => Some(reach_mask(&arena, wrt, end)?),
            None => None,
        };
        let wants_node = |key: NodeKey, node_pos: usize| -> bool {
            let _ = key;
            reach.as_ref().is_none_or(|r| r.reaches[node_pos])
        };
        let is_target = |pos: usize| reach.as_ref().is_some_and(|r| r.target[pos]);

        let mut result = SecondaryMap::new();
        let mut reports = SecondaryMap::new();
        for pos in (0..end).rev() {
            let key = arena.order[pos];
            let node = &arena.nodes[key];
            if !node.requires_grad || !wants_node(key, pos) {
                pending[pos] = None;
                continue;
            }
            match &node.op {
                // An output's cotangent waits for its custom node, recorded just before it.
                // Every consumer of a node comes after it, so its cotangent is complete here.
                Op::CustomOutput => {
                    if is_target(pos) {
                        if let Some(g) = &pending[pos] {
                            result.insert(key, g.clone());
                        }
                    }
                    continue;
                }
                Op::Leaf => {
                    if let Some(g) = pending[pos].take() {
                        result.insert(key, g);
                    }
                    continue;
                }
                _ => {}
            }
            // Eight inline slots cover an RK combination's terms without an allocation.
            let wants: SmallVec<[bool; 8]> = node
                .parents
                .iter()
                .map(|&p| {
                    let parent = &arena.nodes[p];
                    parent.requires_grad && wants_node(p, parent.pos)
                })
                .collect();
            // An intermediate in `wrt`: its cotangent before it is pulled further back (moved
            // out when nothing upstream is wanted).
            if is_target(pos) {
                if wants.iter().any(|&w| w) {
                    if let Some(g) = &pending[pos] {
                        result.insert(key, g.clone());
                    }
                } else {
                    if let Some(g) = pending[pos].take() {
                        result.insert(key, g);
                    }
                    continue;
                }
            }
            let inputs: SmallVec<[&DMatrix<T>; 8]> = node
                .parents
                .iter()
                .map(|&p| &arena.nodes[p].value)
                .collect();
            let parent_grads = if let Op::Custom(custom) = &node.op {
                let cotangents: Vec<Option<DMatrix<T>>> = custom
                    .outputs
                    .iter()
                    .map(|&o| pending.get_mut(arena.nodes[o].pos).and_then(Option::take))
                    .collect();
                if cotangents.iter().all(Option::is_none) {
                    continue;
                }
                let outputs: Vec<&DMatrix<T>> = custom
                    .outputs
                    .iter()
                    .map(|&o| &arena.nodes[o].value)
                    .collect();
                let (grads, report) = custom.vjp(&inputs, &outputs, cotangents, &wants)?;
                if let (Some(report), Some(&first)) = (report, custom.outputs.first()) {
                    reports.insert(first, report);
                }
                grads.into_iter().collect()
            } else {
                let Some(g) = pending[pos].take() else {
                    continue;
                };
                node.op.vjp(&node.value, &inputs, g, &wants)
            };
            for ((&parent, g), &w) in node.parents.iter().zip(parent_grads).zip(&wants) {
                if let (Some(g), true) = (g, w) {
                    accumulate(&mut pending[arena.nodes[parent].pos], g);
                }
            }
        }
        Ok((result, reports))
    }
}

fn accumulate<T: Scalar>(slot: &mut Option<DMatrix<T>>, g: DMatrix<T>) {
    match slot {
        Some(acc) => crate::ops::add_into(acc, &g),
        None => *slot = Some(g),
    }
}

/// Which nodes a restricted sweep visits, by position.
struct Reach {
    /// Whether the node is one of `wrt` or depends on one of them.
    reaches: Vec<bool>,
    /// Whether the node is one of `wrt`.
    target: Vec<bool>,
}

fn reach_mask<T: Scalar>(arena: &Arena<T>, wrt: &[Var<'_, T>], end: usize) -> Result<Reach> {
    let mut target = vec![false; end];
    let mut first = end;
    for v in wrt {
        let node = arena.node(v, "vjp_wrt")?;
        if node.pos < end {
            target[node.pos] = true;
            first = first.min(node.pos);
        }
    }
    let mut mask = target.clone();
    for pos in first..end {
        if mask[pos] {
            continue;
        }
        let node = &arena.nodes[arena.order[pos]];
        mask[pos] = node.parents.iter().any(|&p| mask[arena.nodes[p].pos]);
    }
    Ok(Reach {
        reaches: mask,
        target,
    })
}
