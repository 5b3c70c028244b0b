//! Every error path, by variant; after each error the tape still records and differentiates.

use std::rc::Rc;

use ad_core::nalgebra::{dmatrix, DMatrix};
use ad_core::{BoxError, CustomOp, Error, Message, Tape, Var};

/// Record something new on `tape` and differentiate it: `Σ (x² + x)` at `x = (1, 2)`.
#[track_caller]
fn assert_usable(tape: &Tape<f64>) {
    let x = tape.var(dmatrix![1.0, 2.0]);
    let y = x.square().add(x).unwrap().sum();
    assert_eq!(y.scalar_value().unwrap(), 8.0);
    let grads = tape.backward(y).unwrap();
    assert_eq!(grads.get(x).unwrap(), &dmatrix![3.0, 5.0]);
}

fn m(r: usize, c: usize) -> DMatrix<f64> {
    DMatrix::from_fn(r, c, |i, j| (i * c + j) as f64 + 1.0)
}

// ---------------------------------------------------------------- ShapeMismatch

#[test]
#[allow(clippy::op_ref)] // the `&Var - &Var` operator is under test too
fn shape_mismatch_in_elementwise_binary_ops() {
    let tape = Tape::<f64>::new();
    let a = tape.var(m(2, 3));
    let b = tape.var(m(3, 2));
    for (name, r) in [
        ("add", a.add(b)),
        ("sub", a.sub(b)),
        ("mul", a.mul(b)),
        ("div", a.div(b)),
        ("add", a + b),
        ("sub", &a - &b),
        ("mul", a * b),
        ("div", a / b),
    ] {
        assert!(
            matches!(r, Err(Error::ShapeMismatch { op, left: (2, 3), right: (3, 2), .. }) if op == name),
            "{name}: {r:?}"
        );
    }
    assert_usable(&tape);
}

#[test]
fn shape_mismatch_in_matmul_and_matmul_t() {
    let tape = Tape::<f64>::new();
    let a = tape.var(m(2, 3));
    let b = tape.var(m(2, 3));
    let r = a.matmul(b);
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "matmul",
                left: (2, 3),
                right: (2, 3),
                ..
            })
        ),
        "{r:?}"
    );
    let c = tape.var(m(2, 2));
    let r = a.matmul_t(c);
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "matmul_t",
                left: (2, 3),
                right: (2, 2),
                ..
            })
        ),
        "{r:?}"
    );
    // The shapes that do fit still work.
    assert_eq!(a.matmul_t(b).unwrap().shape().unwrap(), (2, 2));
    assert_eq!(a.matmul(b.transpose()).unwrap().shape().unwrap(), (2, 2));
    assert_usable(&tape);
}

#[test]
fn shape_mismatch_in_add_row() {
    let tape = Tape::<f64>::new();
    let x = tape.var(m(3, 2));
    for bias in [m(2, 2), m(1, 3), m(2, 1)] {
        let shape = bias.shape();
        let r = x.add_row(tape.var(bias));
        assert!(
            matches!(r, Err(Error::ShapeMismatch { op: "add_row", left: (3, 2), right, .. }) if right == shape),
            "{r:?}"
        );
    }
    assert_usable(&tape);
}

#[test]
fn shape_mismatch_in_broadcast() {
    let tape = Tape::<f64>::new();
    for (src, target) in [
        ((2, 3), (4, 3)),
        ((1, 2), (3, 3)),
        ((2, 1), (3, 4)),
        ((2, 2), (2, 1)),
    ] {
        let r = tape.var(m(src.0, src.1)).broadcast(target.0, target.1);
        assert!(
            matches!(r, Err(Error::ShapeMismatch { op: "broadcast", left, right, .. }) if left == src && right == target),
            "{src:?} -> {target:?}: {r:?}"
        );
    }
    assert_usable(&tape);
}

