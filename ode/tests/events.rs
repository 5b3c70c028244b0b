//! Terminal events: the event time and the state there, with their derivatives.

use ad_core::nalgebra::DMatrix;
use ad_core::{Result as TapeResult, Scalar, Tape, Var};
use ode::event::{odeint_event, Crossing, EventFunctions, EventOutcome, Events};
use ode::{Dynamics, Error, Options, Strategy};

/// Free fall: h = [height, velocity], h' = [v, −g], g = p[0].
#[derive(Clone, Copy)]
struct Fall;

impl<T: Scalar> Dynamics<T> for Fall {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        h.tape().concat_cols(&[h.slice_cols(1, 1)?, -p[0]])
    }
}

/// `[height − a_k]` for each level `a_k`.
struct Levels(Vec<f64>);

impl<T: Scalar> EventFunctions<T> for Levels {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, _p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let x = h.slice_cols(0, 1)?;
        let cols: Vec<_> = self
            .0
            .iter()
            .map(|&a| x.add_scalar(T::constant(-a)))
            .collect();
        h.tape().concat_cols(&cols)
    }
}

struct Fired<T> {
    t: f64,
    index: usize,
    grads: Vec<T>,
}

/// Drop from height `height` under gravity `g`; the gradient of `time` (or of the velocity
/// at the event) w.r.t. (H, g).
fn drop<T: Scalar>(
    height: f64,
    g: f64,
    levels: &[f64],
    opts: &Options,
    strategy: &Strategy,
    velocity: bool,
) -> ode::Result<Option<Fired<f64>>> {
    let tape = Tape::<T>::new();
    let h0 = tape.var(DMatrix::from_row_slice(
        1,
        2,
        &[T::constant(height), T::zero()],
    ));
    let gv = tape.var(DMatrix::from_element(1, 1, T::constant(g)));
    let t0 = tape.constant(DMatrix::from_element(1, 1, T::zero()));
    let events = Events {
        functions: &Levels(levels.to_vec()),
        crossings: vec![Crossing::Falling; levels.len()],
        t_max: 100.0,
    };
    let sol = odeint_event(&tape, &Fall, h0, t0, &[], &[gv], &events, opts, strategy)?;
    let EventOutcome::Fired {
        index,
        t,
        time,
        state,
    } = sol.outcome
    else {
        return Ok(None);
    };
    let target = if velocity {
        state.slice_cols(1, 1)?
    } else {
        time
    };
    let grads = tape.backward(target)?;
    Ok(Some(Fired {
        t,
        index,
        grads: vec![
            grads.get(h0).unwrap()[(0, 0)].primal(),
            grads.get(gv).unwrap()[(0, 0)].primal(),
        ],
    }))
}

#[test]
fn free_fall_event_time_and_its_derivatives_under_every_strategy() {
    let (height, g): (f64, f64) = (2.0, 9.81);
    let t_star = (2.0 * height / g).sqrt();
    let dt_dh = 1.0 / (2.0 * height * g).sqrt();
    let dt_dg = -t_star / (2.0 * g);
    // v* = −g t*: dv*/dH = −g dt*/dH, dv*/dg = −t* − g dt*/dg = −t*/2.
    let dv_dh = -g * dt_dh;
    let dv_dg = -t_star / 2.0;
    for name in [
        "taped",
        "aca",
        "checkpointed:2",
        "backsolve",
        "interpolating",
        "gauss",
        "auto:1",
        "reversible",
    ] {
        let strategy: Strategy = name.parse().unwrap();
        let opts = Options::default().tolerances(1e-9, 1e-11);
        let fired = drop::<f64>(height, g, &[0.0], &opts, &strategy, false)
            .unwrap()
            .unwrap();
        assert!((fired.t - t_star).abs() < 1e-10, "{name}: t* {}", fired.t);
        assert!(
            (fired.grads[0] - dt_dh).abs() < 1e-7,
            "{name}: {:?}",
            fired.grads
        );
        assert!(
            (fired.grads[1] - dt_dg).abs() < 1e-7,
            "{name}: {:?}",
            fired.grads
        );
        let v = drop::<f64>(height, g, &[0.0], &opts, &strategy, true)
            .unwrap()
            .unwrap();
        assert!((v.grads[0] - dv_dh).abs() < 1e-6, "{name}: {:?}", v.grads);
        assert!((v.grads[1] - dv_dg).abs() < 1e-6, "{name}: {:?}", v.grads);
        // f32.
        let opts32 = Options::default().tolerances(1e-5, 1e-6);
        let f32 = drop::<f32>(height, g, &[0.0], &opts32, &strategy, false)
            .unwrap()
            .unwrap();
        assert!((f32.t - t_star).abs() < 1e-4, "{name} f32: {}", f32.t);
        assert!(
            (f32.grads[0] - dt_dh).abs() < 1e-3,
            "{name} f32: {:?}",
            f32.grads
        );
        assert!(
            (f32.grads[1] - dt_dg).abs() < 1e-3,
            "{name} f32: {:?}",
            f32.grads
        );
    }
}

