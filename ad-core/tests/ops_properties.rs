//! One property per op: reverse mode (`vjp`, `vjp_wrt` on `Tape<f64>`), forward mode (the same
//! op on `Tape<Dual64>`) and central finite differences agree on `⟨u, J v⟩` for random shapes,
//! values, directions `v` and cotangents `u`.
//!
//! Each op is one `op_properties!` entry: the input shapes (from random dims `r, c, k` in
//! `1..=5`, with a value domain and whether the input is a constant) and the op applied to the
//! inputs, written once for every scalar type.

mod common;

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::{Dual64, DualNum};
use ad_core::{BoxError, CustomOp, Result, Scalar, Tape, Var};
use common::{close, dot, dual, eps, re};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases per op: enough to cover the shape grid, few enough that the suite stays fast.
const CASES: u32 = 64;
/// Entries reserved per input (and for the cotangent) in the random pools.
const SLOT: usize = 64;
/// At most this many inputs per op.
const MAX_INPUTS: usize = 4;
/// Central finite-difference step.
const H: f64 = 1e-6;

/// Random dimensions, each in `1..=5`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    r: usize,
    c: usize,
    k: usize,
}

/// Where an input's values are drawn from (raw draws are uniform in `[-1, 1)`).
#[derive(Clone, Copy, Debug)]
enum Domain {
    /// `[-2, 2)`.
    Any,
    /// `[-8, 8)`: both branches of the overflow-safe sigmoid / softplus, well into the tails.
    Wide,
    /// `[0.5, 2.5]`: for log, sqrt and negative powers.
    Positive,
    /// `|x| ∈ [m, m + 2]`, either sign: for denominators and the relu kink.
    AwayFromZero(f64),
}

impl Domain {
    fn map(self, t: f64) -> f64 {
        match self {
            Domain::Any => 2.0 * t,
            Domain::Wide => 8.0 * t,
            Domain::Positive => 0.5 + 2.0 * t.abs(),
            Domain::AwayFromZero(m) => {
                (m + 2.0 * t.abs()).copysign(if t >= 0.0 { 1.0 } else { -1.0 })
            }
        }
    }
}

/// One input of an op under test.
#[derive(Clone, Copy, Debug)]
struct Input {
    shape: (usize, usize),
    domain: Domain,
    /// Recorded with `Tape::constant`: no direction, and it must get no gradient.
    constant: bool,
}

fn any(r: usize, c: usize) -> Input {
    Input {
        shape: (r, c),
        domain: Domain::Any,
        constant: false,
    }
}

fn wide(r: usize, c: usize) -> Input {
    Input {
        domain: Domain::Wide,
        ..any(r, c)
    }
}

fn positive(r: usize, c: usize) -> Input {
    Input {
        domain: Domain::Positive,
        ..any(r, c)
    }
}

fn away(r: usize, c: usize, m: f64) -> Input {
    Input {
        domain: Domain::AwayFromZero(m),
        ..any(r, c)
    }
}

fn constant(input: Input) -> Input {
    Input {
        constant: true,
        ..input
    }
}

/// An op under test: its inputs and the op itself, generic over the scalar.
trait OpCase {
    fn inputs(&self, d: Dims) -> Vec<Input>;
    fn apply<'t, T: Scalar>(
        &self,
        d: Dims,
        tape: &'t Tape<T>,
        x: &[Var<'t, T>],
    ) -> Result<Var<'t, T>>;
}

/// Record the op's inputs on `tape`.
fn record<'t, T: Scalar>(
    tape: &'t Tape<T>,
    inputs: &[Input],
    values: impl IntoIterator<Item = DMatrix<T>>,
) -> Vec<Var<'t, T>> {
    inputs
        .iter()
        .zip(values)
        .map(|(inp, x)| {
            if inp.constant {
                tape.constant(x)
            } else {
                tape.var(x)
            }
        })
        .collect()
}

/// Evaluate the op on `Tape<f64>` at `xs + s·vs`.
fn eval_shifted<C: OpCase>(
    case: &C,
    d: Dims,
    inputs: &[Input],
    xs: &[DMatrix<f64>],
    vs: &[DMatrix<f64>],
    s: f64,
) -> Result<DMatrix<f64>> {
    let tape = Tape::<f64>::new();
    let vars = record(&tape, inputs, xs.iter().zip(vs).map(|(x, v)| x + v * s));
    case.apply(d, &tape, &vars)?.value()
}

