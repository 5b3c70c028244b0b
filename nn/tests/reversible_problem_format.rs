//! `costate-reversible-problem/1` (`examples/problems/white_dwarf.json`): the file loads
//! into the model, grid and solvers it describes, and malformed variants are refused with
//! the error naming the offending key, never a panic.

use nn::reversible_problem::{ReversibleProblem, Scheme};
use nn::{Error, Strategy};
use serde_json::{json, Value};

const WHITE_DWARF: &str = include_str!("../../examples/problems/white_dwarf.json");

#[test]
fn the_white_dwarf_file_loads() {
    let p = ReversibleProblem::from_json(WHITE_DWARF).unwrap();
    assert_eq!((p.field.mlp.in_features(), p.field.dim()), (3, 2));
    assert_eq!(p.params.names().len(), 4);
    assert_eq!(p.params.values()[0].shape(), (10, 3));
    assert_eq!(p.y0.as_slice(), &[1.0, 0.0]);
    assert_eq!((p.dt, p.nsteps, p.coupling), (0.005, 1000, 0.999));
    let grid = p.grid();
    assert_eq!(grid.len(), 1001);
    assert_eq!(grid[1000], 5.0);
    assert_eq!(grid[7], 7.0 * 0.005);
    let rk4 = p.solver("rk4").unwrap();
    assert_eq!(rk4.method.name, "rk4_classic");
    assert_eq!(rk4.data.len(), 1000);
    assert_eq!(rk4.data[0].shape(), (1, 2));
    let opts = p.options(rk4, Scheme::Reversible).unwrap();
    assert_eq!(
        (opts.step_size, opts.constant_steps, opts.coupling),
        (Some(0.005), true, Some(0.999))
    );
    assert!(p.options(rk4, Scheme::Base).unwrap().coupling.is_none());
    assert!(matches!(p.solver("euler"), Err(Error::Mismatch(m)) if m.contains("dopri5")));
}

/// The time column comes first: swapping the first layer's time and state columns changes
/// the loss (a field that appended t would see the swapped weights as the original ones).
#[test]
fn the_model_reads_time_first() {
    let p = ReversibleProblem::from_json(WHITE_DWARF).unwrap();
    let midpoint = p.solver("midpoint").unwrap();
    let loss = |p: &ReversibleProblem| {
        p.gradients(midpoint, Scheme::Base, &Strategy::Taped)
            .unwrap()
            .loss
    };
    let reference = midpoint.checkpointed.loss;
    assert!((loss(&p) - reference).abs() < 1e-12 * reference);
    let mut moved = p.clone();
    let w = &mut moved.params.values_mut()[0];
    let time = w.column(0).into_owned();
    w.set_column(0, &w.column(2).into_owned());
    w.set_column(2, &time);
    assert!((loss(&moved) - reference).abs() > 1e-3 * reference);
}

/// A change to the parsed file.
type Edit = Box<dyn FnOnce(&mut Value)>;

fn mutated(edit: impl FnOnce(&mut Value)) -> String {
    let mut doc: Value = serde_json::from_str(WHITE_DWARF).unwrap();
    edit(&mut doc);
    serde_json::to_string(&doc).unwrap()
}

/// The key of the `Error::Format` that loading `text` gives.
fn format_key(text: &str) -> String {
    match ReversibleProblem::from_json(text) {
        Err(Error::Format { key, .. }) => key,
        Err(other) => panic!("expected a format error, got {other}"),
        Ok(_) => panic!("a malformed file loaded"),
    }
}

#[test]
fn malformed_files_are_refused_by_key() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "format",
            Box::new(|d| d["format"] = json!("costate-problem/1")),
        ),
        (
            "model.input",
            Box::new(|d| d["model"]["input"] = json!("concat(y, [t])")),
        ),
        (
            "model.activation",
            Box::new(|d| d["model"]["activation"] = json!("gelu")),
        ),
        (
            "model.layers[1].weight",
            Box::new(|d| {
                d["model"]["layers"][1]["weight"][0]
                    .as_array_mut()
                    .unwrap()
                    .truncate(9)
            }),
        ),
        (
            "model.layers[0].weight",
            // The first layer reads the state alone: no time column.
            Box::new(|d| {
                for row in d["model"]["layers"][0]["weight"].as_array_mut().unwrap() {
                    row.as_array_mut().unwrap().truncate(2);
                }
            }),
        ),
        ("y0", Box::new(|d| d["y0"] = json!([1.0, 0.0, 0.0]))),
        ("dt", Box::new(|d| d["dt"] = json!(-0.005))),
        ("t1", Box::new(|d| d["t1"] = json!(6.0))),
        ("nsteps", Box::new(|d| d["nsteps"] = json!(-3))),
        ("nsteps", Box::new(|d| d["nsteps"] = json!(0))),
        (
            "loss.kind",
            Box::new(|d| d["loss"]["kind"] = json!("sum_final")),
        ),
        (
            "reversible_scheme.coupling",
            Box::new(|d| d["reversible_scheme"]["coupling"] = json!(1.5)),
        ),
        ("solvers", Box::new(|d| d["solvers"] = json!({}))),
        (
            // ode's "rk4" weights (Kutta's 3/8 rule) with the file's classic c and a.
            "solvers.rk4.tableau",
            Box::new(|d| d["solvers"]["rk4"]["tableau"]["b"] = json!([0.125, 0.375, 0.375, 0.125])),
        ),
        (
            "solvers.dopri5.tableau",
            Box::new(|d| d["solvers"]["dopri5"]["tableau"]["a"][2] = json!([0.075])),
        ),
        (
            "solvers.midpoint.data",
            Box::new(|d| {
                d["solvers"]["midpoint"]["data"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
        ),
        (
            "solvers.midpoint.data[3]",
            Box::new(|d| d["solvers"]["midpoint"]["data"][3] = json!([1.0])),
        ),
        (
            "solvers.dopri5.checkpointed.grad_layers[0].weight[3]",
            Box::new(|d| {
                d["solvers"]["dopri5"]["checkpointed"]["grad_layers"][0]["weight"][3] =
                    json!([1.0, 2.0])
            }),
        ),
        (
            "solvers.rk4.reversible.grad_y0",
            Box::new(|d| d["solvers"]["rk4"]["reversible"]["grad_y0"] = json!([1.0])),
        ),
        (
            "solvers.rk4.reversible.grad_layers",
            Box::new(|d| {
                d["solvers"]["rk4"]["reversible"]["grad_layers"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
        ),
        (
            // A missing key is named by its parent (serde's message names the key).
            "solvers.midpoint.checkpointed",
            Box::new(|d| {
                d["solvers"]["midpoint"]["checkpointed"]
                    .as_object_mut()
                    .unwrap()
                    .remove("loss");
            }),
        ),
    ];
    for (key, edit) in cases {
        let got = format_key(&mutated(edit));
        assert!(
            got.starts_with(key),
            "expected an error at {key}, got {got}"
        );
    }
}

#[test]
fn broken_json_is_refused_with_its_position() {
    let truncated = &WHITE_DWARF[..WHITE_DWARF.len() / 2];
    assert!(matches!(
        ReversibleProblem::from_json(truncated),
        Err(Error::Json { .. })
    ));
    let nan = WHITE_DWARF.replacen("\"dt\":0.005", "\"dt\":NaN", 1);
    assert_ne!(nan, WHITE_DWARF, "the file spells dt as expected");
    assert_eq!(format_key(&nan), "dt");
    assert!(matches!(
        ReversibleProblem::load("/nonexistent/white_dwarf.json"),
        Err(Error::Io { .. })
    ));
}
