//! Every error path returns its typed variant, in the taped, adjoint and untaped modes alike,
//! and leaves the caller's tape as it was and usable.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use ad_core::nalgebra::DMatrix;
use ad_core::{Result as TapeResult, Scalar, Tape, Var};
use common::*;
use ode::{
    odeint, odeint_adjoint, odeint_with, solve, tableau, Backsolve, Dynamics, Error, Options,
    Strategy,
};

/// The tape is as long as before the failing call, and still records and differentiates
/// (what this records is rewound again, so the check can be repeated).
fn assert_usable(tape: &Tape<f64>, len_before: usize) {
    assert_eq!(
        tape.len(),
        len_before,
        "a failed solve must leave the tape as it was"
    );
    let mark = tape.mark();
    let x = tape.var(DMatrix::from_element(1, 1, 3.0));
    let g = tape.backward(x.square().sum()).unwrap();
    assert_eq!(g.get(x).unwrap()[(0, 0)], 6.0);
    tape.rewind(mark).unwrap();
}

/// Every strategy, as named by `Strategy::from_str`.
const STRATEGIES: [&str; 7] = [
    "taped",
    "backsolve",
    "backsolve-checkpointed:3",
    "aca",
    "checkpointed:2",
    "auto:100000000",
    "auto:0",
];

/// The errors of every strategy and (for a row grid) of the untaped solve.
fn errors<F: Dynamics<f64> + Dynamics<ad_core::num_dual::Dual64> + Clone + 'static>(
    f: &F,
    h0: &DMatrix<f64>,
    grid: &DMatrix<f64>,
    params: &[DMatrix<f64>],
    opts: &Options,
) -> Vec<Error> {
    let mut out = Vec::new();
    for name in STRATEGIES {
        let strategy: Strategy = name.parse().unwrap();
        let tape = Tape::<f64>::new();
        let h = tape.var(h0.clone());
        let t = tape.var(grid.clone());
        let p: Vec<_> = params.iter().map(|m| tape.var(m.clone())).collect();
        let before = tape.len();
        let result = match name {
            "taped" => odeint(&tape, f, h, t, &p, opts),
            "backsolve" => odeint_adjoint(&tape, f, h, t, &p, opts),
            _ => odeint_with(&tape, f, h, t, &p, opts, &strategy),
        };
        match result {
            Ok(_) => panic!("expected an error ({name})"),
            Err(e) => out.push(e),
        }
        assert_usable(&tape, before);
    }
    if grid.nrows() == 1 {
        let times: Vec<f64> = grid.iter().copied().collect();
        match solve(f, h0, &times, params, opts) {
            Ok(_) => panic!("expected an error from solve"),
            Err(e) => out.push(e),
        }
    }
    out
}

fn row(t: &[f64]) -> DMatrix<f64> {
    DMatrix::from_row_slice(1, t.len(), t)
}

fn decay() -> (Decay, DMatrix<f64>, Vec<DMatrix<f64>>) {
    (
        Decay,
        DMatrix::from_element(2, 2, 1.0),
        vec![DMatrix::from_element(1, 1, 0.5)],
    )
}

#[test]
fn bad_time_grids() {
    let (f, h0, p) = decay();
    let opts = Options::default();
    let grids = [
        DMatrix::zeros(1, 0),
        row(&[-f64::MAX, f64::MAX]),
        row(&[0.0, 0.0]),
        row(&[0.0, 1.0, 1.0]),
        row(&[0.0, 1.0, 0.5]),
        row(&[1.0, 0.0, 0.5]),
        row(&[0.0, f64::NAN]),
        row(&[0.0, f64::INFINITY]),
        row(&[f64::NEG_INFINITY, 0.0]),
        row(&[0.0, 0.5, f64::NAN, 1.0]),
        DMatrix::from_row_slice(2, 2, &[0.0, 1.0, 2.0, 3.0]),
    ];
    for grid in &grids {
        for e in errors(&f, &h0, grid, &p, &opts) {
            assert!(matches!(e, Error::BadTimeGrid { .. }), "{grid}: {e:?}");
        }
    }
    // A column grid is as good as a row.
    let tape = Tape::<f64>::new();
    let col = tape.constant(DMatrix::from_column_slice(3, 1, &[0.0, 0.5, 1.0]));
    let k = tape.var(p[0].clone());
    let sol = odeint(&tape, &f, tape.var(h0.clone()), col, &[k], &opts).unwrap();
    assert_eq!(sol.outputs.len(), 3);
}

#[test]
fn bad_tolerances() {
    let (f, h0, p) = decay();
    let grid = row(&[0.0, 1.0]);
    for bad in [0.0, -1e-6, f64::NAN, f64::INFINITY] {
        for (name, opts) in [
            ("rtol", Options::default().tolerances(bad, 1e-9)),
            ("atol", Options::default().tolerances(1e-7, bad)),
        ] {
            for e in errors(&f, &h0, &grid, &p, &opts) {
                assert!(
                    matches!(e, Error::BadOption { name: n, .. } if n == name),
                    "{name} = {bad}: {e:?}"
                );
            }
        }
    }
}

