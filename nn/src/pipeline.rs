//! The one problem pipeline: a [`Problem`] → its [`NeuralOde`] → inputs and solve on a tape
//! → the problem's loss → gradients with statistics. The bench, the examples and the tests
//! call this instead of writing the chain out.
//!
//! [`Problem::gradients`] is the `f64` convenience. [`Problem::record_with`] records on a
//! tape of any scalar with the inputs lifted as the caller says (forward-mode tangents,
//! Hessian-vector products), and [`Problem::forward_with`] stops before the loss, for a
//! caller with a loss of its own.

use ad_core::nalgebra::DMatrix;
use ad_core::{Precision, Scalar, Tape, Var};
use ode::{BackwardStats, Solution, SolveStats, Strategy, StrategyReport};

use crate::error::Result;
use crate::odefunc::NeuralOde;
use crate::params::{lifted, lower};
use crate::problem::{Loss, Problem};

/// Which input of a problem a tensor is: what [`Problem::forward_with`]'s `lift` is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// The initial state, batch × dim.
    H0,
    /// The time grid, 1 × n.
    Time,
    /// Parameter tensor `k`, in [`crate::ParamSet`] order.
    Param(usize),
}

/// What the tape holds after the forward solve, before the loss is recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Every node on the tape ([`ad_core::TapeStats::nodes`]).
    pub tape_nodes: usize,
    /// Held bytes as `docs/design.md` defines them ([`ode::Solution::held_bytes`]).
    pub held_bytes: usize,
}

/// A problem's inputs and forward solve on a tape.
pub struct Forward<'t, T: Scalar> {
    /// The initial state, a gradient-requiring leaf.
    pub h0: Var<'t, T>,
    /// The parameter tensors in [`crate::ParamSet`] order, gradient-requiring leaves.
    pub params: Vec<Var<'t, T>>,
    /// The time grid (1 × n), a gradient-requiring leaf.
    pub t: Var<'t, T>,
    /// The solve: outputs, forward counts, the strategy that ran.
    pub solution: Solution<'t, T>,
}

impl<'t, T: Scalar> Forward<'t, T> {
    /// Tape nodes and held bytes now; call it before recording the loss, or the loss's
    /// nodes are counted too.
    pub fn footprint(&self) -> Result<Footprint> {
        Ok(Footprint {
            tape_nodes: self.h0.tape().stats().nodes,
            held_bytes: self.solution.held_bytes()?,
        })
    }

    /// Attach a loss recorded on the same tape from [`Forward::solution`]'s outputs.
    pub fn with_loss(self, loss: Var<'t, T>) -> Recorded<'t, T> {
        Recorded {
            forward: self,
            loss,
        }
    }
}

/// A problem recorded on a tape up to its loss: run [`Recorded::backward`], or backward
/// yourself from [`Recorded::loss`].
pub struct Recorded<'t, T: Scalar> {
    /// The inputs and the solve.
    pub forward: Forward<'t, T>,
    /// The scalar loss.
    pub loss: Var<'t, T>,
}

impl<'t, T: Scalar> Recorded<'t, T> {
    /// Run backward from the loss and collect the loss, the gradients of h0, every
    /// parameter and the time grid, and what the solve did.
    pub fn backward(self) -> Result<ProblemGradients<T>> {
        let Forward {
            h0,
            params,
            t,
            solution,
        } = self.forward;
        let mut grads = self.loss.tape().backward(self.loss)?;
        Ok(ProblemGradients {
            loss: self.loss.scalar_value()?,
            h0: grads.take_or_zeros(h0)?,
            params: params
                .iter()
                .map(|&p| grads.take_or_zeros(p))
                .collect::<ad_core::Result<_>>()?,
            t: grads.take_or_zeros(t)?,
            backward: solution.backward_stats(&grads),
            forward: solution.stats,
            strategy: solution.strategy,
            footprint: None,
        })
    }
}

/// The loss of a problem, its gradients, and what the solve did.
#[derive(Clone, Debug)]
pub struct ProblemGradients<T: Scalar = f64> {
    /// The loss value.
    pub loss: T,
    /// dL/dh0, batch × dim.
    pub h0: DMatrix<T>,
    /// dL/dθ per parameter tensor, in [`crate::ParamSet`] order.
    pub params: Vec<DMatrix<T>>,
    /// dL/dtᵢ, 1 × n.
    pub t: DMatrix<T>,
    /// Counts of the forward solve.
    pub forward: SolveStats,
    /// What the backward pass did inside the solve (for taped solves, through its recorded
    /// steps); `None` if the pass did not reach it.
    pub backward: Option<BackwardStats>,
    /// The strategy that ran (for `auto`, the one it chose, and why).
    pub strategy: StrategyReport,
    /// The tape after the forward solve: measured by [`Problem::gradients`] and
    /// [`Problem::gradients_on`], `None` from [`Recorded::backward`].
    pub footprint: Option<Footprint>,
}

