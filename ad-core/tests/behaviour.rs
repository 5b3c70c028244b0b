//! Tape behaviour: `no_grad`, `mark` / `rewind`, `vjp_wrt`, gradient accumulation, statistics
//! and constants.

use std::cell::Cell;
use std::rc::Rc;

use ad_core::nalgebra::{dmatrix, DMatrix};
use ad_core::num_dual::Dual64;
use ad_core::{BoxError, CustomOp, Result, Tape};

#[test]
fn no_grad_records_values_only() -> Result<()> {
    let tape = Tape::<f64>::new();
    let w = tape.var(dmatrix![1.0, -2.0; 0.5, 3.0]);
    let before = tape.stats();
    assert!(tape.is_grad_enabled());
    let (frozen, nodes_inside) = {
        let _guard = tape.no_grad();
        assert!(!tape.is_grad_enabled());
        let h = w.matmul(w)?.tanh();
        let out = h.add(w)?.sum();
        // Values are computed as usual ...
        let expected = (dmatrix![1.0, -2.0; 0.5, 3.0] * dmatrix![1.0, -2.0; 0.5, 3.0])
            .map(f64::tanh)
            + dmatrix![1.0, -2.0; 0.5, 3.0];
        assert_eq!(
            h.value()?,
            (dmatrix![1.0, -2.0; 0.5, 3.0] * dmatrix![1.0, -2.0; 0.5, 3.0]).map(f64::tanh)
        );
        assert!((out.scalar_value()? - expected.sum()).abs() < 1e-14);
        // ... but nothing is recorded for backward.
        assert!(!out.requires_grad()?);
        assert_eq!(tape.stats().graph_nodes, before.graph_nodes);
        assert_eq!(tape.stats().held_bytes, before.held_bytes);
        (out, tape.len())
    };
    assert!(
        tape.is_grad_enabled(),
        "the guard's drop restores recording"
    );
    assert_eq!(
        nodes_inside,
        before.nodes + 4,
        "values are still stored as nodes"
    );
    // Backward through the no-grad result reaches nothing.
    let grads = tape.backward(frozen)?;
    assert!(grads.get(w).is_none());
    assert!(grads.is_empty());
    // Recording resumes: the same expression now has a gradient.
    let live = w.square().sum();
    assert!(live.requires_grad()?);
    assert_eq!(tape.stats().graph_nodes, before.graph_nodes + 2);
    let grads = tape.backward(frozen.add(live)?)?;
    assert_eq!(grads.get(w).unwrap(), &dmatrix![2.0, -4.0; 1.0, 6.0]);
    Ok(())
}

#[test]
fn no_grad_guards_nest() {
    let tape = Tape::<f64>::new();
    let outer = tape.no_grad();
    {
        let _inner = tape.no_grad();
        assert!(!tape.is_grad_enabled());
    }
    assert!(
        !tape.is_grad_enabled(),
        "dropping the inner guard keeps the outer one in force"
    );
    drop(outer);
    assert!(tape.is_grad_enabled());
}

#[test]
fn no_grad_custom_op_is_stored_as_a_value() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![1.0, 2.0]);
    let y = {
        let _g = tape.no_grad();
        tape.custom(Double(0), &[x])?[0]
    };
    assert_eq!(y.value()?, dmatrix![2.0, 4.0]);
    assert!(!y.requires_grad()?);
    assert_eq!(tape.stats().graph_nodes, 0);
    assert!(!tape.stats().per_op.contains_key("double"));
    Ok(())
}

