//! `check_custom_op`: a two-input, two-output op passes with a correct VJP, and each planted
//! VJP error (a factor, a transposed block, one sign flipped, a NaN) fails in the block it is
//! in and nowhere else; the cost is what the docs say; bad calls give typed errors.

use std::cell::Cell;
use std::rc::Rc;

use ad_core::nalgebra::{dmatrix, DMatrix};
use ad_core::{
    carries_derivatives, check, check_custom_op, BoxError, CheckError, CustomOp, CustomOpReport,
    CustomOpSettings, Message, Scalar,
};
use check::{Entry, NonFiniteCotangent, Run};

/// How the VJP of [`ProductTanh`] is wrong.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Correct,
    /// Both input cotangents times this factor.
    Factor(f64),
    /// `A G₁` instead of `Aᵀ G₁` in the cotangent of `B`: block (output 0, input 1) transposed.
    Transposed,
    /// The `tanh` term of the cotangent of `B` negated: block (output 1, input 1).
    SignFlip,
    /// Entry (1, 0) of the cotangent of `A` NaN.
    Nan,
    /// The forward on dual numbers returns only the first output.
    DualDropsOutput,
    /// The VJP returns one cotangent for two inputs.
    OneCotangent,
}

/// `(A, B) ↦ (A B, tanh(B))` for square `A`, `B`, counting its forwards per scalar kind.
struct ProductTanh {
    variant: Variant,
    /// (f64 forwards, Dual64 forwards).
    forwards: Rc<Cell<(usize, usize)>>,
}

impl<T: Scalar> CustomOp<T> for ProductTanh {
    fn name(&self) -> &str {
        "product_tanh"
    }

    fn forward(&mut self, inputs: &[&DMatrix<T>]) -> Result<Vec<DMatrix<T>>, BoxError> {
        let (f, d) = self.forwards.get();
        let dual = carries_derivatives::<T>();
        self.forwards
            .set(if dual { (f, d + 1) } else { (f + 1, d) });
        let product = inputs[0] * inputs[1];
        if dual && self.variant == Variant::DualDropsOutput {
            return Ok(vec![product]);
        }
        Ok(vec![product, inputs[1].map(|b| b.tanh())])
    }

