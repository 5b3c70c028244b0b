//! `costate-problem/1` files: a model, its weights, h0, a time grid, solver settings, a loss
//! and optional reference gradients, as written by the torchdiffeq reference scripts.

use std::collections::BTreeMap;

use ad_core::nalgebra::DMatrix;
use ad_core::{Scalar, Tape, Var};
use ode::Options;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ModelPart, Result};
use crate::json::{matrix, nested, parse_json, read_text, row};
use crate::layers::{Activation, Mlp};
use crate::odefunc::{Input, OdeFunc};
use crate::params::ParamSet;

/// The format tag problem files carry.
pub const PROBLEM_FORMAT: &str = "costate-problem/1";

/// A problem file as stored (numbers as nested lists). Unknown keys are ignored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProblemFile {
    /// Must be `costate-problem/1`.
    pub format: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The vector field and its weights.
    pub model: ModelSpec,
    /// Initial state, batch × dim.
    pub h0: Vec<Vec<f64>>,
    /// Output times, strictly increasing.
    pub t: Vec<f64>,
    /// Solver settings.
    pub solver: SolverSpec,
    /// The loss.
    pub loss: LossSpec,
    /// Gradients computed by a reference implementation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// How the file was made (kept as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<serde_json::Value>,
}

/// The vector field of a problem file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelSpec {
    /// Must be `mlp`.
    pub kind: String,
    /// Nonlinearity between layers.
    pub activation: String,
    /// `h` or `cube`.
    pub input: String,
    /// f = mlp(x) − h.
    pub subtract_state: bool,
    /// t appended as the last input column.
    pub time_input: bool,
    /// Layers, input first.
    pub layers: Vec<LayerSpec>,
}

/// One layer's weights: weight out × in, bias of length out.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerSpec {
    /// out × in.
    pub weight: Vec<Vec<f64>>,
    /// out.
    pub bias: Vec<f64>,
}

/// Solver settings of a problem file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SolverSpec {
    /// Method name (`dopri5`, ...).
    pub method: String,
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
}

/// The loss of a problem file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossSpec {
    /// L = sum of all entries of h(t_n).
    SumFinal,
    /// L = Σᵢ ⟨vᵢ, h(tᵢ)⟩ over all output times, t₀ included.
    Cotangents {
        /// One batch × dim matrix per output time.
        cotangents: Vec<Vec<Vec<f64>>>,
    },
}

/// Reference results: taped, adjoint and tight-tolerance gradients.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reference {
    /// Which implementation produced it.
    #[serde(default)]
    pub source: String,
    /// The loss value.
    pub loss: f64,
    /// Taped gradients at the file's tolerances.
    pub odeint: GradientSet,
    /// Adjoint gradients at the file's tolerances.
    pub odeint_adjoint: GradientSet,
    /// The true gradient (tight tolerances).
    pub tight: GradientSet,
}

/// Gradients of the loss with respect to h0, every layer and the time grid, plus counts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GradientSet {
    /// dL/dh0, batch × dim.
    pub grad_h0: Vec<Vec<f64>>,
    /// dL/dW and dL/db per layer.
    pub grad_layers: Vec<LayerSpec>,
    /// dL/dt_i.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_t: Option<Vec<f64>>,
    /// Everything else (NFE, step counts, the loss, ...), kept as is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl GradientSet {
    /// The gradients as tensors, in the layout the pipeline returns them
    /// ([`crate::ProblemGradients`]): dL/dh0, dL/dθ in [`ParamSet`] order (each layer's
    /// weight, then its bias) and dL/dt as a 1×n row when the set has it. A ragged list is
    /// [`Error::Format`] naming its key.
    pub fn tensors(&self) -> Result<GradientTensors> {
        let mut params = Vec::with_capacity(2 * self.grad_layers.len());
        for (i, l) in self.grad_layers.iter().enumerate() {
            params.push(matrix(&l.weight, &format!("grad_layers[{i}].weight"))?);
            params.push(row(&l.bias, &format!("grad_layers[{i}].bias"))?);
        }
        Ok(GradientTensors {
            h0: matrix(&self.grad_h0, "grad_h0")?,
            params,
            t: self
                .grad_t
                .as_deref()
                .map(|t| DMatrix::from_row_slice(1, t.len(), t)),
        })
    }
}

