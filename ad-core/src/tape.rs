//! The tape: an arena of nodes in recording order, and the `Var` handles that point into it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use nalgebra::DMatrix;
use slotmap::{new_key_type, SlotMap};
use smallvec::SmallVec;

use crate::error::{Error, Result, Shape};
use crate::ops::Op;
use crate::scalar::Scalar;

new_key_type! {
    /// Generational key of a node in a tape's arena.
    pub(crate) struct NodeKey;
}

/// Parent list of a node: three inline slots cover every built-in op (`linear` has three
/// inputs) but the n-ary ones (`fixed_weighted_sum`, `weighted_sum`, `concat_cols`, custom ops).
pub(crate) type Parents = SmallVec<[NodeKey; 3]>;

/// One recorded operation: its value, how to pull a cotangent back through it, and its inputs.
pub(crate) struct Node<T: Scalar> {
    pub(crate) value: DMatrix<T>,
    pub(crate) op: Op<T>,
    pub(crate) parents: Parents,
    /// Position in recording order (a topological order of the graph).
    pub(crate) pos: usize,
    /// Whether some parameter leaf reaches this node, i.e. whether backward must visit it.
    pub(crate) requires_grad: bool,
    /// Whether the value was dropped by [`Tape::release_unneeded`].
    pub(crate) released: bool,
}

pub(crate) struct Arena<T: Scalar> {
    pub(crate) nodes: SlotMap<NodeKey, Node<T>>,
    pub(crate) order: Vec<NodeKey>,
}

impl<T: Scalar> Arena<T> {
    /// The node of `v`, or the error that keeps `v` from naming one: the error it carries
    /// (it could not be recorded), [`Error::StaleVar`] or [`Error::Released`].
    pub(crate) fn node(&self, v: &Var<'_, T>, op: &'static str) -> Result<&Node<T>> {
        if v.fault != 0 {
            return Err(v.tape.fault(v.fault, op));
        }
        match self.nodes.get(v.key) {
            None => Err(Error::StaleVar { op }),
            Some(node) if node.released => Err(Error::Released { op }),
            Some(node) => Ok(node),
        }
    }
}

/// At most this many distinct errors are kept for Vars that could not be recorded (they are
/// deduplicated, so only a program ignoring that many different errors reaches it); later
/// ones are reported as [`Error::StaleVar`].
const MAX_FAULTS: usize = 1 << 12;

static NEXT_TAPE_ID: AtomicU64 = AtomicU64::new(1);

/// A reverse-mode tape over dense matrices of `T`.
///
/// Operations on [`Var`]s append nodes to the tape; appending gives a topological order,
/// so [`Tape::backward`] walks the nodes in reverse. The tape uses interior mutability,
/// so recording needs only `&Tape`, and a `Var` is a small `Copy` handle borrowing it.
///
/// ```
/// use ad_core::Tape;
/// use ad_core::nalgebra::{self, dmatrix};
/// let tape = Tape::<f64>::new();
/// let x = tape.var(dmatrix![1.0, 2.0]);
/// let y = x.square().sum();
/// let grads = tape.backward(y)?;
/// assert_eq!(grads.get(x).unwrap(), &dmatrix![2.0, 4.0]);
/// # Ok::<(), ad_core::Error>(())
/// ```
pub struct Tape<T: Scalar> {
    id: u64,
    arena: RefCell<Arena<T>>,
    grad_enabled: Cell<bool>,
    /// Bumped by every [`Tape::reset`], so marks taken before one are refused.
    generation: Cell<u64>,
    /// Whether a backward pass is running (a custom op's VJP may not start another).
    in_backward: Cell<bool>,
    /// The errors carried by Vars that could not be recorded (`Var::fault` indexes it).
    /// Kept apart from the arena so it can be written while a callback holds the arena.
    faults: RefCell<Vec<Error>>,
    /// Caveats the code that recorded on the tape left for checks to report
    /// ([`Tape::add_note`]).
    notes: RefCell<Vec<String>>,
}

