//! The continuous adjoints that read `h(t)` from the forward's interpolant instead of
//! integrating it backwards (CVODES; SciMLSensitivity's `InterpolatingAdjoint` and
//! `GaussAdjoint`), so nothing drifts: their node and backward pass. The strategy picks how
//! `∫ aᵀ ∂f/∂θ dt` (and `∫ aᵀ ∂f/∂t dt` for `t_0`) is formed:
//!
//! - [`Quadrature::Integrated`] (interpolating): the backward solves `[a, a_θ, a_t]`;
//! - [`Quadrature::GaussLegendre`] (gauss): the backward solves `a` alone, and after every
//!   accepted backward step adds `Σ_j w_j a(τ_j)ᵀ ∂f/∂θ(τ_j, h(τ_j))` over
//!   `⌈(p + 1)/2⌉` Gauss–Legendre nodes of the step, `a(τ_j)` from the backward step's own
//!   dense output (p the backward method's order).
//!
//! Both stop where a cotangent enters `a` (and where a re-solved stretch begins), never at
//! outputs without one, carrying the step size across stops.

use std::cell::RefCell;

use ad_core::nalgebra::DMatrix;
use ad_core::{Mark, Scalar, Tape, Var};

use crate::adjoint_vjp::{field_vjp, Wrt};
use crate::controller::Controller;
use crate::dynamics::Dynamics;
use crate::engine::{SolveStats, State, System};
use crate::error::{Error, Result};
use crate::forward::{
    check_field_output, forward_controller, forward_keeping, forward_values, planned_controller,
};
use crate::input::{direction, SolveInput};
use crate::jacobian::{jacobian_by_vjps, Jacobian};
use crate::node::NodeBackward;
use crate::options::{AdjointNorm, Norm, Options};
use crate::scheme::Scheme;
use crate::solution::Solution;
use crate::stepper::{Accepted, GridTangents, Memory, Start, Stepper};
use crate::strategy::{BackwardStats, ContinuousAdjoint, Strategy, StrategyReport};
use crate::tableau::Tableau;
use crate::trajectory::{hermite, own_interpolant, StepData, Trajectory};

/// How the parameter (and `t_0`) gradients are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Quadrature {
    /// Integrated as components of the backward solve.
    Integrated,
    /// Gauss–Legendre quadrature over each accepted backward step.
    GaussLegendre,
}

/// Record a continuous adjoint's node: the untaped forward keeps the interpolant (or
/// checkpoints), the backward solves the adjoint over it.
pub(crate) fn record<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    input: &SolveInput<'_, 't, T>,
    f: &F,
    settings: &ContinuousAdjoint,
    quadrature: Quadrature,
    strategy: &Strategy,
) -> Result<Solution<'t, T>> {
    let opts = input.opts;
    let tableau = opts.method;
    let mut values = input.values()?;
    let (forward, mut trajectory) = match settings.checkpoints {
        None => {
            let mut data = Vec::new();
            let forward = forward_values(
                f,
                &values.h0,
                &values.times,
                // The forward is their only reader: moved, not copied.
                std::mem::take(&mut values.params),
                planned_controller(opts, input.planned),
                |_, acc| {
                    data.push(StepData::of(acc, tableau)?);
                    Ok(())
                },
            )?;
            let steps = forward.steps.clone();
            (forward, Trajectory::whole(tableau, steps, data))
        }
        Some(k) => {
            let (forward, kept) =
                forward_keeping(&mut values, f, planned_controller(opts, input.planned), k)?;
            let kept = kept.into_iter().map(|c| (c.step, c.y)).collect();
            let steps = forward.steps.clone();
            (forward, Trajectory::checkpointed(tableau, steps, kept))
        }
    };
    if let Some(y) = forward.last.first() {
        // A Hermite interpolant of the last step reads (y_N, F(t_N, y_N)); the backward
        // evaluates F.
        trajectory.set_end_state(y.clone());
    }
    let n_steps = forward.steps.len();
    let interpolant = match tableau.interpolant {
        Some(_) => format!(
            "{}'s own interpolant ({} stages)",
            tableau.name,
            tableau.c.len()
        ),
        None => "a cubic Hermite".into(),
    };
    let report = StrategyReport {
        name: strategy.name(),
        stored_states: match settings.checkpoints {
            None => n_steps,
            Some(_) => trajectory.stretch_starts().len() + 1,
        },
        reason: match settings.checkpoints {
            None => format!("the dense output of all {n_steps} steps kept ({interpolant}); h read from it, not integrated"),
            Some(k) => format!(
                "{} of {n_steps} step start states kept in {k} slots; each stretch re-solved once in the backward for {interpolant}",
                trajectory.stretch_starts().len() + 1
            ),
        },
    };
    let op = InterpolatedOp {
        f: f.clone(),
        grid: values.grid,
        opts: opts.clone(),
        settings: settings.clone(),
        quadrature,
        first_output: forward.first_output.clone(),
        trajectory: RefCell::new(trajectory),
    };
    input.record_node(values.row, forward, op, report)
}