#[test]
fn mark_and_rewind_keep_earlier_vars() -> Result<()> {
    let tape = Tape::<f64>::new();
    let w = tape.var(dmatrix![1.0, 2.0, 3.0]);
    let c = tape.constant(dmatrix![0.5, 0.5, 0.5]);
    let base = w.mul(c)?; // recorded before the mark: survives
    let mark = tape.mark();
    let stats_at_mark = tape.stats();
    for step in 0..3 {
        // A scratch computation per step, dropped by the rewind.
        let loss = base.exp().sum();
        let g = tape.backward(loss)?;
        let expected = dmatrix![1.0, 2.0, 3.0].map(|w: f64| 0.5 * (0.5 * w).exp());
        assert!((g.get(w).unwrap() - expected).amax() < 1e-14, "step {step}");
        assert_eq!(tape.len(), 5);
        assert_ne!(tape.mark(), mark);
        tape.rewind(mark)?;
        assert_eq!(tape.mark(), mark);
        assert_eq!(tape.len(), 3);
        assert_eq!(
            tape.stats(),
            stats_at_mark,
            "step {step}: rewind restores the tape"
        );
        assert!(!loss.is_live());
        assert!(w.is_live() && c.is_live() && base.is_live());
    }
    assert_eq!(base.value()?, dmatrix![0.5, 1.0, 1.5]);
    // Rewinding to the current end is a no-op; reset drops everything.
    tape.rewind(tape.mark())?;
    assert_eq!(tape.len(), 3);
    tape.reset()?;
    assert!(tape.is_empty());
    assert!(!w.is_live());
    Ok(())
}

#[test]
fn vjp_wrt_returns_zeros_without_a_path() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![1.0, 2.0; 3.0, 4.0]);
    let y = tape.var(dmatrix![5.0, 6.0, 7.0]);
    let out = x.square();
    let later = tape.var(dmatrix![1.0]); // recorded after the output
    let c = tape.constant(dmatrix![1.0, 1.0]);
    let g = tape.vjp_wrt(&[(out, dmatrix![1.0, 0.0; -1.0, 2.0])], &[y, x, later, c])?;
    assert_eq!(g.len(), 4);
    assert_eq!(g[0], DMatrix::zeros(1, 3));
    assert_eq!(g[1], dmatrix![2.0, 0.0; -6.0, 16.0]);
    assert_eq!(g[2], DMatrix::zeros(1, 1));
    assert_eq!(g[3], DMatrix::zeros(1, 2));
    // Full vjp agrees, and has no entry for y.
    let full = tape.vjp(out, dmatrix![1.0, 0.0; -1.0, 2.0])?;
    assert_eq!(full.get(x).unwrap(), &g[1]);
    assert!(full.get(y).is_none());
    Ok(())
}

#[test]
fn vjp_wrt_with_several_seeds_and_a_repeated_var() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![1.0, 2.0]);
    let a = x.square();
    let b = x.scale(3.0);
    // Seeds on two outputs add up; a var listed twice gets its gradient twice.
    let g = tape.vjp_wrt(
        &[(a, dmatrix![1.0, 1.0]), (b, dmatrix![1.0, -1.0])],
        &[x, x],
    )?;
    assert_eq!(g[0], dmatrix![5.0, 1.0]);
    assert_eq!(g[1], dmatrix![5.0, 1.0]);
    // The same seeds listed against recording order.
    let g = tape.vjp_wrt(&[(b, dmatrix![1.0, -1.0]), (a, dmatrix![1.0, 1.0])], &[x])?;
    assert_eq!(g[0], dmatrix![5.0, 1.0]);
    Ok(())
}

#[test]
fn gradients_accumulate_over_repeated_uses() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![1.0, -2.0, 0.5]);
    // d/dx Σ (x x + x) = 2x + 1
    let y = x.mul(x)?.add(x)?.sum();
    assert_eq!(tape.backward(y)?.get(x).unwrap(), &dmatrix![3.0, -3.0, 2.0]);
    // Shared intermediate: h = x², loss = Σ (h + h h) → (1 + 2h) 2x
    let h = x.square();
    let loss = h.add(h.mul(h)?)?.sum();
    assert_eq!(
        tape.backward(loss)?.get(x).unwrap(),
        &dmatrix![6.0, -36.0, 1.5]
    );
    // Two seeds of vjp on the same node add.
    let s = x.sum();
    let g = tape.vjp_wrt(&[(s, dmatrix![1.0]), (s, dmatrix![2.0])], &[x])?;
    assert_eq!(g[0], dmatrix![3.0, 3.0, 3.0]);
    Ok(())
}

