//! [`Strategy::Reversible`]: the exact gradient of a reversible solve in O(d + |θ|) memory.
//!
//! The forward runs untaped over a reversible scheme (`crate::scheme`) and keeps only the
//! final pair `(y_N, z_N)` and the accepted step sizes. The backward walks the steps latest
//! first; each step's inverse evaluates the base method at exactly the points the forward
//! step did, so recording those evaluations on a local tape both reconstructs the step's
//! start `(y₀, z₀)` and gives its VJP:
//!
//! - coupled (McCallum & Foster): `A = Φ_{−h}(t₁, y₁)` taped from `y₁`, `z₀ = z₁ + A − y₁`;
//!   `B = Φ_h(t₀, z₀)` taped from `z₀`, `y₀ = (y₁ − B)/λ + z₀`. With cotangents `ȳ₁, z̄₁`:
//!   `ȳ₁' = ȳ₁ + z̄₁ + A_yᵀ(−z̄₁)`, then `ȳ₀ = λ ȳ₁'`, `z̄₀ = z̄₁ − λ ȳ₁' + B_zᵀ ȳ₁'`;
//! - reversible Heun: `f₁ = f(t₁, z₁)` taped from `z₁`, `z₀ = 2y₁ − z₁ − dt f₁`;
//!   `f₀ = f(t₀, z₀)` taped from `z₀`, `y₀ = y₁ − dt (f₀ + f₁)/2`. With cotangents:
//!   `z̄₁' = z̄₁ + f_zᵀ(dt ȳ₁ / 2)`, `ȳ₀ = ȳ₁ + 2 z̄₁'`, `z̄₀ = −z̄₁' + f_zᵀ(dt ȳ₁/2 + dt z̄₁')`.
//!
//! θ and the grid collect the same VJPs. The reconstruction is exact but for rounding, which
//! the inverse amplifies on expanding dynamics: [`BackwardStats::reconstruction`] compares
//! the reconstructed `y` with the stored outputs and `h0`.

use ad_core::nalgebra::DMatrix;
use ad_core::{Mark, Scalar, Tape, Var};

use crate::controller::StepRecord;
use crate::dynamics::Dynamics;
use crate::engine::{rk_step, Method, Time};
use crate::error::{Error, Result};
use crate::forward::{forward_values, planned_controller, FieldSystem};
use crate::input::SolveInput;
use crate::node::NodeBackward;
use crate::scheme::{backward_base_step, coupled_dense_output, step_end, Scheme};
use crate::solution::Solution;
use crate::stepper::time_var;
use crate::strategy::{BackwardStats, Drift, Strategy, StrategyReport};
use crate::tableau::Tableau;

/// The reversible strategy over `opts`, whose scheme must be reversible (the dispatcher
/// resolves the coupling into the options).
pub(crate) fn reversible<'t, T: Scalar, F: Dynamics<T> + Clone + 'static>(
    input: &SolveInput<'_, 't, T>,
    f: &F,
    strategy: &Strategy,
    reason: String,
) -> Result<Solution<'t, T>> {
    let opts = input.opts;
    let scheme = Scheme::of(opts);
    if !scheme.is_reversible() {
        return Err(internal(
            "the reversible strategy was handed a plain scheme",
        ));
    }
    let mut values = input.values()?;
    let forward = forward_values(
        f,
        &values.h0,
        &values.times,
        // The forward is their only reader: moved, not copied.
        std::mem::take(&mut values.params),
        planned_controller(opts, input.planned),
        |_, _| Ok(()),
    )?;
    let report = StrategyReport {
        name: strategy.name(),
        stored_states: 1,
        reason: if reason.is_empty() {
            format!(
                "{} steps of {}; only the final (y, z) and the step sizes kept, every state reconstructed by inverting the steps",
                forward.steps.len(),
                scheme.describe(opts.method)
            )
        } else {
            reason
        },
    };
    let op = ReversibleOp {
        f: f.clone(),
        grid: values.grid,
        tableau: opts.method,
        scheme,
        steps: forward.steps.clone(),
        first_output: forward.first_output.clone(),
        last: forward.last.clone(),
    };
    input.record_node(values.row, forward, op, report)
}