/// The post-event state's derivative (Diffrax #729 gets it wrong): against central
/// differences of the whole event solve, on a field where it is not a closed form.
#[test]
fn post_event_state_gradient_matches_finite_differences() {
    #[derive(Clone, Copy)]
    struct Drag;
    impl<T: Scalar> Dynamics<T> for Drag {
        fn eval<'t>(
            &self,
            _t: Var<'t, T>,
            h: Var<'t, T>,
            p: &[Var<'t, T>],
        ) -> TapeResult<Var<'t, T>> {
            let v = h.slice_cols(1, 1)?;
            let drag = v.mul(v)?.mul(p[1])?;
            h.tape().concat_cols(&[v, drag.sub(p[0])?])
        }
    }
    let opts = Options::default().tolerances(1e-11, 1e-13);
    let run = |g: f64, k: f64| {
        let tape = Tape::<f64>::new();
        let h0 = tape.var(DMatrix::from_row_slice(1, 2, &[3.0, 0.5]));
        let p = [
            tape.var(DMatrix::from_element(1, 1, g)),
            tape.var(DMatrix::from_element(1, 1, k)),
        ];
        let t0 = tape.constant(DMatrix::from_element(1, 1, 0.0));
        let events = Events {
            functions: &Levels(vec![0.0]),
            crossings: vec![Crossing::Falling],
            t_max: 50.0,
        };
        let sol = odeint_event(
            &tape,
            &Drag,
            h0,
            t0,
            &[],
            &p,
            &events,
            &opts,
            &Strategy::Taped,
        )
        .unwrap();
        let EventOutcome::Fired { state, .. } = sol.outcome else {
            panic!("no event")
        };
        let v = state.slice_cols(1, 1).unwrap();
        let value = v.value().unwrap()[(0, 0)];
        let g = tape.backward(v).unwrap();
        (
            value,
            g.get(p[0]).unwrap()[(0, 0)],
            g.get(p[1]).unwrap()[(0, 0)],
        )
    };
    let (g, k) = (9.81, 0.05);
    let (_, dg, dk) = run(g, k);
    let eps = 1e-5;
    let fd_g = (run(g + eps, k).0 - run(g - eps, k).0) / (2.0 * eps);
    let fd_k = (run(g, k + eps).0 - run(g, k - eps).0) / (2.0 * eps);
    assert!(
        (dg - fd_g).abs() < 1e-6 * fd_g.abs().max(1.0),
        "{dg} vs {fd_g}"
    );
    assert!(
        (dk - fd_k).abs() < 1e-6 * fd_k.abs().max(1.0),
        "{dk} vs {fd_k}"
    );
}

#[test]
fn the_earliest_root_in_a_step_fires_and_a_root_at_t0_is_ignored() {
    // rk4 with one step of 1.0 crosses both levels inside it; the higher level comes first,
    // whichever order the functions are listed in.
    let opts = Options::fixed("rk4", 1.0).unwrap();
    for levels in [[1.0, 0.5], [0.5, 1.0]] {
        let fired = drop::<f64>(2.0, 9.81, &levels, &opts, &Strategy::Taped, false)
            .unwrap()
            .unwrap();
        let expected = if levels[0] == 1.0 { 0 } else { 1 };
        assert_eq!(fired.index, expected, "{levels:?}");
        assert!((fired.t - (2.0 * 1.0 / 9.81f64).sqrt()).abs() < 1e-9);
    }
    // Starting on the level: no sign before, so not an event; the ball never rises back.
    let tape = Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_row_slice(1, 2, &[2.0, 0.0]));
    let gv = tape.var(DMatrix::from_element(1, 1, 9.81));
    let t0 = tape.constant(DMatrix::from_element(1, 1, 0.0));
    let events = Events {
        functions: &Levels(vec![2.0]),
        crossings: vec![Crossing::Either],
        t_max: 3.0,
    };
    let sol = odeint_event(
        &tape,
        &Fall,
        h0,
        t0,
        &[0.5, 1.0],
        &[gv],
        &events,
        &Options::default(),
        &Strategy::Taped,
    )
    .unwrap();
    let EventOutcome::NotFired { state } = sol.outcome else {
        panic!("fired at t0")
    };
    assert_eq!(sol.times, vec![0.0, 0.5, 1.0]);
    let x = state.value().unwrap()[(0, 0)];
    assert!((x - (2.0 - 0.5 * 9.81 * 9.0)).abs() < 1e-6, "{x}");
}