#[test]
fn constants_get_no_gradient() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![1.0, 2.0]);
    let c = tape.constant(dmatrix![3.0, 4.0]);
    assert!(x.requires_grad()?);
    assert!(!c.requires_grad()?);
    let cc = c.mul(c)?.exp(); // only constants upstream: a plain value
    assert!(!cc.requires_grad()?);
    assert_eq!(tape.stats().graph_nodes, 0);
    let loss = x.mul(c)?.add(cc)?.sum();
    let mut grads = tape.backward(loss)?;
    assert_eq!(grads.len(), 1);
    assert!(grads.get(c).is_none());
    assert!(grads.get(cc).is_none());
    assert_eq!(grads.get(x).unwrap(), &dmatrix![3.0, 4.0]);
    assert_eq!(grads.take_or_zeros(c)?, DMatrix::zeros(1, 2));
    assert_eq!(grads.take_or_zeros(x)?, dmatrix![3.0, 4.0]);
    // Taken: a second take gives zeros.
    assert_eq!(grads.take_or_zeros(x)?, DMatrix::zeros(1, 2));
    assert!(grads.is_empty());
    // A loss of constants only: nothing to differentiate.
    assert!(tape.backward(cc.sum())?.is_empty());
    Ok(())
}

#[test]
fn stats_of_a_small_known_graph() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.constant(DMatrix::from_element(2, 3, 0.5)); // leaf: not counted
    let w = tape.var(DMatrix::from_element(3, 2, 0.25)); // leaf: not counted
    let y = x.matmul(w)?; // 2x2 = 4 entries
    let z = y.tanh(); // 4
    let c = tape.constant(DMatrix::from_element(2, 2, 1.0));
    let _cc = c.add(c)?; // constant: not counted
    let s = z.add(c)?; // 4
    let _loss = s.sum(); // 1
    let st = tape.stats();
    assert_eq!(st.nodes, 8);
    assert_eq!(st.graph_nodes, 4);
    assert_eq!(st.held_bytes, (4 + 4 + 4 + 1) * 8);
    let expected: Vec<(&str, usize)> = vec![("add", 1), ("matmul", 1), ("sum", 1), ("tanh", 1)];
    assert_eq!(
        st.per_op
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(tape.len(), 8);

    // The same graph on Dual64 holds twice the bytes (16 per entry).
    let dt = Tape::<Dual64>::new();
    let dx = dt.constant(DMatrix::from_element(2, 3, Dual64::from(0.5)));
    let dw = dt.var(DMatrix::from_element(3, 2, Dual64::from(0.25)));
    let _ = dx.matmul(dw)?.tanh().sum();
    assert_eq!(dt.stats().held_bytes, (4 + 4 + 1) * 16);
    Ok(())
}

/// `x ↦ 2x`, reporting `held` extra bytes.
struct Double(usize);

impl CustomOp<f64> for Double {
    fn name(&self) -> &str {
        "double"
    }
    fn forward(
        &mut self,
        inputs: &[&DMatrix<f64>],
    ) -> std::result::Result<Vec<DMatrix<f64>>, BoxError> {
        Ok(vec![inputs[0] * 2.0])
    }
    fn vjp(
        &self,
        _: &[&DMatrix<f64>],
        _: &[&DMatrix<f64>],
        cotangents: Vec<Option<DMatrix<f64>>>,
        _: &[bool],
    ) -> std::result::Result<Vec<Option<DMatrix<f64>>>, BoxError> {
        Ok(vec![cotangents[0].as_ref().map(|g| g * 2.0)])
    }
    fn held_bytes(&self) -> usize {
        self.0
    }
}

