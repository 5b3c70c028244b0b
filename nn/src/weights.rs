//! Saving and loading a model's weights as JSON (`costate-weights/1`).
//!
//! A document is `{"format": "costate-weights/1", "params": [{"name", "shape", "value"}, ...]}`
//! with `value` the list of rows and `shape` `[rows, cols]`. `shape` carries the width of an
//! empty (0-row) tensor, so every tensor round-trips; files without `shape` (written before
//! it was added) still load, as long as their tensors are not empty.

use ad_core::nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::json::{matrix, nested, parse_json};
use crate::params::ParamSet;
use ad_core::Precision;

/// The format tag weight files carry.
pub const WEIGHTS_FORMAT: &str = "costate-weights/1";

#[derive(Serialize, Deserialize)]
struct WeightsFile {
    format: String,
    params: Vec<NamedTensor>,
}

#[derive(Serialize, Deserialize)]
struct NamedTensor {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shape: Option<[usize; 2]>,
    value: Vec<Vec<f64>>,
}

/// The parameters as a JSON document (exact: numbers round-trip). Refuses, before writing
/// anything, a NaN or infinite entry ([`Error::NonFiniteSave`], naming the tensor and entry)
/// and two tensors with the same name ([`Error::Format`] at `params[i].name`), which could not
/// be loaded back. `f32` parameters are written as their exact `f64` values (load them and
/// [`ParamSet::cast`] back to get the same bits).
pub fn to_json<P: Precision>(params: &ParamSet<P>) -> Result<String> {
    check_unique(params.names().iter().map(String::as_str))?;
    let mut tensors = Vec::with_capacity(params.len());
    for (i, (name, v)) in params.names().iter().zip(params.values()).enumerate() {
        let v = v.map(Precision::as_f64);
        if let Some(k) = v.iter().position(|x| !x.is_finite()) {
            let (r, c) = (k % v.nrows(), k / v.nrows());
            return Err(Error::NonFiniteSave {
                key: format!("params[{i}].value[{r}][{c}]"),
                tensor: name.clone(),
                value: v[k],
            });
        }
        tensors.push(NamedTensor {
            name: name.clone(),
            shape: Some([v.nrows(), v.ncols()]),
            value: nested(&v),
        });
    }
    let file = WeightsFile {
        format: WEIGHTS_FORMAT.into(),
        params: tensors,
    };
    serde_json::to_string(&file).map_err(|e| Error::format("(root)", e.to_string()))
}

/// Refuse a repeated name, naming both places.
fn check_unique<'a>(names: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::HashMap::new();
    for (i, name) in names.enumerate() {
        if let Some(first) = seen.insert(name, i) {
            return Err(Error::format(
                format!("params[{i}].name"),
                format!(
                    "duplicate name {name:?} (also params[{first}].name); every tensor needs \
                     a unique name"
                ),
            ));
        }
    }
    Ok(())
}

/// The tensor `t` (at `params[i]`): its rows, checked against its `shape` when given.
fn tensor(t: &NamedTensor, i: usize) -> Result<DMatrix<f64>> {
    let key = format!("params[{i}].value");
    let Some([rows, cols]) = t.shape else {
        return matrix(&t.value, &key);
    };
    if t.value.len() != rows {
        return Err(Error::format(
            key,
            format!(
                "has {} rows but params[{i}].shape says {rows} × {cols}",
                t.value.len()
            ),
        ));
    }
    if rows == 0 {
        return Ok(DMatrix::zeros(0, cols));
    }
    if cols == 0 {
        if let Some(r) = t.value.iter().position(|r| !r.is_empty()) {
            return Err(Error::format(
                format!("{key}[{r}]"),
                format!(
                    "has {} entries but params[{i}].shape says {rows} × 0",
                    t.value[r].len()
                ),
            ));
        }
        return Ok(DMatrix::zeros(rows, 0));
    }
    let m = matrix(&t.value, &key)?;
    if m.ncols() != cols {
        return Err(Error::format(
            format!("{key}[0]"),
            format!(
                "has {} entries but params[{i}].shape says {rows} × {cols}",
                m.ncols()
            ),
        ));
    }
    Ok(m)
}

/// Parse weights written by [`to_json`]; with `like`, also check that names and shapes match
/// the model's current parameters. Names must be unique.
pub fn from_json(text: &str, like: Option<&ParamSet>) -> Result<ParamSet> {
    let file: WeightsFile = parse_json(text)?;
    if file.format != WEIGHTS_FORMAT {
        return Err(Error::format(
            "format",
            format!("is {:?}, expected {WEIGHTS_FORMAT:?}", file.format),
        ));
    }
    check_unique(file.params.iter().map(|t| t.name.as_str()))?;
    let mut params = ParamSet::new();
    for (i, t) in file.params.iter().enumerate() {
        params.push(t.name.clone(), tensor(t, i)?);
    }
    if let Some(like) = like {
        if like.names() != params.names() {
            return Err(Error::format(
                "params",
                format!(
                    "names {:?} differ from the model's {:?}",
                    params.names(),
                    like.names()
                ),
            ));
        }
        like.check_matches(params.values(), "loaded weights")?;
    }
    Ok(params)
}

/// Write the parameters to `path` (see [`to_json`] for what is refused; on error nothing is
/// written).
pub fn save<P: Precision>(params: &ParamSet<P>, path: impl AsRef<std::path::Path>) -> Result<()> {
    let path = path.as_ref();
    let text = to_json(params)?;
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Read parameters from `path`, checked against `like` if given.
pub fn load(path: impl AsRef<std::path::Path>, like: Option<&ParamSet>) -> Result<ParamSet> {
    from_json(&crate::json::read_text(path.as_ref())?, like)
}