#[test]
fn shape_mismatch_in_mse_concat_and_lin_comb() {
    let tape = Tape::<f64>::new();
    let a = tape.var(m(2, 3));
    let b = tape.constant(m(3, 2));
    let r = a.mse(b);
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "mse",
                left: (2, 3),
                right: (3, 2),
                ..
            })
        ),
        "{r:?}"
    );
    let c = tape.var(m(3, 1));
    let r = tape.concat_cols(&[a, a, c]);
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "concat_cols",
                left: (2, 3),
                right: (3, 1),
                ..
            })
        ),
        "{r:?}"
    );
    let r = tape.lin_comb(&[(1.0, a), (2.0, a), (3.0, b)]);
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "lin_comb",
                left: (2, 3),
                right: (3, 2),
                ..
            })
        ),
        "{r:?}"
    );
    assert_usable(&tape);
}

#[test]
fn shape_mismatch_in_backward_vjp_and_scalar_value() {
    let tape = Tape::<f64>::new();
    let x = tape.var(m(2, 3));
    let y = x.tanh();
    let r = tape.backward(y);
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "backward",
                left: (2, 3),
                right: (1, 1),
                ..
            })
        ),
        "{r:?}"
    );
    let r = tape.vjp(y, m(3, 2));
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "vjp",
                left: (2, 3),
                right: (3, 2),
                ..
            })
        ),
        "{r:?}"
    );
    let r = tape.vjp_wrt(&[(y, m(1, 1))], &[x]);
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "vjp",
                left: (2, 3),
                right: (1, 1),
                ..
            })
        ),
        "{r:?}"
    );
    let r = y.scalar_value();
    assert!(
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "scalar_value",
                left: (2, 3),
                right: (1, 1),
                ..
            })
        ),
        "{r:?}"
    );
    // The right cotangent shape works on the same output afterwards.
    let g = tape.vjp(y, DMatrix::zeros(2, 3)).unwrap();
    assert_eq!(g.get(x).unwrap(), &DMatrix::zeros(2, 3));
    assert_usable(&tape);
}

// ---------------------------------------------------------------- InvalidArgument

#[test]
fn invalid_argument_slice_out_of_range() {
    let tape = Tape::<f64>::new();
    let x = tape.var(m(2, 3));
    for (start, len) in [(2, 2), (3, 1), (4, 0), (0, 4), (usize::MAX, 2)] {
        let r = x.slice_cols(start, len);
        assert!(
            matches!(
                r,
                Err(Error::InvalidArgument {
                    op: "slice_cols",
                    ..
                })
            ),
            "{start}..+{len}: {r:?}"
        );
    }
    // The last in-range slices still work.
    assert_eq!(
        x.slice_cols(2, 1).unwrap().value().unwrap(),
        dmatrix![3.0; 6.0]
    );
    assert_eq!(x.slice_cols(0, 3).unwrap().value().unwrap(), m(2, 3));
    assert_usable(&tape);
}

#[test]
fn invalid_argument_empty_concat_and_lin_comb() {
    let tape = Tape::<f64>::new();
    let r = tape.concat_cols(&[]);
    assert!(
        matches!(
            r,
            Err(Error::InvalidArgument {
                op: "concat_cols",
                ..
            })
        ),
        "{r:?}"
    );
    let r = tape.lin_comb(&[]);
    assert!(
        matches!(r, Err(Error::InvalidArgument { op: "lin_comb", .. })),
        "{r:?}"
    );
    assert_eq!(tape.len(), 0, "a failed op must not record a node");
    assert_usable(&tape);
}

#[test]
fn invalid_argument_rewind_past_the_end() {
    let tape = Tape::<f64>::new();
    let a = tape.var(m(1, 2));
    let early = tape.mark();
    let _ = a.square();
    let _ = a.exp();
    let late = tape.mark();
    tape.rewind(early).unwrap();
    let r = tape.rewind(late);
    assert!(
        matches!(r, Err(Error::InvalidArgument { op: "rewind", .. })),
        "{r:?}"
    );
    // Nothing was dropped by the failed rewind.
    assert_eq!(tape.len(), 1);
    assert!(a.is_live());
    assert_usable(&tape);
}

/// A custom op that tries to record on its own tape from inside its forward.
struct RecordsInForward {
    tape: Rc<Tape<f64>>,
}