impl<T: Scalar> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Scalar> std::fmt::Debug for Tape<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tape")
            .field("id", &self.id)
            .field("len", &self.len())
            .field("grad_enabled", &self.grad_enabled.get())
            .finish()
    }
}

/// A position on a tape, from [`Tape::mark`], to [`Tape::rewind`] to later.
///
/// A mark stays valid while the nodes before it do: after [`Tape::reset`], or a rewind to a
/// point before it, using it is [`Error::StaleMark`]; on another tape, [`Error::ForeignMark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    tape: u64,
    generation: u64,
    len: usize,
    /// The node just before the mark (null at position 0): if the tape was rewound past the
    /// mark and recorded again, the node at that position is a different one.
    last: NodeKey,
}

/// Restores gradient recording when dropped; returned by [`Tape::no_grad`].
#[must_use = "recording resumes as soon as the guard is dropped"]
pub struct NoGradGuard<'t, T: Scalar> {
    tape: &'t Tape<T>,
    previous: bool,
}

impl<T: Scalar> Drop for NoGradGuard<'_, T> {
    fn drop(&mut self) {
        self.tape.grad_enabled.set(self.previous);
    }
}

/// What a tape holds: node counts, bytes kept for backward, and a count per op kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapeStats {
    /// Every node in the arena: leaves, constants and recorded operations.
    pub nodes: usize,
    /// Nodes backward will visit: operations that some gradient-requiring leaf reaches.
    pub graph_nodes: usize,
    /// Bytes of tensors kept alive for backward: the values of graph nodes plus what custom
    /// ops report holding. Leaves (parameters, inputs) and constants are not counted.
    pub held_bytes: usize,
    /// Graph nodes per op name (`"matmul"`, `"tanh"`, a custom op's name, ...).
    pub per_op: BTreeMap<String, usize>,
}

impl<T: Scalar> Tape<T> {
    /// An empty tape that records gradients.
    pub fn new() -> Self {
        Self {
            id: NEXT_TAPE_ID.fetch_add(1, Ordering::Relaxed),
            arena: RefCell::new(Arena {
                nodes: SlotMap::with_key(),
                order: Vec::new(),
            }),
            grad_enabled: Cell::new(true),
            generation: Cell::new(0),
            in_backward: Cell::new(false),
            faults: RefCell::new(Vec::new()),
            notes: RefCell::new(Vec::new()),
        }
    }

