//! The public gradient checks: `gradcheck` passes correct functions and flags planted errors
//! (a VJP off by a factor, a gradient 1e-6 off in one input or one entry, NaN gradients) at the
//! right input and entry; its cost is what the docs say; edge inputs give typed errors.

use std::cell::Cell;

use ad_core::nalgebra::{dmatrix, DMatrix};
use ad_core::num_dual::Dual64;
use ad_core::{
    carries_derivatives, check, gradcheck, gradcheck_fd, BoxError, CheckError, CustomOp,
    GradcheckReport, GradcheckSettings, Scalar, Tape, TapeFunction, TapeFunctionF64, Var,
};
use check::{Comparison, Entries, Entry, OutputReduction, Run};

/// Deterministic, irregular test values.
fn filled(r: usize, c: usize, seed: f64) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |i, j| {
        (seed + 1.3 * i as f64 + 0.7 * j as f64 + 0.37 * (i * j) as f64).sin()
    })
}

/// How a [`Planted`] op gets its VJP wrong.
#[derive(Clone, Copy, Debug)]
enum Plant {
    /// Every cotangent entry times this factor (1 is the correct VJP).
    Factor(f64),
    /// Only entry `(row, col)` times `1 + delta`.
    Entry(usize, usize, f64),
    /// Entry `(row, col)` NaN.
    Nan(usize, usize),
}

/// The identity as a custom op, with a VJP wrong as planted.
struct Planted(Plant);

impl<T: Scalar> CustomOp<T> for Planted {
    fn name(&self) -> &str {
        "planted"
    }
    fn forward(&mut self, inputs: &[&DMatrix<T>]) -> Result<Vec<DMatrix<T>>, BoxError> {
        Ok(vec![inputs[0].clone()])
    }
    fn vjp(
        &self,
        _inputs: &[&DMatrix<T>],
        _outputs: &[&DMatrix<T>],
        cotangents: Vec<Option<DMatrix<T>>>,
        _wants: &[bool],
    ) -> Result<Vec<Option<DMatrix<T>>>, BoxError> {
        let Some(mut g) = cotangents.into_iter().next().flatten() else {
            return Ok(vec![None]);
        };
        match self.0 {
            Plant::Factor(c) => g *= T::constant(c),
            Plant::Entry(r, c, delta) => g[(r, c)] *= T::constant(1.0 + delta),
            Plant::Nan(r, c) => g[(r, c)] = T::constant(f64::NAN),
        }
        Ok(vec![Some(g)])
    }
    fn held_bytes(&self) -> usize {
        0
    }
}

/// `x` through a [`Planted`] op, if one is given.
fn planted<'t, T: Scalar>(x: Var<'t, T>, plant: Option<Plant>) -> ad_core::Result<Var<'t, T>> {
    match plant {
        Some(plant) => Ok(x.tape().custom(Planted(plant), &[x])?[0]),
        None => Ok(x),
    }
}

/// `f(W, b, z) = Σ tanh(X Wᵀ + b)² · 0.5 + Σ exp(0.3 z) / (1 + z²)` on a fixed batch `X`, with
/// an optional planted op on `W` (input 0) or `z` (input 2). Counts its runs per scalar kind.
struct Composed {
    x: DMatrix<f64>,
    plant: Option<(usize, Plant)>,
    f64_runs: Cell<usize>,
    dual_runs: Cell<usize>,
}

impl Composed {
    fn new(plant: Option<(usize, Plant)>) -> Self {
        Composed {
            x: filled(5, 4, 0.3) * 1.5,
            plant,
            f64_runs: Cell::new(0),
            dual_runs: Cell::new(0),
        }
    }

    fn inputs() -> Vec<DMatrix<f64>> {
        vec![
            filled(3, 4, 1.1),
            filled(1, 3, 2.0) * 0.2,
            filled(2, 3, -0.4),
        ]
    }
}

