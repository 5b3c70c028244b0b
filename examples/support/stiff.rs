//! Stiff problem files (`costate-stiff-problem/1`, `examples/problems/stiff/`): their vector
//! fields in tape ops, the loss `L = Σᵢ Σⱼ wⱼ yⱼ(tᵢ)`, the reference gradients, and the
//! figures Diffrax recorded in them.

use std::ops::Range;

use costate::ad_core::nalgebra::DMatrix;
use costate::ad_core::{Result as TapeResult, Scalar, Tape, Var};
use costate::ode::Dynamics;
use serde_json::Value;

/// Which field a file describes.
#[derive(Clone, Debug)]
pub enum Model {
    /// Robertson's kinetics with rate constants `k` (parameter 0, 1×3), or `exp(k)` when
    /// `log_rates` (the fitting demo's parametrisation).
    Robertson { log_rates: bool },
    /// Van der Pol with `μ` (parameter 0, 1×1).
    VanDerPol,
    /// `h' = A h` with `A` (parameter 0).
    Linear,
    /// Robertson's kinetics with rates `exp(logk + c · mlp(s ∘ y)) ∘ (y1, y2², y2 y3)` and
    /// `y' = S r`: parameters `logk` (1×3), then each layer's weight and bias (bias 1×out).
    RatesMlp {
        input_scale: [f64; 3],
        output_scale: f64,
        stoichiometry: DMatrix<f64>,
        layers: usize,
    },
}

/// The field of a stiff problem file; one sample per row of `h`.
#[derive(Clone, Debug)]
pub struct StiffField {
    pub model: Model,
}

fn constant<'t, T: Scalar>(tape: &'t Tape<T>, m: &DMatrix<f64>) -> Var<'t, T> {
    tape.constant(m.map(T::constant))
}

impl<T: Scalar> Dynamics<T> for StiffField {
    fn eval<'t>(&self, _t: Var<'t, T>, h: Var<'t, T>, p: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let tape = h.tape();
        let col = |v: Var<'t, T>, j: usize| v.slice_cols(j, 1);
        match &self.model {
            Model::Robertson { log_rates } => {
                let k = if *log_rates { p[0].exp() } else { p[0] };
                let (k1, k2, k3) = (col(k, 0)?, col(k, 1)?, col(k, 2)?);
                let (y1, y2, y3) = (col(h, 0)?, col(h, 1)?, col(h, 2)?);
                let a = y1.mul(k1)?;
                let b = y2.mul(y2)?.mul(k2)?;
                let c = y2.mul(y3)?.mul(k3)?;
                tape.concat_cols(&[c.sub(a)?, a.sub(b)?.sub(c)?, b])
            }
            Model::VanDerPol => {
                let (y1, y2) = (col(h, 0)?, col(h, 1)?);
                let damping = y1
                    .mul(y1)?
                    .scale(T::constant(-1.0))
                    .add_scalar(T::constant(1.0));
                let d2 = damping.mul(y2)?.mul(p[0])?.sub(y1)?;
                tape.concat_cols(&[y2, d2])
            }
            Model::Linear => h.matmul_t(p[0]),
            Model::RatesMlp {
                input_scale,
                output_scale,
                stoichiometry,
                layers,
            } => {
                let scale = DMatrix::from_row_slice(1, 3, input_scale);
                let mut x = h.mul(constant(tape, &scale))?;
                for l in 0..*layers {
                    x = x.matmul_t(p[1 + 2 * l])?.add_row(p[2 + 2 * l])?;
                    if l + 1 < *layers {
                        x = x.tanh();
                    }
                }
                let rates = x.scale(T::constant(*output_scale)).add_row(p[0])?.exp();
                let (y1, y2, y3) = (col(h, 0)?, col(h, 1)?, col(h, 2)?);
                let mass = tape.concat_cols(&[y1, y2.mul(y2)?, y2.mul(y3)?])?;
                rates.mul(mass)?.matmul_t(constant(tape, stoichiometry))
            }
        }
    }

    fn rows_independent(&self) -> bool {
        true
    }
}

/// What Diffrax recorded for one solver and tolerance pair in the file (for scale).
#[derive(Clone, Debug)]
pub struct DiffraxFigure {
    pub solver: String,
    pub rtol: f64,
    pub atol: f64,
    pub accepted: usize,
    pub rejected: usize,
    /// Worst over the gradient's keys of max |mine − ref| / max |ref|.
    pub grad_rel: f64,
}