/// The reversible node's backward: the final pair and the accepted steps.
struct ReversibleOp<T: Scalar, F> {
    f: F,
    grid: Vec<f64>,
    tableau: &'static Tableau,
    scheme: Scheme,
    steps: Vec<StepRecord>,
    first_output: Vec<usize>,
    /// `(y_N, z_N)`.
    last: Vec<DMatrix<T>>,
}

impl<T: Scalar, F: Dynamics<T>> NodeBackward<T> for ReversibleOp<T, F> {
    fn name(&self) -> &'static str {
        "odeint_reversible"
    }

    fn backward(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
    ) -> Result<(Vec<Option<DMatrix<T>>>, BackwardStats)> {
        let local = Tape::new();
        let mut pass = Pass::new(&local, inputs);
        let mut y = self.last[0].clone();
        let mut z = self.last[1].clone();
        let n_out = self.grid.len() - 1;
        let dense = self.scheme.has_dense_output(self.tableau);
        for k in (0..self.steps.len()).rev() {
            // As the forward emitted them: at the step's end where it landed (every output
            // without a dense output, else the last), from the dense output otherwise.
            let at_end = |i: &usize| !dense || (self.steps[k].landed && i + 1 == n_out);
            let (landed, inside): (Vec<usize>, Vec<usize>) =
                (self.first_output[k]..self.first_output[k + 1]).partition(at_end);
            pass.seed_outputs(self, k, &z, &landed, &cotangents)?;
            let (y0, z0) = match self.scheme {
                Scheme::Coupled(coupling) => {
                    let stored = (&cotangents[..], outputs);
                    pass.coupled(self, k, (&y, &z), coupling, &inside, stored)?
                }
                Scheme::ReversibleHeun => pass.heun(self, k, &y, &z)?,
                Scheme::Explicit | Scheme::DiagonallyImplicit => {
                    return Err(internal("a plain scheme in the reversible node"))
                }
            };
            let t0 = self.steps[k].t;
            let finite = ad_core::all_finite(&y0) && ad_core::all_finite(&z0);
            if !finite {
                return Err(Error::ReconstructionFailed { t: t0 });
            }
            // The output emitted by the step before lands on this step's start.
            if k > 0 {
                let before = self.first_output[k - 1]..self.first_output[k];
                if let Some(i) = before.last().filter(|&i| self.grid[i + 1] == t0) {
                    pass.stats.reconstruction.push(Drift {
                        t: t0,
                        relative: relative_error(&y0, outputs[i]),
                    });
                }
            } else {
                let worst = relative_error(&y0, inputs[0]).max(relative_error(&z0, inputs[0]));
                pass.stats.reconstruction.push(Drift {
                    t: t0,
                    relative: worst,
                });
            }
            y = y0;
            z = z0;
        }
        Ok(pass.finish())
    }

    fn grid(&self) -> &[f64] {
        &self.grid
    }

    fn held_bytes(&self) -> usize {
        let size = std::mem::size_of::<T>();
        self.last.iter().map(|m| m.len() * size).sum::<usize>()
            + self.steps.len() * std::mem::size_of::<StepRecord>()
            + self.first_output.len() * std::mem::size_of::<usize>()
            + self.grid.len() * std::mem::size_of::<f64>()
    }
}

/// The backward pass in progress: the local tape (θ and the grid recorded once, below
/// `base`), the cotangents of the current step's end pair and the gradients so far.
struct Pass<'l, T: Scalar> {
    local: &'l Tape<T>,
    origin: Mark,
    base: Mark,
    params: Vec<Var<'l, T>>,
    row: Var<'l, T>,
    y_bar: DMatrix<T>,
    z_bar: DMatrix<T>,
    theta_bar: Vec<DMatrix<T>>,
    row_bar: DMatrix<T>,
    shape: (usize, usize),
    stats: BackwardStats,
}

impl<'l, T: Scalar> Pass<'l, T> {
    fn new(local: &'l Tape<T>, inputs: &[&DMatrix<T>]) -> Self {
        let zeros = |m: &DMatrix<T>| DMatrix::zeros(m.nrows(), m.ncols());
        let origin = local.mark();
        let params = inputs[2..]
            .iter()
            .map(|p| local.var((*p).clone()))
            .collect();
        let row = local.var(inputs[1].clone());
        Self {
            local,
            origin,
            base: local.mark(),
            params,
            row,
            y_bar: zeros(inputs[0]),
            z_bar: zeros(inputs[0]),
            theta_bar: inputs[2..].iter().map(|p| zeros(p)).collect(),
            row_bar: zeros(inputs[1]),
            shape: inputs[0].shape(),
            stats: BackwardStats::default(),
        }
    }