#[test]
fn fixed_step_methods_need_a_step_size() {
    let (f, h0, p) = decay();
    let grid = row(&[0.0, 1.0]);
    for name in FIXED {
        let opts = Options::with_method(name).unwrap();
        for e in errors(&f, &h0, &grid, &p, &opts) {
            assert!(
                matches!(e, Error::MissingStepSize { option: "step_size", method } if method == name),
                "{name}: {e:?}"
            );
        }
    }
    // A fixed-step backward method needs one too.
    let backsolve = Strategy::Backsolve(Backsolve {
        method: Some(&tableau::RK4),
        ..Backsolve::default()
    });
    let tape = Tape::<f64>::new();
    let h = tape.var(h0.clone());
    let t = tape.var(grid.clone());
    let e = odeint_with(&tape, &f, h, t, &[], &Options::default(), &backsolve)
        .err()
        .expect("a fixed-step backward method without a step size is refused");
    assert!(
        matches!(
            e,
            Error::MissingStepSize {
                option: "Backsolve::step_size",
                method: "rk4"
            }
        ),
        "{e:?}"
    );
    assert_usable(&tape, 2);
    // Zero checkpoints or slots are refused, naming the setting.
    for (strategy, setting) in [
        (Strategy::backsolve_checkpointed(0), "checkpoints"),
        (Strategy::Checkpointed { slots: 0 }, "slots"),
    ] {
        let e = odeint_with(&tape, &f, h, t, &[], &Options::default(), &strategy)
            .err()
            .expect("zero states are refused");
        assert!(
            matches!(e, Error::BadOption { name, .. } if name == setting),
            "{e:?}"
        );
    }
    assert!("checkpointed:0".parse::<Strategy>().is_err());
    assert!("bogus".parse::<Strategy>().is_err());
    assert!(matches!(
        Options::with_method("rk45"),
        Err(Error::UnknownMethod { name }) if name == "rk45"
    ));
}

#[test]
fn bad_initial_states() {
    let (f, _, p) = decay();
    let grid = row(&[0.0, 1.0]);
    let opts = Options::default();
    for h0 in [
        DMatrix::zeros(0, 0),
        DMatrix::zeros(3, 0),
        DMatrix::zeros(0, 2),
    ] {
        for e in errors(&f, &h0, &grid, &p, &opts) {
            assert!(
                matches!(e, Error::EmptyState { rows, cols } if (rows, cols) == h0.shape()),
                "{:?}: {e:?}",
                h0.shape()
            );
        }
    }
    for bad in [f64::NAN, f64::INFINITY] {
        let mut h0 = DMatrix::from_element(2, 2, 1.0);
        h0[(1, 0)] = bad;
        for e in errors(&f, &h0, &grid, &p, &opts) {
            assert!(
                matches!(e, Error::NonFiniteInitialState { row: 1, col: 0, value, t } if t == 0.0 && (value == bad || value.is_nan() && bad.is_nan())),
                "{bad}: {e:?}"
            );
            assert!(e.to_string().contains("initial state h0"), "{e}");
        }
    }
}

/// Returns only the first column of `h`: the wrong shape.
#[derive(Clone)]
struct FirstColumn;

impl<T: Scalar> Dynamics<T> for FirstColumn {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.slice_cols(0, 1)
    }
}

#[test]
fn field_output_of_the_wrong_shape() {
    let h0 = DMatrix::from_element(3, 2, 1.0);
    for e in errors(
        &FirstColumn,
        &h0,
        &row(&[0.0, 1.0]),
        &[],
        &Options::default(),
    ) {
        assert!(
            matches!(&e, Error::Shape { what, expected: (3, 2), got: (3, 1) } if what == "f(t, h)"),
            "{e:?}"
        );
    }
}

/// `h' = −h` until `t` passes `at`, then `h · value` (NaN or ∞).
#[derive(Clone)]
struct Poisoned {
    at: f64,
    value: f64,
}

impl<T: Scalar> Dynamics<T> for Poisoned {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        if t.scalar_value()?.primal() > self.at {
            Ok(h.scale(T::constant(self.value)))
        } else {
            Ok(-h)
        }
    }
}

#[test]
fn non_finite_derivatives_name_the_time() {
    let h0 = DMatrix::from_element(2, 3, 1.0);
    for value in [f64::NAN, f64::INFINITY] {
        let f = Poisoned { at: 0.5, value };
        for method in ["dopri5", "bosh3"] {
            let opts = Options::with_method(method).unwrap();
            for e in errors(&f, &h0, &row(&[0.0, 1.0, 2.0]), &[], &opts) {
                assert!(
                    matches!(e, Error::NonFinite { what: "derivative", t } if t > 0.5 && t < 1.0),
                    "{method} {value}: {e:?}"
                );
            }
        }
    }
}

