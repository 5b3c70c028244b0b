//! `costate-problem/1` and `costate-weights/1` documents: exact round trips, and malformed
//! documents rejected with `Error::Format` naming the offending entry.

use ad_core::nalgebra::DMatrix;
use nn::problem::{LossSpec, PROBLEM_FORMAT};
use nn::{weights, Activation, Error, Input, Loss, Mlp, ParamSet, Problem};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Numbers with full 17-digit mantissas and awkward exponents, as Python's `repr` writes them.
fn awkward(rng: &mut impl Rng) -> f64 {
    let m: f64 = rng.random_range(-1.0..1.0);
    let e: i32 = rng.random_range(-12..4);
    m * 10f64.powi(e) + 0.1 * m
}

/// A small valid problem: 2 → 3 → 2 on h, batch 2, three output times, cotangent loss,
/// and a reference block with extra keys.
fn valid_doc() -> Value {
    let mut doc = json!({
        "format": "costate-problem/1",
        "description": "tiny test problem",
        "model": {
            "kind": "mlp", "activation": "tanh", "input": "h",
            "subtract_state": false, "time_input": false,
            "layers": [
                {"weight": [[0.1, -0.2], [0.30000000000000004, 0.4], [-0.5, 0.6]],
                 "bias": [0.01, -0.02, 0.03]},
                {"weight": [[0.7, -0.8, 0.9], [-1.0, 1.1, -1.2]], "bias": [0.04, -0.05]}
            ]
        },
        "h0": [[1.0, -0.5], [0.25, 2.0]],
        "t": [0.0, 0.5, 1.0],
        "solver": {"method": "dopri5", "rtol": 1e-7, "atol": 1e-9},
        "loss": {"kind": "cotangents", "cotangents": [
            [[1.0, 0.0], [0.0, 1.0]],
            [[0.5, -0.5], [0.25, 0.125]],
            [[-1.0, 2.0], [3.0, -4.0]]
        ]},
        "reference": {
            "source": "hand-written",
            "loss": 1.2345678901234567,
            "odeint": {"grad_h0": [[1.0, 2.0], [3.0, 4.0]],
                       "grad_layers": [],
                       "grad_t": [0.1, 0.2, 0.3], "nfe_forward": 26},
            "odeint_adjoint": {"grad_h0": [[1.5, 2.5], [3.5, 4.5]],
                               "grad_layers": [], "nfe_backward": 741},
            "tight": {"grad_h0": [[1.0, 2.0], [3.0, 4.0]], "grad_layers": [],
                      "rtol": 1e-12, "check": {"method": "dopri8"}}
        },
        "generator": {"script": "by hand", "args": ["--seed", 3]},
        "unknown_key_readers_ignore": {"x": [1, 2, 3]}
    });
    fit_reference_layers(&mut doc);
    doc
}

/// Give the reference's three gradient sets one `{weight, bias}` per model layer, of the
/// layer's shapes (values: the weights times 1, 2, 3).
fn fit_reference_layers(doc: &mut Value) {
    let layers = doc["model"]["layers"].clone();
    for (k, set) in ["odeint", "odeint_adjoint", "tight"]
        .into_iter()
        .enumerate()
    {
        let scale = (k + 1) as f64;
        let scaled: Vec<Value> = layers
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let w: Vec<Vec<f64>> = serde_json::from_value(l["weight"].clone()).unwrap();
                let b: Vec<f64> = serde_json::from_value(l["bias"].clone()).unwrap();
                json!({
                    "weight": w.iter().map(|r| r.iter().map(|x| x * scale).collect::<Vec<_>>()).collect::<Vec<_>>(),
                    "bias": b.iter().map(|x| x * scale).collect::<Vec<_>>(),
                })
            })
            .collect();
        doc["reference"][set]["grad_layers"] = Value::Array(scaled);
    }
}

fn load(doc: &Value) -> nn::Result<Problem> {
    Problem::from_json(&serde_json::to_string(doc).unwrap())
}

/// The `Format` error's key and message, or a panic naming what came instead.
fn format_error(doc: &Value) -> (String, String) {
    format_error_text(&serde_json::to_string(doc).unwrap())
}

fn format_error_text(text: &str) -> (String, String) {
    match Problem::from_json(text) {
        Err(Error::Format { key, message }) => (key, message),
        Err(other) => panic!("expected Error::Format, got {other:?}"),
        Ok(_) => panic!("malformed document was accepted"),
    }
}

fn assert_key(doc: &Value, key: &str) -> String {
    let (k, message) = format_error(doc);
    assert_eq!(k, key, "wrong key (message: {message})");
    message
}