impl CustomOp<f64> for RecordsInForward {
    fn name(&self) -> &str {
        "records_in_forward"
    }

    fn forward(&mut self, inputs: &[&DMatrix<f64>]) -> Result<Vec<DMatrix<f64>>, BoxError> {
        // A leaf made while the tape is busy comes back stale instead of panicking.
        let leaf = self.tape.var(inputs[0].clone());
        assert!(!leaf.is_live());
        assert!(matches!(leaf.value(), Err(Error::StaleVar { .. })));
        // Changing the tape reports that it is busy.
        self.tape.rewind(self.tape.mark())?;
        Ok(vec![inputs[0].clone()])
    }

    fn vjp(
        &self,
        _: &[&DMatrix<f64>],
        _: &[&DMatrix<f64>],
        cotangents: Vec<Option<DMatrix<f64>>>,
        _: &[bool],
    ) -> Result<Vec<Option<DMatrix<f64>>>, BoxError> {
        Ok(cotangents)
    }

    fn held_bytes(&self) -> usize {
        0
    }
}

/// A custom op holding live Vars of its own (leaked, hence `'static`) tape, which it tries to
/// combine with a built-in op in its forward, or to record a leaf with in its VJP.
struct RecordsWithVars {
    x: Var<'static, f64>,
    in_vjp: bool,
}

impl CustomOp<f64> for RecordsWithVars {
    fn name(&self) -> &str {
        "records_with_vars"
    }

    fn forward(&mut self, inputs: &[&DMatrix<f64>]) -> Result<Vec<DMatrix<f64>>, BoxError> {
        if !self.in_vjp {
            self.x.add(self.x)?;
        }
        Ok(vec![inputs[0].clone()])
    }

    fn vjp(
        &self,
        _: &[&DMatrix<f64>],
        _: &[&DMatrix<f64>],
        cotangents: Vec<Option<DMatrix<f64>>>,
        _: &[bool],
    ) -> Result<Vec<Option<DMatrix<f64>>>, BoxError> {
        self.x.tape().reset()?;
        Ok(cotangents)
    }

    fn held_bytes(&self) -> usize {
        0
    }
}

/// The inner error a custom op returned.
fn inner(e: &Error) -> &Error {
    match e {
        Error::Custom { source, .. } => source
            .downcast_ref::<Error>()
            .expect("an ad_core::Error inside"),
        other => panic!("expected Error::Custom, got {other:?}"),
    }
}

#[test]
fn invalid_argument_busy_tape_in_custom_forward() {
    let tape = Rc::new(Tape::<f64>::new());
    let x = tape.var(m(2, 2));
    let before = tape.len();
    let r = tape.custom(
        RecordsInForward {
            tape: Rc::clone(&tape),
        },
        &[x],
    );
    let err = r.unwrap_err();
    assert!(
        matches!(&err, Error::Custom { op, .. } if op == "records_in_forward"),
        "{err:?}"
    );
    let e = inner(&err);
    assert!(
        matches!(e, Error::InvalidArgument { op: "rewind", message } if message.contains("busy")),
        "{e:?}"
    );
    assert_eq!(tape.len(), before);
    assert_usable(&tape);
}

#[test]
fn invalid_argument_busy_tape_with_a_builtin_op_and_in_vjp() {
    let tape: &'static Tape<f64> = Box::leak(Box::new(Tape::new()));
    let x = tape.var(m(2, 2));
    let err = tape
        .custom(RecordsWithVars { x, in_vjp: false }, &[x])
        .unwrap_err();
    let e = inner(&err);
    assert!(
        matches!(e, Error::InvalidArgument { op: "add", message } if message.contains("busy")),
        "{e:?}"
    );
    assert_usable(tape);

    // Backward holds the tape too: a VJP that resets it is refused, and nothing is lost.
    let y = tape
        .custom(RecordsWithVars { x, in_vjp: true }, &[x])
        .unwrap()[0];
    let err = tape.backward(y.sum()).unwrap_err();
    let e = inner(&err);
    assert!(
        matches!(e, Error::InvalidArgument { op: "rewind", message } if message.contains("busy")),
        "{e:?}"
    );
    assert!(x.is_live() && y.is_live());
    assert_eq!(y.value().unwrap(), m(2, 2));
    assert_usable(tape);
}

