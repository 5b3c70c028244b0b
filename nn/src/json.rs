//! JSON helpers shared by the file formats ([`crate::problem`], [`crate::weights`]): matrices
//! to and from lists of rows, and parsing that names the offending key (or line and column)
//! in every error.

use ad_core::nalgebra::DMatrix;

use crate::error::{Error, Result};

/// A matrix as a list of rows.
pub fn nested(m: &DMatrix<f64>) -> Vec<Vec<f64>> {
    m.row_iter().map(|r| r.iter().copied().collect()).collect()
}

/// Rows to a matrix, checking it is non-empty, rectangular and finite; errors name `key`.
pub fn matrix(rows: &[Vec<f64>], key: &str) -> Result<DMatrix<f64>> {
    let Some(first) = rows.first() else {
        return Err(Error::format(
            key,
            "is empty: a matrix here needs at least one row (a list of rows cannot carry \
             the width of a 0-row matrix)",
        ));
    };
    let cols = first.len();
    if cols == 0 {
        return Err(Error::format(
            format!("{key}[0]"),
            "is an empty row: a matrix here needs at least one column",
        ));
    }
    for (i, r) in rows.iter().enumerate() {
        if r.len() != cols {
            return Err(Error::format(
                format!("{key}[{i}]"),
                format!("has {} entries, expected {cols} like row 0", r.len()),
            ));
        }
        if let Some(j) = r.iter().position(|x| !x.is_finite()) {
            return Err(Error::format(
                format!("{key}[{i}][{j}]"),
                "is not a finite number",
            ));
        }
    }
    Ok(DMatrix::from_fn(rows.len(), cols, |i, j| rows[i][j]))
}

/// A list to a 1 × n row, checking it is non-empty and finite; errors name `key`.
pub fn row(values: &[f64], key: &str) -> Result<DMatrix<f64>> {
    if values.is_empty() {
        return Err(Error::format(key, "is empty: it needs at least one entry"));
    }
    if let Some(j) = values.iter().position(|x| !x.is_finite()) {
        return Err(Error::format(
            format!("{key}[{j}]"),
            "is not a finite number",
        ));
    }
    Ok(DMatrix::from_row_slice(1, values.len(), values))
}

/// A file's text, or [`Error::Io`] naming the file.
pub fn read_text(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Parse JSON into `T`, naming the offending key on error.
///
/// * Wrong types, missing fields, unknown names: [`Error::Format`] at the JSON path.
/// * Python's `NaN` / `Infinity` / `-Infinity` tokens (which JSON lacks) and numbers beyond
///   the float64 range: [`Error::Format`] at their path, "not a finite number".
/// * A truncated document, broken syntax, or characters after the end of the document:
///   [`Error::Json`] with the line and column (and the path being read, when known).
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        json_error(text, &path, e.into_inner())
    })?;
    de.end().map_err(|e| json_error(text, ".", e))?;
    Ok(value)
}

/// Map a serde_json error at `path` to the nn error that says what is wrong and where.
fn json_error(text: &str, path: &str, e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    let inner = e.to_string();
    // serde_json appends " at line L column C"; the nn errors carry the position themselves.
    let bare = inner
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&inner)
        .to_owned();
    let key = if path == "." {
        "(root)".to_owned()
    } else {
        path.to_owned()
    };
    // The known part of the path (serde_path_to_error writes `?` for a key it could not read).
    let known = path
        .split('.')
        .take_while(|seg| !seg.starts_with('?'))
        .collect::<Vec<_>>()
        .join(".");
    let inside = if known.is_empty() || known == "." || path == "." {
        String::new()
    } else {
        format!(" while reading `{}`", known.trim_end_matches('.'))
    };
    // A `?` segment: the parser failed where a key belongs, so there is no key to name.
    let key_known = !path.split('.').any(|seg| seg.starts_with('?'));
    match e.classify() {
        Category::Data if key_known => Error::format(key, inner),
        Category::Data => Error::format(
            if known.is_empty() || path == "." {
                "(root)".to_owned()
            } else {
                known.clone()
            },
            inner,
        ),
        Category::Syntax if !key_known => Error::Json {
            line,
            column,
            message: format!("{bare}{inside}"),
        },
        Category::Syntax if bare == "number out of range" => Error::format(
            key,
            format!(
                "is not a finite number: it is beyond the float64 range (line {line}, column \
                 {column})"
            ),
        ),
        Category::Syntax if non_finite_token_at(text, line, column) => Error::format(
            key,
            format!(
                "is not a finite number (NaN or Infinity, line {line}, column {column}); \
                 replace it with a finite value"
            ),
        ),
        Category::Eof if text.trim().is_empty() => Error::Json {
            line,
            column,
            message: "the document is empty".into(),
        },
        Category::Eof => Error::Json {
            line,
            column,
            message: format!(
                "the document ends early{inside} ({bare}): the file is truncated or \
                 incomplete; write or copy it again"
            ),
        },
        Category::Syntax if bare == "trailing characters" => Error::Json {
            line,
            column,
            message: "unexpected characters after the end of the JSON document; remove \
                      everything after its closing brace"
                .into(),
        },
        Category::Syntax | Category::Io => Error::Json {
            line,
            column,
            message: format!("{bare}{inside}"),
        },
    }
}

/// Whether the 1-based `line`/`column` of a serde_json error points at a bare `NaN`,
/// `Infinity` or `-Infinity` token (serde_json reports the `N`/`I`, past a leading `-`).
fn non_finite_token_at(text: &str, line: usize, column: usize) -> bool {
    let Some(line_start) = (if line <= 1 {
        Some(0)
    } else {
        text.match_indices('\n').nth(line - 2).map(|(i, _)| i + 1)
    }) else {
        return false;
    };
    let Some(at) = (line_start + column).checked_sub(1) else {
        return false;
    };
    let bytes = text.as_bytes();
    let starts = |i: usize, token: &[u8]| bytes.get(i..).is_some_and(|b| b.starts_with(token));
    starts(at, b"NaN") || starts(at, b"Infinity") || (at > 0 && starts(at - 1, b"-Infinity"))
}