    /// A leaf that gradients are taken with respect to (a parameter or an input of interest).
    pub fn var(&self, value: DMatrix<T>) -> Var<'_, T> {
        self.push_leaf("var", value, Op::Leaf, true)
    }

    /// A leaf that is never differentiated (data, targets, fixed inputs).
    pub fn constant(&self, value: DMatrix<T>) -> Var<'_, T> {
        self.push_leaf("constant", value, Op::Constant, false)
    }

    /// A 1x1 gradient-requiring leaf.
    pub fn scalar(&self, value: T) -> Var<'_, T> {
        self.push_leaf("scalar", DMatrix::from_element(1, 1, value), Op::Leaf, true)
    }

    /// Leave a caveat about what was recorded, for checks to show beside their findings:
    /// e.g. an ODE solve notes that its gradient is the derivative of its discrete steps, and
    /// [`crate::gradcheck`] prints that when finite differences disagree. A note already on
    /// the tape is not added twice; notes outlive rewinds.
    pub fn add_note(&self, note: &str) {
        if let Ok(mut notes) = self.notes.try_borrow_mut() {
            if !notes.iter().any(|n| n == note) {
                notes.push(note.to_owned());
            }
        }
    }

    /// The caveats left by [`Tape::add_note`], in the order they were first added.
    pub fn notes(&self) -> Vec<String> {
        self.notes
            .try_borrow()
            .map_or_else(|_| Vec::new(), |n| n.clone())
    }

    /// Number of nodes in the arena.
    pub fn len(&self) -> usize {
        self.arena.try_borrow().map_or(0, |a| a.order.len())
    }

    /// Whether the tape holds no node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether operations currently record nodes for backward.
    pub fn is_grad_enabled(&self) -> bool {
        self.grad_enabled.get()
    }

    /// Evaluate without recording: until the guard drops, every operation stores its value
    /// only (no parents, no VJP, nothing held for backward), so the same user code runs as a
    /// plain value computation.
    pub fn no_grad(&self) -> NoGradGuard<'_, T> {
        let previous = self.grad_enabled.replace(false);
        NoGradGuard {
            tape: self,
            previous,
        }
    }

    /// The current end of the tape.
    pub fn mark(&self) -> Mark {
        let (len, last) = match self.arena.try_borrow() {
            Ok(arena) => (
                arena.order.len(),
                arena.order.last().copied().unwrap_or_default(),
            ),
            // Only while the tape inserts or drops nodes, which runs no user code: a mark
            // past any end, refused by every use.
            Err(_) => (usize::MAX, NodeKey::default()),
        };
        Mark {
            tape: self.id,
            generation: self.generation.get(),
            len,
            last,
        }
    }

    /// Error unless `mark` was taken on this tape and the nodes before it are still the ones
    /// it saw.
    fn check_mark(&self, arena: &Arena<T>, mark: Mark, op: &'static str) -> Result<()> {
        if mark.tape != self.id {
            return Err(Error::ForeignMark { op });
        }
        if mark.generation != self.generation.get() {
            return Err(Error::StaleMark {
                op,
                reason: "the tape was reset",
            });
        }
        let same_prefix = match mark.len {
            0 => true,
            len => arena.order.get(len - 1) == Some(&mark.last),
        };
        if !same_prefix {
            return Err(Error::StaleMark {
                op,
                reason: "the tape was rewound to before this mark (and maybe recorded again)",
            });
        }
        Ok(())
    }

    /// Drop every node recorded after `mark`; `Var`s from before the mark stay valid, later
    /// ones become stale (using them is [`Error::StaleVar`]). Capacity is kept for reuse.
    /// A mark of another tape is [`Error::ForeignMark`]; one taken before a reset, or before
    /// a rewind to an earlier point, is [`Error::StaleMark`].
    pub fn rewind(&self, mark: Mark) -> Result<()> {
        let mut arena = self.borrow_mut("rewind")?;
        self.check_mark(&arena, mark, "rewind")?;
        truncate(&mut arena, mark.len);
        Ok(())
    }

    /// Rewind to `mark` but keep the values of `keep`: each is moved (not copied) into a new
    /// constant node after the mark, returned in the same order. Kept values lose their
    /// graph, so this is for scratch tapes that carry a state from one step to the next.
    /// A kept `Var` recorded before the mark is returned unchanged.
    pub fn rewind_keep<'t>(&'t self, mark: Mark, keep: &[Var<'t, T>]) -> Result<Vec<Var<'t, T>>> {
        const NAME: &str = "rewind_keep";
        let mut moved: Vec<Option<DMatrix<T>>> = Vec::with_capacity(keep.len());
        {
            let mut arena = self.borrow_mut(NAME)?;
            self.check_mark(&arena, mark, NAME)?;
            for v in keep {
                // Validate every Var before moving anything out.
                self.check(v, NAME)?;
                arena.node(v, NAME)?;
            }
            for (i, v) in keep.iter().enumerate() {
                // A Var listed twice is moved once and copied for its later entries.
                if let Some(j) = keep[..i].iter().position(|u| u.key == v.key) {
                    let copy = moved[j].clone();
                    moved.push(copy);
                    continue;
                }
                let node = arena
                    .nodes
                    .get_mut(v.key)
                    .ok_or(Error::StaleVar { op: NAME })?;
                moved.push(
                    (node.pos >= mark.len)
                        .then(|| std::mem::replace(&mut node.value, DMatrix::zeros(0, 0))),
                );
            }
        }
        self.rewind(mark)?;
        let mut arena = self.borrow_mut(NAME)?;
        Ok(keep
            .iter()
            .zip(moved)
            .map(|(v, m)| match m {
                Some(value) => self.insert(&mut arena, value, Op::Constant, Parents::new(), false),
                None => *v,
            })
            .collect())
    }

    /// Drop the values of nodes recorded since `from` that backward will never read: values
    /// that no op's VJP uses (e.g. a pre-activation consumed only by `tanh`, whose VJP reads
    /// its own output) and that are not in `keep`. Their `Var`s can still be differentiated
    /// through, but reading them is [`Error::Released`]. Returns the bytes freed.
    pub fn release_unneeded(&self, from: Mark, keep: &[Var<'_, T>]) -> Result<usize> {
        const NAME: &str = "release_unneeded";
        let mut arena = self.borrow_mut(NAME)?;
        self.check_mark(&arena, from, NAME)?;
        let Arena { nodes, order } = &mut *arena;
        let start = from.len;
        let mut needed = vec![false; order.len() - start];
        for v in keep {
            self.check(v, NAME)?;
            if v.fault != 0 {
                return Err(self.fault(v.fault, NAME));
            }
            // A Var already gone or released has nothing left to keep.
            if let Some(node) = nodes.get(v.key) {
                if node.pos >= start {
                    needed[node.pos - start] = true;
                }
            }
        }
        for pos in start..order.len() {
            let node = &nodes[order[pos]];
            let (reads_output, reads_inputs) = if node.requires_grad {
                let reads = node.op.vjp_reads();
                (reads.output, reads.inputs)
            } else {
                (false, false)
            };
            needed[pos - start] |= reads_output;
            if reads_inputs {
                for &p in &node.parents {
                    let pp = nodes[p].pos;
                    if pp >= start {
                        needed[pp - start] = true;
                    }
                }
            }
        }
        let mut freed = 0;
        for (i, &key) in order[start..].iter().enumerate() {
            let node = &mut nodes[key];
            if needed[i] || node.released || matches!(node.op, Op::Leaf) {
                continue;
            }
            freed += node.value.len() * std::mem::size_of::<T>();
            node.value = DMatrix::zeros(0, 0);
            node.released = true;
        }
        Ok(freed)
    }

    /// Heap bytes of what was recorded since `from`: every node's value (constants and
    /// released values included, as they stand now), a custom op's own holdings, and the
    /// node's slot in the arena. For memory budgets; O(nodes since `from`).
    pub fn bytes_since(&self, from: Mark) -> usize {
        let Ok(arena) = self.arena.try_borrow() else {
            return 0;
        };
        if from.tape != self.id {
            return 0;
        }
        let slot = std::mem::size_of::<Node<T>>() + std::mem::size_of::<NodeKey>();
        arena.order[from.len.min(arena.order.len())..]
            .iter()
            .map(|&key| {
                let node = &arena.nodes[key];
                node.value.len() * std::mem::size_of::<T>()
                    + node.op.extra_held_bytes()
                    + if node.parents.spilled() {
                        node.parents.len() * std::mem::size_of::<NodeKey>()
                    } else {
                        0
                    }
                    + slot
            })
            .sum()
    }

    /// Remove every node. All existing `Var`s of this tape become stale, and so do its
    /// marks (using one is [`Error::StaleMark`]).
    pub fn reset(&self) -> Result<()> {
        let mut arena = self.borrow_mut("reset")?;
        self.generation.set(self.generation.get().wrapping_add(1));
        truncate(&mut arena, 0);
        Ok(())
    }

    /// Node counts, held bytes and per-op counts of what the tape holds now.
    pub fn stats(&self) -> TapeStats {
        let mut stats = TapeStats::default();
        let Ok(arena) = self.arena.try_borrow() else {
            return stats;
        };
        stats.nodes = arena.order.len();
        // Counted under borrowed names, so that the (few) owned keys are made once per op
        // kind rather than once per node: `ode` reads the held bytes once per solve.
        let mut per_op: SmallVec<[(&str, usize); 16]> = SmallVec::new();
        for node in arena.nodes.values() {
            if !node.requires_grad || matches!(node.op, Op::Leaf) {
                continue;
            }
            stats.graph_nodes += 1;
            stats.held_bytes +=
                node.value.len() * std::mem::size_of::<T>() + node.op.extra_held_bytes();
            let name = node.op.name();
            match per_op.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => *count += 1,
                None => per_op.push((name, 1)),
            }
        }
        stats.per_op = per_op
            .into_iter()
            .map(|(name, count)| (name.to_owned(), count))
            .collect();
        stats
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn borrow(&self, op: &'static str) -> Result<std::cell::Ref<'_, Arena<T>>> {
        self.arena.try_borrow().map_err(|_| busy(op))
    }

    pub(crate) fn borrow_mut(&self, op: &'static str) -> Result<std::cell::RefMut<'_, Arena<T>>> {
        self.arena.try_borrow_mut().map_err(|_| busy(op))
    }

    /// Error unless no backward pass is running on this tape: a custom op's VJP must not
    /// start another one (it could recurse forever through its own node).
    pub(crate) fn not_in_backward(&self, op: &'static str) -> Result<()> {
        if self.in_backward.get() {
            Err(Error::NestedBackward { op })
        } else {
            Ok(())
        }
    }

    /// Flag a backward pass as running until the guard drops.
    pub(crate) fn enter_backward(&self, op: &'static str) -> Result<BackwardGuard<'_, T>> {
        self.not_in_backward(op)?;
        self.in_backward.set(true);
        Ok(BackwardGuard { tape: self })
    }

    /// A Var that could not be recorded: it names no node and carries `error`, which its
    /// first fallible use reports (see [`Var::infallible`]).
    pub(crate) fn faulty(&self, error: Error) -> Var<'_, T> {
        let fault = self.faults.try_borrow_mut().map_or(0, |mut faults| {
            // Deduplicate, so that a loop failing the same way does not grow the list.
            let key = format!("{error:?}");
            match faults.iter().position(|e| format!("{e:?}") == key) {
                Some(i) => i + 1,
                None if faults.len() < MAX_FAULTS => {
                    faults.push(error);
                    faults.len()
                }
                None => 0,
            }
        });
        Var {
            tape: self,
            key: NodeKey::default(),
            fault: u32::try_from(fault).unwrap_or(0),
        }
    }

    /// The error a faulty Var carries (`op` names the call that found it, if it is lost).
    pub(crate) fn fault(&self, fault: u32, op: &'static str) -> Error {
        self.faults
            .try_borrow()
            .ok()
            .and_then(|faults| {
                Some(
                    faults
                        .get(usize::try_from(fault).ok()?.checked_sub(1)?)?
                        .replicate(),
                )
            })
            .unwrap_or(Error::StaleVar { op })
    }

    /// Check that `v` lives on this tape.
    pub(crate) fn check(&self, v: &Var<'_, T>, op: &'static str) -> Result<()> {
        if std::ptr::eq(v.tape, self) {
            Ok(())
        } else {
            Err(Error::ForeignVar { op })
        }
    }

    /// Record an operation: `forward` sees the input values and returns the output value and
    /// the op (with whatever it must keep for its VJP).
    pub(crate) fn apply<F>(
        &self,
        name: &'static str,
        inputs: &[Var<'_, T>],
        forward: F,
    ) -> Result<Var<'_, T>>
    where
        F: FnOnce(&[&DMatrix<T>]) -> Result<(DMatrix<T>, Op<T>)>,
    {
        for v in inputs {
            self.check(v, name)?;
        }
        let (value, op, requires_grad) = {
            let arena = self.borrow(name)?;
            // Eight inline slots: an RK combination has up to seven terms (dopri5's
            // solution), and a spilled list would cost an allocation per recorded node.
            let mut values: SmallVec<[&DMatrix<T>; 8]> = SmallVec::new();
            let mut requires_grad = false;
            for v in inputs {
                let node = arena.node(v, name)?;
                requires_grad |= node.requires_grad;
                values.push(&node.value);
            }
            let (value, op) = forward(&values)?;
            (value, op, requires_grad && self.grad_enabled.get())
        };
        let parents = inputs.iter().map(|v| v.key).collect();
        self.push(name, value, op, parents, requires_grad)
    }

    /// Append a node; operations that no parameter reaches are stored as plain values.
    pub(crate) fn push(
        &self,
        name: &'static str,
        value: DMatrix<T>,
        op: Op<T>,
        parents: Parents,
        requires_grad: bool,
    ) -> Result<Var<'_, T>> {
        let mut arena = self.borrow_mut(name)?;
        Ok(self.insert(&mut arena, value, op, parents, requires_grad))
    }

    pub(crate) fn insert(
        &self,
        arena: &mut Arena<T>,
        value: DMatrix<T>,
        op: Op<T>,
        parents: Parents,
        requires_grad: bool,
    ) -> Var<'_, T> {
        let (op, parents) = if requires_grad || matches!(op, Op::Leaf) {
            (op, parents)
        } else {
            (Op::Constant, Parents::new())
        };
        let pos = arena.order.len();
        let key = arena.nodes.insert(Node {
            value,
            op,
            parents,
            pos,
            requires_grad,
            released: false,
        });
        arena.order.push(key);
        Var {
            tape: self,
            key,
            fault: 0,
        }
    }

    fn push_leaf(&self, name: &'static str, value: DMatrix<T>, op: Op<T>, rg: bool) -> Var<'_, T> {
        // Leaves only fail to record while a custom op's callback holds the tape; a leaf made
        // then carries [`Error::TapeBusy`], which its first use reports instead of panicking.
        match self.arena.try_borrow_mut() {
            Ok(mut arena) => self.insert(&mut arena, value, op, Parents::new(), rg),
            Err(_) => self.faulty(busy(name)),
        }
    }
}

/// Drop every node at position `len` and after.
fn truncate<T: Scalar>(arena: &mut Arena<T>, len: usize) {
    let Arena { nodes, order } = arena;
    for key in order.drain(len.min(order.len())..) {
        nodes.remove(key);
    }
}

/// Clears [`Tape`]'s backward flag when dropped (also when a VJP panics).
pub(crate) struct BackwardGuard<'t, T: Scalar> {
    tape: &'t Tape<T>,
}

impl<T: Scalar> Drop for BackwardGuard<'_, T> {
    fn drop(&mut self) {
        self.tape.in_backward.set(false);
    }
}

fn busy(op: &'static str) -> Error {
    Error::TapeBusy { op }
}

/// A handle to a node on a [`Tape`]: small, `Copy`, and valid until the tape is reset or
/// rewound past it.
///
/// Ops that return a plain `Var` (unary maps, reductions, leaves, ...) cannot report an error
/// on the spot; when they fail (a stale or released input, a busy tape, an empty `mean`),
/// the `Var` they return names no node and carries the error, which its first fallible use
/// (or that of anything computed from it) reports.
#[derive(Clone, Copy)]
pub struct Var<'t, T: Scalar> {
    pub(crate) tape: &'t Tape<T>,
    pub(crate) key: NodeKey,
    /// 0, or 1 + the index in the tape's fault list of the error this Var carries.
    pub(crate) fault: u32,
}