/// `h' = h²` blows up at `t = 1/h0`.
#[derive(Clone)]
struct Square;

impl<T: Scalar> Dynamics<T> for Square {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        Ok(h.square())
    }
}

#[test]
fn finite_time_blow_up_is_an_error_not_a_panic() {
    let h0 = DMatrix::from_element(1, 1, 1.0);
    for e in errors(&Square, &h0, &row(&[0.0, 2.0]), &[], &Options::default()) {
        let t = match e {
            Error::NonFinite { t, .. } | Error::StepSizeUnderflow { t, .. } => t,
            Error::TooManySteps { t, .. } => t,
            e => panic!("{e:?}"),
        };
        assert!(t > 0.9 && t < 1.1, "stopped at t = {t}");
    }
}

/// `min_step` above what the controller wants: steps are clamped to it and accepted (as
/// torchdiffeq and Diffrax do), and counted. On a stiff problem the clamped explicit steps
/// are unstable, and the error then names the state blowing up.
#[test]
fn min_step_clamps_and_counts() {
    let h0 = DMatrix::from_element(2, 2, 1.0);
    let opts = Options {
        min_step: 0.05,
        ..Options::default().tolerances(1e-13, 1e-13)
    };
    let tape = Tape::<f64>::new();
    let k = tape.var(DMatrix::from_element(1, 1, 1.0));
    let t = tape.constant(row(&[0.0, 1.0]));
    let sol = odeint(&tape, &Decay, tape.var(h0.clone()), t, &[k], &opts).unwrap();
    assert!(sol.stats.clamped > 0, "{:?}", sol.stats);
    let exact = (-1.0f64).exp();
    let got = sol.last().value().unwrap()[(0, 0)];
    assert!((got - exact).abs() < 1e-7, "{got} vs {exact}");
    assert!(sol
        .steps
        .iter()
        .all(|s| s.dt.abs() >= 0.05 - 1e-15 || s.landed));

    let p = [DMatrix::from_element(1, 1, 1e6)];
    let stiff = Options {
        min_step: 1e-3,
        ..Options::default()
    };
    for e in errors(&Decay, &h0, &row(&[0.0, 1.0]), &p, &stiff) {
        assert!(
            matches!(e, Error::NonFinite { what: "state" | "derivative", t } if (0.0..=1.0).contains(&t)),
            "{e:?}"
        );
    }
}

#[test]
fn too_many_steps_reports_how_far_it_got() {
    let h0 = DMatrix::from_element(2, 2, 1.0);
    let p = [DMatrix::from_element(1, 1, 1.0)];
    let opts = Options {
        max_num_steps: 5,
        ..Options::default().tolerances(1e-10, 1e-12)
    };
    for grid in [row(&[0.0, 5.0, 10.0]), row(&[10.0, 0.0])] {
        for e in errors(&Decay, &h0, &grid, &p, &opts) {
            let (t0, t_end) = (grid[0], grid[grid.len() - 1]);
            assert!(
                matches!(e, Error::TooManySteps { max_num_steps: 5, t } if (t - t0) * (t_end - t0) > 0.0 && (t_end - t) * (t_end - t0) > 0.0),
                "{e:?}"
            );
        }
    }
}

#[test]
fn vars_from_another_tape_or_rewound_are_rejected() {
    let (f, h0, p) = decay();
    let opts = Options::default();
    let grid = row(&[0.0, 1.0]);
    for adjoint in [false, true] {
        let run = |tape, h, t, k: Var<'_, f64>| {
            if adjoint {
                odeint_adjoint(tape, &f, h, t, &[k], &opts).map(|_| ())
            } else {
                odeint(tape, &f, h, t, &[k], &opts).map(|_| ())
            }
        };
        let tape = Tape::<f64>::new();
        let other = Tape::<f64>::new();
        let h = tape.var(h0.clone());
        let t = tape.var(grid.clone());
        let k = tape.var(p[0].clone());
        let (h_x, t_x, k_x) = (
            other.var(h0.clone()),
            other.var(grid.clone()),
            other.var(p[0].clone()),
        );
        let (before, other_before) = (tape.len(), other.len());
        for (which, result) in [
            ("h0", run(&tape, h_x, t, k)),
            ("t", run(&tape, h, t_x, k)),
            ("param", run(&tape, h, t, k_x)),
        ] {
            assert!(
                matches!(result, Err(Error::Tape(ad_core::Error::ForeignVar { .. }))),
                "adjoint {adjoint}, foreign {which}: {result:?}"
            );
            assert_usable(&tape, before);
            assert_eq!(
                other.len(),
                other_before,
                "nothing recorded on the other tape"
            );
        }

        // Stale: created after a mark, then rewound away.
        let mark = tape.mark();
        let stale = tape.var(h0.clone());
        tape.rewind(mark).unwrap();
        let result = run(&tape, stale, t, k);
        assert!(
            matches!(result, Err(Error::Tape(ad_core::Error::StaleVar { .. }))),
            "adjoint {adjoint}: {result:?}"
        );
        assert_usable(&tape, before);
    }
}