impl TapeFunction for Composed {
    type Error = ad_core::Error;
    fn eval<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        p: &[Var<'t, T>],
    ) -> Result<Var<'t, T>, Self::Error> {
        let runs = if carries_derivatives::<T>() {
            &self.dual_runs
        } else {
            &self.f64_runs
        };
        runs.set(runs.get() + 1);
        let mut p = p.to_vec();
        if let Some((i, plant)) = self.plant {
            p[i] = planted(p[i], Some(plant))?;
        }
        let x = tape.constant(self.x.map(T::constant));
        let h = x.matmul_t(p[0])?.add_row(p[1])?.tanh();
        let first = h.square().sum().scale(T::constant(0.5));
        let z = p[2];
        let second = z
            .scale(T::constant(0.3))
            .exp()
            .div(z.square().add_scalar(T::one()))?
            .sum();
        first.add(second)
    }
}

fn dual(report: &GradcheckReport, input: usize) -> &Comparison<Entry> {
    report.inputs[input].dual.as_ref().expect("dual compared")
}

fn fd(report: &GradcheckReport, input: usize) -> &Comparison<Entry> {
    report.inputs[input]
        .finite_differences
        .as_ref()
        .expect("finite differences compared")
}

#[test]
fn correct_function_passes_and_costs_one_dual_run_per_entry() -> Result<(), CheckError> {
    let fun = Composed::new(None);
    let report = gradcheck(&fun, &Composed::inputs(), &GradcheckSettings::default())?;
    assert!(report.passed(), "{report}");
    let n = 12 + 3 + 6;
    for input in 0..3 {
        assert!(dual(&report, input).max_rel_error < 1e-12, "{report}");
        assert!(fd(&report, input).max_rel_error < 1e-7, "{report}");
    }
    assert_eq!(dual(&report, 0).compared, 12);
    // n Dual64 runs for n entries, two shifted f64 runs per entry plus the reverse run.
    assert_eq!(fun.dual_runs.get(), n);
    assert_eq!(fun.f64_runs.get(), 1 + 2 * n);
    assert_eq!(report.evaluations.dual, n);
    assert_eq!(report.evaluations.finite_difference, 2 * n);
    assert_eq!(report.evaluations.reverse, 1);
    // The value is the function's.
    let tape = Tape::<f64>::new();
    let vars: Vec<_> = Composed::inputs()
        .into_iter()
        .map(|m| tape.var(m))
        .collect();
    let value = fun.eval(&tape, &vars).and_then(|v| v.scalar_value());
    assert_eq!(report.value, value.expect("evaluates"));
    Ok(())
}

#[test]
fn vjp_off_by_a_factor_fails_at_its_input_only() -> Result<(), CheckError> {
    for factor in [1.01, 2.0] {
        let fun = Composed::new(Some((2, Plant::Factor(factor))));
        let report = gradcheck(&fun, &Composed::inputs(), &GradcheckSettings::default())?;
        assert!(!report.passed());
        for input in [0, 1] {
            assert!(dual(&report, input).passed && fd(&report, input).passed);
        }
        for c in [dual(&report, 2), fd(&report, 2)] {
            assert!(!c.passed);
            // reverse = factor · reference at every entry: relative error 1 − 1/factor.
            let expected = 1.0 - 1.0 / factor;
            assert!((c.max_rel_error - expected).abs() < 1e-6 * expected.max(1e-2));
            let worst = c.worst[0];
            assert!((worst.reverse / worst.reference - factor).abs() < 1e-6);
        }
        let table = report.to_string();
        assert!(table.starts_with("gradcheck FAILED"), "{table}");
        assert!(table.contains("worst values of the failed comparisons"));
    }
    Ok(())
}