#[test]
fn stats_count_custom_ops_and_their_held_bytes() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(DMatrix::from_element(2, 2, 1.0));
    let y = tape.custom(Double(100), &[x])?[0];
    let st = tape.stats();
    assert_eq!(st.per_op["double"], 1);
    // The op's own 100 bytes plus its 2x2 output.
    assert_eq!(st.held_bytes, 100 + 4 * 8);
    let g = tape.backward(y.sum())?;
    assert_eq!(g.get(x).unwrap(), &DMatrix::from_element(2, 2, 2.0));
    let st = tape.stats();
    assert_eq!(st.per_op["sum"], 1);
    // With a constant input the op is not kept at all.
    let c = tape.constant(DMatrix::from_element(2, 2, 1.0));
    let yc = tape.custom(Double(100), &[c])?[0];
    assert!(!yc.requires_grad()?);
    assert_eq!(yc.value()?, DMatrix::from_element(2, 2, 2.0));
    let after = tape.stats();
    assert_eq!(after.nodes, st.nodes + 2);
    assert_eq!(
        (after.graph_nodes, after.held_bytes, after.per_op),
        (st.graph_nodes, st.held_bytes, st.per_op)
    );
    Ok(())
}

#[test]
fn release_unneeded_drops_values_backward_never_reads_and_keeps_gradients() {
    use nalgebra::dmatrix;
    let grads_of = |release: bool| {
        let tape = Tape::<f64>::new();
        let x = tape.var(dmatrix![0.3, -1.2; 0.7, 2.0]);
        let w = tape.var(dmatrix![0.5, -0.25; 1.5, 0.75]);
        let b = tape.var(dmatrix![0.1, -0.2]);
        let mark = tape.mark();
        // linear → tanh: tanh's VJP reads its output, so the pre-activation is unneeded;
        // linear's VJP reads its input x (a leaf) and w.
        let pre = x.linear(w, b).unwrap();
        let act = pre.tanh();
        let out = act.square().sum();
        let stats_before = tape.stats();
        if release {
            let freed = tape.release_unneeded(mark, &[out]).unwrap();
            // The pre-activation (4 entries) and sum's input... square reads its input (act),
            // so only `pre` is dropped: 4 f64 = 32 bytes.
            assert_eq!(freed, 32);
            assert_eq!(tape.stats().held_bytes, stats_before.held_bytes - 32);
            assert!(matches!(pre.value(), Err(ad_core::Error::Released { .. })));
            assert!(act.value().is_ok() && out.value().is_ok());
        }
        let g = tape.backward(out).unwrap();
        (
            g.get(x).unwrap().clone(),
            g.get(w).unwrap().clone(),
            g.get(b).unwrap().clone(),
        )
    };
    let (full, released) = (grads_of(false), grads_of(true));
    assert_eq!(full, released);
}

#[test]
fn release_unneeded_keeps_dual_number_gradients_exact() {
    use num_dual::Dual64;
    let grads_of = |release: bool| {
        let tape = Tape::<Dual64>::new();
        let d = |re: f64, eps: f64| Dual64::new(re, eps);
        let x = tape.var(nalgebra::DMatrix::from_row_slice(
            1,
            3,
            &[d(0.3, 1.0), d(-1.2, 0.5), d(0.7, -2.0)],
        ));
        let mark = tape.mark();
        let y = x.scale(d(1.5, 0.0)).sigmoid().exp().sum();
        if release {
            tape.release_unneeded(mark, &[y]).unwrap();
        }
        tape.backward(y).unwrap().get(x).unwrap().clone()
    };
    assert_eq!(grads_of(false), grads_of(true));
}