/// The node's backward: the forward's interpolant and the adjoint's settings.
struct InterpolatedOp<T: Scalar, F> {
    f: F,
    grid: Vec<f64>,
    opts: Options,
    settings: ContinuousAdjoint,
    quadrature: Quadrature,
    first_output: Vec<usize>,
    trajectory: RefCell<Trajectory<T>>,
}

impl<T: Scalar, F: Dynamics<T>> NodeBackward<T> for InterpolatedOp<T, F> {
    fn name(&self) -> &'static str {
        match self.quadrature {
            Quadrature::Integrated => "odeint_interpolating_adjoint",
            Quadrature::GaussLegendre => "odeint_gauss_adjoint",
        }
    }

    fn backward(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
    ) -> Result<(Vec<Option<DMatrix<T>>>, BackwardStats)> {
        let mut trajectory = self.trajectory.borrow_mut();
        self.solve(&mut trajectory, inputs, outputs, &cotangents)
    }

    fn grid(&self) -> &[f64] {
        &self.grid
    }

    fn held_bytes(&self) -> usize {
        self.trajectory.borrow().held_bytes()
            + self.first_output.len() * std::mem::size_of::<usize>()
            + self.grid.len() * std::mem::size_of::<f64>()
    }
}

/// Gauss–Legendre nodes and weights on [0, 1], for 1 to 5 nodes.
fn gauss_legendre(nodes: usize) -> (&'static [f64], &'static [f64]) {
    const S3: f64 = 0.288_675_134_594_812_9; // √3 / 6
    const S15: f64 = 0.387_298_334_620_741_7; // √15 / 10
    match nodes {
        0 | 1 => (&[0.5], &[1.0]),
        2 => (&[0.5 - S3, 0.5 + S3], &[0.5, 0.5]),
        3 => (
            &[0.5 - S15, 0.5, 0.5 + S15],
            &[5.0 / 18.0, 4.0 / 9.0, 5.0 / 18.0],
        ),
        4 => (
            &[
                0.069_431_844_202_973_71,
                0.330_009_478_207_571_9,
                0.669_990_521_792_428_1,
                0.930_568_155_797_026_3,
            ],
            &[
                0.173_927_422_568_726_9,
                0.326_072_577_431_273_1,
                0.326_072_577_431_273_1,
                0.173_927_422_568_726_9,
            ],
        ),
        _ => (
            &[
                0.046_910_077_030_668,
                0.230_765_344_947_158_5,
                0.5,
                0.769_234_655_052_841_5,
                0.953_089_922_969_332,
            ],
            &[
                0.118_463_442_528_094_5,
                0.239_314_335_249_683_2,
                0.284_444_444_444_444_4,
                0.239_314_335_249_683_2,
                0.118_463_442_528_094_5,
            ],
        ),
    }
}