#[test]
fn a_gradient_1e6_off_is_flagged_by_dual64_not_by_differences() -> Result<(), CheckError> {
    let fun = Composed::new(Some((0, Plant::Factor(1.0 + 1e-6))));
    let report = gradcheck(&fun, &Composed::inputs(), &GradcheckSettings::default())?;
    let c = dual(&report, 0);
    assert!(!c.passed, "{report}");
    assert!((c.max_rel_error - 1e-6).abs() < 1e-8, "{report}");
    assert!(dual(&report, 1).passed && dual(&report, 2).passed);
    // Finite differences (accurate to ~1e-8 here) cannot resolve it at their tolerance.
    assert!(fd(&report, 0).passed);
    Ok(())
}

#[test]
fn one_entry_1e6_off_is_located() -> Result<(), CheckError> {
    let fun = Composed::new(Some((0, Plant::Entry(1, 2, 1e-6))));
    let settings = GradcheckSettings {
        worst: 2,
        ..Default::default()
    };
    let report = gradcheck(&fun, &Composed::inputs(), &settings)?;
    let c = dual(&report, 0);
    assert!(!c.passed);
    assert_eq!(c.worst[0].at, Entry { row: 1, col: 2 });
    assert!((c.worst[0].rel_error - 1e-6).abs() < 1e-8);
    // Every other entry is exact up to rounding.
    assert!(c.worst[1].rel_error < 1e-12, "{report}");
    assert!(report.to_string().contains("(1, 2)"));
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["inputs"][0]["dual"]["passed"], false);
    assert_eq!(json["inputs"][0]["dual"]["worst"][0]["at"]["row"], 1);
    assert_eq!(json["inputs"][0]["dual"]["worst"][0]["at"]["col"], 2);
    assert_eq!(json["inputs"][1]["dual"]["passed"], true);
    Ok(())
}

#[test]
fn nan_gradient_is_a_located_failure() -> Result<(), CheckError> {
    let fun = Composed::new(Some((2, Plant::Nan(0, 1))));
    let report = gradcheck(&fun, &Composed::inputs(), &GradcheckSettings::default())?;
    assert!(!report.passed());
    for c in [dual(&report, 2), fd(&report, 2)] {
        assert_eq!(c.non_finite, 1);
        assert_eq!(c.worst[0].at, Entry { row: 0, col: 1 });
        assert!(c.worst[0].reverse.is_nan());
        assert!(c.worst[0].reference.is_finite());
    }
    let json = serde_json::to_string(&report).expect("serialises");
    assert!(json.contains(r#""reverse":"NaN""#), "{json}");
    assert!(report.to_string().contains("NaN"));
    Ok(())
}

#[test]
fn random_directions_and_sampled_entries() -> Result<(), CheckError> {
    let settings = GradcheckSettings {
        entries: Entries::Sample { per_input: 2 },
        directions: 4,
        ..Default::default()
    };
    let fun = Composed::new(None);
    let report = gradcheck(&fun, &Composed::inputs(), &settings)?;
    assert!(report.passed(), "{report}");
    assert!(report
        .inputs
        .iter()
        .all(|r| dual(&report, r.input).compared == 2));
    // 3 inputs × 2 entries plus one run per direction.
    assert_eq!(fun.dual_runs.get(), 6 + 4);
    let directions = report.directions.as_ref().expect("directions compared");
    assert_eq!(directions.dual.as_ref().map(|c| c.compared), Some(4));
    // Directions alone (no entries) see a gradient 1e-6 off.
    let planted = Composed::new(Some((1, Plant::Factor(1.0 + 1e-6))));
    let only_directions = GradcheckSettings {
        entries: Entries::Sample { per_input: 0 },
        ..settings
    };
    let report = gradcheck(&planted, &Composed::inputs(), &only_directions)?;
    let c = report.directions.as_ref().and_then(|d| d.dual.as_ref());
    assert!(
        c.is_some_and(|c| !c.passed && c.max_rel_error > 1e-8),
        "{report}"
    );
    assert_eq!(planted.dual_runs.get(), 4);
    Ok(())
}

/// `F(x) = sin(x) ∘ x` elementwise (any shape), through an optional planted op.
struct Vector(Option<Plant>);

impl TapeFunction for Vector {
    type Error = ad_core::Error;
    fn eval<'t, T: Scalar>(
        &self,
        _tape: &'t Tape<T>,
        p: &[Var<'t, T>],
    ) -> Result<Var<'t, T>, Self::Error> {
        let x = planted(p[0], self.0)?;
        x.sin().mul(p[0])
    }
}

#[test]
fn non_scalar_outputs_need_a_projection() -> Result<(), CheckError> {
    let x = vec![filled(2, 3, 0.9)];
    let err = gradcheck(&Vector(None), &x, &GradcheckSettings::default()).unwrap_err();
    assert!(matches!(
        err,
        CheckError::NonScalarOutput {
            shape: (2, 3),
            run: Run::Reverse
        }
    ));
    let projected = GradcheckSettings {
        output: OutputReduction::RandomCotangent,
        ..Default::default()
    };
    let report = gradcheck(&Vector(None), &x, &projected)?;
    assert!(report.passed(), "{report}");
    assert_eq!(report.output_shape, (2, 3));
    let report = gradcheck(&Vector(Some(Plant::Entry(1, 0, 1e-6))), &x, &projected)?;
    assert!(!report.passed());
    assert_eq!(dual(&report, 0).worst[0].at, Entry { row: 1, col: 0 });
    Ok(())
}

/// An f64-only function: `Σ exp(x) · x`, through an optional planted op.
struct RealOnly(Option<Plant>);

impl TapeFunctionF64 for RealOnly {
    type Error = ad_core::Error;
    fn eval_f64<'t>(
        &self,
        _tape: &'t Tape<f64>,
        p: &[Var<'t, f64>],
    ) -> Result<Var<'t, f64>, Self::Error> {
        let x = planted(p[0], self.0)?;
        Ok(x.exp().mul(p[0])?.sum())
    }
}