/// One stiff problem file, read.
#[derive(Clone, Debug)]
pub struct StiffProblem {
    pub name: String,
    pub description: String,
    pub field: StiffField,
    /// 1 × dim.
    pub y0: DMatrix<f64>,
    /// `t0` then the output times.
    pub grid: Vec<f64>,
    /// 1 × dim loss weights.
    pub weights: DMatrix<f64>,
    /// The parameter tensors in the field's order.
    pub params: Vec<DMatrix<f64>>,
    /// The reference's gradient keys after `y0`, and which parameter tensors each covers.
    pub groups: Vec<(String, Range<usize>)>,
    /// The reference gradient per key (`y0` first), flattened as the file nests it.
    pub reference: Vec<(String, Vec<f64>)>,
    pub reference_loss: f64,
    pub tolerances: Vec<(f64, f64)>,
    pub diffrax: Vec<DiffraxFigure>,
}

type Res<T> = Result<T, String>;

fn num(v: &Value, what: &str) -> Res<f64> {
    v.as_f64().ok_or_else(|| format!("{what}: not a number"))
}

fn flat(v: &Value, out: &mut Vec<f64>, what: &str) -> Res<()> {
    match v {
        Value::Number(_) => out.push(num(v, what)?),
        Value::Array(items) => {
            for x in items {
                flat(x, out, what)?;
            }
        }
        Value::Object(o) => {
            flat(
                o.get("weight").ok_or(format!("{what}: no weight"))?,
                out,
                what,
            )?;
            flat(o.get("bias").ok_or(format!("{what}: no bias"))?, out, what)?;
        }
        _ => return Err(format!("{what}: not numbers")),
    }
    Ok(())
}

fn vector(v: &Value, what: &str) -> Res<Vec<f64>> {
    let mut out = Vec::new();
    flat(v, &mut out, what)?;
    Ok(out)
}

fn matrix(v: &Value, what: &str) -> Res<DMatrix<f64>> {
    let rows = v.as_array().ok_or(format!("{what}: not rows"))?;
    let data = vector(v, what)?;
    let n = rows.len();
    if n == 0 || data.len() % n != 0 {
        return Err(format!("{what}: ragged"));
    }
    Ok(DMatrix::from_row_slice(n, data.len() / n, &data))
}

fn row(v: Vec<f64>) -> DMatrix<f64> {
    DMatrix::from_row_slice(1, v.len(), &v)
}