    /// The start time of step `k` as a number and a variable, as the forward formed it.
    fn start_time<F>(&self, op: &ReversibleOp<T, F>, k: usize) -> Result<Time<'l, T>> {
        let t_base = self.row.slice_cols(0, 1)?;
        let at = op.steps[k].t;
        Ok(Time {
            at,
            var: time_var(t_base, op.grid[0], at),
            step_tangent: None,
        })
    }

    /// Pull `seeds` back to `wrt` and into θ's and the grid's cotangents through the
    /// `evaluations` of f recorded; returns the cotangents of `wrt` and rewinds the local
    /// tape.
    fn pull_back(
        &mut self,
        seeds: &[(Var<'l, T>, DMatrix<T>)],
        wrt: &[Var<'l, T>],
        evaluations: usize,
    ) -> Result<Vec<DMatrix<T>>> {
        let size = std::mem::size_of::<T>();
        // Values no VJP reads (pre-activations that only a tanh consumes, stage sums) go
        // before the VJP allocates its cotangents, as the taped solve releases them.
        let outputs: Vec<Var<'l, T>> = seeds.iter().map(|(v, _)| *v).collect();
        self.local.release_unneeded(self.base, &outputs)?;
        let recorded = self.local.bytes_since(self.base);
        let state = self.shape.0 * self.shape.1 * size;
        // The local tape, the VJP's cotangents (about as large as what it reads, and one per
        // stage and stage input of the `evaluations` recorded), the four state cotangents and
        // pair values, the seeds, θ's accumulator, the VJP's own accumulation for θ and the
        // gradients it returns.
        let theta: usize = self.theta_bar.iter().map(|m| m.len()).sum::<usize>() * size;
        let held = self.local.bytes_since(self.origin)
            + recorded
            + (6 + 2 * evaluations) * state
            + seeds.len() * state
            + 3 * theta
            + 2 * self.row_bar.len() * size;
        self.stats.holding(held);
        let mut all = Vec::with_capacity(self.params.len() + 1 + wrt.len());
        all.extend_from_slice(wrt);
        all.push(self.row);
        all.extend_from_slice(&self.params);
        let mut grads = self.local.vjp_wrt(seeds, &all)?.into_iter();
        let g_wrt: Vec<DMatrix<T>> = grads.by_ref().take(wrt.len()).collect();
        if let Some(g) = grads.next() {
            self.row_bar += g;
        }
        for (acc, g) in self.theta_bar.iter_mut().zip(grads) {
            *acc += g;
        }
        self.local.rewind(self.base)?;
        Ok(g_wrt)
    }

    /// Add the cotangents of the outputs step `k` emits (at its end, where it lands): to
    /// `ȳ₁`, and through the emission `h(t_i) = y₁ + (t_i − t₁) F(t₁, z₁)` to the grid (its
    /// value part is `y₁`; on dual numbers the shift carries a tangent, pulled back through
    /// `F` as well).
    fn seed_outputs<F: Dynamics<T>>(
        &mut self,
        op: &ReversibleOp<T, F>,
        k: usize,
        z1: &DMatrix<T>,
        outs: &[usize],
        cotangents: &[Option<DMatrix<T>>],
    ) -> Result<()> {
        if outs.iter().all(|&i| cotangents[i].is_none()) {
            return Ok(());
        }
        self.local.rewind(self.base)?;
        let rec = op.steps[k];
        let t1 = rec.t1;
        let t_base = self.row.slice_cols(0, 1)?;
        let t1_var = time_var(t_base, op.grid[0], t1);
        let z_leaf = self.local.var(z1.clone());
        let mut sys = field_system(&op.f, &self.params, self.shape);
        let field = sys_eval(&mut sys, t1, t1_var, z_leaf)?;
        let nfe = sys.nfe;
        self.stats.nfe += nfe;
        let field_value = field.value()?;
        // The grid's values matter only for a tangent on it (the shift's dual part).
        let times = if ad_core::carries_derivatives::<T>() {
            Some(self.row.value()?)
        } else {
            None
        };
        let mut shift_seed: Option<DMatrix<T>> = None;
        for &i in outs {
            let Some(g) = &cotangents[i] else { continue };
            self.y_bar += g;
            let direct = field_value.dot(g);
            self.row_bar[(0, i + 1)] += direct;
            self.row_bar[(0, 0)] -= direct;
            if let Some(times) = &times {
                let shift = times[i + 1] - times[0] - T::constant(t1 - op.grid[0]);
                let s = shift_seed.get_or_insert_with(|| DMatrix::zeros(g.nrows(), g.ncols()));
                *s += g * shift;
            }
        }
        match shift_seed {
            Some(seed) => {
                let g = self.pull_back(&[(field, seed)], &[z_leaf], 1)?;
                self.z_bar += &g[0];
            }
            None => self.local.rewind(self.base)?,
        }
        Ok(())
    }

    /// Invert coupled step `k` from `(y₁, z₁)` and pull the cotangents back through it and
    /// through the dense outputs `inside` it.
    fn coupled<F: Dynamics<T>>(
        &mut self,
        op: &ReversibleOp<T, F>,
        k: usize,
        (y1, z1): (&DMatrix<T>, &DMatrix<T>),
        coupling: f64,
        inside: &[usize],
        (cotangents, outputs): (&[Option<DMatrix<T>>], &[&DMatrix<T>]),
    ) -> Result<(DMatrix<T>, DMatrix<T>)> {
        let rec = op.steps[k];
        let lambda = T::constant(coupling);
        self.stats.accepted += 1;
        // A = Φ_{−h}(t₁, y₁): z₀ = z₁ + A − y₁.
        self.local.rewind(self.base)?;
        let t0 = self.start_time(op, k)?;
        let y1_leaf = self.local.var(y1.clone());
        let mut sys = field_system(&op.f, &self.params, self.shape);
        let back = backward_base_step(
            self.local,
            &mut sys,
            op.tableau,
            step_end(t0, rec.dt),
            y1_leaf,
            rec.dt,
        )?;
        self.stats.nfe += sys.nfe;
        let z0 = back.with_value(|a| z1 + a - y1)?;
        let z_bar1 = self.z_bar.clone();
        let g_a = self.pull_back(&[(back, -&z_bar1)], &[y1_leaf], op.tableau.c.len())?;
        let y_bar1 = &self.y_bar + &z_bar1 + &g_a[0];
        // B = Φ_h(t₀, z₀): y₀ = (y₁ − B)/λ + z₀.
        let t0 = self.start_time(op, k)?;
        let z0_leaf = self.local.var(z0.clone());
        let mut sys = field_system(&op.f, &self.params, self.shape);
        let k0 = sys_eval(&mut sys, t0.at, t0.var, z0_leaf)?;
        let seeded: Vec<(usize, &DMatrix<T>)> = inside
            .iter()
            .filter_map(|&i| cotangents[i].as_ref().map(|g| (i, g)))
            .collect();
        let method = Method {
            tableau: op.tableau,
            estimate_error: false,
            error_mask: None,
            // An FSAL method's last stage enters the dense output only.
            final_stage: !seeded.is_empty(),
            tolerances: (0.0, 0.0),
            newton_blocks: 1,
        };
        let step = rk_step(
            self.local,
            &mut sys,
            method,
            t0,
            &[z0_leaf],
            vec![k0],
            rec.dt,
        )?;
        self.stats.nfe += sys.nfe;
        let ahead = step.y1[0];
        let y0 = ahead.with_value(|b| (y1 - b) / lambda + &z0)?;
        // The outputs inside the step, as the forward formed them from (y₀, z₀) and the
        // stages from z₀.
        let y0_leaf = self.local.var(y0.clone());
        let mut seeds = vec![(ahead, y_bar1.clone())];
        for (i, g) in seeded {
            let t_out = self.row.slice_cols(i + 1, 1)?;
            let pair = (y0_leaf, z0_leaf);
            let out = coupled_dense_output(
                self.local, op.tableau, coupling, t0.var, rec.dt, t_out, pair, &step.k,
            )?;
            // The reconstruction, seen where an output was stored.
            let relative = out.with_value(|v| relative_error(v, outputs[i]))?;
            self.stats.reconstruction.push(Drift {
                t: op.grid[i + 1],
                relative,
            });
            seeds.push((out, g.clone()));
        }
        let g_b = self.pull_back(&seeds, &[z0_leaf, y0_leaf], op.tableau.c.len())?;
        self.y_bar = &y_bar1 * lambda + &g_b[1];
        self.z_bar = z_bar1 - &y_bar1 * lambda + &g_b[0];
        Ok((y0, z0))
    }

    /// Invert reversible Heun step `k` from `(y₁, z₁)` and pull the cotangents back.
    fn heun<F: Dynamics<T>>(
        &mut self,
        op: &ReversibleOp<T, F>,
        k: usize,
        y1: &DMatrix<T>,
        z1: &DMatrix<T>,
    ) -> Result<(DMatrix<T>, DMatrix<T>)> {
        let rec = op.steps[k];
        let dt = T::constant(rec.dt);
        let half_dt = T::constant(0.5 * rec.dt);
        self.stats.accepted += 1;
        // f₁ = f(t₁, z₁): z₀ = 2y₁ − z₁ − dt f₁.
        self.local.rewind(self.base)?;
        let t1 = step_end(self.start_time(op, k)?, rec.dt);
        let z1_leaf = self.local.var(z1.clone());
        let mut sys = field_system(&op.f, &self.params, self.shape);
        let f1 = sys_eval(&mut sys, t1.at, t1.var, z1_leaf)?;
        self.stats.nfe += sys.nfe;
        let f1_value = f1.value()?;
        let z0 = y1 * T::constant(2.0) - z1 - &f1_value * dt;
        let seed1 = &self.y_bar * half_dt;
        let g1 = self.pull_back(&[(f1, seed1)], &[z1_leaf], 1)?;
        let z_bar1 = &self.z_bar + &g1[0];
        // f₀ = f(t₀, z₀): y₀ = y₁ − dt (f₀ + f₁)/2.
        let t0 = self.start_time(op, k)?;
        let z0_leaf = self.local.var(z0.clone());
        let mut sys = field_system(&op.f, &self.params, self.shape);
        let f0 = sys_eval(&mut sys, t0.at, t0.var, z0_leaf)?;
        self.stats.nfe += sys.nfe;
        let y0 = f0.with_value(|f0| y1 - (f0 + &f1_value) * half_dt)?;
        let seed0 = &self.y_bar * half_dt + &z_bar1 * dt;
        let g0 = self.pull_back(&[(f0, seed0)], &[z0_leaf], 1)?;
        self.y_bar = &self.y_bar + &z_bar1 * T::constant(2.0);
        self.z_bar = &g0[0] - z_bar1;
        Ok((y0, z0))
    }

    fn finish(self) -> (Vec<Option<DMatrix<T>>>, BackwardStats) {
        // z₀ = y₀ = h0.
        let mut grads = Vec::with_capacity(self.theta_bar.len() + 2);
        grads.push(Some(self.y_bar + self.z_bar));
        grads.push(Some(self.row_bar));
        grads.extend(self.theta_bar.into_iter().map(Some));
        (grads, self.stats)
    }
}

/// The counting vector-field system on the local tape.
fn field_system<'a, 'l, T: Scalar, F: Dynamics<T>>(
    f: &'a F,
    params: &'a [Var<'l, T>],
    shape: (usize, usize),
) -> FieldSystem<'a, 'l, T, F> {
    FieldSystem {
        f,
        params,
        shape,
        nfe: 0,
        work: Default::default(),
        reuse: None,
    }
}

/// One field evaluation through the counting system.
fn sys_eval<'l, T: Scalar, F: Dynamics<T>>(
    sys: &mut FieldSystem<'_, 'l, T, F>,
    t: f64,
    t_var: Var<'l, T>,
    h: Var<'l, T>,
) -> Result<Var<'l, T>> {
    use crate::engine::System;
    Ok(sys.eval(t, t_var, &[h])?[0])
}

/// `max |a − b| / max |b|` (absolute when `b` is zero).
fn relative_error<T: Scalar>(a: &DMatrix<T>, b: &DMatrix<T>) -> f64 {
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x.primal() - y.primal()).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.primal().abs()).fold(0.0, f64::max);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

fn internal(message: &str) -> Error {
    Error::Tape(ad_core::Error::InvalidArgument {
        op: "odeint_reversible",
        message: format!("{message}; this is a bug in the ode crate"),
    })
}
