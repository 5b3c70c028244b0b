//! Plain-text tables for the reports' `Display` (through [`ad_core::TextTable`]).

/// The rows under `header` as aligned text ([`ad_core::TextTable`]).
pub(crate) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = ad_core::TextTable::new(header);
    for row in rows {
        table.row(row.clone());
    }
    table.to_string()
}

/// A number in short exponent form (`1.2e-9`), or `-` for a missing one.
pub(crate) fn sci(x: Option<f64>) -> String {
    match x {
        Some(x) => format!("{x:.2e}"),
        None => "-".into(),
    }
}