/// A [`GradientSet`] as tensors (see [`GradientSet::tensors`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GradientTensors {
    /// dL/dh0, batch × dim.
    pub h0: DMatrix<f64>,
    /// dL/dθ in [`ParamSet`] order.
    pub params: Vec<DMatrix<f64>>,
    /// dL/dt as a 1×n row, if the set has it.
    pub t: Option<DMatrix<f64>>,
}

/// The loss of a loaded problem.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    /// Sum of all entries of the last output.
    SumFinal,
    /// Σᵢ ⟨vᵢ, h(tᵢ)⟩.
    Cotangents(Vec<DMatrix<f64>>),
}

impl Loss {
    /// The loss as a problem file stores it.
    pub fn spec(&self) -> LossSpec {
        match self {
            Loss::SumFinal => LossSpec::SumFinal,
            Loss::Cotangents(v) => LossSpec::Cotangents {
                cotangents: v.iter().map(nested).collect(),
            },
        }
    }

    /// The loss of the outputs `h(t_0), …, h(t_n)` on their tape, for any scalar.
    pub fn apply<'t, T: Scalar>(
        &self,
        tape: &'t Tape<T>,
        outputs: &[Var<'t, T>],
    ) -> Result<Var<'t, T>> {
        let Some(last) = outputs.last() else {
            return Err(Error::Mismatch("the loss needs at least one output".into()));
        };
        match self {
            Loss::SumFinal => Ok(last.sum()),
            Loss::Cotangents(v) => {
                if v.len() != outputs.len() {
                    return Err(Error::Mismatch(format!(
                        "{} cotangents for {} outputs",
                        v.len(),
                        outputs.len()
                    )));
                }
                let mut terms = Vec::with_capacity(v.len());
                for (vi, hi) in v.iter().zip(outputs) {
                    terms.push((T::one(), hi.mul(tape.constant(vi.map(T::constant)))?.sum()));
                }
                Ok(tape.fixed_weighted_sum(&terms)?)
            }
        }
    }
}

/// A validated problem: everything as tensors and solver options.
#[derive(Clone, Debug)]
pub struct Problem {
    /// The vector field.
    pub func: OdeFunc,
    /// Its weights.
    pub params: ParamSet,
    /// Initial state.
    pub h0: DMatrix<f64>,
    /// Output times.
    pub t: Vec<f64>,
    /// Solver settings from the file (other options at their defaults).
    pub options: Options,
    /// The loss.
    pub loss: Loss,
    /// The file as read (reference gradients included).
    pub file: ProblemFile,
}

impl Problem {
    /// A problem built in code, validated exactly as a file is (it goes through
    /// [`Problem::from_file`], so it also saves and loads back). `params` must fit `func`
    /// ([`crate::Mlp::check_params`]); `options` are kept whole (a file carries only the
    /// method, which must be a named one, and the tolerances).
    ///
    /// ```
    /// use nn::nalgebra::DMatrix;
    /// use nn::rand::SeedableRng;
    /// use nn::{Activation, Loss, OdeFunc, Problem, Strategy};
    /// let func = OdeFunc::new(2, &[8], Activation::Tanh)?;
    /// let params = func.mlp.init_params(&mut nn::rand::rngs::StdRng::seed_from_u64(0));
    /// let h0 = DMatrix::from_row_slice(1, 2, &[1.0, 0.0]);
    /// let problem = Problem::new(func, params, h0, vec![0.0, 1.0], Default::default(), Loss::SumFinal)?;
    /// let g = problem.gradients(&Strategy::backsolve())?;
    /// assert_eq!(g.h0.shape(), (1, 2));
    /// assert_eq!(Problem::from_json(&problem.to_json()?)?.params, problem.params);
    /// # Ok::<(), nn::Error>(())
    /// ```
    pub fn new(
        func: OdeFunc,
        params: ParamSet,
        h0: DMatrix<f64>,
        t: Vec<f64>,
        options: Options,
        loss: Loss,
    ) -> Result<Self> {
        func.mlp.check_params(&params)?;
        options.validate()?;
        let file = ProblemFile {
            format: PROBLEM_FORMAT.into(),
            description: String::new(),
            model: ModelSpec {
                kind: "mlp".into(),
                activation: func.mlp.activation.name().into(),
                input: func.input.name().into(),
                subtract_state: func.subtract_state,
                time_input: func.time_input,
                layers: layer_specs(&params),
            },
            h0: nested(&h0),
            t,
            solver: SolverSpec {
                method: options.method.name.into(),
                rtol: options.rtol,
                atol: options.atol,
            },
            loss: loss.spec(),
            reference: None,
            generator: None,
        };
        Ok(Self {
            params,
            options,
            ..Self::from_file(file)?
        })
    }

