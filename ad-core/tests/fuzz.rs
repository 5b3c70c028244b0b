//! A random op-sequence fuzzer: sequences of ops on a pool of variables, with shapes and
//! integer arguments that include the extremes. Every step either succeeds or returns a
//! typed error that leaves the tape usable — never a panic — and where the result is
//! finite, the reverse-mode gradient equals the `Dual64` directional derivative of the very
//! same sequence. `cargo test` runs a bounded number of sequences; set `COSTATE_FUZZ_CASES`
//! for a long run (`COSTATE_FUZZ_CASES=1000000 cargo test --release -p ad-core --test fuzz`).

use ad_core::nalgebra::DMatrix;
use ad_core::num_dual::Dual;
use ad_core::{Precision, Scalar, Tape, Var};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// One op of a sequence; operands are indices into the pool (taken modulo its length).
#[derive(Clone, Debug)]
enum Step {
    Unary(u8, usize),
    Powi(i32, usize),
    Scale(f64, usize),
    AddScalar(f64, usize),
    Binary(u8, usize, usize),
    Transpose(usize),
    Reduce(u8, usize),
    Broadcast(usize, usize, usize),
    Slice(usize, usize, usize),
    Concat(usize, usize),
    Powers(usize, usize),
    AddRow(usize, usize),
}

/// Integers a careless caller (or a fuzzer) hands over: small ones and the extremes.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..4,
        1 => Just(usize::MAX),
        1 => Just(1usize << 40),
        1 => Just(1usize << 20),
    ]
}

fn exponent() -> impl Strategy<Value = i32> {
    prop_oneof![4 => -3i32..4, 1 => Just(i32::MIN), 1 => Just(i32::MAX), 1 => Just(0)]
}

fn constant() -> impl Strategy<Value = f64> {
    prop_oneof![4 => -2.0f64..2.0, 1 => Just(0.0), 1 => Just(1e300)]
}

fn step() -> impl Strategy<Value = Step> {
    let i = || 0usize..8;
    prop_oneof![
        (0u8..12, i()).prop_map(|(k, a)| Step::Unary(k, a)),
        (exponent(), i()).prop_map(|(n, a)| Step::Powi(n, a)),
        (constant(), i()).prop_map(|(c, a)| Step::Scale(c, a)),
        (constant(), i()).prop_map(|(c, a)| Step::AddScalar(c, a)),
        (0u8..6, i(), i()).prop_map(|(k, a, b)| Step::Binary(k, a, b)),
        i().prop_map(Step::Transpose),
        (0u8..4, i()).prop_map(|(k, a)| Step::Reduce(k, a)),
        (size(), size(), i()).prop_map(|(r, c, a)| Step::Broadcast(r, c, a)),
        (size(), size(), i()).prop_map(|(s, l, a)| Step::Slice(s, l, a)),
        (i(), i()).prop_map(|(a, b)| Step::Concat(a, b)),
        (size(), i()).prop_map(|(n, a)| Step::Powers(n, a)),
        (i(), i()).prop_map(|(a, b)| Step::AddRow(a, b)),
    ]
}

/// Leaves: shapes from 0×2 to 3×3, entries in (−2, 2).
fn leaves() -> impl Strategy<Value = Vec<DMatrix<f64>>> {
    let shape = prop_oneof![
        Just((1usize, 1usize)),
        Just((1, 3)),
        Just((2, 3)),
        Just((3, 3)),
        Just((3, 1)),
        Just((0, 2)),
    ];
    prop::collection::vec(
        shape.prop_flat_map(|(r, c)| {
            prop::collection::vec(-2.0f64..2.0, r * c).prop_map(move |v| DMatrix::from_vec(r, c, v))
        }),
        1..4,
    )
}