#[test]
fn valid_document_loads_with_its_values() {
    let p = load(&valid_doc()).unwrap();
    assert_eq!(p.func.dim(), 2);
    assert_eq!(p.func.input, Input::State);
    assert!(!p.func.time_input && !p.func.subtract_state);
    assert_eq!(p.func.mlp.activation, Activation::Tanh);
    assert_eq!(
        p.params.names(),
        [
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias"
        ]
    );
    let w0 = p.params.get("layers.0.weight").unwrap();
    assert_eq!(w0.shape(), (3, 2));
    // Row-major in the file: weight[1][0] is row 1, column 0.
    assert_eq!(w0[(1, 0)], 0.30000000000000004);
    assert_eq!(w0[(2, 1)], 0.6);
    assert_eq!(p.params.get("layers.1.bias").unwrap().shape(), (1, 2));
    assert_eq!(p.h0, DMatrix::from_row_slice(2, 2, &[1.0, -0.5, 0.25, 2.0]));
    assert_eq!(p.t, [0.0, 0.5, 1.0]);
    assert_eq!((p.options.rtol, p.options.atol), (1e-7, 1e-9));
    let Loss::Cotangents(v) = &p.loss else {
        panic!("expected a cotangent loss, got {:?}", p.loss)
    };
    assert_eq!(v.len(), 3);
    assert_eq!(v[2], DMatrix::from_row_slice(2, 2, &[-1.0, 2.0, 3.0, -4.0]));
    let r = p.file.reference.as_ref().unwrap();
    assert_eq!(r.odeint.extra["nfe_forward"], json!(26));
    assert_eq!(r.odeint.grad_t.as_deref(), Some(&[0.1, 0.2, 0.3][..]));
    assert_eq!(r.odeint_adjoint.grad_t, None);
}

#[test]
fn sum_final_and_cube_time_input_subtract_state_load() {
    let mut doc = valid_doc();
    doc["loss"] = json!({"kind": "sum_final"});
    doc["model"]["input"] = json!("cube");
    doc["model"]["subtract_state"] = json!(true);
    doc["model"]["time_input"] = json!(true);
    doc["model"]["layers"][0]["weight"] =
        json!([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]);
    fit_reference_layers(&mut doc);
    let p = load(&doc).unwrap();
    assert_eq!(p.loss, Loss::SumFinal);
    assert_eq!(p.func.input, Input::Cube);
    assert!(p.func.time_input && p.func.subtract_state);
    assert_eq!(p.func.mlp.in_features(), 3);
    assert_eq!(p.func.dim(), 2);
}

/// Random full-precision numbers survive `to_file` → JSON text → `from_json` bit for bit.
#[test]
fn round_trip_is_exact() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..20 {
        let mut doc = valid_doc();
        let mut fill = |v: &mut Value| {
            for row in v.as_array_mut().unwrap() {
                for x in row.as_array_mut().unwrap() {
                    *x = json!(awkward(&mut rng));
                }
            }
        };
        fill(&mut doc["model"]["layers"][0]["weight"]);
        fill(&mut doc["model"]["layers"][1]["weight"]);
        fill(&mut doc["h0"]);
        for c in doc["loss"]["cotangents"].as_array_mut().unwrap() {
            fill(c);
        }
        doc["model"]["layers"][0]["bias"] =
            json!([awkward(&mut rng), awkward(&mut rng), awkward(&mut rng)]);
        doc["t"] = json!([0.0, 0.1 + 0.2, 1.0 / 3.0]);
        let p = load(&doc).unwrap();
        let text = serde_json::to_string(&p.to_file()).unwrap();
        let q = Problem::from_json(&text).unwrap();
        assert_eq!(q.params, p.params);
        assert_eq!(q.h0, p.h0);
        assert_eq!(q.t, p.t);
        assert_eq!(q.loss, p.loss);
        assert_eq!(
            q.file, p.file,
            "reference and generator blocks must survive"
        );
        // And the values are the ones of the original text.
        let w = &doc["model"]["layers"][1]["weight"][1][2];
        assert_eq!(
            q.params.get("layers.1.weight").unwrap()[(1, 2)],
            w.as_f64().unwrap()
        );
    }
}

#[test]
fn to_file_carries_updated_weights() {
    let mut p = load(&valid_doc()).unwrap();
    p.params.values_mut()[3][(0, 1)] = -7.25;
    p.h0[(1, 1)] = 0.125;
    let q = Problem::from_file(p.to_file()).unwrap();
    assert_eq!(q.params.get("layers.1.bias").unwrap()[(0, 1)], -7.25);
    assert_eq!(q.h0[(1, 1)], 0.125);
    assert_eq!(q.file.model.layers[1].bias, [0.04, -7.25]);
}

#[test]
fn to_file_carries_an_edited_loss_and_solver() {
    let mut p = load(&valid_doc()).unwrap();
    let (batch, dim) = p.h0.shape();
    let cotangents: Vec<DMatrix<f64>> = (0..p.t.len())
        .map(|i| DMatrix::from_fn(batch, dim, |r, c| (i + r) as f64 - 0.5 * c as f64))
        .collect();
    p.loss = Loss::Cotangents(cotangents.clone());
    p.options = ode::Options::with_method("tsit5")
        .unwrap()
        .tolerances(3e-5, 4e-7);
    let q = Problem::from_json(&p.to_json().unwrap()).unwrap();
    assert_eq!(q.loss, Loss::Cotangents(cotangents));
    assert_eq!((q.options.rtol, q.options.atol), (3e-5, 4e-7));
    assert_eq!(q.options.method.name, "tsit5");
}

