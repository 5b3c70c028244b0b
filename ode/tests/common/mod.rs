//! Shared helpers of the ode integration tests: a deterministic RNG, a generic tanh-MLP
//! vector field, simple closed-form fields, and loss / gradient plumbing.
#![allow(dead_code)]

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual64;
use ad_core::{Result as TapeResult, Scalar, Tape, Var};
use ode::{odeint_with, BackwardStats, Dynamics, Options, SolveStats, Strategy};

/// SplitMix64: a tiny deterministic generator (no `rand` dependency).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform index in 0..n.
    pub fn index(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// An r×c matrix with entries uniform in [−s, s).
    pub fn matrix(&mut self, r: usize, c: usize, s: f64) -> DMatrix<f64> {
        DMatrix::from_fn(r, c, |_, _| self.range(-s, s))
    }

    /// A strictly increasing grid of `n` points starting at `t0` with gaps in [lo, hi).
    pub fn grid(&mut self, n: usize, t0: f64, lo: f64, hi: f64) -> Vec<f64> {
        let mut t = vec![t0];
        for _ in 1..n {
            let last = *t.last().unwrap();
            t.push(last + self.range(lo, hi));
        }
        t
    }
}

/// `f(t, h) = tanh([h, t] W1ᵀ + b1) W2ᵀ + b2 (− h if `decay`)`, with parameters
/// `[W1 (hidden × (dim + time)), b1 (1 × hidden), W2 (dim × hidden), b2 (1 × dim)]`.
#[derive(Clone, Copy, Debug)]
pub struct Mlp {
    /// Append `t` as an extra input column.
    pub time: bool,
    /// Subtract `h` (contracting dynamics that stay bounded over long horizons).
    pub decay: bool,
}

impl<T: Scalar> Dynamics<T> for Mlp {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (rows, _) = h.shape()?;
        let x = if self.time {
            let tb = t.broadcast(rows, 1)?;
            h.tape().concat_cols(&[h, tb])?
        } else {
            h
        };
        let z = x.matmul_t(p[0])?.add_row(p[1])?.tanh();
        let out = z.matmul_t(p[2])?.add_row(p[3])?;
        if self.decay {
            out.sub(h)
        } else {
            Ok(out)
        }
    }
}

impl Mlp {
    /// Time-dependent, not contracting.
    pub const TIMED: Mlp = Mlp {
        time: true,
        decay: false,
    };

    /// Autonomous and contracting (bounded over long horizons).
    pub const DECAY: Mlp = Mlp {
        time: false,
        decay: true,
    };

    /// Random parameters for a `dim`-dimensional state with `hidden` units.
    pub fn params(
        &self,
        rng: &mut Rng,
        dim: usize,
        hidden: usize,
        scale: f64,
    ) -> Vec<DMatrix<f64>> {
        let inputs = dim + usize::from(self.time);
        vec![
            rng.matrix(hidden, inputs, scale),
            rng.matrix(1, hidden, scale),
            rng.matrix(dim, hidden, scale),
            rng.matrix(1, dim, scale),
        ]
    }
}

/// `h' = −k h` with `k` the only (1×1) parameter.
#[derive(Clone, Copy, Debug)]
pub struct Decay;

impl<T: Scalar> Dynamics<T> for Decay {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (r, c) = h.shape()?;
        Ok(-(h.mul(p[0].broadcast(r, c)?)?))
    }
}

/// `h' = h Aᵀ` with `A` the only parameter (rows of `h` are samples).
#[derive(Clone, Copy, Debug)]
pub struct Linear;

impl<T: Scalar> Dynamics<T> for Linear {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.matmul_t(p[0])
    }
}

/// Scalar time-dependent fields with closed forms.
#[derive(Clone, Copy, Debug)]
pub enum TimeField {
    /// `h' = −2 t h`, so `h(t) = h(s) exp(s² − t²)`.
    Gaussian,
    /// `h' = h cos t`, so `h(t) = h(s) exp(sin t − sin s)`.
    CosGrowth,
}

impl TimeField {
    /// `h(t)` given `h(s)`.
    pub fn exact(self, hs: f64, s: f64, t: f64) -> f64 {
        match self {
            TimeField::Gaussian => hs * (s * s - t * t).exp(),
            TimeField::CosGrowth => hs * (t.sin() - s.sin()).exp(),
        }
    }
}

impl<T: Scalar> Dynamics<T> for TimeField {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (r, c) = h.shape()?;
        let coef = match self {
            TimeField::Gaussian => t.scale(T::constant(-2.0)),
            TimeField::CosGrowth => t.cos(),
        };
        h.mul(coef.broadcast(r, c)?)
    }
}