// ---------------------------------------------------------------- ForeignVar

#[test]
fn foreign_var_in_ops() {
    let t1 = Tape::<f64>::new();
    let t2 = Tape::<f64>::new();
    let a = t1.var(m(2, 2));
    let b = t2.var(m(2, 2));
    let r = a.add(b);
    assert!(matches!(r, Err(Error::ForeignVar { op: "add" })), "{r:?}");
    let r = b * a;
    assert!(matches!(r, Err(Error::ForeignVar { op: "mul" })), "{r:?}");
    let r = a.matmul(b);
    assert!(
        matches!(r, Err(Error::ForeignVar { op: "matmul" })),
        "{r:?}"
    );
    let r = t1.concat_cols(&[a, b]);
    assert!(
        matches!(r, Err(Error::ForeignVar { op: "concat_cols" })),
        "{r:?}"
    );
    // Recording a's partner on its own tape is fine; asking the wrong tape is not.
    let r = t2.concat_cols(&[b, b]);
    assert_eq!(r.unwrap().shape().unwrap(), (2, 4));
    let r = t1.lin_comb(&[(1.0, a), (1.0, b)]);
    assert!(
        matches!(r, Err(Error::ForeignVar { op: "lin_comb" })),
        "{r:?}"
    );
    let r = t1.custom(Identity, &[b]);
    assert!(
        matches!(r, Err(Error::ForeignVar { op: "custom" })),
        "{r:?}"
    );
    assert_usable(&t1);
    assert_usable(&t2);
}

#[test]
fn foreign_var_in_backward_vjp_and_rewind() {
    let t1 = Tape::<f64>::new();
    let t2 = Tape::<f64>::new();
    let a = t1.var(m(2, 2));
    let b = t2.var(m(2, 2));
    let lb = b.sum();
    let r = t1.backward(lb);
    assert!(matches!(r, Err(Error::ForeignVar { .. })), "{r:?}");
    let r = t1.vjp(b, m(2, 2));
    assert!(matches!(r, Err(Error::ForeignVar { .. })), "{r:?}");
    // A Var of another tape among the ones to differentiate with respect to.
    let la = a.square().sum();
    // (b's key also names a node of t1, a; it must not be mistaken for it.)
    for wrt in [[a, b], [b, a]] {
        let r = t1.vjp_wrt(&[(la, m(1, 1))], &wrt);
        assert!(
            matches!(r, Err(Error::ForeignVar { op: "vjp_wrt" })),
            "{r:?}"
        );
    }
    let _ = t2.var(m(1, 1));
    let mark2 = t2.mark();
    let r = t1.rewind(mark2);
    assert!(
        matches!(r, Err(Error::ForeignVar { op: "rewind" })),
        "{r:?}"
    );
    assert!(a.is_live() && la.is_live());
    assert_usable(&t1);
    assert_usable(&t2);
}

#[test]
fn foreign_var_in_take_or_zeros() {
    let t1 = Tape::<f64>::new();
    let t2 = Tape::<f64>::new();
    let a = t1.var(m(2, 2));
    let b = t2.var(m(2, 2));
    let mut grads = t1.backward(a.sum()).unwrap();
    // `get` answers None for a foreign var instead of another leaf's gradient.
    assert!(grads.get(b).is_none());
    let r = grads.take_or_zeros(b);
    assert!(
        matches!(
            r,
            Err(Error::ForeignVar {
                op: "Gradients::take_or_zeros"
            })
        ),
        "{r:?}"
    );
    // The failed take left a's gradient in place.
    assert_eq!(
        grads.take_or_zeros(a).unwrap(),
        DMatrix::from_element(2, 2, 1.0)
    );
    assert_usable(&t1);
}

// ---------------------------------------------------------------- StaleVar