impl<T: Scalar, F: Dynamics<T>> InterpolatedOp<T, F> {
    fn backward_method(&self) -> &'static Tableau {
        self.settings.method.unwrap_or(self.opts.method)
    }

    fn backward_controller(&self, n_params: usize) -> Controller {
        let (o, b) = (&self.opts, &self.settings);
        let method = self.backward_method();
        let components = match self.quadrature {
            Quadrature::Integrated => n_params + 2,
            Quadrature::GaussLegendre => 1,
        };
        let (norm, mask) = match &b.norm {
            AdjointNorm::Full => (Norm::MaxRms, None),
            AdjointNorm::Seminorm => {
                let mut mask = vec![false; components];
                mask[0] = true;
                (Norm::MaxRms, Some(mask))
            }
            AdjointNorm::Custom(f) => (Norm::Custom(f.clone()), None),
        };
        Controller {
            tableau: method,
            rtol: b.rtol.unwrap_or(o.rtol),
            atol: b.atol.unwrap_or(o.atol),
            fixed_step: if method.b_error.is_none() || (b.method.is_none() && o.constant_steps) {
                b.step_size.or(o.step_size)
            } else {
                None
            },
            norm,
            mask,
            first_step: None,
            scheme: Scheme::of_tableau(method),
            ..forward_controller(o)
        }
    }

    /// The backward pass: from the latest output with a cotangent back to t_0, stopping
    /// where a cotangent enters `a` (recording `dL/dt_i = f(t_i, h_i)·g_i`) and where a
    /// re-solved stretch begins.
    fn solve(
        &self,
        trajectory: &mut Trajectory<T>,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: &[Option<DMatrix<T>>],
    ) -> Result<(Vec<Option<DMatrix<T>>>, BackwardStats)> {
        let n = self.grid.len();
        let n_params = inputs.len() - 2;
        let shape = inputs[0].shape();
        let dir = direction(&self.grid);
        let size = std::mem::size_of::<T>();
        let t0 = inputs[1][0];
        let params_values: Vec<DMatrix<T>> = inputs[2..].iter().map(|p| (*p).clone()).collect();
        let whole = trajectory.is_whole();
        if !whole {
            trajectory.set_h0(inputs[0].clone());
        }
        let local = Tape::new();
        let local_origin = local.mark();
        let params: Vec<Var<'_, T>> = params_values.iter().map(|p| local.var(p.clone())).collect();
        let mut stats = BackwardStats::default();
        let mut direct_nfe = 0;
        if let Some(y) = trajectory.end_state() {
            // F(t_N, y_N) for the last step's Hermite interpolant.
            let _no_grad = local.no_grad();
            let mark = local.mark();
            let t_n = self.grid[n - 1];
            let tv = local.constant(DMatrix::from_element(1, 1, inputs[1][n - 1]));
            let h = local.constant(y);
            let out = self.f.eval(tv, h, &params)?;
            check_field_output(out, shape, t_n)?;
            let value = out.value()?;
            local.rewind(mark)?;
            direct_nfe += 1;
            trajectory.finish_end(value);
        }

        let g = |i: usize| {
            if i == 0 {
                None
            } else {
                cotangents[i - 1].as_ref()
            }
        };
        let last = (1..n).rev().find(|&i| g(i).is_some()).unwrap_or(0);
        // Stops: t_0, outputs with a cotangent up to the latest, stretch starts before it.
        let mut stops: Vec<(f64, Option<usize>)> = (0..=last)
            .filter(|&i| i == 0 || g(i).is_some())
            .map(|i| (self.grid[i], Some(i)))
            .collect();
        for t in trajectory.stretch_starts() {
            if (t - self.grid[last]) * dir < 0.0 && !stops.iter().any(|s| s.0 == t) {
                stops.push((t, None));
            }
        }
        stops.sort_by(|a, b| ((a.0 - b.0) * dir).total_cmp(&0.0));

        let ctl = self.backward_controller(n_params);
        let (nodes, weights) = gauss_legendre((ctl.tableau.order as usize).div_ceil(2).max(1));
        let zeros = |m: &DMatrix<T>| DMatrix::zeros(m.nrows(), m.ncols());
        let mut a = zeros(inputs[0]);
        let mut a_theta: Vec<DMatrix<T>> = inputs[2..].iter().map(|p| zeros(p)).collect();
        let mut s = T::zero();
        let mut grad_t = DMatrix::zeros(1, n);
        let mut solve_stats = SolveStats::default();
        let mut dt = None;
        let scratch = Tape::new();
        let _no_grad = scratch.no_grad();
        // What the pass holds off the tapes besides a re-solved stretch: the gradient
        // accumulators (a, a_θ, the grid's), the error estimate (f64s over the counted
        // components) and, for the quadrature, the backward step's dense-output data.
        let param_len: usize = inputs[2..].iter().map(|p| p.len()).sum();
        let state_len = inputs[0].len();
        let counted = match (self.quadrature, &ctl.mask) {
            (Quadrature::Integrated, None) => state_len + param_len + 1,
            _ => state_len,
        };
        // Beside the VJP's own θ-sized accumulation: the quadrature's step data (a₀, the
        // stages, a(τ)) and its θ-sized sum over the nodes, or the engine's running sum of
        // the a_θ stages (`crate::engine`'s quadratures).
        let quadrature_data = match self.quadrature {
            Quadrature::GaussLegendre => (ctl.tableau.c.len() + 3) * state_len + 2 * param_len,
            Quadrature::Integrated => 2 * param_len,
        };
        let accumulators = (state_len + param_len + n + quadrature_data) * size
            + counted * std::mem::size_of::<f64>();
        let mut peak = 0;
        for w in stops.windows(2).rev() {
            let (to, from) = (w[0], w[1]);
            stats.segments += 1;
            // The stretch this segment lies in (its midpoint's).
            trajectory.load_around(
                0.5 * (to.0 + from.0),
                &self.f,
                &params_values,
                t0,
                &self.opts,
            )?;
            // A stretch re-solved now is the pass's own; kept dense output is held bytes.
            let stretch = if whole { 0 } else { trajectory.loaded_bytes() };
            // The re-solve itself held θ's copy, the stretch and a step's stages.
            let resolving = param_len * size + (ctl.tableau.c.len() + 2) * state_len * size;
            peak = peak.max(accumulators + stretch + if whole { 0 } else { resolving });
            let time_of = |stop: (f64, Option<usize>)| match stop.1 {
                Some(i) => inputs[1][i],
                None => t0 + T::constant(stop.0 - self.grid[0]),
            };
            let mut sys = AdjointSystem {
                f: &self.f,
                local: &local,
                params: &params,
                base: local.mark(),
                shape,
                param_len,
                nfe: 0,
                trajectory: &*trajectory,
                quadrature: self.quadrature,
                memory: MemoryAccount {
                    off_tape: accumulators + stretch,
                    scratch_origin: scratch.mark(),
                    local_origin,
                    peak,
                },
            };
            if let Some(i) = from.1 {
                if let Some(gi) = g(i) {
                    a += gi;
                    let fi = sys.field_value(from.0, time_of(from), outputs[i - 1])?;
                    let direct = fi.dot(gi);
                    grad_t[(0, i)] = direct;
                    s -= direct;
                }
            }
            let t_base = scratch.constant(DMatrix::from_element(1, 1, time_of(from)));
            let base = scratch.mark();
            let mut y: State<'_, T> = vec![scratch.constant(a.clone())];
            if self.quadrature == Quadrature::Integrated {
                y.extend(a_theta.iter().map(|m| scratch.constant(m.clone())));
                y.push(scratch.constant(DMatrix::from_element(1, 1, s)));
            }
            let start = Start {
                t0: from.0,
                t_base,
                t: from.0,
                y,
                k0: None,
                dt,
                dir: -dir,
                tangents: GridTangents::none(),
            };
            let mut stepper = Stepper::new(
                &scratch,
                &mut sys,
                ctl.clone(),
                Memory::Scratch(base),
                start,
            )?;
            let end = loop {
                let mut acc = stepper.step(to.0, true)?;
                if self.quadrature == Quadrature::GaussLegendre {
                    let (dth, ds) = gauss_step(&mut stepper, &mut acc, nodes, weights)?;
                    for (acc_t, d) in a_theta.iter_mut().zip(dth) {
                        *acc_t += d;
                    }
                    s += ds;
                }
                if acc.record.landed && acc.record.t1 == to.0 {
                    break acc;
                }
                stepper.advance(acc, &[])?;
            };
            solve_stats += stepper.stats;
            dt = Some(end.dt_carry);
            let values: Vec<DMatrix<T>> = end
                .step
                .y1
                .iter()
                .map(|v| v.value())
                .collect::<ad_core::Result<_>>()?;
            drop(end);
            let nfe = stepper.sys.nfe;
            peak = stepper.sys.memory.peak;
            drop(stepper);
            stats.nfe += nfe;
            let mut values = values.into_iter();
            a = values.next().unwrap_or_else(|| zeros(inputs[0]));
            if self.quadrature == Quadrature::Integrated {
                for acc_t in a_theta.iter_mut() {
                    if let Some(v) = values.next() {
                        *acc_t = v;
                    }
                }
                if let Some(v) = values.next() {
                    s = v[(0, 0)];
                }
            }
            if !ad_core::all_finite(&a) {
                return Err(Error::NonFinite {
                    what: "adjoint",
                    t: to.0,
                });
            }
            scratch.reset()?;
        }
        grad_t[(0, 0)] = s;
        stats.holding(peak);
        stats.nfe += direct_nfe + trajectory.resolve_nfe;
        stats.recomputed_steps = trajectory.resolved_steps;
        stats.accepted = solve_stats.accepted;
        stats.rejected = solve_stats.rejected;
        let mut grads = Vec::with_capacity(inputs.len());
        grads.push(Some(a));
        grads.push(Some(grad_t));
        grads.extend(a_theta.into_iter().map(Some));
        Ok((grads, stats))
    }
}