    /// Read and validate a problem file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let text = read_text(path.as_ref())?;
        Self::from_json(&text)
    }

    /// Parse and validate a problem file's text.
    pub fn from_json(text: &str) -> Result<Self> {
        let file: ProblemFile = parse_json(text)?;
        Self::from_file(file)
    }

    /// Validate a parsed problem file: shapes agree, numbers are finite, names are known.
    pub fn from_file(file: ProblemFile) -> Result<Self> {
        if file.format != PROBLEM_FORMAT {
            return Err(Error::format(
                "format",
                format!("is {:?}, expected {PROBLEM_FORMAT:?}", file.format),
            ));
        }
        let m = &file.model;
        if m.kind != "mlp" {
            return Err(Error::format(
                "model.kind",
                format!("is {:?}; only \"mlp\" is supported", m.kind),
            ));
        }
        // The model's constructors are the one validator of names, shapes and chaining;
        // their errors are mapped to the keys the offending values came from.
        let activation: Activation = m.activation.parse().map_err(at_model_key)?;
        let input: Input = m.input.parse().map_err(at_model_key)?;
        let params = layer_params(&m.layers)?;
        let mlp = Mlp::from_params(&params, activation).map_err(at_model_key)?;
        let func =
            OdeFunc::from_mlp(mlp, input, m.time_input, m.subtract_state).map_err(at_model_key)?;
        let h0 = matrix(&file.h0, "h0")?;
        let dim = func.dim();
        if h0.ncols() != dim {
            return Err(Error::format(
                "h0",
                format!(
                    "has {} columns but the model's output has {dim}",
                    h0.ncols()
                ),
            ));
        }
        let t = file.t.clone();
        if let Some(i) = t.iter().position(|x| !x.is_finite()) {
            return Err(Error::format(format!("t[{i}]"), "is not finite"));
        }
        ode::check_grid(&t).map_err(|e| match e {
            ode::Error::BadTimeGrid { reason } => Error::format("t", reason),
            other => Error::Ode(other),
        })?;
        let method = ode::method_by_name(&file.solver.method).map_err(|_| {
            Error::format(
                "solver.method",
                format!("unknown method {:?}", file.solver.method),
            )
        })?;
        let options = Options {
            method,
            rtol: file.solver.rtol,
            atol: file.solver.atol,
            ..Options::default()
        };
        options.validate().map_err(|e| match e {
            ode::Error::BadOption { name, .. } if matches!(name, "rtol" | "atol") => {
                Error::format(format!("solver.{name}"), e.to_string())
            }
            other => Error::format("solver", other.to_string()),
        })?;
        let loss = match &file.loss {
            LossSpec::SumFinal => Loss::SumFinal,
            LossSpec::Cotangents { cotangents } => {
                if cotangents.len() != t.len() {
                    return Err(Error::format(
                        "loss.cotangents",
                        format!(
                            "has {} entries for {} output times",
                            cotangents.len(),
                            t.len()
                        ),
                    ));
                }
                let mut v = Vec::with_capacity(t.len());
                for (i, c) in cotangents.iter().enumerate() {
                    let key = format!("loss.cotangents[{i}]");
                    let c = matrix(c, &key)?;
                    if c.shape() != h0.shape() {
                        return Err(Error::format(
                            key,
                            format!("is {:?} but h0 is {:?}", c.shape(), h0.shape()),
                        ));
                    }
                    v.push(c);
                }
                Loss::Cotangents(v)
            }
        };
        if let Some(r) = &file.reference {
            check_reference(r, &params, &h0, t.len())?;
        }
        Ok(Self {
            func,
            params,
            h0,
            t,
            options,
            loss,
            file,
        })
    }

    /// The file with this problem's current weights, h0, grid, loss and solver method and
    /// tolerances (the reference and description kept as read).
    pub fn to_file(&self) -> ProblemFile {
        let mut file = self.file.clone();
        file.model.layers = layer_specs(&self.params);
        file.h0 = nested(&self.h0);
        file.t = self.t.clone();
        file.loss = self.loss.spec();
        file.solver = SolverSpec {
            method: self.options.method.name.into(),
            rtol: self.options.rtol,
            atol: self.options.atol,
        };
        file
    }

    /// The problem file as JSON text (exact: numbers round-trip). Refuses, before writing
    /// anything, a non-finite number ([`Error::NonFiniteSave`], naming the entry) and a
    /// problem that would not load back (e.g. an empty `h0`, or weights whose shapes no
    /// longer chain: [`Error::Format`] naming the key).
    pub fn to_json(&self) -> Result<String> {
        let file = self.to_file();
        check_savable(&file)?;
        Problem::from_file(file.clone()).map_err(|e| match e {
            Error::Format { key, message } => Error::format(
                key,
                format!("{message}; refusing to save a problem that would not load back"),
            ),
            other => other,
        })?;
        serde_json::to_string(&file).map_err(|e| Error::format("(root)", e.to_string()))
    }

    /// Write the problem file (see [`Problem::to_json`] for what is refused; on error
    /// nothing is written).
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let text = self.to_json()?;
        std::fs::write(path, text).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// An [`Error::Model`] from the model's constructors, at the problem file's key of the part