/// `h' = −h`, but NaN from the `poison_after`-th evaluation on (counted across clones).
#[derive(Clone)]
struct FailsLater {
    calls: Rc<Cell<usize>>,
    poison_after: usize,
}

impl<T: Scalar> Dynamics<T> for FailsLater {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() > self.poison_after {
            Ok(h.scale(T::constant(f64::NAN)))
        } else {
            Ok(-h)
        }
    }
}

/// An error inside the adjoint's backward solve surfaces from `tape.backward` with the ode
/// error inside, and the tape stays usable.
#[test]
fn errors_in_the_adjoint_backward_pass() {
    // Count the forward solve's evaluations, then poison every evaluation after them: the
    // forward solve succeeds and the backward solve's first evaluation fails.
    let calls = Rc::new(Cell::new(0));
    let f = FailsLater {
        calls: calls.clone(),
        poison_after: usize::MAX,
    };
    let tape = Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_element(2, 2, 1.0));
    let t = tape.var(row(&[0.0, 1.0]));
    let sol = odeint_adjoint(&tape, &f, h0, t, &[], &Options::default()).unwrap();
    assert_eq!(calls.get(), sol.stats.nfe);
    let f = FailsLater {
        calls: Rc::new(Cell::new(0)),
        poison_after: sol.stats.nfe,
    };
    let tape = Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_element(2, 2, 1.0));
    let t = tape.var(row(&[0.0, 1.0]));
    let sol = odeint_adjoint(&tape, &f, h0, t, &[], &Options::default()).unwrap();
    let loss = sol.last().sum();
    let before = tape.len();
    let err = tape.backward(loss).unwrap_err();
    // The failed pass returned no gradients, so no report either; the tape stays usable.
    match &err {
        ad_core::Error::Custom { op, source } => {
            assert_eq!(op, "odeint_adjoint");
            let inner = source
                .downcast_ref::<Error>()
                .expect("an ode::Error inside");
            assert!(
                matches!(inner, Error::NonFinite { t, .. } if (0.0..=1.0).contains(t)),
                "{inner:?}"
            );
        }
        e => panic!("{e:?}"),
    }
    assert_usable(&tape, before);
}

/// A loss whose gradient overflows inside the solve: every strategy, taped included, returns
/// a typed `NonFinite` from the backward pass instead of `Ok` with NaN or infinite gradients
/// (f64 with a weight of f64::MAX on every output, f32 with 1e38), and the tape stays usable.
#[test]
fn overflowing_gradients_are_refused_by_every_strategy() {
    fn check<T: Scalar>(weight: T, precision: &str) {
        for name in STRATEGIES.iter().chain(&["gauss", "interpolating"]) {
            let strategy: Strategy = name.parse().unwrap();
            let tape = Tape::<T>::new();
            let h0 = tape.var(DMatrix::from_element(2, 2, T::constant(1.0)));
            let k = tape.var(DMatrix::from_element(1, 1, T::constant(-0.5)));
            let grid: Vec<T> = (0..6).map(|i| T::constant(i as f64 * 0.4)).collect();
            let t = tape.var(DMatrix::from_row_slice(1, grid.len(), &grid));
            let opts = Options::default().tolerances(1e-5, 1e-7);
            let sol = odeint_with(&tape, &Decay, h0, t, &[k], &opts, &strategy).unwrap();
            let mut loss = tape.scalar(T::constant(0.0));
            for h in &sol.outputs[1..] {
                loss = loss.add(h.sum().scale(weight)).unwrap();
            }
            let before = tape.len();
            let err = tape.backward(loss).err();
            let Some(ad_core::Error::Custom { source, .. }) = &err else {
                panic!("{precision} {name}: {err:?}");
            };
            let inner = source.downcast_ref::<Error>();
            assert!(
                matches!(inner, Some(Error::NonFinite { .. })),
                "{precision} {name}: {inner:?}"
            );
            assert_eq!(tape.len(), before, "{precision} {name}");
            let x = tape.var(DMatrix::from_element(1, 1, T::constant(3.0)));
            let g = tape.backward(x.square().sum()).unwrap();
            assert_eq!(g.get(x).unwrap()[(0, 0)].primal(), 6.0);
        }
    }
    check::<f64>(f64::MAX, "f64");
    check::<f32>(1e38, "f32");
}