/// After an accepted backward step of the Gauss adjoint: `Σ_j w_j a(τ_j)ᵀ[∂f/∂θ, ∂f/∂t]`
/// over the step's Gauss–Legendre nodes, times the step's length in the forward direction
/// (the backward step's `−dt`), with `a(τ_j)` from the backward step's dense output.
fn gauss_step<'s, T: Scalar, F: Dynamics<T>>(
    stepper: &mut Stepper<'s, T, &mut AdjointSystem<'_, '_, T, F>>,
    acc: &mut Accepted<'s, T>,
    nodes: &[f64],
    weights: &[f64],
) -> Result<(Vec<DMatrix<T>>, T)> {
    let tab = stepper.ctl.tableau;
    let dt = acc.record.dt;
    let a0 = acc.step.y0[0].value()?;
    let k: Vec<DMatrix<T>> = acc
        .step
        .k
        .iter()
        .map(|k| k[0].value())
        .collect::<ad_core::Result<_>>()?;
    let hermite_end = if tab.interpolant.is_none() {
        let f1 = stepper.first_stage_after(acc)?;
        Some((acc.step.y1[0].value()?, f1[0].value()?))
    } else {
        None
    };
    let mut d_theta: Option<Vec<DMatrix<T>>> = None;
    let mut d_s = T::zero();
    for (&x, &w) in nodes.iter().zip(weights) {
        let a_tau = match (tab.interpolant, &hermite_end) {
            (Some(p), _) => own_interpolant(p, dt, x, &a0, &k),
            (None, Some((a1, f1))) => hermite(dt, x, &a0, &k[0], a1, f1),
            (None, None) => return Err(internal("no dense output for the Gauss quadrature")),
        };
        let tau = acc.record.t + x * dt;
        let weight = T::constant(-dt * w);
        let (g_theta, g_t) = stepper.sys.pull_back_params(tau, acc, x * dt, &a_tau)?;
        d_s += g_t * weight;
        match &mut d_theta {
            None => d_theta = Some(g_theta.into_iter().map(|g| g * weight).collect()),
            Some(acc_theta) => {
                for (acc_t, g) in acc_theta.iter_mut().zip(g_theta) {
                    *acc_t += g * weight;
                }
            }
        }
    }
    Ok((d_theta.unwrap_or_default(), d_s))
}