impl StiffProblem {
    /// Read a `costate-stiff-problem/1` file.
    pub fn load(path: &str) -> Res<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        Self::from_json(&v).map_err(|e| format!("{path}: {e}"))
    }

    fn from_json(v: &Value) -> Res<Self> {
        if v["format"] != "costate-stiff-problem/1" {
            return Err(format!("format is {}", v["format"]));
        }
        let model = &v["model"];
        let (field, params, groups) = match model["kind"].as_str() {
            Some("robertson") => (
                Model::Robertson { log_rates: false },
                vec![row(vector(&model["k"], "k")?)],
                vec![("k".to_string(), 0..1)],
            ),
            Some("van_der_pol") => (
                Model::VanDerPol,
                vec![DMatrix::from_element(1, 1, num(&model["mu"], "mu")?)],
                vec![("mu".to_string(), 0..1)],
            ),
            Some("linear") => (
                Model::Linear,
                vec![matrix(&model["A"], "A")?],
                vec![("A".to_string(), 0..1)],
            ),
            Some("robertson_mlp_rates") => {
                let layers = model["layers"].as_array().ok_or("layers: not a list")?;
                let mut params = vec![row(vector(&model["logk"], "logk")?)];
                for (i, l) in layers.iter().enumerate() {
                    params.push(matrix(&l["weight"], &format!("layer {i} weight"))?);
                    params.push(row(vector(&l["bias"], &format!("layer {i} bias"))?));
                }
                let s = vector(&model["input_scale"], "input_scale")?;
                let input_scale: [f64; 3] =
                    s.try_into().map_err(|_| "input_scale: not 3 numbers")?;
                let n = params.len();
                (
                    Model::RatesMlp {
                        input_scale,
                        output_scale: num(&model["output_scale"], "output_scale")?,
                        stoichiometry: matrix(&model["stoichiometry"], "stoichiometry")?,
                        layers: layers.len(),
                    },
                    params,
                    vec![("logk".to_string(), 0..1), ("layers".to_string(), 1..n)],
                )
            }
            other => return Err(format!("unknown model kind {other:?}")),
        };
        let y0 = row(vector(&v["y0"], "y0")?);
        let mut grid = vec![num(&v["t0"], "t0")?];
        grid.extend(vector(&v["t"], "t")?);
        let weights = row(vector(&v["loss"]["weights"], "loss weights")?);
        let grad = &v["reference"]["grad"];
        let mut reference = vec![("y0".to_string(), vector(&grad["y0"], "grad y0")?)];
        for (key, _) in &groups {
            reference.push((key.clone(), vector(&grad[key], key)?));
        }
        let tolerances = v["bench_tolerances"]
            .as_array()
            .ok_or("bench_tolerances: not a list")?
            .iter()
            .map(|t| Ok((num(&t["rtol"], "rtol")?, num(&t["atol"], "atol")?)))
            .collect::<Res<Vec<_>>>()?;
        let mut diffrax = Vec::new();
        if let Some(runs) = v["diffrax"].as_object() {
            for run in runs.values() {
                let grad_rel = run["grad_diff"]
                    .as_object()
                    .map(|g| {
                        g.values()
                            .filter_map(|d| d["rel"].as_f64())
                            .fold(0.0, f64::max)
                    })
                    .unwrap_or(f64::NAN);
                diffrax.push(DiffraxFigure {
                    solver: run["solver"].as_str().unwrap_or("?").to_string(),
                    rtol: num(&run["rtol"], "rtol")?,
                    atol: num(&run["atol"], "atol")?,
                    accepted: run["stats"]["num_accepted_steps"].as_u64().unwrap_or(0) as usize,
                    rejected: run["stats"]["num_rejected_steps"].as_u64().unwrap_or(0) as usize,
                    grad_rel,
                });
            }
        }
        Ok(Self {
            name: v["name"].as_str().unwrap_or("?").to_string(),
            description: v["description"].as_str().unwrap_or("").to_string(),
            field: StiffField { model: field },
            y0,
            grid,
            weights,
            params,
            groups,
            reference,
            reference_loss: num(&v["reference"]["loss"], "reference loss")?,
            tolerances,
            diffrax,
        })
    }

    /// `L = Σᵢ Σⱼ wⱼ yⱼ(tᵢ)` over the outputs after `t0` (`outputs[0]` is `y0`).
    pub fn loss<'t, T: Scalar>(&self, outputs: &[Var<'t, T>]) -> TapeResult<Var<'t, T>> {
        let tape = outputs[0].tape();
        let w = constant(tape, &self.weights);
        let mut total: Option<Var<'t, T>> = None;
        for y in &outputs[1..] {
            let term = y.mul(w)?.sum();
            total = Some(match total {
                Some(s) => s.add(term)?,
                None => term,
            });
        }
        total.ok_or(costate::ad_core::Error::InvalidArgument {
            op: "stiff loss",
            message: "no output times".into(),
        })
    }

    /// The gradient keyed and flattened as the reference (`y0`, then each group).
    pub fn keyed(&self, grad_y0: &DMatrix<f64>, grads: &[DMatrix<f64>]) -> Vec<(String, Vec<f64>)> {
        let rowwise = |m: &DMatrix<f64>| m.transpose().as_slice().to_vec();
        let mut out = vec![("y0".to_string(), rowwise(grad_y0))];
        for (key, range) in &self.groups {
            out.push((
                key.clone(),
                grads[range.clone()].iter().flat_map(rowwise).collect(),
            ));
        }
        out
    }

    /// Worst over keys of max |mine − ref| / max |ref|, and the worst elementwise relative
    /// error over entries above 1e-8 of their key's largest (`check_stiff.py`'s `elem`).
    pub fn errors(&self, mine: &[(String, Vec<f64>)]) -> (f64, f64) {
        let (mut rel, mut elem) = (0.0f64, 0.0f64);
        for ((_, a), (_, b)) in mine.iter().zip(&self.reference) {
            let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            rel = rel.max(if scale > 0.0 { worst / scale } else { worst });
            for (x, y) in a.iter().zip(b) {
                if y.abs() > 1e-8 * scale {
                    elem = elem.max((x - y).abs() / y.abs());
                }
            }
        }
        (rel, elem)
    }
}