#[test]
fn stale_var_after_reset() {
    let tape = Tape::<f64>::new();
    let x = tape.var(m(2, 2));
    let y = x.exp();
    let loss = y.sum();
    tape.reset().unwrap();
    assert_eq!(tape.len(), 0);
    assert!(!x.is_live() && !y.is_live() && !loss.is_live());
    assert!(matches!(x.value(), Err(Error::StaleVar { op: "value" })));
    assert!(matches!(x.shape(), Err(Error::StaleVar { .. })));
    assert!(matches!(x.requires_grad(), Err(Error::StaleVar { .. })));
    // New nodes reuse the freed slots; the old handles must not alias them.
    let fresh = tape.var(m(2, 2));
    let r = x.add(fresh);
    assert!(matches!(r, Err(Error::StaleVar { op: "add" })), "{r:?}");
    let r = fresh.matmul(y);
    assert!(matches!(r, Err(Error::StaleVar { op: "matmul" })), "{r:?}");
    let r = tape.backward(loss);
    assert!(matches!(r, Err(Error::StaleVar { .. })), "{r:?}");
    // A unary op on a stale Var returns a stale Var; its first fallible use reports it.
    let t = x.tanh();
    assert!(!t.is_live());
    assert!(matches!(t.value(), Err(Error::StaleVar { .. })));
    assert!(matches!(
        x.sum().scalar_value(),
        Err(Error::StaleVar { .. })
    ));
    assert!(matches!(
        x.transpose().scale(2.0).shape(),
        Err(Error::StaleVar { .. })
    ));
    assert_eq!(tape.len(), 1, "only `fresh` was recorded");
    assert_eq!(fresh.value().unwrap(), m(2, 2));
    assert_usable(&tape);
}

#[test]
fn stale_var_after_rewind() {
    let tape = Tape::<f64>::new();
    let x = tape.var(m(1, 3));
    let mark = tape.mark();
    let y = x.square();
    let loss = y.sum();
    tape.rewind(mark).unwrap();
    assert!(x.is_live());
    assert!(!y.is_live() && !loss.is_live());
    assert!(matches!(y.value(), Err(Error::StaleVar { .. })));
    let r = y.mul(x);
    assert!(matches!(r, Err(Error::StaleVar { op: "mul" })), "{r:?}");
    assert!(matches!(y.tanh().value(), Err(Error::StaleVar { .. })));
    let r = tape.backward(loss);
    assert!(matches!(r, Err(Error::StaleVar { .. })), "{r:?}");
    let r = tape.vjp_wrt(&[(x.sum(), m(1, 1))], &[y]);
    assert!(matches!(r, Err(Error::StaleVar { .. })), "{r:?}");
    let r = tape.custom(Identity, &[y]);
    assert!(matches!(r, Err(Error::StaleVar { op: "custom" })), "{r:?}");
    let mut grads = tape.backward(x.sum()).unwrap();
    let r = grads.take_or_zeros(y);
    assert!(matches!(r, Err(Error::StaleVar { .. })), "{r:?}");
    // x survived the rewind and differentiates as before.
    let g = tape.backward(x.square().sum()).unwrap();
    assert_eq!(g.get(x).unwrap(), &dmatrix![2.0, 4.0, 6.0]);
    assert_usable(&tape);
}

// ---------------------------------------------------------------- Custom

/// The identity, with a fault injected where asked.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    ForwardErr,
    NoOutputs,
    VjpErr,
    VjpTooFew,
    VjpTooMany,
    VjpShape,
}

struct Faulty(Fault);
struct Identity;

impl CustomOp<f64> for Identity {
    fn name(&self) -> &str {
        "identity"
    }
    fn forward(&mut self, inputs: &[&DMatrix<f64>]) -> Result<Vec<DMatrix<f64>>, BoxError> {
        Faulty(Fault::None).forward(inputs)
    }
    fn vjp(
        &self,
        inputs: &[&DMatrix<f64>],
        outputs: &[&DMatrix<f64>],
        cotangents: Vec<Option<DMatrix<f64>>>,
        wants: &[bool],
    ) -> Result<Vec<Option<DMatrix<f64>>>, BoxError> {
        Faulty(Fault::None).vjp(inputs, outputs, cotangents, wants)
    }
    fn held_bytes(&self) -> usize {
        0
    }
}