/// The adjoint's dynamics over the forward's interpolant, in forward time:
/// `a' = −aᵀ ∂f/∂h(t, h(t))`, with `[a_θ, a_t]' = −aᵀ[∂f/∂θ, ∂f/∂t]` when integrated.
/// One evaluation records f once on the local tape and pulls `−a` back through it.
struct AdjointSystem<'a, 'l, T: Scalar, F> {
    f: &'a F,
    local: &'l Tape<T>,
    params: &'a [Var<'l, T>],
    base: Mark,
    shape: (usize, usize),
    /// Entries of θ.
    param_len: usize,
    nfe: usize,
    trajectory: &'a Trajectory<T>,
    quadrature: Quadrature,
    /// The account of [`BackwardStats::peak_bytes`]: what the pass holds off this system
    /// (accumulators, error estimate, a re-solved stretch), the scratch tape's start, the
    /// local tape's start (before θ was copied onto it) and the most held so far.
    memory: MemoryAccount,
}

/// The backward pass's memory account, sampled where a VJP is about to run.
#[derive(Clone, Copy)]
struct MemoryAccount {
    off_tape: usize,
    scratch_origin: Mark,
    local_origin: Mark,
    peak: usize,
}

impl MemoryAccount {
    /// The bytes held with an evaluation recorded on `local` (since `base`) and its VJP about
    /// to run: both tapes, the VJP's cotangents (about as large as what it recorded), the
    /// gradients it returns and the seed (`entries` numbers), and what is held off the tapes.
    fn sample<T: Scalar>(
        &mut self,
        local: &Tape<T>,
        base: Mark,
        scratch: &Tape<T>,
        entries: usize,
    ) {
        let held = local.bytes_since(self.local_origin)
            + local.bytes_since(base)
            + scratch.bytes_since(self.scratch_origin)
            + entries * std::mem::size_of::<T>()
            + self.off_tape;
        self.peak = self.peak.max(held);
    }
}

