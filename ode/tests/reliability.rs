//! The fuzzing campaign's ode cases: each gives the right value or a typed error naming the
//! real cause, and the tape stays usable after it.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use ad_core::nalgebra::DMatrix;
use ad_core::{Result as TapeResult, Scalar, Tape, Var};
use common::*;
use ode::tableau::{Tableau, DOPRI5};
use ode::{odeint, odeint_adjoint, odeint_with, solve, Dynamics, Error, Norm, Options};

fn row(t: &[f64]) -> DMatrix<f64> {
    DMatrix::from_row_slice(1, t.len(), t)
}

const STRATEGIES: [&str; 6] = [
    "taped",
    "backsolve",
    "backsolve-checkpointed:3",
    "aca",
    "checkpointed:2",
    "auto:1000000",
];

/// A one-point grid asks for h(t_0) = h0 only (torchdiffeq's `TestNoIntegration`): every
/// strategy returns it, with no step, and the gradient of its sum is ones.
#[test]
fn one_point_grid_returns_h0() {
    let h0 = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 3.0, 4.0]);
    for name in STRATEGIES {
        let tape = Tape::<f64>::new();
        let h = tape.var(h0.clone());
        let k = tape.var(DMatrix::from_element(1, 1, 0.5));
        let t = tape.var(row(&[0.3]));
        let sol = odeint_with(
            &tape,
            &Decay,
            h,
            t,
            &[k],
            &Options::default(),
            &name.parse().unwrap(),
        )
        .unwrap();
        assert_eq!(sol.outputs.len(), 1, "{name}");
        assert_eq!(sol.last().value().unwrap(), h0);
        assert_eq!(sol.stats.nfe, 0);
        assert!(sol.steps.is_empty());
        let g = tape.backward(sol.last().sum()).unwrap();
        assert_eq!(g.get(h).unwrap(), &DMatrix::from_element(2, 2, 1.0));
        assert!(g.get(k).is_none());
    }
    let (out, stats) = solve(
        &Decay,
        &h0,
        &[0.3],
        &[DMatrix::from_element(1, 1, 0.5)],
        &Options::default(),
    )
    .unwrap();
    assert_eq!(out, vec![h0]);
    assert_eq!(stats.nfe, 0);
}

/// `h' = −k h` that remembers the latest time it was evaluated at.
#[derive(Clone)]
struct Watched(Rc<Cell<f64>>);

impl<T: Scalar> Dynamics<T> for Watched {
    fn eval<'t>(&self, t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        self.0.set(self.0.get().max(t.scalar_value()?.primal()));
        Decay.eval(t, h, p)
    }
}

/// A fixed step larger than what remains of the interval ends on the grid's end: the
/// dynamics are never evaluated past it, and the value is the one-step (or few-step) one.
#[test]
fn fixed_steps_end_on_the_grid_end() {
    for (method, dt, steps) in [("rk4", 10.0, 1usize), ("euler", 0.3, 4)] {
        for name in STRATEGIES {
            let seen = Rc::new(Cell::new(f64::NEG_INFINITY));
            let f = Watched(seen.clone());
            let tape = Tape::<f64>::new();
            let h = tape.var(DMatrix::from_element(1, 1, 2.0));
            let k = tape.var(DMatrix::from_element(1, 1, 0.5));
            let t = tape.constant(row(&[0.0, 1.0]));
            let opts = Options::fixed(method, dt).unwrap();
            let sol = odeint_with(&tape, &f, h, t, &[k], &opts, &name.parse().unwrap()).unwrap();
            let got = sol.last().scalar_value().unwrap();
            let exact = 2.0 * (-0.5f64).exp();
            // rk4 in one step of 1 (error ~2e-4), euler in 0.3, 0.3, 0.3, 0.1.
            let tol = if method == "rk4" { 1e-3 } else { 0.1 };
            assert!(
                (got - exact).abs() < tol,
                "{method} {name}: {got} vs {exact}"
            );
            assert_eq!(sol.steps.len(), steps, "{method} {name}");
            assert_eq!(sol.steps.last().unwrap().t1, 1.0);
            tape.backward(sol.last().sum()).unwrap();
            assert!(
                seen.get() <= 1.0,
                "{method} {name}: f evaluated at t = {}",
                seen.get()
            );
        }
    }
}