    fn vjp(
        &self,
        inputs: &[&DMatrix<T>],
        outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> Result<Vec<Option<DMatrix<T>>>, BoxError> {
        let (a, b) = (inputs[0], inputs[1]);
        let (g1, g2) = (&cotangents[0], &cotangents[1]);
        let mut ga = g1.as_ref().map(|g| g * b.transpose());
        let product_term = g1.as_ref().map(|g| match self.variant {
            Variant::Transposed => a * g,
            _ => a.transpose() * g,
        });
        let tanh_term = g2.as_ref().map(|g| {
            let sign = if self.variant == Variant::SignFlip {
                -T::one()
            } else {
                T::one()
            };
            g.zip_map(outputs[1], |g, y| sign * g * (T::one() - y * y))
        });
        let mut gb = match (product_term, tanh_term) {
            (Some(p), Some(t)) => Some(p + t),
            (p, t) => p.or(t),
        };
        match self.variant {
            Variant::Factor(c) => {
                for g in ga.iter_mut().chain(gb.iter_mut()) {
                    *g *= T::constant(c);
                }
            }
            Variant::Nan => {
                if let Some(g) = &mut ga {
                    g[(1, 0)] = T::constant(f64::NAN);
                }
            }
            Variant::OneCotangent => return Ok(vec![ga]),
            _ => {}
        }
        Ok(vec![ga, gb])
    }

    fn held_bytes(&self) -> usize {
        0
    }
}

fn inputs() -> Vec<DMatrix<f64>> {
    vec![
        dmatrix![0.3, -1.2, 0.8; 1.5, 0.1, -0.4; -0.7, 0.9, 2.0],
        dmatrix![0.5, 0.2, -0.9; -1.1, 0.6, 0.3; 0.4, -0.8, 1.3],
    ]
}

/// Check a [`ProductTanh`] with `variant`; also returns its forward counts.
fn run(
    variant: Variant,
    settings: &CustomOpSettings,
) -> (Result<CustomOpReport, CheckError>, (usize, usize)) {
    let forwards = Rc::new(Cell::new((0, 0)));
    let make = || ProductTanh {
        variant,
        forwards: forwards.clone(),
    };
    let report = check_custom_op(make, &inputs(), settings);
    (report, forwards.get())
}

/// Which blocks, as (output, input), failed their Dual64 comparison.
fn failed_blocks(report: &CustomOpReport) -> Vec<(usize, usize)> {
    report
        .blocks
        .iter()
        .filter(|b| !b.dual.passed)
        .map(|b| (b.output, b.input))
        .collect()
}

#[test]
fn correct_vjp_passes_at_the_cost_the_docs_state() -> Result<(), CheckError> {
    let (report, forwards) = run(Variant::Correct, &CustomOpSettings::default());
    let report = report?;
    assert!(report.passed(), "{report}");
    assert_eq!(report.output_shapes, vec![(3, 3), (3, 3)]);
    assert_eq!(report.blocks.len(), 4);
    for b in &report.blocks {
        assert_eq!(b.dual.compared, 3);
        assert!(b.dual.max_rel_error < 1e-13, "{report}");
        let fd = b.finite_differences.as_ref().expect("compared");
        assert!(fd.max_rel_error < 1e-7, "{report}");
    }
    // 3 pairs: one VJP per output, one Dual64 and two f64 forwards per input (plus the taped
    // forward).
    let e = report.evaluations;
    assert_eq!((e.reverse, e.dual, e.finite_difference), (6, 6, 12));
    assert_eq!(forwards, (1 + 12, 6));
    Ok(())
}

#[test]
fn vjp_off_by_a_factor_fails_every_nonzero_block() -> Result<(), CheckError> {
    let report = run(Variant::Factor(1.01), &CustomOpSettings::default()).0?;
    assert!(!report.passed());
    // Block (1, 0) is zero (tanh(B) does not depend on A): 1.01 · 0 is still right.
    assert_eq!(failed_blocks(&report), vec![(0, 0), (0, 1), (1, 1)]);
    for b in report
        .blocks
        .iter()
        .filter(|b| (b.output, b.input) != (1, 0))
    {
        assert!((b.dual.max_rel_error - (1.0 - 1.0 / 1.01)).abs() < 1e-9);
        assert!(!b.finite_differences.as_ref().expect("compared").passed);
    }
    Ok(())
}

#[test]
fn transposed_block_fails_alone() -> Result<(), CheckError> {
    let report = run(Variant::Transposed, &CustomOpSettings::default()).0?;
    assert_eq!(failed_blocks(&report), vec![(0, 1)]);
    let text = report.to_string();
    assert!(text.contains("FAILED"), "{text}");
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["blocks"][1]["output"], 0);
    assert_eq!(json["blocks"][1]["input"], 1);
    assert_eq!(json["blocks"][1]["dual"]["passed"], false);
    assert_eq!(json["blocks"][0]["dual"]["passed"], true);
    Ok(())
}

#[test]
fn one_flipped_sign_fails_its_block_alone() -> Result<(), CheckError> {
    let report = run(Variant::SignFlip, &CustomOpSettings::default()).0?;
    assert_eq!(failed_blocks(&report), vec![(1, 1)]);
    let fd = report.blocks[3]
        .finite_differences
        .as_ref()
        .expect("compared");
    assert!(!fd.passed);
    // ⟨u, J v⟩ and ⟨Jᵀu, v⟩ have opposite signs there.
    let worst = report.blocks[3].dual.worst[0];
    assert!((worst.reverse + worst.reference).abs() < 1e-12 * worst.reference.abs());
    Ok(())
}