/// `L = Σ_i ⟨v_i, h_i⟩` over the outputs that have a cotangent.
pub fn dot_loss<'t, T: Scalar>(
    tape: &'t Tape<T>,
    outputs: &[Var<'t, T>],
    cots: &[Option<DMatrix<f64>>],
) -> TapeResult<Var<'t, T>> {
    let mut terms = Vec::new();
    for (h, v) in outputs.iter().zip(cots) {
        if let Some(v) = v {
            terms.push(h.mul(tape.constant(v.map(T::constant)))?.sum());
        }
    }
    let mut loss = terms[0];
    for term in &terms[1..] {
        loss = loss.add(*term)?;
    }
    Ok(loss)
}

/// A Dual64 matrix with real part `m` and unit eps at `(i, j)` when `seed` is `Some((i, j))`.
pub fn dual(m: &DMatrix<f64>, seed: Option<(usize, usize)>) -> DMatrix<Dual64> {
    DMatrix::from_fn(m.nrows(), m.ncols(), |i, j| {
        Dual64::new(m[(i, j)], if seed == Some((i, j)) { 1.0 } else { 0.0 })
    })
}

/// An input as it is (the `lift` of an f64 solve in [`gradients`]).
pub fn plain(m: &DMatrix<f64>, _: usize) -> DMatrix<f64> {
    m.clone()
}

/// The real parts of dual-number gradients (the f64 gradient).
pub fn real_parts(m: &[DMatrix<Dual64>]) -> Vec<DMatrix<f64>> {
    m.iter().map(|m| m.map(|x| x.re)).collect()
}

/// The dual parts of dual-number gradients (forward over reverse: a Hessian-vector product).
pub fn dual_parts(m: &[DMatrix<Dual64>]) -> Vec<DMatrix<f64>> {
    m.iter().map(|m| m.map(|x| x.eps)).collect()
}

/// Largest absolute entry.
pub fn max_abs(m: &DMatrix<f64>) -> f64 {
    m.iter().fold(0.0, |a, &x| a.max(x.abs()))
}