impl<T: Scalar, F: Dynamics<T>> AdjointSystem<'_, '_, T, F> {
    /// Entries of the gradients a VJP to `wrt` returns.
    fn outputs(&self, wrt: Wrt) -> usize {
        let state = self.shape.0 * self.shape.1;
        match wrt {
            Wrt::State => state,
            Wrt::All => state + self.param_len + 1,
            Wrt::ParamsAndTime => self.param_len + 1,
        }
    }

    /// `f(t, h)` as values (the direct time gradient at an output).
    fn field_value(&mut self, t: f64, tv: T, h: &DMatrix<T>) -> Result<DMatrix<T>> {
        self.nfe += 1;
        let _no_grad = self.local.no_grad();
        let tv = self.local.constant(DMatrix::from_element(1, 1, tv));
        let h = self.local.constant(h.clone());
        let out = self.f.eval(tv, h, self.params)?;
        check_field_output(out, self.shape, t)?;
        let value = out.value()?;
        self.local.rewind(self.base)?;
        Ok(value)
    }

    /// `aᵀ[∂f/∂θ, ∂f/∂t]` at `(τ, h(τ))`, the time taken `shift` after the step's start.
    fn pull_back_params(
        &mut self,
        tau: f64,
        acc: &Accepted<'_, T>,
        shift: f64,
        a: &DMatrix<T>,
    ) -> Result<(Vec<DMatrix<T>>, T)> {
        self.nfe += 1;
        let t_value = acc.t_var.value()?[(0, 0)] + T::constant(shift);
        let out = self.outputs(Wrt::ParamsAndTime) + self.shape.0 * self.shape.1;
        let (local, base, memory) = (self.local, self.base, &mut self.memory);
        let scratch = acc.t_var.tape();
        let vjp = field_vjp(
            self.f,
            self.local,
            self.base,
            self.params,
            (tau, t_value),
            self.trajectory.at(tau)?,
            a.clone(),
            Wrt::ParamsAndTime,
            || memory.sample(local, base, scratch, out),
        )?;
        let mut grads = vjp.grads;
        let g_t = grads.pop().map_or(T::zero(), |g| g[(0, 0)]);
        Ok((grads, g_t))
    }
}

impl<'t, T: Scalar, F: Dynamics<T>> System<'t, T> for AdjointSystem<'_, '_, T, F> {
    /// Only `a` feeds the dynamics; `a_θ` and `a_t` are quadratures.
    fn reads(&self, c: usize) -> bool {
        c == 0
    }

    /// `∂(−aᵀ ∂f/∂h)/∂a = −Jᵀ` with `J = ∂f/∂h` at `(t, h(t))` from the interpolant: an
    /// implicit backward method solves the adjoint's stiffness as the forward solved `f`'s.
    fn jacobian(
        &mut self,
        t: f64,
        tv: Var<'t, T>,
        _y: &[Var<'t, T>],
    ) -> Result<Jacobian<T::Primitive>> {
        let params: Vec<DMatrix<T>> = self
            .params
            .iter()
            .map(|p| p.value())
            .collect::<ad_core::Result<_>>()?;
        let h = self.trajectory.at(t)?;
        let (jac, sweeps) = jacobian_by_vjps(self.f, t, &tv.value()?, &h, &params)?;
        self.nfe += sweeps;
        Ok(jac.negated_transpose())
    }

    fn eval(&mut self, t: f64, tv: Var<'t, T>, y: &[Var<'t, T>]) -> Result<State<'t, T>> {
        self.nfe += 1;
        let scratch = tv.tape();
        let wrt = match self.quadrature {
            Quadrature::Integrated => Wrt::All,
            Quadrature::GaussLegendre => Wrt::State,
        };
        let out = self.outputs(wrt) + self.shape.0 * self.shape.1;
        let (local, base, memory) = (self.local, self.base, &mut self.memory);
        let vjp = field_vjp(
            self.f,
            self.local,
            self.base,
            self.params,
            (t, tv.value()?[(0, 0)]),
            self.trajectory.at(t)?,
            -y[0].value()?,
            wrt,
            || memory.sample(local, base, scratch, out),
        )?;
        Ok(vjp.grads.into_iter().map(|g| scratch.constant(g)).collect())
    }
}

fn internal(message: &str) -> Error {
    Error::Tape(ad_core::Error::InvalidArgument {
        op: "odeint_interpolated_adjoint",
        message: format!("{message}; this is a bug in the ode crate"),
    })
}
