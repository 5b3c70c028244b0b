//! `odeint_adjoint`: the whole solve as one opaque tape node whose VJP integrates the
//! adjoint system backwards (Chen et al. 2018; torchdiffeq's `odeint_adjoint`).

use std::cell::Cell;
use std::rc::Rc;

use ad_core::nalgebra::DMatrix;
use ad_core::{BoxError, CustomOp, Mark, Scalar, Tape, Var};

use crate::dynamics::Dynamics;
use crate::engine::{integrate, Controller, Segment, SolveStats, State, System};
use crate::error::{Error, Result};
use crate::options::{AdjointNorm, Norm, Options};
use crate::solve::{
    check_field_output, check_h0, check_tape, forward_controller, grid_row, solve, Solution,
};

/// Constant-memory gradients: the forward solve records nothing, and the tape gets one node
/// (plus one output node per grid time). Its VJP solves the augmented system
/// `[h, a, a_θ, a_t]` from `t_n` back to `t_0`, resetting `h` to the stored forward value at
/// every output time and adding that output's cotangent to `a`. Gradients reach `h0`, every
/// parameter and every time in `t`, accurate to the solver tolerance.
///
/// The backward solve uses `adjoint_method`, `adjoint_rtol`, `adjoint_atol` and
/// `adjoint_norm` from `opts` (defaulting to the forward settings), and carries the step size
/// from one segment between output times to the next instead of restarting the controller.
/// `f` is cloned into the node, so it must be `Clone + 'static` (keep weights in `params`).
pub fn odeint_adjoint<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    tape: &'t Tape<T>,
    f: &F,
    h0: Var<'t, T>,
    t: Var<'t, T>,
    params: &[Var<'t, T>],
    opts: &Options,
) -> Result<Solution<'t, T>> {
    opts.validate()?;
    check_tape(tape, "odeint_adjoint", [&h0, &t].into_iter().chain(params))?;
    let (row, grid) = grid_row(t)?;
    h0.with_value(|m| check_h0(m, grid[0]))??;
    let stats = Rc::new(Cell::new(SolveStats::default()));
    let backward = Rc::new(Cell::new(None));
    let op = AdjointOp {
        f: f.clone(),
        grid,
        opts: opts.clone(),
        forward_stats: stats.clone(),
        backward_stats: backward.clone(),
    };
    let mut inputs = vec![h0, row];
    inputs.extend_from_slice(params);
    // The node's outputs are h(t_1..t_n); h(t_0) is h0 itself.
    let mut outputs = vec![h0];
    outputs.extend(tape.custom(op, &inputs).map_err(Error::from_tape)?);
    Ok(Solution {
        outputs,
        stats: stats.get(),
        backward: Some(backward),
    })
}

/// The opaque node. Inputs: `[h0, t (1×n), θ…]`; outputs: `h(t_1), …, h(t_n)`.
struct AdjointOp<F> {
    f: F,
    grid: Vec<f64>,
    opts: Options,
    forward_stats: Rc<Cell<SolveStats>>,
    backward_stats: Rc<Cell<Option<SolveStats>>>,
}

impl<T: Scalar, F: Dynamics<T> + Clone + 'static> CustomOp<T> for AdjointOp<F> {
    fn name(&self) -> &str {
        "odeint_adjoint"
    }

    fn forward(
        &mut self,
        inputs: &[&DMatrix<T>],
    ) -> std::result::Result<Vec<DMatrix<T>>, BoxError> {
        let params: Vec<DMatrix<T>> = inputs[2..].iter().map(|p| (*p).clone()).collect();
        let times: Vec<T> = inputs[1].iter().copied().collect();
        let (mut outputs, stats) = solve(&self.f, inputs[0], &times, &params, &self.opts)?;
        self.forward_stats.set(stats);
        outputs.remove(0);
        Ok(outputs)
    }

    fn vjp(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> std::result::Result<Vec<Option<DMatrix<T>>>, BoxError> {
        let (grads, stats) = self.backward(inputs, outputs, cotangents)?;
        self.backward_stats.set(Some(stats));
        Ok(grads)
    }

    fn held_bytes(&self) -> usize {
        // The grid; the outputs are the node's output values, counted by the tape.
        self.grid.len() * std::mem::size_of::<f64>()
    }
}