/// Three bounces with restitution e, chained by hand: event → reset (v ↦ −e v) → the next
/// solve from the event time. Against the closed form: bounce n at
/// t_n = t_1 (1 + 2e + … + 2e^{n−1}), t_1 = √(2H/g); dt_3/de = t_1 (2 + 4e).
#[test]
fn chained_bounces_match_the_closed_form() {
    let (height, g, e): (f64, f64, f64) = (1.5, 9.81, 0.7);
    let tape = Tape::<f64>::new();
    let ev = tape.var(DMatrix::from_element(1, 1, e));
    let gv = tape.var(DMatrix::from_element(1, 1, g));
    let mut h = tape.constant(DMatrix::from_row_slice(1, 2, &[height, 0.0]));
    let mut t0 = tape.constant(DMatrix::from_element(1, 1, 0.0));
    let events = Events {
        functions: &Levels(vec![0.0]),
        crossings: vec![Crossing::Falling],
        t_max: 100.0,
    };
    let opts = Options::default().tolerances(1e-10, 1e-12);
    let mut times = Vec::new();
    for _ in 0..3 {
        let sol = odeint_event(
            &tape,
            &Fall,
            h,
            t0,
            &[],
            &[gv],
            &events,
            &opts,
            &Strategy::Taped,
        )
        .unwrap();
        let EventOutcome::Fired { time, state, .. } = sol.outcome else {
            panic!("no bounce")
        };
        // The reset: height 0, velocity −e v.
        let v = state.slice_cols(1, 1).unwrap().mul(ev).unwrap();
        h = tape
            .concat_cols(&[tape.constant(DMatrix::zeros(1, 1)), -v])
            .unwrap();
        t0 = time;
        times.push(time);
    }
    let t1 = (2.0 * height / g).sqrt();
    let closed = [t1, t1 * (1.0 + 2.0 * e), t1 * (1.0 + 2.0 * e + 2.0 * e * e)];
    for (tv, want) in times.iter().zip(closed) {
        let got = tv.value().unwrap()[(0, 0)];
        assert!((got - want).abs() < 1e-8, "{got} vs {want}");
    }
    let grads = tape.backward(times[2]).unwrap();
    let de = grads.get(ev).unwrap()[(0, 0)];
    assert!((de - t1 * (2.0 + 4.0 * e)).abs() < 1e-6, "dt3/de {de}");
    // dt3/dg = −t3/(2g).
    let dg = grads.get(gv).unwrap()[(0, 0)];
    assert!((dg + closed[2] / (2.0 * g)).abs() < 1e-6, "dt3/dg {dg}");
}

#[test]
fn bad_event_input_gets_typed_errors() {
    let tape = Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_row_slice(1, 2, &[2.0, 0.0]));
    let gv = tape.var(DMatrix::from_element(1, 1, 9.81));
    let t0 = tape.constant(DMatrix::from_element(1, 1, 1.0));
    let opts = Options::default();
    // t_max before t0.
    let events = Events {
        functions: &Levels(vec![0.0]),
        crossings: vec![Crossing::Falling],
        t_max: 0.5,
    };
    let err = odeint_event(
        &tape,
        &Fall,
        h0,
        t0,
        &[],
        &[gv],
        &events,
        &opts,
        &Strategy::Taped,
    )
    .err()
    .expect("t_max before t0");
    assert!(
        matches!(
            err,
            Error::BadOption {
                name: "Events::t_max",
                ..
            }
        ),
        "{err}"
    );
    // One function, two crossings: the wrong width.
    let events = Events {
        functions: &Levels(vec![0.0]),
        crossings: vec![Crossing::Falling, Crossing::Rising],
        t_max: 10.0,
    };
    let err = odeint_event(
        &tape,
        &Fall,
        h0,
        t0,
        &[],
        &[gv],
        &events,
        &opts,
        &Strategy::Taped,
    )
    .err()
    .expect("wrong width");
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // NaN.
    struct NanEvent;
    impl<T: Scalar> EventFunctions<T> for NanEvent {
        fn eval<'t>(
            &self,
            _t: Var<'t, T>,
            h: Var<'t, T>,
            _p: &[Var<'t, T>],
        ) -> TapeResult<Var<'t, T>> {
            Ok(h.slice_cols(0, 1)?.scale(T::constant(f64::NAN)))
        }
    }
    let events = Events {
        functions: &NanEvent,
        crossings: vec![Crossing::Falling],
        t_max: 10.0,
    };
    let err = odeint_event(
        &tape,
        &Fall,
        h0,
        t0,
        &[],
        &[gv],
        &events,
        &opts,
        &Strategy::Taped,
    )
    .err()
    .expect("NaN");
    assert!(
        matches!(
            err,
            Error::NonFinite {
                what: "event function",
                ..
            }
        ),
        "{err}"
    );
    // A stationary crossing: (x − 1)³ has ∂g/∂h = 0 at its root.
    struct Cubed;
    impl<T: Scalar> EventFunctions<T> for Cubed {
        fn eval<'t>(
            &self,
            _t: Var<'t, T>,
            h: Var<'t, T>,
            _p: &[Var<'t, T>],
        ) -> TapeResult<Var<'t, T>> {
            let d = h.slice_cols(0, 1)?.add_scalar(T::constant(-1.0));
            d.mul(d)?.mul(d)
        }
    }
    let events = Events {
        functions: &Cubed,
        crossings: vec![Crossing::Falling],
        t_max: 10.0,
    };
    let err = odeint_event(
        &tape,
        &Fall,
        h0,
        t0,
        &[],
        &[gv],
        &events,
        &opts,
        &Strategy::Taped,
    )
    .err()
    .expect("stationary crossing");
    assert!(
        matches!(err, Error::EventTimeUndefined { event: 0, .. }),
        "{err}"
    );
    // The tape still works.
    let events = Events {
        functions: &Levels(vec![0.0]),
        crossings: vec![Crossing::Falling],
        t_max: 10.0,
    };
    let sol = odeint_event(
        &tape,
        &Fall,
        h0,
        t0,
        &[],
        &[gv],
        &events,
        &opts,
        &Strategy::Taped,
    )
    .unwrap();
    let EventOutcome::Fired { time, t, .. } = sol.outcome else {
        panic!("no event")
    };
    assert!((t - 1.0 - (4.0 / 9.81f64).sqrt()).abs() < 1e-8);
    assert!(tape.backward(time).is_ok());
}

