//! Plain-text tables for the reports' `Display`: a header, a rule, right-aligned columns.

/// The rows under `header` as aligned text (first column left-aligned, the rest right).
pub(crate) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut all: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    all.extend(rows.iter().cloned());
    let cols = all.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            all.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in all.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c == 0 {
                    format!("{s:<w$}", w = width[c])
                } else {
                    format!("{s:>w$}", w = width[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let total = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

/// A number in short exponent form (`1.2e-9`), or `-` for a missing one.
pub(crate) fn sci(x: Option<f64>) -> String {
    match x {
        Some(x) => format!("{x:.2e}"),
        None => "-".into(),
    }
}