impl<F> AdjointOp<F> {
    fn backward_controller(&self, n_params: usize) -> Controller {
        let o = &self.opts;
        let method = o.adjoint_method.unwrap_or(o.method);
        // Components: [h, a, a_θ (n_params), a_t].
        let (norm, mask) = match &o.adjoint_norm {
            AdjointNorm::Full => (Norm::MaxRms, None),
            AdjointNorm::Seminorm => {
                let mut mask = vec![true; n_params + 3];
                mask[2..2 + n_params].iter_mut().for_each(|m| *m = false);
                (Norm::MaxRms, Some(mask))
            }
            AdjointNorm::Custom(f) => (Norm::Custom(f.clone()), None),
        };
        Controller {
            tableau: method,
            rtol: o.adjoint_rtol.unwrap_or(o.rtol),
            atol: o.adjoint_atol.unwrap_or(o.atol),
            fixed_step: if method.b_error.is_none() {
                o.adjoint_step_size.or(o.step_size)
            } else {
                None
            },
            norm,
            mask,
            ..forward_controller(o)
        }
    }
}

impl<F> AdjointOp<F> {
    /// The backward pass of the design notes: for i = n … 1, add g_i to a, reset h to h_i,
    /// record dL/dt_i = f(t_i, h_i)·g_i, integrate [h, a, a_θ, a_t] from t_i to t_{i−1}.
    /// With `adjoint_stop_at_all_outputs` off, times without a cotangent are stepped through.
    fn backward<T: Scalar>(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
    ) -> Result<(Vec<Option<DMatrix<T>>>, SolveStats)>
    where
        F: Dynamics<T>,
    {
        let n = self.grid.len();
        let n_params = inputs.len() - 2;
        let shape = inputs[0].shape();
        let ctl = self.backward_controller(n_params);

        // The local tape records one evaluation of f at a time for its VJPs.
        let local = Tape::new();
        let params: Vec<Var<'_, T>> = inputs[2..]
            .iter()
            .map(|p| local.var((*p).clone()))
            .collect();
        let mut sys = AugmentedSystem {
            f: &self.f,
            local: &local,
            params: &params,
            base: local.mark(),
            shape,
            nfe: 0,
        };

        let zeros = |m: &DMatrix<T>| DMatrix::zeros(m.nrows(), m.ncols());
        let mut a = zeros(inputs[0]);
        let mut a_theta: Vec<DMatrix<T>> = inputs[2..].iter().map(|p| zeros(p)).collect();
        let mut s = T::zero();
        let mut grad_t = DMatrix::zeros(1, n);
        let mut stats = SolveStats::default();
        let mut dt = None;

        // Where the backward solve stops (h is reset, a jumps): t_0, every output time whose
        // output receives a cotangent, and by default (`adjoint_stop_at_all_outputs`) all.
        // Output i ≥ 1 is the node's output i − 1; h(t_0) = h0 takes its cotangent directly.
        let g = |i: usize| {
            if i == 0 {
                None
            } else {
                cotangents[i - 1].as_ref()
            }
        };
        let h = |i: usize| if i == 0 { inputs[0] } else { outputs[i - 1] };
        let stops: Vec<usize> = (0..n)
            .filter(|&i| i == 0 || self.opts.adjoint_stop_at_all_outputs || g(i).is_some())
            .collect();
        let scratch = Tape::new();
        let _no_grad = scratch.no_grad();
        for w in stops.windows(2).rev() {
            let (j, i) = (w[0], w[1]);
            let (ti, tj) = (self.grid[i], self.grid[j]);
            if let Some(g) = g(i) {
                a += g;
            }
            let t_base = scratch.constant(DMatrix::from_element(1, 1, T::cst(ti)));
            let t_end = scratch.constant(DMatrix::from_element(1, 1, T::cst(tj)));
            let mut y: State<'_, T> = Vec::with_capacity(n_params + 3);
            // Reset h to the stored forward value: backward reconstruction drifts.
            y.push(scratch.constant(h(i).clone()));
            y.push(scratch.constant(a));
            y.extend(a_theta.into_iter().map(|m| scratch.constant(m)));
            let k0 = sys.eval(ti, t_base, &y)?;
            // dL/dt_i = f(t_i, h_i) · g_i (the direct part); a_t starts from −Σ of them.
            let direct = match g(i) {
                Some(g) => k0[0].with_value(|f| f.dot(g))?,
                None => T::zero(),
            };
            grad_t[(0, i)] = direct;
            s -= direct;
            y.push(scratch.constant(DMatrix::from_element(1, 1, s)));
            let base = scratch.mark();
            let out = [(tj, t_end)];
            let seg = Segment {
                t0: ti,
                t_base,
                y0: y,
                k0: Some(k0),
                outputs: &out,
                land: true,
                dt,
                scratch: Some(base),
            };
            let end = integrate(&scratch, &mut sys, &ctl, seg, |_, _| Ok(()))?;
            stats += end.stats;
            dt = Some(end.dt_next);
            let mut values: Vec<DMatrix<T>> = end
                .y
                .iter()
                .map(|v| v.value())
                .collect::<ad_core::Result<_>>()?;
            s = values[n_params + 2][(0, 0)];
            a_theta = values.drain(2..2 + n_params).collect();
            a = values.swap_remove(1);
            scratch.reset()?;
        }
        grad_t[(0, 0)] = s;
        stats.nfe = sys.nfe;
        let mut grads = Vec::with_capacity(inputs.len());
        grads.push(Some(a));
        grads.push(Some(grad_t));
        grads.extend(a_theta.into_iter().map(Some));
        Ok((grads, stats))
    }
}