#[test]
fn ragged_weight_row_names_the_row() {
    let mut doc = valid_doc();
    doc["model"]["layers"][0]["weight"][2] = json!([0.1, 0.2, 0.3]);
    let msg = assert_key(&doc, "model.layers[0].weight[2]");
    assert!(msg.contains('3') && msg.contains('2'), "{msg}");
    let mut doc = valid_doc();
    doc["model"]["layers"][1]["weight"][1] = json!([0.1]);
    assert_key(&doc, "model.layers[1].weight[1]");
}

#[test]
fn wrong_bias_length_names_the_bias() {
    let mut doc = valid_doc();
    doc["model"]["layers"][0]["bias"] = json!([0.1, 0.2]);
    assert_key(&doc, "model.layers[0].bias");
    let mut doc = valid_doc();
    doc["model"]["layers"][1]["bias"] = json!([]);
    assert_key(&doc, "model.layers[1].bias");
}

#[test]
fn layer_chain_and_input_width_are_checked() {
    // Layer 1 reads 2 features but layer 0 outputs 3.
    let mut doc = valid_doc();
    doc["model"]["layers"][1]["weight"] = json!([[0.1, 0.2], [0.3, 0.4]]);
    assert_key(&doc, "model.layers[1].weight");
    // time_input needs a third input column.
    let mut doc = valid_doc();
    doc["model"]["time_input"] = json!(true);
    assert_key(&doc, "model.layers[0].weight");
    let mut doc = valid_doc();
    doc["model"]["layers"] = json!([]);
    assert_key(&doc, "model.layers");
}