fn check<C: OpCase>(
    case: &C,
    d: Dims,
    xpool: &[f64],
    vpool: &[f64],
    upool: &[f64],
) -> std::result::Result<(), TestCaseError> {
    let inputs = case.inputs(d);
    assert!(inputs.len() <= MAX_INPUTS);
    let slot = |pool: &[f64], i: usize, inp: &Input, f: &dyn Fn(f64) -> f64| {
        let (r, c) = inp.shape;
        assert!(
            r * c <= SLOT,
            "input {i} of shape {r}x{c} does not fit a pool slot"
        );
        DMatrix::from_iterator(r, c, pool[i * SLOT..i * SLOT + r * c].iter().map(|&t| f(t)))
    };
    let xs: Vec<DMatrix<f64>> = inputs
        .iter()
        .enumerate()
        .map(|(i, inp)| slot(xpool, i, inp, &|t| inp.domain.map(t)))
        .collect();
    // Constants are not perturbed: their direction is zero.
    let vs: Vec<DMatrix<f64>> = inputs
        .iter()
        .enumerate()
        .map(|(i, inp)| slot(vpool, i, inp, &|t| if inp.constant { 0.0 } else { t }))
        .collect();

    // Reverse mode on f64: ⟨Jᵀu, v⟩, through both `vjp` and `vjp_wrt`.
    let tape = Tape::<f64>::new();
    let vars = record(&tape, &inputs, xs.iter().cloned());
    let y = case.apply(d, &tape, &vars)?;
    let y0 = y.value()?;
    let (m, n) = y0.shape();
    prop_assert!(
        m * n <= SLOT,
        "output {m}x{n} does not fit the cotangent pool"
    );
    prop_assert!(y0.iter().all(|v| v.is_finite()), "non-finite output {y0}");
    let u = DMatrix::from_iterator(m, n, upool[..m * n].iter().copied());
    let grads = tape.vjp(y, u.clone())?;
    let wrt = tape.vjp_wrt(&[(y, u.clone())], &vars)?;
    prop_assert_eq!(wrt.len(), vars.len());
    let mut rev = 0.0;
    for (i, ((inp, var), g_wrt)) in inputs.iter().zip(&vars).zip(&wrt).enumerate() {
        prop_assert_eq!(g_wrt.shape(), inp.shape);
        if inp.constant {
            prop_assert!(
                grads.get(*var).is_none(),
                "constant input {i} got a gradient"
            );
            prop_assert!(
                g_wrt.iter().all(|&g| g == 0.0),
                "vjp_wrt: constant input {i} got {g_wrt}"
            );
            continue;
        }
        let Some(g) = grads.get(*var) else {
            return Err(TestCaseError::fail(format!("input {i} got no gradient")));
        };
        prop_assert_eq!(g.shape(), inp.shape);
        for (a, b) in g.iter().zip(g_wrt.iter()) {
            prop_assert!(
                close(*a, *b, 1e-14, 1e-300),
                "vjp {g} vs vjp_wrt {g_wrt} for input {i}"
            );
        }
        rev += dot(g, &vs[i]);
    }

    // Forward mode: the same op on Tape<Dual64> with inputs x + v ε gives ⟨u, J v⟩.
    let dtape = Tape::<Dual64>::new();
    let dvars = record(&dtape, &inputs, xs.iter().zip(&vs).map(|(x, v)| dual(x, v)));
    let yd = case.apply(d, &dtape, &dvars)?.value()?;
    let primal = re(&yd);
    prop_assert_eq!(primal.shape(), (m, n));
    for (a, b) in primal.iter().zip(y0.iter()) {
        prop_assert!(
            close(*a, *b, 1e-12, 1.0),
            "Dual64 primal {primal} vs f64 {y0}"
        );
    }
    let fwd = dot(&u, &eps(&yd));

    // Central finite difference on f64 along v.
    let plus = eval_shifted(case, d, &inputs, &xs, &vs, H)?;
    let minus = eval_shifted(case, d, &inputs, &xs, &vs, -H)?;
    let fd = dot(&u, &((plus - minus) / (2.0 * H)));

    prop_assert!(
        close(fwd, rev, 1e-10, 1.0),
        "forward ⟨u, Jv⟩ = {fwd:e}, reverse ⟨Jᵀu, v⟩ = {rev:e}"
    );
    prop_assert!(
        close(fd, rev, 1e-6, 1.0),
        "finite difference {fd:e} vs reverse {rev:e}"
    );
    prop_assert!(
        close(fd, fwd, 1e-6, 1.0),
        "finite difference {fd:e} vs forward {fwd:e}"
    );
    Ok(())
}