/// A hand-built tableau whose arrays do not fit each other is an error naming the array,
/// not an index-out-of-bounds panic inside the step.
#[test]
fn malformed_tableaux_are_refused() {
    let bad: &'static Tableau = Box::leak(Box::new(Tableau {
        name: "broken",
        b: &[0.5],
        ..clone_of(&DOPRI5)
    }));
    let opts = Options {
        method: bad,
        ..Options::default()
    };
    let tape = Tape::<f64>::new();
    let h = tape.var(DMatrix::from_element(1, 1, 1.0));
    let t = tape.constant(row(&[0.0, 1.0]));
    let k = tape.var(DMatrix::from_element(1, 1, 1.0));
    let e = odeint(&tape, &Decay, h, t, &[k], &opts).err().unwrap();
    assert!(
        matches!(&e, Error::Tableau(te) if te.name == "broken" && te.why.contains('b')),
        "{e}"
    );
    assert!(DOPRI5.validate().is_ok());
    for tab in ode::tableau::ALL {
        assert!(tab.validate().is_ok(), "{}", tab.name);
    }
    // The tape is still usable.
    let sol = odeint(&tape, &Decay, h, t, &[k], &Options::default()).unwrap();
    assert!(sol.last().scalar_value().unwrap() > 0.0);
}

fn clone_of(t: &'static Tableau) -> Tableau {
    Tableau {
        name: t.name,
        order: t.order,
        embedded_order: t.embedded_order,
        c: t.c,
        a: t.a,
        b: t.b,
        b_error: t.b_error,
        fsal: t.fsal,
        interpolant: t.interpolant,
        step: t.step,
    }
}

fn decay_solve(opts: &Options, adjoint: bool) -> ode::Result<f64> {
    let tape = Tape::<f64>::new();
    let h = tape.var(DMatrix::from_element(2, 2, 1.0));
    let t = tape.constant(row(&[0.0, 1.0]));
    let k = tape.var(DMatrix::from_element(1, 1, 1.0));
    let sol = if adjoint {
        odeint_adjoint(&tape, &Decay, h, t, &[k], opts)?
    } else {
        odeint(&tape, &Decay, h, t, &[k], opts)?
    };
    let g = tape.backward(sol.last().sum())?;
    Ok(g.get(k).unwrap()[(0, 0)])
}

/// A custom norm returning NaN makes the automatic first step NaN: the error says so, not
/// "the dynamics blew up". Tolerances so small that the error scaling would overflow are
/// refused before that, as finer than the precision.
#[test]
fn a_nan_initial_step_is_named() {
    let tiny = Options::default().tolerances(1e-300, 1e-300);
    for adjoint in [false, true] {
        let e = decay_solve(&tiny, adjoint).unwrap_err();
        assert!(
            matches!(e, Error::ToleranceBelowPrecision { name: "rtol", .. }),
            "{e}"
        );
        assert!(!e.to_string().contains("solve in f64"), "{e}");
    }
    let nan_norm = Options {
        norm: Norm::Custom(Arc::new(|_: &[DMatrix<f64>]| f64::NAN)),
        ..Options::default()
    };
    for opts in [nan_norm] {
        for adjoint in [false, true] {
            let e = decay_solve(&opts, adjoint).unwrap_err();
            assert!(
                matches!(e, Error::BadInitialStep { t, .. } if t == 0.0),
                "{e}"
            );
            assert!(e.to_string().contains("first_step"), "{e}");
        }
    }
}