#[test]
fn h0_shape_errors_name_h0() {
    let mut doc = valid_doc();
    doc["h0"] = json!([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    assert_key(&doc, "h0");
    let mut doc = valid_doc();
    doc["h0"][1] = json!([1.0]);
    assert_key(&doc, "h0[1]");
    let mut doc = valid_doc();
    doc["h0"] = json!([]);
    assert_key(&doc, "h0");
}

#[test]
fn cotangent_count_and_shape_are_checked() {
    let mut doc = valid_doc();
    doc["loss"]["cotangents"].as_array_mut().unwrap().pop();
    let msg = assert_key(&doc, "loss.cotangents");
    assert!(msg.contains('2') && msg.contains('3'), "{msg}");
    let mut doc = valid_doc();
    doc["loss"]["cotangents"][1] = json!([[1.0, 2.0]]);
    assert_key(&doc, "loss.cotangents[1]");
    let mut doc = valid_doc();
    doc["loss"]["cotangents"][2] = json!([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    assert_key(&doc, "loss.cotangents[2]");
    let mut doc = valid_doc();
    doc["loss"]["cotangents"][0][1] = json!([1.0, 2.0, 3.0]);
    assert_key(&doc, "loss.cotangents[0][1]");
}

#[test]
fn missing_keys_are_named() {
    let mut doc = valid_doc();
    doc.as_object_mut().unwrap().remove("h0");
    let (key, message) = format_error(&doc);
    assert!(
        format!("{key} {message}").contains("h0"),
        "{key}: {message}"
    );
    let mut doc = valid_doc();
    doc["model"]["layers"][1]
        .as_object_mut()
        .unwrap()
        .remove("bias");
    let (key, message) = format_error(&doc);
    assert_eq!(key, "model.layers[1]", "{message}");
    assert!(message.contains("bias"), "{message}");
    let mut doc = valid_doc();
    doc["solver"].as_object_mut().unwrap().remove("rtol");
    let (key, message) = format_error(&doc);
    assert_eq!(key, "solver", "{message}");
    assert!(message.contains("rtol"), "{message}");
    let mut doc = valid_doc();
    doc["loss"].as_object_mut().unwrap().remove("cotangents");
    let (key, message) = format_error(&doc);
    assert!(
        format!("{key} {message}").contains("cotangents"),
        "{key}: {message}"
    );
}

#[test]
fn wrong_types_are_named() {
    let mut doc = valid_doc();
    doc["model"]["layers"][0]["weight"][1][0] = json!("0.5");
    let (key, _) = format_error(&doc);
    assert_eq!(key, "model.layers[0].weight[1][0]");
    let mut doc = valid_doc();
    doc["t"] = json!(1.0);
    let (key, _) = format_error(&doc);
    assert_eq!(key, "t");
}

#[test]
fn python_non_finite_tokens_name_the_entry() {
    let text = serde_json::to_string(&valid_doc()).unwrap();
    // Python's json.dumps writes NaN / Infinity / -Infinity as bare tokens.
    for (from, to, key) in [
        ("[0.25,2.0]", "[0.25,NaN]", "h0[1][1]"),
        ("[0.25,2.0]", "[Infinity,2.0]", "h0[1][0]"),
        ("\"t\":[0.0,0.5,1.0]", "\"t\":[0.0,-Infinity,1.0]", "t[1]"),
        ("[0.04,-0.05]", "[0.04,NaN]", "model.layers[1].bias[1]"),
        ("\"rtol\":1e-7", "\"rtol\":NaN", "solver.rtol"),
        (
            "[0.7,-0.8,0.9]",
            "[0.7,-0.8,Infinity]",
            "model.layers[1].weight[0][2]",
        ),
    ] {
        assert!(text.contains(from), "test document lacks {from}: {text}");
        let bad = text.replacen(from, to, 1);
        let (k, message) = format_error_text(&bad);
        assert_eq!(k, key, "{to}: {message}");
        assert!(message.contains("finite"), "{message}");
    }
    // The tokens inside strings are text, not numbers.
    let mut doc = valid_doc();
    doc["description"] = json!("NaN and Infinity and \"-Infinity\" here");
    let p = load(&doc).unwrap();
    assert_eq!(
        p.file.description,
        "NaN and Infinity and \"-Infinity\" here"
    );
}

#[test]
fn huge_numbers_name_the_entry() {
    let text = serde_json::to_string(&valid_doc()).unwrap();
    for (from, to, key) in [
        ("[0.25,2.0]", "[0.25,1e999]", "h0[1][1]"),
        ("[0.04,-0.05]", "[-1e400,-0.05]", "model.layers[1].bias[0]"),
    ] {
        let bad = text.replacen(from, to, 1);
        let (k, message) = format_error_text(&bad);
        assert_eq!(k, key, "{to}: {message}");
    }
    // Finite values built in memory are checked after parsing as well.
    let mut file = load(&valid_doc()).unwrap().file;
    file.model.layers[0].weight[2][1] = f64::INFINITY;
    match Problem::from_file(file) {
        Err(Error::Format { key, .. }) => assert_eq!(key, "model.layers[0].weight[2][1]"),
        other => panic!("expected Format, got {other:?}"),
    }
    let mut file = load(&valid_doc()).unwrap().file;
    file.t[2] = f64::NAN;
    match Problem::from_file(file) {
        Err(Error::Format { key, .. }) => assert_eq!(key, "t[2]"),
        other => panic!("expected Format, got {other:?}"),
    }
    let mut file = load(&valid_doc()).unwrap().file;
    if let LossSpec::Cotangents { cotangents } = &mut file.loss {
        cotangents[1][0][1] = f64::NEG_INFINITY;
    }
    match Problem::from_file(file) {
        Err(Error::Format { key, .. }) => assert_eq!(key, "loss.cotangents[1][0][1]"),
        other => panic!("expected Format, got {other:?}"),
    }
}

#[test]
fn unknown_names_are_rejected() {
    for (path, value, key) in [
        (&["solver", "method"][..], "dopri7", "solver.method"),
        (&["model", "activation"][..], "gelu", "model.activation"),
        (&["model", "input"][..], "square", "model.input"),
        (&["model", "kind"][..], "cnn", "model.kind"),
        (&["format"][..], "costate-problem/2", "format"),
    ] {
        let mut doc = valid_doc();
        let mut slot = &mut doc;
        for p in path {
            slot = &mut slot[*p];
        }
        *slot = json!(value);
        let msg = assert_key(&doc, key);
        assert!(msg.contains(value), "{key}: {msg}");
    }
    let mut doc = valid_doc();
    doc["loss"] = json!({"kind": "mse"});
    let (key, message) = format_error(&doc);
    assert_eq!(key, "loss.kind", "{message}");
    assert!(message.contains("mse"), "{message}");
    // Known alternatives still load.
    let mut doc = valid_doc();
    doc["solver"]["method"] = json!("tsit5");
    doc["model"]["activation"] = json!("softplus");
    let p = load(&doc).unwrap();
    assert_eq!(p.func.mlp.activation, Activation::Softplus);
    assert_eq!(p.options.method.name, "tsit5");
    assert_eq!(PROBLEM_FORMAT, "costate-problem/1");
}

#[test]
fn bad_time_grids_and_tolerances_are_rejected() {
    for t in [json!([0.0, 1.0, 0.5]), json!([0.0, 0.5, 0.5]), json!([])] {
        let mut doc = valid_doc();
        doc["loss"] = json!({"kind": "sum_final"});
        doc["t"] = t.clone();
        let msg = assert_key(&doc, "t");
        assert!(!msg.is_empty(), "{t}");
    }
    let mut doc = valid_doc();
    doc["solver"]["rtol"] = json!(-1e-7);
    let (key, message) = format_error(&doc);
    assert!(key.starts_with("solver"), "{key}: {message}");
    assert!(message.contains("rtol"), "{message}");
}

#[test]
fn syntax_errors_are_json_errors_and_data_errors_name_the_key() {
    match Problem::from_json("{\"format\": \"costate-problem/1\", ") {
        Err(Error::Json {
            line,
            column,
            message,
        }) => {
            assert_eq!((line, column), (1, 32), "{message}");
            assert!(message.contains("truncated"), "{message}");
        }
        other => panic!("expected Error::Json, got {other:?}"),
    }
    match Problem::from_json("{\"format\": \"costate-problem/1\" \"model\": 1}") {
        // Column 32 is the `"` of `"model"`, where a `,` or `}` belongs.
        Err(Error::Json { line, column, .. }) => assert_eq!((line, column), (1, 32)),
        other => panic!("expected Error::Json, got {other:?}"),
    }
    // `NaN` where a key belongs is a syntax error inside `solver`, not a number at a key.
    let text = serde_json::to_string(&valid_doc()).unwrap();
    let at = text.find("\"solver\":{").unwrap() + "\"solver\":{".len();
    let bad = text.replacen("\"solver\":{", "\"solver\":{NaN", 1);
    match Problem::from_json(&bad) {
        Err(Error::Json {
            line,
            column,
            message,
        }) => {
            assert_eq!((line, column), (1, at + 1), "{message}");
            assert!(message.contains("while reading `solver`"), "{message}");
            assert!(!message.contains('?'), "{message}");
        }
        other => panic!("expected Error::Json, got {other:?}"),
    }
    let (key, _) = format_error_text("42");
    assert_eq!(key, "(root)");
    // A sequence where the object belongs: the first entry is read as `format`.
    let (key, _) = format_error_text("[1, 2]");
    assert_eq!(key, "[0]");
}

fn sample_params() -> ParamSet {
    let mlp = Mlp::new(&[3, 5, 2], Activation::Tanh).unwrap();
    let mut p = mlp.init_params(&mut rand::rngs::StdRng::seed_from_u64(11));
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for v in p.values_mut() {
        v.iter_mut().for_each(|x| *x = awkward(&mut rng));
    }
    p
}

#[test]
fn weights_round_trip_exactly() {
    let p = sample_params();
    let text = weights::to_json(&p).unwrap();
    assert!(text.contains(weights::WEIGHTS_FORMAT));
    let q = weights::from_json(&text, None).unwrap();
    assert_eq!(q, p);
    let q = weights::from_json(&text, Some(&p)).unwrap();
    assert_eq!(q, p);
    // Through a file, too.
    let path = std::env::temp_dir().join(format!("nn-weights-test-{}.json", std::process::id()));
    weights::save(&p, &path).unwrap();
    let q = weights::load(&path, Some(&p)).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(q, p);
    match weights::load(&path, None) {
        Err(Error::Io { path: shown, .. }) => assert!(shown.contains("nn-weights-test")),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn weights_like_rejects_other_models() {
    let p = sample_params();
    let text = weights::to_json(&p).unwrap();
    // Other names, same shapes.
    let mut renamed = ParamSet::new();
    for (i, v) in p.values().iter().enumerate() {
        renamed.push(format!("net.{i}"), v.clone());
    }
    match weights::from_json(&text, Some(&renamed)) {
        Err(Error::Format { key, message }) => {
            assert_eq!(key, "params");
            assert!(message.contains("net.0"), "{message}");
        }
        other => panic!("expected Format, got {other:?}"),
    }
    // Same names, other shapes.
    let other = Mlp::new(&[3, 4, 2], Activation::Tanh)
        .unwrap()
        .init_params(&mut rand::rngs::StdRng::seed_from_u64(0));
    assert_eq!(other.names(), p.names());
    match weights::from_json(&text, Some(&other)) {
        Err(Error::Mismatch(m)) => assert!(m.contains("layers.0.weight"), "{m}"),
        other => panic!("expected Mismatch, got {other:?}"),
    }
    // Fewer tensors.
    let mut fewer = ParamSet::new();
    fewer.push("layers.0.weight", p.values()[0].clone());
    assert!(weights::from_json(&text, Some(&fewer)).is_err());
}

#[test]
fn malformed_weights_name_the_entry() {
    let p = sample_params();
    let mut doc: Value = serde_json::from_str(&weights::to_json(&p).unwrap()).unwrap();
    doc["params"][2]["value"][1] = json!([1.0]);
    match weights::from_json(&doc.to_string(), None) {
        Err(Error::Format { key, .. }) => assert_eq!(key, "params[2].value[1]"),
        other => panic!("expected Format, got {other:?}"),
    }
    let mut doc: Value = serde_json::from_str(&weights::to_json(&p).unwrap()).unwrap();
    doc["format"] = json!("costate-problem/1");
    match weights::from_json(&doc.to_string(), None) {
        Err(Error::Format { key, .. }) => assert_eq!(key, "format"),
        other => panic!("expected Format, got {other:?}"),
    }
    let text = weights::to_json(&p).unwrap();
    let first = serde_json::to_string(&p.values()[0][(0, 0)]).unwrap();
    let bad = text.replacen(&first, "NaN", 1);
    assert_ne!(bad, text);
    match weights::from_json(&bad, None) {
        Err(Error::Format { key, .. }) => assert_eq!(key, "params[0].value[0][0]"),
        other => panic!("expected Format, got {other:?}"),
    }
}

#[test]
fn loss_rejects_outputs_it_does_not_fit() {
    use ad_core::nalgebra::DMatrix;
    let tape = ad_core::Tape::<f64>::new();
    let h = tape.var(DMatrix::from_element(2, 3, 1.5));
    assert!(matches!(
        nn::Loss::SumFinal.apply(&tape, &[]),
        Err(nn::Error::Mismatch(_))
    ));
    let two = nn::Loss::Cotangents(vec![DMatrix::from_element(2, 3, 1.0); 2]);
    assert!(matches!(
        two.apply(&tape, &[h]),
        Err(nn::Error::Mismatch(_))
    ));
    // With matching counts it is Σ ⟨v_i, h_i⟩: 2 outputs of 6 entries × 1.5 × 1.0.
    let l = two.apply(&tape, &[h, h]).unwrap().scalar_value().unwrap();
    assert!((l - 18.0).abs() < 1e-12);
}

#[test]
fn odefunc_rejects_an_mlp_whose_layers_do_not_chain() {
    let mlp = nn::Mlp {
        layers: vec![nn::Linear::new(3, 4), nn::Linear::new(5, 3)],
        activation: nn::Activation::Tanh,
    };
    assert!(matches!(
        nn::OdeFunc::from_mlp(mlp, nn::Input::State, false, false),
        Err(nn::Error::Model {
            part: nn::ModelPart::Weight(1),
            ..
        })
    ));
    let empty = nn::Mlp {
        layers: vec![],
        activation: nn::Activation::Tanh,
    };
    assert!(matches!(
        nn::OdeFunc::from_mlp(empty, nn::Input::State, false, false),
        Err(nn::Error::Model {
            part: nn::ModelPart::Layers,
            ..
        })
    ));
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("nn-{tag}-{}.json", std::process::id()))
}

#[test]
fn saving_non_finite_weights_is_refused() {
    let mut p = sample_params();
    let good = p.clone();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        p.values_mut()[2][(1, 3)] = bad;
        match weights::to_json(&p) {
            Err(Error::NonFiniteSave { key, tensor, value }) => {
                assert_eq!(key, "params[2].value[1][3]");
                assert_eq!(tensor, "layers.1.weight");
                assert!(value.is_nan() == bad.is_nan() && (value.is_nan() || value == bad));
            }
            other => panic!("expected NonFiniteSave, got {other:?}"),
        }
        let path = temp_path("nonfinite-weights");
        assert!(matches!(
            weights::save(&p, &path),
            Err(Error::NonFiniteSave { .. })
        ));
        assert!(!path.exists(), "nothing is written");
    }
    // Fixed, it saves and loads back.
    p.values_mut()[2][(1, 3)] = good.values()[2][(1, 3)];
    let path = temp_path("fixed-weights");
    weights::save(&p, &path).unwrap();
    let q = weights::load(&path, Some(&good)).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(q, good);
}

#[test]
fn saving_a_non_finite_problem_is_refused() {
    let good = load(&valid_doc()).unwrap();
    let expect = |p: &Problem, key: &str, tensor: &str| match p.to_json() {
        Err(Error::NonFiniteSave {
            key: k, tensor: t, ..
        }) => {
            assert_eq!((k.as_str(), t.as_str()), (key, tensor));
        }
        other => panic!("{key}: expected NonFiniteSave, got {other:?}"),
    };
    let mut p = good.clone();
    p.params.values_mut()[2][(1, 2)] = f64::INFINITY;
    expect(&p, "model.layers[1].weight[1][2]", "layers.1.weight");
    let path = temp_path("nonfinite-problem");
    assert!(matches!(p.save(&path), Err(Error::NonFiniteSave { .. })));
    assert!(!path.exists(), "nothing is written");
    let mut p = good.clone();
    p.params.values_mut()[1][(0, 2)] = f64::NAN;
    expect(&p, "model.layers[0].bias[2]", "layers.0.bias");
    let mut p = good.clone();
    p.h0[(0, 1)] = f64::NAN;
    expect(&p, "h0[0][1]", "h0");
    let mut p = good.clone();
    p.t[2] = f64::INFINITY;
    expect(&p, "t[2]", "t");
    let mut p = good.clone();
    p.file.reference.as_mut().unwrap().tight.grad_h0[1][0] = f64::NAN;
    expect(
        &p,
        "reference.tight.grad_h0[1][0]",
        "reference.tight.grad_h0",
    );
    let mut p = good.clone();
    p.options.atol = f64::NAN;
    expect(&p, "solver.atol", "solver.atol");
    // The good problem saves, and loads back identical.
    good.save(&path).unwrap();
    let q = Problem::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(q.params, good.params);
    assert_eq!(q.file, good.file);
}

#[test]
fn trailing_characters_are_refused() {
    let text = serde_json::to_string(&valid_doc()).unwrap();
    let n = text.len();
    for (tail, column) in [(" x", n + 2), ("}", n + 1), ("\n{}", 1), ("[]", n + 1)] {
        let bad = format!("{text}{tail}");
        match Problem::from_json(&bad) {
            Err(Error::Json {
                line,
                column: c,
                message,
            }) => {
                let expect_line = if tail.starts_with('\n') { 2 } else { 1 };
                assert_eq!((line, c), (expect_line, column), "{tail:?}: {message}");
                assert!(message.contains("after the end"), "{message}");
            }
            other => panic!("{tail:?}: expected Error::Json, got {other:?}"),
        }
    }
    // Trailing whitespace is fine.
    Problem::from_json(&format!("{text}\n  \n")).unwrap();
    // Weight files too.
    let w = weights::to_json(&sample_params()).unwrap();
    assert!(matches!(
        weights::from_json(&format!("{w},"), None),
        Err(Error::Json { line: 1, .. })
    ));
    assert_eq!(weights::from_json(&w, None).unwrap(), sample_params());
}

#[test]
fn empty_tensors_round_trip_through_weights() {
    let mut p = ParamSet::new();
    p.push("rows0", DMatrix::zeros(0, 3));
    p.push("cols0", DMatrix::zeros(4, 0));
    p.push("both0", DMatrix::zeros(0, 0));
    p.push("w", DMatrix::from_row_slice(1, 2, &[0.5, -1.25]));
    let text = weights::to_json(&p).unwrap();
    let q = weights::from_json(&text, Some(&p)).unwrap();
    assert_eq!(q, p);
    let shapes: Vec<_> = q.values().iter().map(|v| v.shape()).collect();
    assert_eq!(shapes, [(0, 3), (4, 0), (0, 0), (1, 2)]);
    // Files without `shape` (the earlier layout) still load, unless a tensor is empty.
    let old = r#"{"format":"costate-weights/1","params":[{"name":"w","value":[[1.0,2.0]]}]}"#;
    assert_eq!(
        weights::from_json(old, None).unwrap().values()[0],
        DMatrix::from_row_slice(1, 2, &[1.0, 2.0])
    );
    let old_empty = r#"{"format":"costate-weights/1","params":[{"name":"e","value":[]}]}"#;
    match weights::from_json(old_empty, None) {
        Err(Error::Format { key, message }) => {
            assert_eq!(key, "params[0].value");
            assert!(message.contains("empty"), "{message}");
        }
        other => panic!("expected Format, got {other:?}"),
    }
    // `shape` and `value` must agree.
    for (tensor, key) in [
        (
            r#"{"name":"a","shape":[2,3],"value":[[1,2,3]]}"#,
            "params[0].value",
        ),
        (
            r#"{"name":"a","shape":[1,2],"value":[[1,2,3]]}"#,
            "params[0].value[0]",
        ),
        (
            r#"{"name":"a","shape":[2,0],"value":[[],[1]]}"#,
            "params[0].value[1]",
        ),
        (
            r#"{"name":"a","shape":[2,2],"value":[[1,2],[3]]}"#,
            "params[0].value[1]",
        ),
        (
            r#"{"name":"a","shape":[2],"value":[[1,2]]}"#,
            "params[0].shape",
        ),
    ] {
        let doc = format!(r#"{{"format":"costate-weights/1","params":[{tensor}]}}"#);
        match weights::from_json(&doc, None) {
            Err(Error::Format { key: k, message }) => assert_eq!(k, key, "{tensor}: {message}"),
            other => panic!("{tensor}: expected Format, got {other:?}"),
        }
    }
}

#[test]
fn empty_h0_is_refused_on_save_and_on_load() {
    let mut p = load(&valid_doc()).unwrap();
    let h0 = p.h0.clone();
    p.h0 = DMatrix::zeros(0, 2);
    match p.to_json() {
        Err(Error::Format { key, message }) => {
            assert_eq!(key, "h0");
            assert!(message.contains("empty"), "{message}");
            assert!(message.contains("would not load back"), "{message}");
        }
        other => panic!("expected Format, got {other:?}"),
    }
    let path = temp_path("empty-h0");
    assert!(p.save(&path).is_err());
    assert!(!path.exists(), "nothing is written");
    let mut doc = valid_doc();
    doc["h0"] = json!([]);
    let msg = assert_key(&doc, "h0");
    assert!(msg.contains("empty"), "{msg}");
    // Restored, it saves and loads.
    p.h0 = h0.clone();
    let q = Problem::from_json(&p.to_json().unwrap()).unwrap();
    assert_eq!(q.h0, h0);
}

#[test]
fn reference_shapes_and_values_are_checked() {
    let set = |f: &dyn Fn(&mut Value)| {
        let mut doc = valid_doc();
        f(&mut doc["reference"]);
        doc
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            set(&|r| r["odeint"]["grad_h0"] = json!([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])),
            "reference.odeint.grad_h0",
        ),
        (
            set(&|r| r["tight"]["grad_h0"][1] = json!([1.0])),
            "reference.tight.grad_h0[1]",
        ),
        (
            set(&|r| {
                r["tight"]["grad_layers"].as_array_mut().unwrap().pop();
            }),
            "reference.tight.grad_layers",
        ),
        (
            set(&|r| r["odeint_adjoint"]["grad_layers"][1]["weight"] = json!([[1.0, 2.0]])),
            "reference.odeint_adjoint.grad_layers[1].weight",
        ),
        (
            set(&|r| r["odeint"]["grad_layers"][0]["bias"] = json!([1.0, 2.0])),
            "reference.odeint.grad_layers[0].bias",
        ),
        (
            set(&|r| r["odeint"]["grad_t"] = json!([0.1, 0.2])),
            "reference.odeint.grad_t",
        ),
        (
            set(&|r| r["tight"]["grad_t"] = json!([0.1, 0.2, 0.3, 0.4])),
            "reference.tight.grad_t",
        ),
    ];
    for (doc, key) in &cases {
        assert_key(doc, key);
    }
    // Non-finite entries, from Python's tokens and from memory.
    let text = serde_json::to_string(&valid_doc()).unwrap();
    let from = "\"grad_t\":[0.1,0.2,0.3]";
    assert!(text.contains(from), "{text}");
    let (key, message) = format_error_text(&text.replacen(from, "\"grad_t\":[0.1,NaN,0.3]", 1));
    assert_eq!(key, "reference.odeint.grad_t[1]", "{message}");
    assert!(message.contains("finite"), "{message}");
    let (key, _) =
        format_error_text(&text.replace("\"loss\":1.2345678901234567", "\"loss\":-Infinity"));
    assert_eq!(key, "reference.loss");
    let mut file = load(&valid_doc()).unwrap().file;
    file.reference.as_mut().unwrap().loss = f64::NAN;
    match Problem::from_file(file) {
        Err(Error::Format { key, .. }) => assert_eq!(key, "reference.loss"),
        other => panic!("expected Format, got {other:?}"),
    }
    let mut file = load(&valid_doc()).unwrap().file;
    file.reference.as_mut().unwrap().odeint_adjoint.grad_layers[1].weight[0][2] = f64::INFINITY;
    match Problem::from_file(file) {
        Err(Error::Format { key, .. }) => {
            assert_eq!(key, "reference.odeint_adjoint.grad_layers[1].weight[0][2]")
        }
        other => panic!("expected Format, got {other:?}"),
    }
    // The checked block loads with its values.
    let p = load(&valid_doc()).unwrap();
    let r = p.file.reference.unwrap();
    assert_eq!(r.tight.grad_layers[1].bias, [0.04 * 3.0, -0.05 * 3.0]);
}

#[test]
fn duplicate_weight_names_are_refused() {
    let p = sample_params();
    let mut doc: Value = serde_json::from_str(&weights::to_json(&p).unwrap()).unwrap();
    doc["params"][2]["name"] = json!("layers.0.weight");
    match weights::from_json(&doc.to_string(), None) {
        Err(Error::Format { key, message }) => {
            assert_eq!(key, "params[2].name");
            assert!(message.contains("\"layers.0.weight\""), "{message}");
            assert!(message.contains("params[0].name"), "{message}");
        }
        other => panic!("expected Format, got {other:?}"),
    }
    // A set with a repeated name is not saved (it could not be loaded back).
    let mut dup = ParamSet::new();
    dup.push("w", DMatrix::zeros(1, 1));
    dup.push("b", DMatrix::zeros(1, 1));
    dup.push("w", DMatrix::zeros(1, 2));
    match weights::to_json(&dup) {
        Err(Error::Format { key, .. }) => assert_eq!(key, "params[2].name"),
        other => panic!("expected Format, got {other:?}"),
    }
    // Unique names load.
    doc["params"][2]["name"] = json!("renamed");
    let q = weights::from_json(&doc.to_string(), None).unwrap();
    assert_eq!(q.names()[2], "renamed");
    assert_eq!(q.values(), p.values());
    // Repeated keys inside a problem document are refused by the parser too.
    let text = serde_json::to_string(&valid_doc()).unwrap();
    let bad = text.replacen(
        "\"t\":[0.0,0.5,1.0]",
        "\"t\":[0.0,0.5,1.0],\"t\":[0.0,2.0,3.0]",
        1,
    );
    assert_ne!(bad, text);
    let (key, message) = format_error_text(&bad);
    assert_eq!(key, "(root)", "{message}");
    assert!(message.contains("duplicate field `t`"), "{message}");
}

#[test]
fn truncated_files_say_truncated_and_where() {
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/problems/seed.json"
    ))
    .unwrap();
    assert!(seed.is_ascii() && seed.trim_end().lines().count() == 1);
    let n = seed.trim_end().len();
    for cut in [1, 2, 10, n / 10, n / 2, n * 99 / 100, n - 1] {
        match Problem::from_json(&seed[..cut]) {
            Err(e @ Error::Json { .. }) => {
                let shown = e.to_string();
                let Error::Json {
                    line,
                    column,
                    message,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((line, column), (1, cut), "cut {cut}: {message}");
                assert!(message.contains("truncated"), "cut {cut}: {message}");
                assert!(!message.contains('?'), "cut {cut}: bogus key in {message}");
                assert!(
                    shown.contains(&format!("line 1, column {cut}")),
                    "cut {cut}: {shown}"
                );
            }
            other => panic!("cut {cut}: expected Error::Json, got {other:?}"),
        }
    }
    // The path being read is named when it is known.
    let Err(Error::Json { message, .. }) = Problem::from_json(&seed[..n / 2]) else {
        unreachable!()
    };
    assert!(message.contains("while reading `reference."), "{message}");
    for empty in ["", " \n "] {
        match Problem::from_json(empty) {
            Err(Error::Json { message, .. }) => assert!(message.contains("empty"), "{message}"),
            other => panic!("expected Error::Json, got {other:?}"),
        }
    }
    // Whole, it loads.
    let p = Problem::from_json(&seed).unwrap();
    assert_eq!(p.h0.shape(), (32, 64));
}