fn run<C: OpCase>(case: &C) {
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    // A fixed seed: CI runs the same cases every time.
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let pool = || vec(-1.0f64..1.0, MAX_INPUTS * SLOT);
    let strategy = (
        1..=5usize,
        1..=5usize,
        1..=5usize,
        pool(),
        pool(),
        vec(-1.0f64..1.0, SLOT),
    );
    let result = runner.run(&strategy, |(r, c, k, x, v, u)| {
        check(case, Dims { r, c, k }, &x, &v, &u)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// `name: |d| [inputs] => |tape, x| op;` defines the test `name`.
macro_rules! op_properties {
    ($( $(#[$meta:meta])* $name:ident : |$d:ident| [$($input:expr),+ $(,)?] => |$tape:ident, $x:ident| $body:expr; )*) => {$(
        $(#[$meta])*
        #[test]
        fn $name() {
            struct Case;
            impl OpCase for Case {
                fn inputs(&self, $d: Dims) -> Vec<Input> {
                    let _ = $d;
                    vec![$($input),+]
                }
                fn apply<'t, T: Scalar>(&self, $d: Dims, $tape: &'t Tape<T>, $x: &[Var<'t, T>]) -> Result<Var<'t, T>> {
                    let _ = ($d, $tape);
                    $body
                }
            }
            run(&Case);
        }
    )*};
}

/// `(a, b) ↦ (a³ ∘ b, sin a + b)`: a custom op with two inputs, two outputs and a hand-written
/// VJP that handles missing output cotangents and inputs that need no gradient.
struct CubeMul;

impl<T: Scalar> CustomOp<T> for CubeMul {
    fn name(&self) -> &str {
        "cube_mul"
    }

    fn forward(
        &mut self,
        inputs: &[&DMatrix<T>],
    ) -> std::result::Result<Vec<DMatrix<T>>, BoxError> {
        let (a, b) = (inputs[0], inputs[1]);
        Ok(vec![
            a.zip_map(b, |a, b| a * a * a * b),
            a.zip_map(b, |a, b| DualNum::sin(&a) + b),
        ])
    }

    fn vjp(
        &self,
        inputs: &[&DMatrix<T>],
        _outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        wants: &[bool],
    ) -> std::result::Result<Vec<Option<DMatrix<T>>>, BoxError> {
        let (a, b) = (inputs[0], inputs[1]);
        let mut ga = DMatrix::zeros(a.nrows(), a.ncols());
        let mut gb = DMatrix::zeros(b.nrows(), b.ncols());
        if let Some(g) = &cotangents[0] {
            // d(a³b) = 3a²b da + a³ db
            ga += g.zip_zip_map(a, b, |g, a, b| g * T::constant(3.0) * a * a * b);
            gb += g.zip_map(a, |g, a| g * a * a * a);
        }
        if let Some(g) = &cotangents[1] {
            // d(sin a + b) = cos a da + db
            ga += g.zip_map(a, |g, a| g * DualNum::cos(&a));
            gb += g;
        }
        Ok(vec![wants[0].then_some(ga), wants[1].then_some(gb)])
    }

    fn held_bytes(&self) -> usize {
        0
    }
}

op_properties! {
    add: |d| [any(d.r, d.c), any(d.r, d.c)] => |tape, x| x[0].add(x[1]);
    add_const_left: |d| [constant(any(d.r, d.c)), any(d.r, d.c)] => |tape, x| x[0] + x[1];
    sub: |d| [any(d.r, d.c), any(d.r, d.c)] => |tape, x| x[0].sub(x[1]);
    sub_const_left: |d| [constant(any(d.r, d.c)), any(d.r, d.c)] => |tape, x| x[0] - x[1];
    /// Through the `&Var - &Var` operator.
    #[allow(clippy::op_ref)]
    sub_const_right: |d| [any(d.r, d.c), constant(any(d.r, d.c))] => |tape, x| &x[0] - &x[1];
    neg: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].neg());
    neg_operator: |d| [any(d.r, d.c)] => |tape, x| Ok(-x[0]);
    mul: |d| [any(d.r, d.c), any(d.r, d.c)] => |tape, x| x[0].mul(x[1]);
    mul_const_left: |d| [constant(any(d.r, d.c)), any(d.r, d.c)] => |tape, x| x[0] * x[1];
    mul_const_right: |d| [any(d.r, d.c), constant(any(d.r, d.c))] => |tape, x| x[0] * x[1];
    div: |d| [any(d.r, d.c), away(d.r, d.c, 0.5)] => |tape, x| x[0].div(x[1]);
    div_const_numerator: |d| [constant(any(d.r, d.c)), away(d.r, d.c, 0.5)] => |tape, x| x[0] / x[1];
    div_const_denominator: |d| [any(d.r, d.c), constant(away(d.r, d.c, 0.5))] => |tape, x| x[0] / x[1];
    // Broadcast forms: a 1×1, 1×n (row) or n×1 (column) operand on either side, its
    // cotangent summed back over the dimensions it was repeated along.
    add_broadcast_scalar: |d| [any(d.r, d.c), any(1, 1)] => |tape, x| x[0].add(x[1]);
    add_broadcast_row_left: |d| [any(1, d.c), any(d.r, d.c)] => |tape, x| x[0].add(x[1]);
    sub_broadcast_column: |d| [any(d.r, d.c), any(d.r, 1)] => |tape, x| x[0].sub(x[1]);
    sub_broadcast_scalar_left: |d| [any(1, 1), any(d.r, d.c)] => |tape, x| x[0].sub(x[1]);
    mul_broadcast_scalar: |d| [any(1, 1), any(d.r, d.c)] => |tape, x| x[0].mul(x[1]);
    mul_broadcast_row: |d| [any(d.r, d.c), any(1, d.c)] => |tape, x| x[0].mul(x[1]);
    mul_broadcast_row_by_column: |d| [any(1, d.c), any(d.r, 1)] => |tape, x| x[0].mul(x[1]);
    mul_broadcast_const_column: |d| [any(d.r, d.c), constant(any(d.r, 1))] => |tape, x| x[0] * x[1];
    div_broadcast_scalar_denominator: |d| [any(d.r, d.c), away(1, 1, 0.5)] => |tape, x| x[0].div(x[1]);
    div_broadcast_row_numerator: |d| [any(1, d.c), away(d.r, d.c, 0.5)] => |tape, x| x[0].div(x[1]);
    div_broadcast_column_denominator: |d| [any(d.r, d.c), away(d.r, 1, 0.5)] => |tape, x| x[0].div(x[1]);
    scale: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].scale(T::constant(-1.3)));
    add_scalar: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].add_scalar(T::constant(0.7)).square());
    matmul: |d| [any(d.r, d.k), any(d.k, d.c)] => |tape, x| x[0].matmul(x[1]);
    matmul_const_left: |d| [constant(any(d.r, d.k)), any(d.k, d.c)] => |tape, x| x[0].matmul(x[1]);
    matmul_const_right: |d| [any(d.r, d.k), constant(any(d.k, d.c))] => |tape, x| x[0].matmul(x[1]);
    matmul_t: |d| [any(d.r, d.k), any(d.c, d.k)] => |tape, x| x[0].matmul_t(x[1]);
    matmul_t_const_left: |d| [constant(any(d.r, d.k)), any(d.c, d.k)] => |tape, x| x[0].matmul_t(x[1]);
    matmul_t_const_right: |d| [any(d.r, d.k), constant(any(d.c, d.k))] => |tape, x| x[0].matmul_t(x[1]);
    powers: |d| [any(1, 1)] => |tape, x| x[0].powers(4);
    linear: |d| [any(d.r, d.k), any(d.c, d.k), any(1, d.c)] => |tape, x| x[0].linear(x[1], x[2]);
    linear_const_input: |d| [constant(any(d.r, d.k)), any(d.c, d.k), any(1, d.c)] => |tape, x| x[0].linear(x[1], x[2]);
    transpose: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].transpose());
    add_row: |d| [any(d.r, d.c), any(1, d.c)] => |tape, x| x[0].add_row(x[1]);
    add_row_const_bias: |d| [any(d.r, d.c), constant(any(1, d.c))] => |tape, x| x[0].add_row(x[1]);
    add_row_const_input: |d| [constant(any(d.r, d.c)), any(1, d.c)] => |tape, x| x[0].add_row(x[1]);
    broadcast_scalar: |d| [any(1, 1)] => |tape, x| x[0].broadcast(d.r, d.c);
    broadcast_row: |d| [any(1, d.c)] => |tape, x| x[0].broadcast(d.r, d.c);
    broadcast_column: |d| [any(d.r, 1)] => |tape, x| x[0].broadcast(d.r, d.c);
    sum: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].sum());
    sum_rows: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].sum_rows());
    sum_cols: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].sum_cols());
    mean: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].mean());
    tanh: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].tanh());
    tanh_wide: |d| [wide(d.r, d.c)] => |tape, x| Ok(x[0].tanh());
    sigmoid: |d| [wide(d.r, d.c)] => |tape, x| Ok(x[0].sigmoid());
    relu: |d| [away(d.r, d.c, 1e-2)] => |tape, x| Ok(x[0].relu());
    softplus: |d| [wide(d.r, d.c)] => |tape, x| Ok(x[0].softplus());
    abs: |d| [away(d.r, d.c, 1e-2)] => |tape, x| Ok(x[0].abs());
    exp: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].exp());
    log: |d| [positive(d.r, d.c)] => |tape, x| Ok(x[0].log());
    sin: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].sin());
    cos: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].cos());
    square: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].square());
    sqrt: |d| [positive(d.r, d.c)] => |tape, x| Ok(x[0].sqrt());
    powi_cube: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].powi(3));
    powi_one: |d| [any(d.r, d.c)] => |tape, x| Ok(x[0].powi(1));
    powi_negative: |d| [positive(d.r, d.c)] => |tape, x| Ok(x[0].powi(-2));
    concat_cols: |d| [any(d.r, d.c), any(d.r, d.k), any(d.r, 1)] => |tape, x| tape.concat_cols(x);
    concat_cols_const_middle: |d| [any(d.r, d.c), constant(any(d.r, d.k)), any(d.r, 1)] => |tape, x| tape.concat_cols(x);
    concat_cols_single: |d| [any(d.r, d.c)] => |tape, x| tape.concat_cols(x);
    slice_cols_tail: |d| [any(d.r, d.c + d.k)] => |tape, x| x[0].slice_cols(d.k, d.c);
    slice_cols_head: |d| [any(d.r, d.c + d.k)] => |tape, x| x[0].slice_cols(0, d.k);
    mse: |d| [any(d.r, d.c), any(d.r, d.c)] => |tape, x| x[0].mse(x[1]);
    mse_const_target: |d| [any(d.r, d.c), constant(any(d.r, d.c))] => |tape, x| x[0].mse(x[1]);
    mse_const_prediction: |d| [constant(any(d.r, d.c)), any(d.r, d.c)] => |tape, x| x[0].mse(x[1]);
    fixed_weighted_sum: |d| [any(d.r, d.c), any(d.r, d.c), any(d.r, d.c)] => |tape, x| {
        tape.fixed_weighted_sum(&[(T::constant(0.7), x[0]), (T::constant(-1.3), x[1]), (T::constant(2.0), x[2])])
    };
    lin_comb_repeated_and_const: |d| [any(d.r, d.c), constant(any(d.r, d.c))] => |tape, x| {
        tape.fixed_weighted_sum(&[(T::constant(0.7), x[0]), (T::constant(-1.3), x[1]), (T::constant(2.0), x[0])])
    };
    weighted_sum: |d| [any(1, 3), any(d.r, d.c), any(d.r, d.c), any(d.r, d.c)] => |tape, x| {
        tape.weighted_sum(x[0], &x[1..])
    };
    weighted_sum_const_weights: |d| [constant(any(1, 2)), any(d.r, d.c), any(d.r, d.c)] => |tape, x| {
        tape.weighted_sum(x[0], &x[1..])
    };
    weighted_sum_const_term_and_repeated: |d| [any(1, 3), any(d.r, d.c), constant(any(d.r, d.c))] => |tape, x| {
        tape.weighted_sum(x[0], &[x[1], x[2], x[1]])
    };
    custom_both_outputs: |d| [any(d.r, d.c), any(d.r, d.c)] => |tape, x| {
        let outs = tape.custom(CubeMul, x)?;
        tape.concat_cols(&outs)
    };
    custom_first_output: |d| [any(d.r, d.c), any(d.r, d.c)] => |tape, x| Ok(tape.custom(CubeMul, x)?[0]);
    custom_second_output: |d| [any(d.r, d.c), any(d.r, d.c)] => |tape, x| Ok(tape.custom(CubeMul, x)?[1]);
    custom_const_input: |d| [constant(any(d.r, d.c)), any(d.r, d.c)] => |tape, x| {
        let outs = tape.custom(CubeMul, x)?;
        tape.concat_cols(&outs)
    };
    /// A small composite: a tanh layer's output reused twice (accumulation through shared nodes).
    composite_layer: |d| [any(d.r, d.k), any(d.c, d.k), any(1, d.c)] => |tape, x| {
        let h = x[0].matmul_t(x[1])?.add_row(x[2])?.tanh();
        h.mul(h.sigmoid())
    };
}
