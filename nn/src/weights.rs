//! Saving and loading a model's weights as JSON (`costate-weights/1`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::ParamSet;
use crate::problem::{matrix, nested, parse_json};

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
    value: Vec<Vec<f64>>,
}

/// The parameters as a JSON document (exact: numbers round-trip).
pub fn to_json(params: &ParamSet) -> String {
    let file = WeightsFile {
        format: WEIGHTS_FORMAT.into(),
        params: params
            .names()
            .iter()
            .zip(params.values())
            .map(|(name, v)| NamedTensor {
                name: name.clone(),
                value: nested(v),
            })
            .collect(),
    };
    serde_json::to_string(&file).unwrap_or_default()
}

/// Parse weights written by [`to_json`]; with `like`, also check that names and shapes match
/// the model's current parameters.
pub fn from_json(text: &str, like: Option<&ParamSet>) -> Result<ParamSet> {
    let file: WeightsFile = parse_json(text)?;
    if file.format != WEIGHTS_FORMAT {
        return Err(Error::format(
            "format",
            format!("is {:?}, expected {WEIGHTS_FORMAT:?}", file.format),
        ));
    }
    let mut params = ParamSet::new();
    for (i, t) in file.params.iter().enumerate() {
        params.push(
            t.name.clone(),
            matrix(&t.value, &format!("params[{i}].value"))?,
        );
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

/// Write the parameters to `path`.
pub fn save(params: &ParamSet, path: impl AsRef<std::path::Path>) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, to_json(params)).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Read parameters from `path`, checked against `like` if given.
pub fn load(path: impl AsRef<std::path::Path>, like: Option<&ParamSet>) -> Result<ParamSet> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    from_json(&text, like)
}