/// Options that make no sense are refused by name; a tiny first step works in both modes
/// (the backward picks its own first step).
#[test]
fn step_options() {
    for (name, opts) in [
        (
            "ifactor",
            Options {
                ifactor: 0.5,
                ..Options::default()
            },
        ),
        (
            "dfactor",
            Options {
                dfactor: 2.0,
                ..Options::default()
            },
        ),
    ] {
        let e = decay_solve(&opts, false).unwrap_err();
        assert!(
            matches!(e, Error::BadOption { name: n, .. } if n == name),
            "{e}"
        );
    }
    let tiny_first = Options {
        first_step: Some(1e-300),
        ..Options::default()
    };
    let taped = decay_solve(&tiny_first, false).unwrap();
    let adjoint = decay_solve(&tiny_first, true).unwrap();
    assert!(
        (taped - adjoint).abs() < 1e-6 * taped.abs(),
        "{taped} vs {adjoint}"
    );
}

/// Numbers in messages are short: a time of 1e-300 is not 300 digits.
#[test]
fn messages_print_numbers_compactly() {
    let e = Error::StepSizeUnderflow {
        t: 1e-300,
        dt: 1e-310,
        min_step: 0.0,
    };
    let text = e.to_string();
    assert!(text.contains("1e-300") && text.len() < 300, "{text}");
}

/// A non-finite cotangent reaching a solve's node is named as such, for every opaque
/// strategy; the tape stays usable.
#[test]
fn a_nan_cotangent_is_named() {
    for name in ["backsolve", "aca", "checkpointed:2"] {
        let tape = Tape::<f64>::new();
        let h = tape.var(DMatrix::from_element(2, 2, 1.0));
        let t = tape.constant(row(&[0.0, 0.5, 1.0]));
        let k = tape.var(DMatrix::from_element(1, 1, 1.0));
        let sol = odeint_with(
            &tape,
            &Decay,
            h,
            t,
            &[k],
            &Options::default(),
            &name.parse().unwrap(),
        )
        .unwrap();
        let poisoned = sol.outputs[1].scale(f64::NAN).sum();
        let loss = poisoned.add(sol.last().sum()).unwrap();
        let e = tape.backward(loss).unwrap_err();
        let inner = match &e {
            ad_core::Error::Custom { source, .. } => source.downcast_ref::<Error>(),
            _ => None,
        };
        assert!(
            matches!(inner, Some(Error::NonFiniteCotangent { output: 1, t }) if *t == 0.5),
            "{name}: {e}"
        );
        let g = tape.backward(sol.last().sum()).unwrap();
        assert!(g.get(k).unwrap()[(0, 0)].is_finite());
    }
}

/// Constant steps whose accumulated time drifts by rounding still land on the output grid:
/// 1000 steps of 0.005 onto the grid n·0.005 take exactly 1000 steps (not a 1001st of
/// 8e-14), for a fixed-step and an adaptive method run at constant steps.
#[test]
fn constant_steps_do_not_leave_a_rounding_sized_step() {
    let tape = Tape::<f64>::new();
    let h = tape.var(DMatrix::from_element(1, 1, 1.0));
    let k = tape.var(DMatrix::from_element(1, 1, 0.3));
    let grid: Vec<f64> = (0..=1000).map(|n| n as f64 * 0.005).collect();
    let t = tape.constant(DMatrix::from_row_slice(1, grid.len(), &grid));
    for (method, per_step) in [("rk4", 4), ("dopri5", 6)] {
        let opts = Options::fixed(method, 0.005).unwrap();
        let sol = odeint(&tape, &Decay, h, t, &[k], &opts).unwrap();
        assert_eq!(sol.steps.len(), 1000, "{method}");
        assert_eq!(sol.steps.last().unwrap().t1, 5.0);
        assert!(
            sol.stats.nfe <= 1 + per_step * 1000 + 1000,
            "{method}: {}",
            sol.stats.nfe
        );
        let exact = (-0.3f64 * 5.0).exp();
        assert!((sol.last().scalar_value().unwrap() - exact).abs() < 1e-10);
    }
}