#[test]
fn finite_difference_path_for_f64_only_functions() -> Result<(), CheckError> {
    let x = vec![filled(3, 2, 0.1)];
    let settings = GradcheckSettings::default();
    let report = gradcheck_fd(&RealOnly(None), &x, &settings)?;
    assert!(report.passed(), "{report}");
    assert!(report.inputs[0].dual.is_none());
    assert_eq!(report.evaluations.dual, 0);
    let report = gradcheck_fd(&RealOnly(Some(Plant::Factor(1.01))), &x, &settings)?;
    assert!(!report.passed());
    let off = GradcheckSettings {
        finite_differences: false,
        ..settings
    };
    assert!(matches!(
        gradcheck_fd(&RealOnly(None), &x, &off),
        Err(CheckError::InvalidSettings { .. })
    ));
    Ok(())
}

/// A user error type wrapping the tape's, as an ODE crate's would.
#[derive(Debug, thiserror::Error)]
enum UserError {
    #[error("the model diverged at x = {0}")]
    Diverged(f64),
    #[error(transparent)]
    Tape(#[from] ad_core::Error),
}

/// `Σ x²`, failing whenever an entry exceeds `limit`.
struct Limited {
    limit: f64,
}

impl TapeFunction for Limited {
    type Error = UserError;
    fn eval<'t, T: Scalar>(
        &self,
        _tape: &'t Tape<T>,
        p: &[Var<'t, T>],
    ) -> Result<Var<'t, T>, UserError> {
        let largest = p[0].with_value(|m| m.iter().map(|x| x.primal()).fold(f64::MIN, f64::max))?;
        if largest > self.limit {
            return Err(UserError::Diverged(largest));
        }
        Ok(p[0].square().sum())
    }
}