impl<P: Precision> ProblemGradients<P> {
    /// The same gradients as `f64` (exact: every `f32` is an `f64`), for comparing an `f32`
    /// run with an `f64` one or reporting them together.
    pub fn widen(self) -> ProblemGradients<f64> {
        let wide = |m: DMatrix<P>| m.map(Precision::as_f64);
        ProblemGradients {
            loss: self.loss.as_f64(),
            h0: wide(self.h0),
            params: self.params.into_iter().map(wide).collect(),
            t: wide(self.t),
            forward: self.forward,
            backward: self.backward,
            strategy: self.strategy,
            footprint: self.footprint,
        }
    }
}

/// Refuse a value of `params` or `others` (named tensors) that would overflow precision `Q`
/// when lifted ([`crate::Error::Overflow`], naming the tensor and entry).
pub(crate) fn check_fits<Q: Precision>(
    params: &crate::ParamSet,
    others: &[(&str, &DMatrix<f64>)],
) -> Result<()> {
    if Q::EPSILON <= f64::EPSILON {
        return Ok(()); // f64 holds every value of a file
    }
    for (name, value) in params.names().iter().zip(params.values()) {
        lower::<f64, Q>(name, value)?;
    }
    for (name, value) in others {
        lower::<f64, Q>(name, value)?;
    }
    Ok(())
}

impl Problem {
    /// The problem's neural ODE (its field and solver options) with `strategy`.
    pub fn model(&self, strategy: Strategy) -> NeuralOde {
        NeuralOde {
            func: self.func.clone(),
            strategy,
            options: self.options.clone(),
        }
    }