/// it names (e.g. `model.layers[1].weight`); other errors unchanged.
pub(crate) fn at_model_key(e: Error) -> Error {
    match e {
        Error::Model { part, message } => {
            let key = match part {
                ModelPart::Layers => "model.layers".to_owned(),
                ModelPart::Weight(i) => format!("model.layers[{i}].weight"),
                ModelPart::Bias(i) => format!("model.layers[{i}].bias"),
                ModelPart::Activation => "model.activation".to_owned(),
                ModelPart::Input => "model.input".to_owned(),
            };
            Error::format(key, message)
        }
        other => other,
    }
}

/// Check the `reference` block against the model's parameters, h0 and the time grid: every
/// gradient has the shape of what it differentiates, and every number is finite.
fn check_reference(r: &Reference, params: &ParamSet, h0: &DMatrix<f64>, nt: usize) -> Result<()> {
    if !r.loss.is_finite() {
        return Err(Error::format("reference.loss", "is not a finite number"));
    }
    for (name, g) in [
        ("odeint", &r.odeint),
        ("odeint_adjoint", &r.odeint_adjoint),
        ("tight", &r.tight),
    ] {
        let base = format!("reference.{name}");
        let key = format!("{base}.grad_h0");
        let gh = matrix(&g.grad_h0, &key)?;
        if gh.shape() != h0.shape() {
            return Err(Error::format(
                key,
                format!("is {:?} but h0 is {:?}", gh.shape(), h0.shape()),
            ));
        }
        layer_gradients(&g.grad_layers, params, &base)?;
        if let Some(gt) = &g.grad_t {
            let key = format!("{base}.grad_t");
            if gt.len() != nt {
                return Err(Error::format(
                    key,
                    format!("has {} entries for {nt} output times", gt.len()),
                ));
            }
            row(gt, &key)?;
        }
    }
    Ok(())
}

/// A file's `model.layers` as a [`ParamSet`] (`layers.{i}.weight`, `layers.{i}.bias`),
/// each list rectangular, non-empty and finite (else [`Error::Format`] naming the key).
pub(crate) fn layer_params(layers: &[LayerSpec]) -> Result<ParamSet> {
    let mut params = ParamSet::new();
    for (i, l) in layers.iter().enumerate() {
        params.push(
            format!("layers.{i}.weight"),
            matrix(&l.weight, &format!("model.layers[{i}].weight"))?,
        );
        params.push(
            format!("layers.{i}.bias"),
            row(&l.bias, &format!("model.layers[{i}].bias"))?,
        );
    }
    Ok(params)
}

