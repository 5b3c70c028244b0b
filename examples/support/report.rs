//! What the examples print and draw: aligned tables, medians, process memory, SVG charts.

use std::fmt::Write as _;

/// The median of `xs` (0 for an empty slice).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Peak resident set size of this process in bytes (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes as a short human-readable string (`"1.23 MiB"`).
pub fn bytes(n: usize) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / (1024.0 * 1024.0))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// A text table with a header row and right-aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    /// Append a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, with a rule under the header.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            let line: Vec<String> = r
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
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
            if i == 0 {
                let total = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
                let _ = writeln!(out, "{}", "-".repeat(total));
            }
        }
        out
    }
}

/// One named polyline of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points `(x, y)` in data coordinates.
    pub points: Vec<(f64, f64)>,
    /// Stroke colour (`"#1f77b4"`).
    pub color: String,
    /// Draw a marker at each point.
    pub markers: bool,
}

/// A line chart as a standalone SVG document (linear axes with ticks, a legend).
pub fn svg_line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (720.0, 460.0);
    let (left, right, top, bottom) = (80.0, 180.0, 40.0, 60.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom);
    let mut s = svg_open(w, h, title, (left + w - right) / 2.0, 22.0);
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        w - left - right,
        h - top - bottom
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (xv, yv) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            px(xv),
            h - bottom + 18.0,
            tick(xv)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 6.0,
            py(yv) + 4.0,
            tick(yv)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{top}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            px(xv),
            px(xv),
            h - bottom
        );
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            py(yv),
            w - right,
            py(yv)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + w - right) / 2.0,
        h - 18.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        escape(y_label)
    );
    for (k, ser) in series.iter().enumerate() {
        let path: Vec<String> = ser
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            ser.color,
            path.join(" ")
        );
        if ser.markers {
            for &(x, y) in &ser.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                    px(x),
                    py(y),
                    ser.color
                );
            }
        }
        let ly = top + 14.0 + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/>"#,
            w - right + 12.0,
            w - right + 36.0,
            ser.color
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            w - right + 42.0,
            ly + 4.0,
            escape(&ser.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// How an axis maps data to the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Evenly spaced values, six ticks.
    Linear,
    /// Evenly spaced decades; values ≤ 0 cannot be drawn and are left out.
    Log,
}

/// One axis of a scatter chart: its label and scale.
#[derive(Clone, Copy, Debug)]
pub struct Axis<'a> {
    /// Text under (x) or beside (y) the axis.
    pub label: &'a str,
    /// Linear or logarithmic.
    pub scale: Scale,
}

/// The shape drawn at each point of a [`ScatterSeries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A filled circle.
    Circle,
    /// A filled square.
    Square,
    /// A filled upward triangle.
    Triangle,
    /// A filled diamond.
    Diamond,
}

/// One labelled point of a scatter chart.
#[derive(Clone, Debug)]
pub struct ScatterPoint {
    /// Data coordinates.
    pub x: f64,
    /// Data coordinates.
    pub y: f64,
    /// Text written next to the marker (empty for none).
    pub label: String,
}

/// A named group of points drawn with one colour and one marker shape.
#[derive(Clone, Debug)]
pub struct ScatterSeries {
    /// Legend label.
    pub label: String,
    /// The points.
    pub points: Vec<ScatterPoint>,
    /// Fill colour (`"#1f77b4"`).
    pub color: String,
    /// Marker shape.
    pub marker: Marker,
    /// Join the points in order with a line (a line chart on the scatter chart's axes).
    pub line: bool,
}