/// Apply one step; `Ok(None)` when the step does not apply (e.g. an empty pool).
fn apply<'t, T: Scalar>(
    tape: &'t Tape<T>,
    pool: &[Var<'t, T>],
    step: &Step,
) -> ad_core::Result<Var<'t, T>> {
    let v = |i: usize| pool[i % pool.len()];
    Ok(match *step {
        Step::Unary(k, a) => {
            let x = v(a);
            match k {
                0 => x.tanh(),
                1 => x.sigmoid(),
                2 => x.relu(),
                3 => x.softplus(),
                4 => x.exp().scale(T::constant(1e-3)),
                5 => x.square().add_scalar(T::constant(1.0)).log(),
                6 => x.sin(),
                7 => x.cos(),
                8 => x.abs(),
                9 => x.square(),
                10 => x.square().add_scalar(T::constant(0.5)).sqrt(),
                _ => x.neg(),
            }
        }
        Step::Powi(n, a) => v(a).powi(n),
        Step::Scale(c, a) => v(a).scale(T::constant(c)),
        Step::AddScalar(c, a) => v(a).add_scalar(T::constant(c)),
        Step::Binary(k, a, b) => {
            let (x, y) = (v(a), v(b));
            match k {
                0 => x.add(y)?,
                1 => x.sub(y)?,
                2 => x.mul(y)?,
                3 => x.div(y.square().add_scalar(T::constant(1.0)))?,
                4 => x.matmul(y)?,
                _ => x.matmul_t(y)?,
            }
        }
        Step::Transpose(a) => v(a).transpose(),
        Step::Reduce(k, a) => match k {
            0 => v(a).sum(),
            1 => v(a).sum_rows(),
            2 => v(a).sum_cols(),
            _ => v(a).mean(),
        },
        Step::Broadcast(r, c, a) => v(a).broadcast(r, c)?,
        Step::Slice(s, l, a) => v(a).slice_cols(s, l)?,
        Step::Concat(a, b) => tape.concat_cols(&[v(a), v(b)])?,
        Step::Powers(n, a) => v(a).powers(n)?,
        Step::AddRow(a, b) => v(a).add_row(v(b))?,
    })
}

/// What one run of a sequence produced: per step, whether it failed; the final value's
/// sum (if any step succeeded) and, on f64, the gradient.
struct Run<T: Scalar> {
    failed: Vec<bool>,
    loss: Option<T>,
    grads: Vec<DMatrix<T>>,
}

fn run<T: Scalar>(leaves: &[DMatrix<T>], steps: &[Step]) -> Run<T> {
    let tape = Tape::<T>::new();
    let mut pool: Vec<Var<'_, T>> = leaves.iter().map(|m| tape.var(m.clone())).collect();
    let n_leaves = pool.len();
    let mut failed = Vec::with_capacity(steps.len());
    for s in steps {
        let before = tape.len();
        // Any op's result may be read; an error must leave the tape as it was.
        match apply(&tape, &pool, s).and_then(|v| v.value().map(|_| v)) {
            Ok(v) => {
                failed.push(false);
                pool.push(v);
            }
            Err(e) => {
                failed.push(true);
                // (Steps made of several ops keep the nodes of the ops that succeeded.)
                let composite = matches!(s, Step::Binary(3, ..) | Step::Unary(4 | 5 | 10, _));
                if !composite {
                    assert_eq!(
                        tape.len(),
                        before,
                        "{s:?} failed ({e}) but left nodes behind"
                    );
                }
                // The tape is still usable.
                let probe = pool[0].add_scalar(T::constant(1.0)).sum();
                tape.backward(probe)
                    .expect("a tape stays usable after an error");
            }
        }
    }
    let last = *pool.last().expect("the pool has leaves");
    let (loss, grads) = if pool.len() > n_leaves {
        let loss = last.sum();
        let value = loss.scalar_value().expect("a sum is 1x1");
        let grads = match tape.backward(loss) {
            Ok(mut g) => pool[..n_leaves]
                .iter()
                .map(|&l| g.take_or_zeros(l).expect("a leaf of this tape"))
                .collect(),
            Err(_) => Vec::new(),
        };
        (Some(value), grads)
    } else {
        (None, Vec::new())
    };
    Run {
        failed,
        loss,
        grads,
    }
}

/// How closely reverse and forward mode must agree in precision `F`, relative to the sum
/// of the magnitudes involved, and past which constants and powers the check is skipped.
trait Tolerance: Precision {
    /// The agreement required.
    const AGREE: f64;
    /// Constants beyond this can absorb terms by rounding alone (x + c − c = 0).
    const HUGE_CONSTANT: f64;
    /// Powers beyond this turn one rounding of x into many ulps of error.
    const HUGE_POWER: u32;
    /// Whether negative powers are checked: x⁻³ near 0 spans a dynamic range that f32's
    /// 24 bits cannot carry through later cancellations.
    const NEGATIVE_POWERS: bool;
}

impl Tolerance for f64 {
    const AGREE: f64 = 1e-9;
    const HUGE_CONSTANT: f64 = 1e100;
    const HUGE_POWER: u32 = 64;
    const NEGATIVE_POWERS: bool = true;
}