/// The `{weight, bias}` gradients of every layer (under `base.grad_layers`) as tensors in
/// [`ParamSet`] order, checked against the model's parameters: one entry per layer, each of
/// its parameter's shape, every number finite. Errors are [`Error::Format`] naming the key.
pub(crate) fn layer_gradients(
    grad_layers: &[LayerSpec],
    params: &ParamSet,
    base: &str,
) -> Result<Vec<DMatrix<f64>>> {
    let layers = params.len() / 2;
    if grad_layers.len() != layers {
        return Err(Error::format(
            format!("{base}.grad_layers"),
            format!(
                "has {} entries but the model has {layers} layers (one {{weight, bias}} \
                 gradient per layer)",
                grad_layers.len()
            ),
        ));
    }
    let mut tensors = Vec::with_capacity(params.len());
    for (i, (l, wb)) in grad_layers
        .iter()
        .zip(params.values().chunks(2))
        .enumerate()
    {
        let key = format!("{base}.grad_layers[{i}].weight");
        let w = matrix(&l.weight, &key)?;
        if w.shape() != wb[0].shape() {
            return Err(Error::format(
                key,
                format!(
                    "is {:?} but model.layers[{i}].weight is {:?}",
                    w.shape(),
                    wb[0].shape()
                ),
            ));
        }
        let key = format!("{base}.grad_layers[{i}].bias");
        let b = row(&l.bias, &key)?;
        if b.shape() != wb[1].shape() {
            return Err(Error::format(
                key,
                format!(
                    "has {} entries but model.layers[{i}].bias has {}",
                    b.ncols(),
                    wb[1].ncols()
                ),
            ));
        }
        tensors.extend([w, b]);
    }
    Ok(tensors)
}

/// Refuse a file with a number JSON cannot carry, naming its key and tensor.
fn check_savable(file: &ProblemFile) -> Result<()> {
    fn rows(rows: &[Vec<f64>], key: &str, tensor: &str) -> Result<()> {
        for (i, r) in rows.iter().enumerate() {
            list(r, &format!("{key}[{i}]"), tensor)?;
        }
        Ok(())
    }
    fn list(values: &[f64], key: &str, tensor: &str) -> Result<()> {
        match values.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(j) => Err(Error::NonFiniteSave {
                key: format!("{key}[{j}]"),
                tensor: tensor.into(),
                value: values[j],
            }),
        }
    }
    fn scalar(value: f64, key: &str) -> Result<()> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(Error::NonFiniteSave {
                key: key.into(),
                tensor: key.into(),
                value,
            })
        }
    }
    for (i, l) in file.model.layers.iter().enumerate() {
        rows(
            &l.weight,
            &format!("model.layers[{i}].weight"),
            &format!("layers.{i}.weight"),
        )?;
        list(
            &l.bias,
            &format!("model.layers[{i}].bias"),
            &format!("layers.{i}.bias"),
        )?;
    }
    rows(&file.h0, "h0", "h0")?;
    list(&file.t, "t", "t")?;
    scalar(file.solver.rtol, "solver.rtol")?;
    scalar(file.solver.atol, "solver.atol")?;
    if let LossSpec::Cotangents { cotangents } = &file.loss {
        for (i, c) in cotangents.iter().enumerate() {
            let key = format!("loss.cotangents[{i}]");
            rows(c, &key, &key)?;
        }
    }
    if let Some(r) = &file.reference {
        scalar(r.loss, "reference.loss")?;
        for (name, g) in [
            ("odeint", &r.odeint),
            ("odeint_adjoint", &r.odeint_adjoint),
            ("tight", &r.tight),
        ] {
            let key = format!("reference.{name}.grad_h0");
            rows(&g.grad_h0, &key, &key)?;
            for (i, l) in g.grad_layers.iter().enumerate() {
                let key = format!("reference.{name}.grad_layers[{i}].weight");
                rows(&l.weight, &key, &key)?;
                let key = format!("reference.{name}.grad_layers[{i}].bias");
                list(&l.bias, &key, &key)?;
            }
            if let Some(gt) = &g.grad_t {
                let key = format!("reference.{name}.grad_t");
                list(gt, &key, &key)?;
            }
        }
    }
    Ok(())
}

/// Weights as `{weight, bias}` per layer, in `layers.{i}.weight/bias` order.
pub fn layer_specs(params: &ParamSet) -> Vec<LayerSpec> {
    params
        .values()
        .chunks(2)
        .map(|wb| LayerSpec {
            weight: nested(&wb[0]),
            bias: wb
                .get(1)
                .map(|b| b.iter().copied().collect())
                .unwrap_or_default(),
        })
        .collect()
}