/// The augmented dynamics, in forward time:
/// `[h, a, a_θ, a_t]' = [f, −aᵀ∂f/∂h, −aᵀ∂f/∂θ, −aᵀ∂f/∂t]`.
/// One evaluation records f once on the local tape and pulls `−a` back through it.
struct AugmentedSystem<'a, 'l, T: Scalar, F> {
    f: &'a F,
    local: &'l Tape<T>,
    params: &'a [Var<'l, T>],
    base: Mark,
    shape: (usize, usize),
    nfe: usize,
}

impl<'t, T: Scalar, F: Dynamics<T>> System<'t, T> for AugmentedSystem<'_, '_, T, F> {
    /// Only h and a feed the dynamics; a_θ and a_t are pure quadratures.
    fn reads(&self, c: usize) -> bool {
        c < 2
    }

    fn eval(&mut self, t: f64, tv: Var<'t, T>, y: &[Var<'t, T>]) -> Result<State<'t, T>> {
        self.nfe += 1;
        let scratch = tv.tape();
        let h = self.local.var(y[0].value()?);
        let t_local = self.local.scalar(T::cst(t));
        let out = self.f.eval(t_local, h, self.params)?;
        check_field_output(out, self.shape, t)?;
        let neg_a = -y[1].value()?;
        let mut wrt = Vec::with_capacity(self.params.len() + 2);
        wrt.push(h);
        wrt.extend_from_slice(self.params);
        wrt.push(t_local);
        let grads = self.local.vjp_wrt(&[(out, neg_a)], &wrt)?;
        let f_value = out.value()?;
        self.local.rewind(self.base)?;
        let mut k = Vec::with_capacity(y.len());
        k.push(scratch.constant(f_value));
        k.extend(grads.into_iter().map(|g| scratch.constant(g)));
        Ok(k)
    }
}