/// Largest absolute entrywise difference.
pub fn max_diff(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// `max |a − b| / max |b|` over one gradient tensor (0 when both are 0).
pub fn rel(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let scale = max_abs(b);
    let d = max_diff(a, b);
    if scale > 0.0 {
        d / scale
    } else {
        d
    }
}

/// The worst relative difference over the gradient tensors (h0, t, each parameter).
pub fn worst(a: &[DMatrix<f64>], b: &[DMatrix<f64>]) -> f64 {
    a.iter().zip(b).map(|(a, b)| rel(a, b)).fold(0.0, f64::max)
}

/// Every adaptive method's name.
pub const ADAPTIVE: [&str; 6] = [
    "fehlberg2",
    "adaptive_heun",
    "bosh3",
    "dopri5",
    "tsit5",
    "dopri8",
];

/// Every fixed-step method's name.
pub const FIXED: [&str; 6] = ["euler", "midpoint", "heun2", "heun3", "rk4", "rk4_classic"];

/// A random MLP problem: field, inputs and the loss's cotangents.
pub struct Problem {
    pub f: Mlp,
    pub h0: DMatrix<f64>,
    pub params: Vec<DMatrix<f64>>,
    pub grid: Vec<f64>,
    /// One per grid time; `None` where the loss does not read the output.
    pub cots: Vec<Option<DMatrix<f64>>>,
}

/// Gradients of `L` with respect to every input of a solve.
#[derive(Clone, Debug)]
pub struct Grads {
    pub h0: DMatrix<f64>,
    pub params: Vec<DMatrix<f64>>,
    pub t: DMatrix<f64>,
    pub forward: SolveStats,
    pub backward: Option<BackwardStats>,
}

impl Grads {
    /// Largest absolute entry over every gradient.
    pub fn max_abs(&self) -> f64 {
        self.params
            .iter()
            .chain([&self.h0, &self.t])
            .map(max_abs)
            .fold(0.0, f64::max)
    }

    /// Largest absolute difference over every gradient.
    pub fn max_diff(&self, o: &Grads) -> f64 {
        self.params
            .iter()
            .zip(&o.params)
            .chain([(&self.h0, &o.h0), (&self.t, &o.t)])
            .map(|(a, b)| max_diff(a, b))
            .fold(0.0, f64::max)
    }
}

impl Problem {
    /// `(batch, dim, hidden)` sizes, `n` grid points (gaps in [0.2, 0.6)), decreasing if
    /// `reversed`; cotangents on every output if `all_outputs`, else on the last only.
    pub fn random(
        rng: &mut Rng,
        f: Mlp,
        (batch, dim, hidden): (usize, usize, usize),
        n: usize,
        reversed: bool,
        all_outputs: bool,
    ) -> Self {
        let h0 = rng.matrix(batch, dim, 1.0);
        let params = f.params(rng, dim, hidden, 0.9);
        let t0 = rng.range(-0.5, 0.5);
        let mut grid = rng.grid(n, t0, 0.2, 0.6);
        if reversed {
            grid.reverse();
        }
        let cots = (0..n)
            .map(|i| (all_outputs || i + 1 == n).then(|| rng.matrix(batch, dim, 1.0)))
            .collect();
        Self {
            f,
            h0,
            params,
            grid,
            cots,
        }
    }

    /// Gradients of `L = Σ ⟨v_i, h(t_i)⟩` by the taped solve or the backsolve adjoint.
    pub fn grads(&self, opts: &Options, adjoint: bool) -> ode::Result<Grads> {
        let strategy = if adjoint {
            Strategy::backsolve()
        } else {
            Strategy::Taped
        };
        self.grads_with(opts, &strategy)
    }

    /// Gradients of `L = Σ ⟨v_i, h(t_i)⟩` by any strategy.
    pub fn grads_with(&self, opts: &Options, strategy: &Strategy) -> ode::Result<Grads> {
        let tape = Tape::<f64>::new();
        let h0 = tape.var(self.h0.clone());
        let t = tape.var(DMatrix::from_row_slice(1, self.grid.len(), &self.grid));
        let params: Vec<_> = self.params.iter().map(|m| tape.var(m.clone())).collect();
        let sol = odeint_with(&tape, &self.f, h0, t, &params, opts, strategy)?;
        let loss = dot_loss(&tape, &sol.outputs, &self.cots)?;
        let mut g = tape.backward(loss)?;
        Ok(Grads {
            h0: g.take_or_zeros(h0)?,
            params: params
                .iter()
                .map(|&p| g.take_or_zeros(p))
                .collect::<ad_core::Result<_>>()?,
            t: g.take_or_zeros(t)?,
            forward: sol.stats,
            backward: sol.backward_stats(&g),
        })
    }
}

/// Gradients `[dL/dh0, dL/dt, dL/dθ…]` of `L = Σ ⟨v_i, h(t_i)⟩` on a `Tape<T>`, with inputs
/// lifted by `lift(value, input index)` (index 0: h0, 1: the grid, 2…: parameters), and the
/// backward statistics.
pub fn gradients<T: Scalar>(
    p: &Problem,
    opts: &Options,
    strategy: &Strategy,
    lift: impl Fn(&DMatrix<f64>, usize) -> DMatrix<T>,
) -> (Vec<DMatrix<T>>, Option<BackwardStats>, usize) {
    let tape = Tape::<T>::new();
    let h0 = tape.var(lift(&p.h0, 0));
    let t = tape.var(lift(&DMatrix::from_row_slice(1, p.grid.len(), &p.grid), 1));
    let params: Vec<_> = p
        .params
        .iter()
        .enumerate()
        .map(|(i, m)| tape.var(lift(m, i + 2)))
        .collect();
    let sol = odeint_with(&tape, &p.f, h0, t, &params, opts, strategy)
        .unwrap_or_else(|e| panic!("{}: {e}", strategy.name()));
    let loss = dot_loss(&tape, &sol.outputs, &p.cots).unwrap();
    let mut g = tape.backward(loss).unwrap();
    let stats = sol.backward_stats(&g);
    let mut out = vec![g.take_or_zeros(h0).unwrap(), g.take_or_zeros(t).unwrap()];
    out.extend(params.iter().map(|&v| g.take_or_zeros(v).unwrap()));
    (out, stats, sol.steps.len())
}

/// Lotka–Volterra on `[prey, predator]` rows, α, β, γ, δ each 1×1.
#[derive(Clone, Copy, Debug)]
pub struct LotkaVolterra;

impl<T: Scalar> Dynamics<T> for LotkaVolterra {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let (x, y) = (h.slice_cols(0, 1)?, h.slice_cols(1, 1)?);
        let xy = x.mul(y)?;
        let dx = x.mul(p[0])?.sub(xy.mul(p[1])?)?;
        let dy = xy.mul(p[3])?.sub(y.mul(p[2])?)?;
        h.tape().concat_cols(&[dx, dy])
    }
}

/// `f(t, h)` in `f64`.
pub fn field<F: Dynamics<f64>>(
    f: &F,
    t: f64,
    h: &DMatrix<f64>,
    params: &[DMatrix<f64>],
) -> DMatrix<f64> {
    let tape = Tape::<f64>::new();
    let tv = tape.scalar(t);
    let hv = tape.constant(h.clone());
    let pv: Vec<_> = params.iter().map(|p| tape.constant(p.clone())).collect();
    f.eval(tv, hv, &pv).unwrap().value().unwrap()
}

/// A field that declares (rightly or not) that its rows are independent.
#[derive(Clone)]
pub struct Declared<F>(pub F, pub bool);

impl<T: Scalar, F: Dynamics<T>> Dynamics<T> for Declared<F> {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        self.0.eval(t, h, p)
    }
    fn rows_independent(&self) -> bool {
        self.1
    }
}