impl Tolerance for f32 {
    // 12 steps of f32 rounding (ε = 1.2e-7), amplified by the larger powers.
    const AGREE: f64 = 2e-4;
    const HUGE_CONSTANT: f64 = 1e15;
    const HUGE_POWER: u32 = 8;
    const NEGATIVE_POWERS: bool = false;
}

/// The sequence on `F` and on `Dual<F>` (tangent `direction`): both fail at the same steps,
/// and where the result is finite, ⟨∇L, v⟩ from reverse mode equals dL(v) from forward mode.
fn check<F: Tolerance>(leaves: &[DMatrix<f64>], steps: &[Step], direction: &[DMatrix<f64>])
where
    Dual<F>: Scalar,
{
    let lower = |m: &DMatrix<f64>| m.map(F::round_from);
    let leaves: Vec<DMatrix<F>> = leaves.iter().map(lower).collect();
    let direction: Vec<DMatrix<F>> = direction.iter().map(lower).collect();
    let plain = run(&leaves, steps);
    let duals: Vec<DMatrix<Dual<F>>> = leaves
        .iter()
        .zip(&direction)
        .map(|(m, d)| m.zip_map(d, Dual::new))
        .collect();
    let dual = run(&duals, steps);
    assert_eq!(
        plain.failed,
        dual.failed,
        "{} and its dual runs fail at the same steps",
        F::NAME
    );
    let (Some(loss), Some(dloss)) = (plain.loss, dual.loss) else {
        return;
    };
    // With huge constants in play, rounding alone can absorb a term (x + c − c is 0 in
    // either mode's arithmetic, at different places), and x^(2³¹) turns a rounding of x
    // into a relative error of 2³¹ ulp: those sequences only test that nothing panics.
    let huge = steps.iter().any(|s| match s {
        Step::Scale(c, _) | Step::AddScalar(c, _) => c.abs() > F::HUGE_CONSTANT,
        Step::Powi(n, _) => n.unsigned_abs() > F::HUGE_POWER || (*n < 0 && !F::NEGATIVE_POWERS),
        _ => false,
    });
    let forward = dloss.eps.as_f64();
    if huge || !loss.primal().is_finite() || !forward.is_finite() || plain.grads.is_empty() {
        return;
    }
    let wide = |m: &DMatrix<F>| m.map(Precision::as_f64);
    let grads: Vec<DMatrix<f64>> = plain.grads.iter().map(wide).collect();
    let direction: Vec<DMatrix<f64>> = direction.iter().map(wide).collect();
    let reverse: f64 = grads.iter().zip(&direction).map(|(g, d)| g.dot(d)).sum();
    let scale = 1.0
        + forward.abs()
        + grads
            .iter()
            .zip(&direction)
            .map(|(g, d)| g.abs().dot(&d.abs()))
            .sum::<f64>();
    if !scale.is_finite() || scale > 1e12 {
        return;
    }
    assert!(
        (reverse - forward).abs() <= F::AGREE * scale,
        "{}: reverse {reverse} vs forward {forward} for {steps:?}",
        F::NAME
    );
}

fn cases_from_env(default: u32) -> u32 {
    std::env::var("COSTATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `check::<F>` over random sequences from a fixed seed.
fn fuzz<F: Tolerance>(cases: u32, seed: u64)
where
    Dual<F>: Scalar,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    });
    let case = leaves().prop_flat_map(|ls| {
        let dirs: Vec<BoxedStrategy<DMatrix<f64>>> = ls
            .iter()
            .map(|m| {
                let (r, c) = m.shape();
                prop::collection::vec(-1.0f64..1.0, r * c)
                    .prop_map(move |v| DMatrix::from_vec(r, c, v))
                    .boxed()
            })
            .collect();
        (Just(ls), dirs, prop::collection::vec(step(), 1..12))
    });
    let start = std::time::Instant::now();
    runner
        .run(&case, |(ls, dirs, steps)| {
            check::<F>(&ls, &steps, &dirs);
            Ok(())
        })
        .unwrap();
    eprintln!(
        "{cases} op sequences on {} in {:.1} s, no panic",
        F::NAME,
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn random_op_sequences_never_panic_and_match_forward_mode() {
    fuzz::<f64>(cases_from_env(400), 0xF022_5EED);
}

#[test]
fn random_op_sequences_on_f32_match_dual32() {
    fuzz::<f32>(cases_from_env(400), 0xF032_5EED);
}