impl<T: Scalar> std::fmt::Debug for Var<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Var")
            .field("tape", &self.tape.id)
            .field("key", &self.key)
            .finish()
    }
}

impl<'t, T: Scalar> Var<'t, T> {
    /// The tape this variable lives on.
    pub fn tape(&self) -> &'t Tape<T> {
        self.tape
    }

    /// A copy of the value.
    pub fn value(&self) -> Result<DMatrix<T>> {
        self.with_value(|m| m.clone())
    }

    /// Move the value out without copying it, leaving the node released (reading it again is
    /// [`Error::Released`]). Only for values no backward pass can need: a node recorded
    /// without gradients (constants, anything under [`Tape::no_grad`]); a node backward
    /// may visit is refused with [`Error::InvalidArgument`].
    pub fn take_value(&self) -> Result<DMatrix<T>> {
        const NAME: &str = "take_value";
        self.tape.check(self, NAME)?;
        let mut arena = self.tape.borrow_mut(NAME)?;
        arena.node(self, NAME)?;
        let node = arena
            .nodes
            .get_mut(self.key)
            .ok_or(Error::StaleVar { op: NAME })?;
        if node.requires_grad || matches!(node.op, Op::Leaf) {
            return Err(Error::InvalidArgument {
                op: NAME,
                message: "the value may be read by backward; use value() to copy it".into(),
            });
        }
        node.released = true;
        Ok(std::mem::replace(&mut node.value, DMatrix::zeros(0, 0)))
    }

    /// Run `f` on the value without copying it.
    pub fn with_value<R>(&self, f: impl FnOnce(&DMatrix<T>) -> R) -> Result<R> {
        let arena = self.tape.borrow("value")?;
        Ok(f(&arena.node(self, "value")?.value))
    }

    /// The value of a 1x1 variable.
    pub fn scalar_value(&self) -> Result<T> {
        let arena = self.tape.borrow("scalar_value")?;
        let v = &arena.node(self, "scalar_value")?.value;
        if v.shape() != (1, 1) {
            return Err(Error::ShapeMismatch {
                op: "scalar_value",
                left: v.shape(),
                right: (1, 1),
                expected: "the variable must be 1x1",
            });
        }
        Ok(v[(0, 0)])
    }

    /// `(rows, columns)` of the value.
    pub fn shape(&self) -> Result<Shape> {
        self.with_value(|m| m.shape())
    }

    /// Whether backward will produce gradients through this variable.
    pub fn requires_grad(&self) -> Result<bool> {
        let arena = self.tape.borrow("requires_grad")?;
        Ok(arena.node(self, "requires_grad")?.requires_grad)
    }

    /// Run `f` on the values of several variables of one tape at once, without copying.
    pub fn with_values<R>(vars: &[Var<'t, T>], f: impl FnOnce(&[&DMatrix<T>]) -> R) -> Result<R> {
        let Some(first) = vars.first() else {
            return Ok(f(&[]));
        };
        let tape = first.tape;
        let arena = tape.borrow("with_values")?;
        let mut values: SmallVec<[&DMatrix<T>; 8]> = SmallVec::with_capacity(vars.len());
        for v in vars {
            tape.check(v, "with_values")?;
            values.push(&arena.node(v, "with_values")?.value);
        }
        Ok(f(&values))
    }

    /// Ops that return a plain `Var`: on an error (a stale, released or faulty input, a busy
    /// tape, ...) the result carries it, so its first fallible use reports the real cause
    /// instead of computing something wrong.
    pub(crate) fn or_faulty(self, r: Result<Var<'t, T>>) -> Var<'t, T> {
        r.unwrap_or_else(|e| self.tape.faulty(e))
    }

    /// Whether the variable's node still exists on its tape (not reset or rewound away, and
    /// recorded at all: a `Var` carrying an error is not live).
    pub fn is_live(&self) -> bool {
        self.fault == 0
            && self
                .tape
                .arena
                .try_borrow()
                .is_ok_and(|a| a.nodes.contains_key(self.key))
    }
}