#[test]
fn vjp_wrt_an_intermediate_is_the_cotangent_at_its_node() -> Result<()> {
    let tape = Tape::<f64>::new();
    let x = tape.var(dmatrix![0.5, -1.0]);
    let y = x.tanh();
    // d Σy / dy = 1, whatever x is.
    let g = tape.vjp_wrt(&[(y.sum(), dmatrix![1.0])], &[y])?;
    assert_eq!(g, vec![dmatrix![1.0, 1.0]]);
    // A seed on the intermediate itself is its cotangent.
    let g = tape.vjp_wrt(&[(y, dmatrix![2.0, -3.0])], &[y])?;
    assert_eq!(g, vec![dmatrix![2.0, -3.0]]);

    // A leaf and intermediates together: L = Σ z + Σ x with z = y², y = tanh x.
    // z̄ = 1, ȳ = 2y, x̄ = 2y (1 − y²) + 1.
    let z = y.square();
    let loss = z.sum().add(x.sum())?;
    let g = tape.vjp_wrt(&[(loss, dmatrix![1.0])], &[z, x, y])?;
    let yv = dmatrix![0.5f64, -1.0].map(f64::tanh);
    assert_eq!(g[0], dmatrix![1.0, 1.0]);
    assert_eq!(g[2], &yv * 2.0);
    let xbar = yv.map(|y| 2.0 * y * (1.0 - y * y) + 1.0);
    assert!((&g[1] - &xbar).amax() < 1e-15, "{}", g[1]);
    // The leaf's entry agrees with a full backward.
    assert_eq!(tape.backward(loss)?.get(x).unwrap(), &g[1]);

    // A custom op's output counts as an intermediate too.
    let d = tape.custom(Double(0), &[y])?[0];
    let g = tape.vjp_wrt(&[(d.sum(), dmatrix![1.0])], &[d, y])?;
    assert_eq!(g, vec![dmatrix![1.0, 1.0], dmatrix![2.0, 2.0]]);
    Ok(())
}

/// `x ↦ x`, counting how often its VJP runs.
struct Counted(Rc<Cell<usize>>);

impl CustomOp<f64> for Counted {
    fn name(&self) -> &str {
        "counted"
    }
    fn forward(
        &mut self,
        inputs: &[&DMatrix<f64>],
    ) -> std::result::Result<Vec<DMatrix<f64>>, BoxError> {
        Ok(vec![inputs[0].clone()])
    }
    fn vjp(
        &self,
        _: &[&DMatrix<f64>],
        _: &[&DMatrix<f64>],
        cotangents: Vec<Option<DMatrix<f64>>>,
        _: &[bool],
    ) -> std::result::Result<Vec<Option<DMatrix<f64>>>, BoxError> {
        self.0.set(self.0.get() + 1);
        Ok(cotangents)
    }
    fn held_bytes(&self) -> usize {
        0
    }
}

#[test]
fn vjp_wrt_an_intermediate_visits_only_what_leads_to_it() -> Result<()> {
    let tape = Tape::<f64>::new();
    let runs = Rc::new(Cell::new(0));
    let x = tape.var(dmatrix![1.0, 2.0]);
    let w = tape.var(dmatrix![3.0, 4.0]);
    // y sits above a counted node; a second counted node feeds the output beside y.
    let below = tape.custom(Counted(Rc::clone(&runs)), &[x])?[0];
    let y = below.square();
    let side = tape.custom(Counted(Rc::clone(&runs)), &[w])?[0];
    let out = y.add(side)?.sum();
    // With respect to y only: neither counted VJP runs (nothing below y is wanted, and the
    // side branch does not lead to y).
    let g = tape.vjp_wrt(&[(out, dmatrix![1.0])], &[y])?;
    assert_eq!(g, vec![dmatrix![1.0, 1.0]]);
    assert_eq!(runs.get(), 0);
    // With respect to y and x: only the node below y runs.
    let g = tape.vjp_wrt(&[(out, dmatrix![1.0])], &[y, x])?;
    assert_eq!(g, vec![dmatrix![1.0, 1.0], dmatrix![2.0, 4.0]]);
    assert_eq!(runs.get(), 1);
    // A full backward runs both.
    let full = tape.backward(out)?;
    assert_eq!(full.get(w).unwrap(), &dmatrix![1.0, 1.0]);
    assert_eq!(runs.get(), 3);
    Ok(())
}