    /// Put h0, the parameters and the time grid on `tape` (lifted with zero derivative
    /// parts; a value beyond the range of `T`'s precision is an [`crate::Error::Overflow`])
    /// and solve with `strategy`.
    pub fn forward<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        strategy: &Strategy,
    ) -> Result<Forward<'t, T>> {
        self.check_fits::<T::Primitive>()?;
        self.forward_with(tape, strategy, |_, value| value.map(T::constant))
    }

    /// Refuse a value of the file that would overflow precision `Q` when lifted
    /// ([`crate::Error::Overflow`], naming the tensor and entry).
    fn check_fits<Q: Precision>(&self) -> Result<()> {
        let grid = DMatrix::from_row_slice(1, self.t.len(), &self.t);
        let mut others = vec![("h0".to_owned(), &self.h0), ("t".to_owned(), &grid)];
        if let Loss::Cotangents(v) = &self.loss {
            // The loss's weights go on the tape in `T` too.
            others.extend(
                v.iter()
                    .enumerate()
                    .map(|(i, c)| (format!("loss.cotangents[{i}]"), c)),
            );
        }
        let others: Vec<(&str, &DMatrix<f64>)> =
            others.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        check_fits::<Q>(&self.params, &others)
    }

    /// [`Problem::forward`] with each input's value on the tape given by `lift(leaf,
    /// value)`: seed tangents for forward mode (`Dual64`, `HyperDual64`) without copying by
    /// hand. A lift that changes a shape is an [`crate::Error::Mismatch`].
    ///
    /// ```
    /// use nn::num_dual::Dual64;
    /// use nn::{Leaf, Problem, Strategy};
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/problems/spiral_small.json");
    /// let problem = Problem::load(path)?;
    /// // dL/dh0[0][1] by forward mode, against the reverse-mode gradient.
    /// let tape = ad_core::Tape::<Dual64>::new();
    /// let rec = problem.record_with(&tape, &Strategy::Taped, |leaf, value| {
    ///     let mut m = value.map(Dual64::from);
    ///     if leaf == Leaf::H0 {
    ///         m[(0, 1)].eps = 1.0;
    ///     }
    ///     m
    /// })?;
    /// let forward_mode = rec.loss.scalar_value()?.eps;
    /// let reverse_mode = problem.gradients(&Strategy::Taped)?.h0[(0, 1)];
    /// assert!((forward_mode - reverse_mode).abs() < 1e-10 * reverse_mode.abs().max(1.0));
    /// # Ok::<(), nn::Error>(())
    /// ```
    pub fn forward_with<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        strategy: &Strategy,
        mut lift: impl FnMut(Leaf, &DMatrix<f64>) -> DMatrix<T>,
    ) -> Result<Forward<'t, T>> {
        let params = self
            .params
            .to_tape_with(tape, |k, value| lift(Leaf::Param(k), value))?;
        let h0 = tape.var(lifted("h0", &self.h0, lift(Leaf::H0, &self.h0))?);
        let grid = DMatrix::from_row_slice(1, self.t.len(), &self.t);
        let t = tape.var(lifted("t", &grid, lift(Leaf::Time, &grid))?);
        let solution = self.model(strategy.clone()).forward(tape, h0, t, &params)?;
        Ok(Forward {
            h0,
            params,
            t,
            solution,
        })
    }

    /// [`Problem::forward`], then the problem's loss.
    pub fn record<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        strategy: &Strategy,
    ) -> Result<Recorded<'t, T>> {
        self.check_fits::<T::Primitive>()?;
        self.record_with(tape, strategy, |_, value| value.map(T::constant))
    }

    /// [`Problem::forward_with`], then the problem's loss.
    pub fn record_with<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        strategy: &Strategy,
        lift: impl FnMut(Leaf, &DMatrix<f64>) -> DMatrix<T>,
    ) -> Result<Recorded<'t, T>> {
        let forward = self.forward_with(tape, strategy, lift)?;
        let loss = self.loss.apply(tape, &forward.solution.outputs)?;
        Ok(forward.with_loss(loss))
    }

    /// The loss, its gradients with respect to h0, every parameter and the time grid, and
    /// the solve's statistics (footprint included), on a fresh tape.
    ///
    /// ```
    /// use nn::{Problem, Strategy};
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/problems/spiral_small.json");
    /// let problem = Problem::load(path)?;
    /// let taped = problem.gradients(&Strategy::Taped)?;
    /// let adjoint = problem.gradients(&Strategy::backsolve())?;
    /// assert_eq!(taped.params.len(), problem.params.len());
    /// // Taped reports the VJPs through its recorded steps, backsolve its backward solve.
    /// assert!(taped.backward.is_some_and(|b| b.nfe > 0) && adjoint.backward.is_some_and(|b| b.nfe > 0));
    /// let gap = (&taped.h0 - &adjoint.h0).abs().max() / taped.h0.abs().max();
    /// assert!(gap < 1e-4, "{gap}");
    /// # Ok::<(), nn::Error>(())
    /// ```
    pub fn gradients(&self, strategy: &Strategy) -> Result<ProblemGradients> {
        self.gradients_on(&Tape::new(), strategy)
    }

    /// [`Problem::gradients`] with the solve in `T`: `f32` (the file's `f64` values rounded
    /// once), `f64`, or a dual number (zero tangents; use [`Problem::record_with`] to seed
    /// them).
    ///
    /// ```
    /// use nn::{Problem, Strategy};
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/problems/spiral_small.json");
    /// let problem = Problem::load(path)?;
    /// let wide = problem.gradients(&Strategy::Taped)?;
    /// let narrow = problem.gradients_in::<f32>(&Strategy::Taped)?;
    /// let gap = (narrow.h0.map(f64::from) - &wide.h0).abs().max() / wide.h0.abs().max();
    /// assert!(gap < 1e-3, "{gap}");
    /// # Ok::<(), nn::Error>(())
    /// ```
    pub fn gradients_in<T: Scalar>(&self, strategy: &Strategy) -> Result<ProblemGradients<T>> {
        self.gradients_on(&Tape::<T>::new(), strategy)
    }

    /// [`Problem::gradients`] on `tape` (of any scalar), which is reset first (its `Var`s go
    /// stale): a loop reuses the tape's memory.
    pub fn gradients_on<T: Scalar>(
        &self,
        tape: &Tape<T>,
        strategy: &Strategy,
    ) -> Result<ProblemGradients<T>> {
        tape.reset()?;
        let forward = self.forward(tape, strategy)?;
        let footprint = forward.footprint()?;
        let loss = self.loss.apply(tape, &forward.solution.outputs)?;
        let mut gradients = forward.with_loss(loss).backward()?;
        gradients.footprint = Some(footprint);
        Ok(gradients)
    }
}