/// The event time on `Dual64` (forward mode through the same computation) equals the taped
/// gradient: the solve with drag, `dt*/dg` and `dt*/dH`.
#[test]
fn dual_event_time_equals_the_taped_gradient() {
    #[derive(Clone, Copy)]
    struct Drag;
    impl<T: Scalar> Dynamics<T> for Drag {
        fn eval<'t>(
            &self,
            _t: Var<'t, T>,
            h: Var<'t, T>,
            p: &[Var<'t, T>],
        ) -> TapeResult<Var<'t, T>> {
            let v = h.slice_cols(1, 1)?;
            h.tape()
                .concat_cols(&[v, v.mul(v)?.scale(T::constant(0.05)).sub(p[0])?])
        }
    }
    use ad_core::num_dual::Dual64;
    let opts = Options::default().tolerances(1e-8, 1e-10);
    let events = Events {
        functions: &Levels(vec![0.0]),
        crossings: vec![Crossing::Falling],
        t_max: 50.0,
    };
    let tape = Tape::<f64>::new();
    let h0 = tape.var(DMatrix::from_row_slice(1, 2, &[3.0, 0.5]));
    let g = tape.var(DMatrix::from_element(1, 1, 9.81));
    let t0 = tape.constant(DMatrix::from_element(1, 1, 0.0));
    let sol = odeint_event(
        &tape,
        &Drag,
        h0,
        t0,
        &[],
        &[g],
        &events,
        &opts,
        &Strategy::Taped,
    )
    .unwrap();
    let EventOutcome::Fired { time, .. } = sol.outcome else {
        panic!()
    };
    let grads = tape.backward(time).unwrap();
    let taped = [
        grads.get(h0).unwrap()[(0, 0)],
        grads.get(g).unwrap()[(0, 0)],
    ];
    for (dir, want) in taped.iter().enumerate() {
        let dt = Tape::<Dual64>::new();
        let seed = |on: bool| if on { 1.0 } else { 0.0 };
        let h0 = dt.var(DMatrix::from_row_slice(
            1,
            2,
            &[Dual64::new(3.0, seed(dir == 0)), Dual64::from_re(0.5)],
        ));
        let g = dt.var(DMatrix::from_element(
            1,
            1,
            Dual64::new(9.81, seed(dir == 1)),
        ));
        let t0 = dt.constant(DMatrix::from_element(1, 1, Dual64::from_re(0.0)));
        let sol = odeint_event(
            &dt,
            &Drag,
            h0,
            t0,
            &[],
            &[g],
            &events,
            &opts,
            &Strategy::Taped,
        )
        .unwrap();
        let EventOutcome::Fired { time, .. } = sol.outcome else {
            panic!()
        };
        let got = time.value().unwrap()[(0, 0)].eps;
        assert!(
            (got - want).abs() < 1e-10 * want.abs(),
            "direction {dir}: {got} vs {want}"
        );
    }
}