/// A scatter chart as a standalone SVG document: every point drawn with its series' marker
/// and colour and its own label beside it (moved aside, with a leader line, where it would
/// cover another marker or label), optionally joined in order by a line, on linear or log
/// axes (decade ticks and grid lines on log axes, plus 2 and 5 on axes of at most three
/// decades), with a legend of the series. Points that a log axis cannot show (x or y ≤ 0,
/// or not finite) are left out, so floor such values first if they should appear.
pub fn svg_scatter_chart(
    title: &str,
    x: Axis<'_>,
    y: Axis<'_>,
    series: &[ScatterSeries],
) -> String {
    let (w, h) = (960.0, 600.0);
    let (left, right, top, bottom) = (80.0, 250.0, 44.0, 60.0);
    let drawable = |v: f64, scale: Scale| v.is_finite() && (scale == Scale::Linear || v > 0.0);
    let fwd = |v: f64, scale: Scale| match scale {
        Scale::Linear => v,
        Scale::Log => v.log10(),
    };
    // Data ranges in transformed coordinates (log10 on log axes).
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for p in series.iter().flat_map(|s| &s.points) {
        if drawable(p.x, x.scale) && drawable(p.y, y.scale) {
            let (u, v) = (fwd(p.x, x.scale), fwd(p.y, y.scale));
            x0 = x0.min(u);
            x1 = x1.max(u);
            y0 = y0.min(v);
            y1 = y1.max(v);
        }
    }
    let range = |lo: f64, hi: f64, scale: Scale| -> (f64, f64) {
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        match scale {
            // Whole decades around the data, with a margin when it touches one.
            Scale::Log => {
                let (a, b) = ((lo - 0.05).floor(), (hi + 0.05).ceil());
                (a, if b > a { b } else { a + 1.0 })
            }
            Scale::Linear => {
                let span = if hi > lo { hi - lo } else { 1.0 };
                (lo - 0.05 * span, hi + 0.05 * span)
            }
        }
    };
    let (x0, x1) = range(x0, x1, x.scale);
    let (y0, y1) = range(y0, y1, y.scale);
    let px = |v: f64| left + (fwd(v, x.scale) - x0) / (x1 - x0) * (w - left - right);
    let py = |v: f64| h - bottom - (fwd(v, y.scale) - y0) / (y1 - y0) * (h - top - bottom);
    // Tick values in data coordinates, with their labels.
    let ticks = |lo: f64, hi: f64, scale: Scale| -> Vec<(f64, String)> {
        match scale {
            Scale::Linear => (0..=5)
                .map(|i| {
                    let v = lo + f64::from(i) / 5.0 * (hi - lo);
                    (v, tick(v))
                })
                .collect(),
            Scale::Log => {
                let (a, b) = (lo as i32, hi as i32);
                // One style per axis: plain numbers when every decade is between 0.01 and
                // 10⁴, `1e{e}` otherwise.
                let plain = a >= -2 && b <= 4;
                let every = ((b - a) / 10 + 1).max(1);
                let mut t: Vec<(f64, String)> = (a..=b)
                    .filter(|e| (e - a) % every == 0)
                    .map(|e| (10f64.powi(e), mantissa_decade(1.0, e, plain)))
                    .collect();
                // Short axes also get 2·10^e and 5·10^e.
                if b - a <= 3 {
                    for e in a..b {
                        for m in [2.0, 5.0] {
                            t.push((m * 10f64.powi(e), mantissa_decade(m, e, plain)));
                        }
                    }
                }
                t
            }
        }
    };
    let (xt, yt) = (ticks(x0, x1, x.scale), ticks(y0, y1, y.scale));
    let mut s = svg_open(w, h, title, (left + w - right) / 2.0, 24.0);
    for (v, label) in &xt {
        let xp = px(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{xp:.1}" y1="{top}" x2="{xp:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            h - bottom
        );
        let _ = writeln!(
            s,
            r#"<text x="{xp:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            h - bottom + 18.0
        );
    }
    for (v, label) in &yt {
        let yp = py(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yp:.1}" x2="{:.1}" y2="{yp:.1}" stroke="#ddd"/>"##,
            w - right
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            left - 6.0,
            yp + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        w - left - right,
        h - top - bottom
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + w - right) / 2.0,
        h - 18.0,
        escape(x.label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        escape(y.label)
    );
    // Markers first, then labels placed greedily where they overlap no marker and no label
    // placed before them, with a leader line when pushed away from their point.
    let mut placed: Vec<Rect> = Vec::new();
    let mut labels = Vec::new();
    for ser in series.iter().filter(|ser| ser.line) {
        let path: Vec<String> = ser
            .points
            .iter()
            .filter(|p| drawable(p.x, x.scale) && drawable(p.y, y.scale))
            .map(|p| format!("{:.1},{:.1}", px(p.x), py(p.y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            ser.color,
            path.join(" ")
        );
    }
    for ser in series {
        for p in &ser.points {
            if !(drawable(p.x, x.scale) && drawable(p.y, y.scale)) {
                continue;
            }
            let (cx, cy) = (px(p.x), py(p.y));
            s.push_str(&marker(ser.marker, cx, cy, 5.0, &ser.color));
            placed.push(Rect::around(cx, cy, 5.0));
            if !p.label.is_empty() {
                labels.push((cx, cy, &p.label, &ser.color));
            }
        }
    }
    let plot = Rect {
        x0: left,
        y0: top,
        x1: w - right,
        y1: h - bottom,
    };
    for (cx, cy, label, color) in labels {
        let (lw, lh) = (5.6 * label.chars().count() as f64, 10.0);
        let mut best = None;
        'search: for ring in 0..12 {
            let d = 7.0 + 9.0 * f64::from(ring);
            for (dx, dy) in [
                (1.0, -0.6),
                (1.0, 0.6),
                (-1.0, -0.6),
                (-1.0, 0.6),
                (0.0, -1.0),
                (0.0, 1.0),
                (1.0, 0.0),
                (-1.0, 0.0),
            ] {
                // The label's anchor corner nearest the point sits at distance d.
                let ax = cx + dx * d;
                let ay = cy + dy * d;
                let bx = if dx < 0.0 {
                    ax - lw
                } else if dx > 0.0 {
                    ax
                } else {
                    ax - lw / 2.0
                };
                let by = if dy < 0.0 {
                    ay - lh
                } else if dy > 0.0 {
                    ay
                } else {
                    ay - lh / 2.0
                };
                let r = Rect {
                    x0: bx,
                    y0: by,
                    x1: bx + lw,
                    y1: by + lh,
                };
                if plot.contains(&r) && !placed.iter().any(|q| q.overlaps(&r)) {
                    best = Some((r, ring));
                    break 'search;
                }
            }
        }
        // Crowded everywhere: fall back to the default spot.
        let (r, ring) = best.unwrap_or((
            Rect {
                x0: cx + 7.0,
                y0: cy - 4.2 - lh,
                x1: cx + 7.0 + lw,
                y1: cy - 4.2,
            },
            0,
        ));
        if ring > 0 {
            let (tx, ty) = r.nearest(cx, cy);
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" y1="{cy:.1}" x2="{tx:.1}" y2="{ty:.1}" stroke="{color}" stroke-width="0.7"/>"#
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{color}" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
            r.x0,
            r.y1 - 1.5,
            escape(label)
        );
        placed.push(r);
    }
    for (k, ser) in series.iter().enumerate() {
        let ly = top + 14.0 + 20.0 * k as f64;
        if ser.line {
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"/>"#,
                w - right + 10.0,
                w - right + 34.0,
                ser.color
            );
        }
        s.push_str(&marker(ser.marker, w - right + 22.0, ly, 5.0, &ser.color));
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            w - right + 40.0,
            ly + 4.0,
            escape(&ser.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// An axis-aligned box in page coordinates (y down).
#[derive(Clone, Copy, Debug)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Rect {
    fn around(cx: f64, cy: f64, r: f64) -> Self {
        Self {
            x0: cx - r,
            y0: cy - r,
            x1: cx + r,
            y1: cy + r,
        }
    }

    fn overlaps(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }

    fn contains(&self, o: &Rect) -> bool {
        self.x0 <= o.x0 && o.x1 <= self.x1 && self.y0 <= o.y0 && o.y1 <= self.y1
    }

    /// The point of the box nearest `(x, y)`.
    fn nearest(&self, x: f64, y: f64) -> (f64, f64) {
        (x.clamp(self.x0, self.x1), y.clamp(self.y0, self.y1))
    }
}

/// One marker of radius `r` at `(cx, cy)` as an SVG element.
fn marker(shape: Marker, cx: f64, cy: f64, r: f64, color: &str) -> String {
    let stroke = r##"stroke="#222" stroke-width="0.6""##;
    match shape {
        Marker::Circle => {
            format!(r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r}" fill="{color}" {stroke}/>"#) + "\n"
        }
        Marker::Square => {
            format!(
                r#"<rect x="{:.1}" y="{:.1}" width="{}" height="{}" fill="{color}" {stroke}/>"#,
                cx - 0.9 * r,
                cy - 0.9 * r,
                1.8 * r,
                1.8 * r
            ) + "\n"
        }
        Marker::Triangle => {
            format!(
                r#"<polygon points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{color}" {stroke}/>"#,
                cx,
                cy - 1.2 * r,
                cx - 1.1 * r,
                cy + 0.8 * r,
                cx + 1.1 * r,
                cy + 0.8 * r
            ) + "\n"
        }
        Marker::Diamond => {
            format!(
                r#"<polygon points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{color}" {stroke}/>"#,
                cx,
                cy - 1.2 * r,
                cx + 1.2 * r,
                cy,
                cx,
                cy + 1.2 * r,
                cx - 1.2 * r,
                cy
            ) + "\n"
        }
    }
}

/// The label of m·10^e for a one-digit m: a plain number (for e in −2..=4) when `plain`,
/// else `{m}e{e}`.
fn mantissa_decade(m: f64, e: i32, plain: bool) -> String {
    match e {
        -2..=-1 if plain => format!("{:.*}", e.unsigned_abs() as usize, m * 10f64.powi(e)),
        0..=4 if plain => format!("{:.0}", m * 10f64.powi(e)),
        _ => format!("{m}e{e}"),
    }
}

/// The opening of an SVG chart: the root element, a white background and the title
/// centred at `(title_x, title_y)`.
fn svg_open(w: f64, h: f64, title: &str, title_x: f64, title_y: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{title_x}" y="{title_y}" text-anchor="middle" font-size="15">{}</text>"#,
        escape(title)
    );
    s
}