#[test]
fn non_finite_vjp_is_reported_with_its_entry() -> Result<(), CheckError> {
    let settings = CustomOpSettings {
        pairs: 2,
        ..Default::default()
    };
    let report = run(Variant::Nan, &settings).0?;
    assert!(!report.passed());
    let at = |pair| NonFiniteCotangent {
        pair,
        output: 0,
        input: 0,
        entry: Entry { row: 1, col: 0 },
    };
    assert_eq!(report.non_finite_cotangents, vec![at(0), at(1)]);
    assert_eq!(report.blocks[0].dual.non_finite, 2);
    assert_eq!(failed_blocks(&report), vec![(0, 0)]);
    assert!(report.to_string().contains("non-finite VJP cotangents"));
    let json = serde_json::to_string(&report).expect("serialises");
    assert!(json.contains(r#""reverse":"NaN""#), "{json}");
    Ok(())
}

#[test]
fn inconsistent_ops_and_bad_calls_are_typed_errors() {
    let settings = CustomOpSettings::default();
    match run(Variant::DualDropsOutput, &settings).0 {
        Err(CheckError::OutputShapeChanged {
            output: 1,
            expected: (3, 3),
            found: (0, 0),
            run: Run::DualDirection { input: Some(0), .. },
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    match run(Variant::OneCotangent, &settings).0 {
        Err(CheckError::Tape {
            run: Run::Reverse,
            source,
        }) => assert!(source.to_string().contains("1 cotangents for 2 inputs")),
        other => panic!("unexpected {other:?}"),
    }
    let zero_pairs = CustomOpSettings {
        pairs: 0,
        ..Default::default()
    };
    assert!(matches!(
        run(Variant::Correct, &zero_pairs).0,
        Err(CheckError::InvalidSettings { .. })
    ));
    // Counts that would preallocate past memory (2^40, usize::MAX) are refused up front.
    for pairs in [1usize << 40, usize::MAX] {
        let huge = CustomOpSettings {
            pairs,
            ..Default::default()
        };
        assert!(matches!(
            run(Variant::Correct, &huge).0,
            Err(CheckError::InvalidSettings { .. })
        ));
    }
    let forwards = Rc::new(Cell::new((0, 0)));
    let make = || ProductTanh {
        variant: Variant::Correct,
        forwards: forwards.clone(),
    };
    assert!(matches!(
        check_custom_op(make, &[], &settings),
        Err(CheckError::NoInputs)
    ));
    let mut nan = inputs();
    nan[0][(2, 1)] = f64::NAN;
    assert!(matches!(
        check_custom_op(make, &nan, &settings),
        Err(CheckError::NonFiniteInput {
            input: 0,
            row: 2,
            col: 1,
            ..
        })
    ));
    // Nothing ran the op on the refused calls.
    assert_eq!(forwards.get(), (0, 0));
}

/// An op whose forward fails on dual numbers.
struct RealOnly;

impl<T: Scalar> CustomOp<T> for RealOnly {
    fn name(&self) -> &str {
        "real_only"
    }
    fn forward(&mut self, inputs: &[&DMatrix<T>]) -> Result<Vec<DMatrix<T>>, BoxError> {
        if carries_derivatives::<T>() {
            return Err(Box::new(Message("no dual numbers here".into())));
        }
        Ok(vec![inputs[0].clone()])
    }
    fn vjp(
        &self,
        _inputs: &[&DMatrix<T>],
        _outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> Result<Vec<Option<DMatrix<T>>>, BoxError> {
        Ok(cotangents)
    }
    fn held_bytes(&self) -> usize {
        0
    }
}

#[test]
fn op_errors_name_the_run() {
    let err =
        check_custom_op(|| RealOnly, &[dmatrix![1.0]], &CustomOpSettings::default()).unwrap_err();
    assert!(matches!(
        err,
        CheckError::Function {
            run: Run::DualDirection {
                index: 0,
                input: Some(0)
            },
            ..
        }
    ));
    assert!(err.to_string().contains("no dual numbers here"), "{err}");
}