#[test]
fn function_errors_name_the_run() {
    let x = vec![dmatrix![0.5, 1.0]];
    let settings = GradcheckSettings::default();
    // Fails at the point itself.
    let err = gradcheck(&Limited { limit: 0.9 }, &x, &settings).unwrap_err();
    assert!(matches!(
        err,
        CheckError::Function {
            run: Run::Reverse,
            ..
        }
    ));
    assert!(err.to_string().contains("diverged at x = 1"), "{err}");
    // Fails only where finite differences shift entry (0, 1) up.
    let err = gradcheck(&Limited { limit: 1.0 }, &x, &settings).unwrap_err();
    match err {
        CheckError::Function {
            run:
                Run::ShiftedEntry {
                    input: 0,
                    row: 0,
                    col: 1,
                    step,
                },
            ..
        } => assert!(step > 0.0),
        other => panic!("unexpected {other}"),
    }
    // Without finite differences the same function checks fine.
    let dual_only = GradcheckSettings {
        finite_differences: false,
        ..settings
    };
    let report = gradcheck(&Limited { limit: 1.0 }, &x, &dual_only).expect("dual only");
    assert!(report.passed(), "{report}");
}

/// Returns `x` itself (2×1) once its first entry is above 1, `Σ x` otherwise.
struct ShapeShifter;

impl TapeFunction for ShapeShifter {
    type Error = ad_core::Error;
    fn eval<'t, T: Scalar>(
        &self,
        _tape: &'t Tape<T>,
        p: &[Var<'t, T>],
    ) -> Result<Var<'t, T>, Self::Error> {
        let first = p[0].with_value(|m| m[0].primal())?;
        Ok(if first > 1.0 { p[0] } else { p[0].sum() })
    }
}

#[test]
fn edge_inputs_are_typed_errors_or_reports() -> Result<(), CheckError> {
    let settings = GradcheckSettings::default();
    let fun = Composed::new(None);
    assert!(matches!(
        gradcheck(&fun, &[], &settings),
        Err(CheckError::NoInputs)
    ));
    assert!(matches!(
        gradcheck(&Vector(None), &[DMatrix::zeros(0, 3)], &settings),
        Err(CheckError::NothingToCheck { .. })
    ));
    let mut inputs = Composed::inputs();
    inputs[1][(0, 2)] = f64::NAN;
    match gradcheck(&fun, &inputs, &settings) {
        Err(CheckError::NonFiniteInput {
            input: 1,
            row: 0,
            col: 2,
            value,
        }) => assert!(value.is_nan()),
        other => panic!("unexpected {other:?}"),
    }
    // An empty input beside others: nothing compared for it, the rest checked.
    let report = gradcheck(
        &Vector(None),
        &[dmatrix![0.3, -0.2], DMatrix::zeros(0, 2)],
        &GradcheckSettings {
            output: OutputReduction::RandomCotangent,
            ..Default::default()
        },
    )?;
    assert_eq!(dual(&report, 1).compared, 0);
    assert!(report.passed(), "{report}");
    assert!(matches!(
        gradcheck(&ShapeShifter, &[dmatrix![1.0; 0.5]], &settings),
        Err(CheckError::OutputShapeChanged {
            expected: (1, 1),
            found: (2, 1),
            run: Run::DualEntry { .. } | Run::ShiftedEntry { .. },
            ..
        })
    ));
    let bad = [
        GradcheckSettings {
            dual: false,
            finite_differences: false,
            ..Default::default()
        },
        GradcheckSettings {
            dual_tolerance: check::Tolerance {
                rel: f64::NAN,
                floor: 0.0,
            },
            ..Default::default()
        },
        GradcheckSettings {
            entries: Entries::Sample { per_input: 0 },
            ..Default::default()
        },
    ];
    for s in &bad {
        let err = gradcheck(&fun, &Composed::inputs(), s).unwrap_err();
        assert!(matches!(err, CheckError::InvalidSettings { .. }), "{err}");
    }
    // The function (and a tape of the caller's) is fine after all that.
    let tape = Tape::<Dual64>::new();
    let x = tape.var(dmatrix![Dual64::new(0.5, 1.0)]);
    assert_eq!(
        x.square().sum().scalar_value().ok().map(|d| d.eps),
        Some(1.0)
    );
    assert!(gradcheck(&fun, &Composed::inputs(), &settings)?.passed());
    Ok(())
}