impl CustomOp<f64> for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }

    fn forward(&mut self, inputs: &[&DMatrix<f64>]) -> Result<Vec<DMatrix<f64>>, BoxError> {
        match self.0 {
            Fault::ForwardErr => Err(Box::new(Message("solver did not converge".into()))),
            Fault::NoOutputs => Ok(vec![]),
            _ => Ok(vec![inputs[0].clone()]),
        }
    }

    fn vjp(
        &self,
        inputs: &[&DMatrix<f64>],
        _: &[&DMatrix<f64>],
        cotangents: Vec<Option<DMatrix<f64>>>,
        _: &[bool],
    ) -> Result<Vec<Option<DMatrix<f64>>>, BoxError> {
        let g = cotangents[0].clone();
        match self.0 {
            Fault::VjpErr => Err("adjoint blew up".into()),
            Fault::VjpTooFew => Ok(vec![]),
            Fault::VjpTooMany => Ok(vec![g.clone(), g]),
            Fault::VjpShape => Ok(vec![Some(DMatrix::zeros(
                inputs[0].ncols(),
                inputs[0].nrows() + 1,
            ))]),
            _ => Ok(vec![g]),
        }
    }

    fn held_bytes(&self) -> usize {
        0
    }
}

#[track_caller]
fn assert_custom(r: Result<impl std::fmt::Debug, Error>, says: &str) {
    match r {
        Err(Error::Custom { op, source }) => {
            assert_eq!(op, "faulty");
            assert!(
                source.to_string().contains(says),
                "message {source:?} lacks {says:?}"
            );
        }
        other => panic!("expected Error::Custom, got {other:?}"),
    }
}

#[test]
fn custom_forward_errors() {
    let tape = Tape::<f64>::new();
    let x = tape.var(m(2, 3));
    let before = tape.len();
    assert_custom(
        tape.custom(Faulty(Fault::ForwardErr), &[x]),
        "solver did not converge",
    );
    assert_custom(tape.custom(Faulty(Fault::NoOutputs), &[x]), "no output");
    assert_eq!(
        tape.len(),
        before,
        "a failed custom op must not record a node"
    );
    // Display names the op and includes the op's own message.
    let e = tape.custom(Faulty(Fault::ForwardErr), &[x]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "custom op `faulty` failed: solver did not converge"
    );
    assert_usable(&tape);
}

#[test]
fn custom_vjp_errors() {
    for (fault, says) in [
        (Fault::VjpErr, "adjoint blew up"),
        (Fault::VjpTooFew, "returned 0 cotangents for 1 inputs"),
        (Fault::VjpTooMany, "returned 2 cotangents for 1 inputs"),
        (
            Fault::VjpShape,
            "returned a (3, 3) cotangent for input 0 of shape (2, 3)",
        ),
    ] {
        let tape = Tape::<f64>::new();
        let x = tape.var(m(2, 3));
        let y = tape.custom(Faulty(fault), &[x]).unwrap()[0];
        assert_eq!(
            y.value().unwrap(),
            m(2, 3),
            "{fault:?}: the forward itself is fine"
        );
        assert_custom(tape.backward(y.sum()), says);
        assert_custom(tape.vjp(y, m(2, 3)), says);
        assert_custom(tape.vjp_wrt(&[(y, m(2, 3))], &[x]), says);
        assert!(x.is_live() && y.is_live());
        assert_usable(&tape);
    }
    // The same op without the fault differentiates as the identity.
    let tape = Tape::<f64>::new();
    let x = tape.var(m(2, 3));
    let y = tape.custom(Faulty(Fault::None), &[x]).unwrap()[0];
    let g = tape.vjp(y, m(2, 3).scale(-1.0)).unwrap();
    assert_eq!(g.get(x).unwrap(), &m(2, 3).scale(-1.0));
}
