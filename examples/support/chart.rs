//! Charts for the examples: line and scatter series on linear or logarithmic axes, drawn
//! with plotters' SVG backend.
//!
//! Ticks sit at round values: 1–2–5 steps on linear axes, whole decades on log axes
//! (labelled `10⁻⁶`, or as plain numbers when every decade lies in 0.01..10⁴; axes of at
//! most two decades also get 2 and 5). The legend stands to the right of the plot, so it
//! never covers data. Text is written as SVG `<text>` for the viewer to render: no font
//! library is needed to draw a chart.
//!
//! ```ignore
//! Chart::new("Gradient error against tolerance")
//!     .x_axis(Axis::log("rtol"))
//!     .y_axis(Axis::log("relative error"))
//!     .series("backsolve", vec![(1e-3, 2e-2), (1e-6, 3e-5)])
//!     .write_svg("target/error.svg")?;
//! ```

use std::fmt;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// How an axis maps data to the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Evenly spaced values.
    Linear,
    /// Evenly spaced decades; values ≤ 0 (and non-finite ones) cannot be drawn and are left
    /// out, so floor such values first if they should appear.
    Log,
}

/// One axis: its title and scale.
#[derive(Clone, Debug)]
pub struct Axis {
    title: String,
    scale: Scale,
}

impl Axis {
    /// A linear axis titled `title`.
    pub fn linear(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            scale: Scale::Linear,
        }
    }

    /// A logarithmic axis titled `title`.
    pub fn log(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            scale: Scale::Log,
        }
    }

    fn drawable(&self, v: f64) -> bool {
        v.is_finite() && (self.scale == Scale::Linear || v > 0.0)
    }

    /// Data to plot coordinates (log10 on log axes).
    fn to_plot(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => v,
            Scale::Log => v.log10(),
        }
    }
}

/// The shape drawn at each point of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// No marker (a plain line).
    None,
    /// A filled circle.
    Circle,
    /// A filled square.
    Square,
    /// A filled upward triangle.
    Triangle,
    /// A filled diamond.
    Diamond,
}

/// The default colours, in order (matplotlib's tab10).
const PALETTE: [u32; 10] = [
    0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22,
    0x17becf,
];

/// A named set of points: joined by a line, marked, or both; optionally a text label per
/// point.
#[derive(Clone, Debug)]
pub struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    labels: Vec<String>,
    line: bool,
    marker: Marker,
    color: Option<u32>,
}

impl Series {
    /// Points joined in order by a line, with a circle at each.
    pub fn line_points(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            labels: Vec::new(),
            line: true,
            marker: Marker::Circle,
            color: None,
        }
    }

    /// Points joined in order by a line, no markers.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            marker: Marker::None,
            ..Self::line_points(name, points)
        }
    }

    /// Points drawn as circles, not joined.
    pub fn scatter(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            line: false,
            ..Self::line_points(name, points)
        }
    }

    /// Draw `marker` at each point.
    pub fn marker(mut self, marker: Marker) -> Self {
        self.marker = marker;
        self
    }

    /// Draw in `rgb` (`0x1f77b4`) instead of the next palette colour.
    pub fn color(mut self, rgb: u32) -> Self {
        self.color = Some(rgb);
        self
    }

    /// Write `labels[i]` beside point `i` (empty strings and missing entries: no label).
    pub fn labels(mut self, labels: Vec<String>) -> Self {
        self.labels = labels;
        self
    }
}

/// Why a chart could not be drawn or written.
#[derive(Debug)]
pub enum ChartError {
    /// The drawing backend failed.
    Draw(String),
    /// The SVG file could not be written.
    Io(std::io::Error),
}

impl fmt::Display for ChartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartError::Draw(m) => write!(f, "drawing the chart failed: {m}"),
            ChartError::Io(e) => write!(f, "writing the chart failed: {e}"),
        }
    }
}

impl std::error::Error for ChartError {}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        ChartError::Draw(e.to_string())
    }
}

/// A chart: a title, two axes and its series.
#[derive(Clone, Debug)]
pub struct Chart {
    title: String,
    x: Axis,
    y: Axis,
    series: Vec<Series>,
    size: (u32, u32),
    equal_aspect: bool,
}

/// Small multiples: charts drawn side by side in a grid under one title, on shared axis
/// ranges (so panels compare at a glance), with one legend for all (series of the same name
/// are one entry: give them the same colour and marker in every panel).
#[derive(Clone, Debug)]
pub struct Facets {
    title: String,
    columns: usize,
    panels: Vec<Chart>,
    size: (u32, u32),
}

/// Font sizes and label room of a chart drawn alone and of a panel among others.
struct Style {
    title: u32,
    tick: u32,
    axis: u32,
    x_area: u32,
    y_area: u32,
}

const ALONE: Style = Style {
    title: 22,
    tick: 16,
    axis: 17,
    x_area: 48,
    y_area: 72,
};

const PANEL: Style = Style {
    title: 17,
    tick: 13,
    axis: 14,
    x_area: 40,
    y_area: 62,
};

/// Room for the longest legend entry is estimated at this many pixels per character.
const LEGEND_CHAR_PX: u32 = 7;
/// Plotters sizes fonts in units of 1.24 px: sizes below are 1.24 × the pixels drawn.
const FONT: &str = "sans-serif";

impl Chart {
    /// An empty chart titled `title`, on linear axes, 960×600 pixels.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x: Axis::linear("x"),
            y: Axis::linear("y"),
            series: Vec::new(),
            size: (960, 600),
            equal_aspect: false,
        }
    }

    /// Draw one unit of x as long as one unit of y (a phase portrait's circles stay round):
    /// the axis with room to spare is widened around its data.
    pub fn equal_aspect(mut self) -> Self {
        self.equal_aspect = true;
        self
    }

    /// Set the horizontal axis.
    pub fn x_axis(mut self, axis: Axis) -> Self {
        self.x = axis;
        self
    }

    /// Set the vertical axis.
    pub fn y_axis(mut self, axis: Axis) -> Self {
        self.y = axis;
        self
    }

    /// Add a line-and-markers series.
    pub fn series(self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.add(Series::line_points(name, points))
    }

    /// Add a series built with [`Series`]'s methods.
    pub fn add(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Set the size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// The chart as an SVG document.
    pub fn to_svg(&self) -> Result<String, ChartError> {
        render(self.size, |backend| self.draw(backend))
    }

    /// Write the chart as an SVG file at `path`, creating its directory if needed.
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<(), ChartError> {
        write_file(path.as_ref(), &self.to_svg()?)
    }

    /// The drawable points of series `s` (in plot coordinates) with their labels.
    fn plot_points<'s>(&self, s: &'s Series) -> Vec<((f64, f64), &'s str)> {
        s.points
            .iter()
            .enumerate()
            .filter(|(_, &(x, y))| self.x.drawable(x) && self.y.drawable(y))
            .map(|(i, &(x, y))| {
                let label = s.labels.get(i).map_or("", String::as_str);
                ((self.x.to_plot(x), self.y.to_plot(y)), label)
            })
            .collect()
    }

    /// Every drawable point's coordinates, in plot coordinates: (xs, ys).
    fn plot_values(&self) -> (Vec<f64>, Vec<f64>) {
        self.series
            .iter()
            .flat_map(|s| self.plot_points(s))
            .map(|(p, _)| p)
            .unzip()
    }

    fn draw(&self, backend: SVGBackend<'_>) -> Result<(), ChartError> {
        let root = backend.into_drawing_area();
        root.fill(&WHITE)?;
        let entries = legend_entries(std::slice::from_ref(self));
        let legend_width = legend_width(&entries, self.size.0);
        let (plot_area, legend_area) = root.split_horizontally(self.size.0 - legend_width);
        let (xs, ys) = self.plot_values();
        let ticks = (Ticks::new(self.x.scale, &xs), Ticks::new(self.y.scale, &ys));
        self.draw_panel(&root, &plot_area, ticks, &ALONE)?;
        draw_legend(&legend_area, &entries)?;
        root.present()?;
        Ok(())
    }

    /// Draw the chart (title, axes, series, point labels; no legend) into `area` of `root`
    /// on the axis ranges `ticks`.
    fn draw_panel(
        &self,
        root: &DrawingArea<SVGBackend<'_>, Shift>,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        (mut x_ticks, mut y_ticks): (Ticks, Ticks),
        style: &Style,
    ) -> Result<(), ChartError> {
        let area = area.titled(&self.title, (FONT, style.title))?;
        let build = |x: &Ticks, y: &Ticks| {
            ChartBuilder::on(&area)
                .margin(12)
                .x_label_area_size(style.x_area)
                .y_label_area_size(style.y_area)
                .build_cartesian_2d(x.clone(), y.clone())
        };
        if self.equal_aspect {
            // Measure the plotting area (building draws nothing without a caption), then
            // widen the axis whose units are drawn longer.
            let (xr, yr) = build(&x_ticks, &y_ticks)?.plotting_area().get_pixel_range();
            (x_ticks, y_ticks) = equalize(x_ticks, y_ticks, xr.end - xr.start, yr.end - yr.start);
        }
        let mut chart = build(&x_ticks, &y_ticks)?;
        let (xf, yf) = (x_ticks.formatter(), y_ticks.formatter());
        chart
            .configure_mesh()
            .x_desc(&self.x.title)
            .y_desc(&self.y.title)
            .x_label_formatter(&xf)
            .y_label_formatter(&yf)
            .label_style((FONT, style.tick))
            .axis_desc_style((FONT, style.axis))
            .bold_line_style(RGBColor(205, 205, 205))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()?;

        let points: Vec<Vec<((f64, f64), &str)>> =
            self.series.iter().map(|s| self.plot_points(s)).collect();
        let mut occupied: Vec<Rect> = Vec::new();
        for (k, (s, pts)) in self.series.iter().zip(&points).enumerate() {
            let color = series_color(s, k);
            if s.line && pts.len() > 1 {
                chart.draw_series(LineSeries::new(
                    pts.iter().map(|(p, _)| *p),
                    color.stroke_width(2),
                ))?;
            }
            for (p, _) in pts {
                let (px, py) = chart.backend_coord(p);
                draw_marker(root, s.marker, (px, py), color)?;
                occupied.push(Rect::around(px, py, MARKER_RADIUS));
            }
        }
        // Point labels after every marker, each where it covers no marker and no label
        // placed before it; a label pushed away from its point gets a leader line.
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let plot = Rect {
            x0: xr.start,
            y0: yr.start,
            x1: xr.end,
            y1: yr.end,
        };
        for (k, (s, pts)) in self.series.iter().zip(&points).enumerate() {
            let color = series_color(s, k);
            for (p, label) in pts.iter().filter(|(_, l)| !l.is_empty()) {
                let at = chart.backend_coord(p);
                let (r, adjacent) = place_label(at, label, plot, &occupied);
                if !adjacent {
                    root.draw(&PathElement::new(
                        vec![at, r.nearest(at)],
                        color.mix(0.6).stroke_width(1),
                    ))?;
                }
                root.draw(&Text::new(
                    label.to_string(),
                    (r.x0, r.y0),
                    (FONT, 14).into_font().color(&color),
                ))?;
                // A little room around it, so that neighbouring labels do not read as one.
                occupied.push(r.grown(4));
            }
        }
        Ok(())
    }
}

impl Facets {
    /// No panels yet, titled `title`, `columns` panels to a row, 1280×900 pixels.
    pub fn new(title: impl Into<String>, columns: usize) -> Self {
        Self {
            title: title.into(),
            columns: columns.max(1),
            panels: Vec::new(),
            size: (1280, 900),
        }
    }

    /// Add a panel (its title names what sets it apart; its axes' scales must match the
    /// first panel's).
    pub fn panel(mut self, chart: Chart) -> Self {
        self.panels.push(chart);
        self
    }

    /// Set the size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// The panels as one SVG document.
    pub fn to_svg(&self) -> Result<String, ChartError> {
        render(self.size, |backend| self.draw(backend))
    }

    /// Write the panels as an SVG file at `path`, creating its directory if needed.
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<(), ChartError> {
        write_file(path.as_ref(), &self.to_svg()?)
    }

    fn draw(&self, backend: SVGBackend<'_>) -> Result<(), ChartError> {
        let root = backend.into_drawing_area();
        root.fill(&WHITE)?;
        let Some(first) = self.panels.first() else {
            return Ok(());
        };
        let area = root.titled(&self.title, (FONT, 22))?;
        let entries = legend_entries(&self.panels);
        let legend_width = legend_width(&entries, self.size.0);
        let (grid, legend_area) = area.split_horizontally(self.size.0 - legend_width);
        // Shared ranges: the ticks of every panel's points together.
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for p in &self.panels {
            let (x, y) = p.plot_values();
            xs.extend(x);
            ys.extend(y);
        }
        let ticks = (
            Ticks::new(first.x.scale, &xs),
            Ticks::new(first.y.scale, &ys),
        );
        let rows = self.panels.len().div_ceil(self.columns);
        let columns = self.columns.min(self.panels.len());
        let cells = grid.split_evenly((rows, columns));
        for (panel, cell) in self.panels.iter().zip(&cells) {
            panel.draw_panel(&root, cell, ticks.clone(), &PANEL)?;
        }
        draw_legend(&legend_area, &entries)?;
        root.present()?;
        Ok(())
    }
}

/// What `draw` draws on an SVG canvas of `size` pixels, as an SVG document.
fn render(
    size: (u32, u32),
    draw: impl FnOnce(SVGBackend<'_>) -> Result<(), ChartError>,
) -> Result<String, ChartError> {
    let mut svg = String::new();
    draw(SVGBackend::with_string(&mut svg, size))?;
    Ok(svg)
}

fn write_file(path: &Path, svg: &str) -> Result<(), ChartError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(ChartError::Io)?;
    }
    std::fs::write(path, svg).map_err(ChartError::Io)
}

/// Widen `x` or `y` about its middle so that a unit of each spans as many pixels, given
/// the plotting area's `width` × `height`; ticks outside the new range are dropped, ticks
/// inside it added.
pub fn equalize(x: Ticks, y: Ticks, width: i32, height: i32) -> (Ticks, Ticks) {
    let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    let (ux, uy) = ((x.hi - x.lo) / w, (y.hi - y.lo) / h);
    let widen = |t: Ticks, unit: f64, px: f64| {
        let (mid, half) = (0.5 * (t.lo + t.hi), 0.5 * unit * px);
        let (lo, hi) = (mid - half, mid + half);
        let mut wide = match t.scale {
            Scale::Linear => linear_ticks(lo, hi),
            Scale::Log => log_ticks(lo, hi),
        };
        let eps = 1e-9 * (hi - lo);
        wide.major.retain(|&v| v >= lo - eps && v <= hi + eps);
        wide.minor.retain(|&v| v >= lo - eps && v <= hi + eps);
        Ticks { lo, hi, ..wide }
    };
    if ux > uy {
        (x, widen(y, ux, h))
    } else {
        (widen(x, uy, w), y)
    }
}

/// One legend line: name, colour, marker, whether a line is drawn.
struct LegendEntry {
    name: String,
    color: RGBColor,
    marker: Marker,
    line: bool,
}

/// The legend of `charts`' series, one entry per name (the first series of that name).
fn legend_entries(charts: &[Chart]) -> Vec<LegendEntry> {
    let mut entries: Vec<LegendEntry> = Vec::new();
    for c in charts {
        for (k, s) in c.series.iter().enumerate() {
            if !entries.iter().any(|e| e.name == s.name) {
                entries.push(LegendEntry {
                    name: s.name.clone(),
                    color: series_color(s, k),
                    marker: s.marker,
                    line: s.line,
                });
            }
        }
    }
    entries
}

fn legend_width(entries: &[LegendEntry], width: u32) -> u32 {
    let longest = entries
        .iter()
        .map(|e| e.name.chars().count() as u32)
        .max()
        .unwrap_or(0);
    (LEGEND_CHAR_PX * longest + 60).min(width / 3)
}

fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[LegendEntry],
) -> Result<(), ChartError> {
    for (k, e) in entries.iter().enumerate() {
        let y = 48 + 22 * k as i32;
        if e.line {
            area.draw(&PathElement::new(
                vec![(6, y), (34, y)],
                e.color.stroke_width(2),
            ))?;
        }
        draw_marker(area, e.marker, (20, y), e.color)?;
        area.draw(&Text::new(
            e.name.clone(),
            (42, y),
            (FONT, 16)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// The colour of series `s`, the `k`-th of its chart.
fn series_color(s: &Series, k: usize) -> RGBColor {
    rgb(s.color.unwrap_or(PALETTE[k % PALETTE.len()]))
}

fn rgb(c: u32) -> RGBColor {
    RGBColor((c >> 16) as u8, (c >> 8) as u8, c as u8)
}

const MARKER_RADIUS: i32 = 5;

/// One marker centred at `at` (pixels of `area`).
fn draw_marker<C>(
    area: &DrawingArea<SVGBackend<'_>, C>,
    marker: Marker,
    at: (i32, i32),
    color: RGBColor,
) -> Result<(), ChartError>
where
    C: plotters::coord::CoordTranslate<From = (i32, i32)>,
{
    let r = MARKER_RADIUS;
    let fill = color.filled();
    let (x, y) = at;
    match marker {
        Marker::None => {}
        Marker::Circle => area.draw(&Circle::new(at, r, fill))?,
        Marker::Square => area.draw(&Rectangle::new(
            [(x - r + 1, y - r + 1), (x + r - 1, y + r - 1)],
            fill,
        ))?,
        Marker::Triangle => area.draw(&Polygon::new(
            vec![
                (x, y - r - 1),
                (x - r - 1, y + r - 1),
                (x + r + 1, y + r - 1),
            ],
            fill,
        ))?,
        Marker::Diamond => area.draw(&Polygon::new(
            vec![
                (x, y - r - 1),
                (x + r + 1, y),
                (x, y + r + 1),
                (x - r - 1, y),
            ],
            fill,
        ))?,
    }
    Ok(())
}

/// An axis-aligned box in pixels (y down).
#[derive(Clone, Copy, Debug)]
struct Rect {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl Rect {
    fn around(x: i32, y: i32, r: i32) -> Self {
        Self {
            x0: x - r,
            y0: y - r,
            x1: x + r,
            y1: y + r,
        }
    }

    fn overlaps(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }

    fn contains(&self, o: &Rect) -> bool {
        self.x0 <= o.x0 && o.x1 <= self.x1 && self.y0 <= o.y0 && o.y1 <= self.y1
    }

    fn grown(&self, by: i32) -> Self {
        Self {
            x0: self.x0 - by,
            y0: self.y0 - by,
            x1: self.x1 + by,
            y1: self.y1 + by,
        }
    }

    /// The point of the box nearest to `p`.
    fn nearest(&self, p: (i32, i32)) -> (i32, i32) {
        (p.0.clamp(self.x0, self.x1), p.1.clamp(self.y0, self.y1))
    }
}

/// The box of `label` near the point `at`: the first spot, on rings growing outwards,
/// inside `plot` and clear of `occupied` (the spot above right when every one is taken), and
/// whether it is next to the point (the first ring) rather than pushed away.
fn place_label(at: (i32, i32), label: &str, plot: Rect, occupied: &[Rect]) -> (Rect, bool) {
    // About 7 px a character at the labels' size.
    let (w, h) = (7 * label.chars().count() as i32, 11);
    let at_offset = |dx: i32, dy: i32| Rect {
        x0: at.0 + dx,
        y0: at.1 + dy,
        x1: at.0 + dx + w,
        y1: at.1 + dy + h,
    };
    for ring in 0..12 {
        let d = 7 + 9 * ring;
        for (dx, dy) in [
            (d, -d / 2 - h / 2),
            (d, d / 2 - h / 2),
            (-d - w, -d / 2 - h / 2),
            (-d - w, d / 2 - h / 2),
            (-w / 2, -d - h),
            (-w / 2, d),
            (d, -h / 2),
            (-d - w, -h / 2),
        ] {
            let r = at_offset(dx, dy);
            if plot.contains(&r) && !occupied.iter().any(|o| o.overlaps(&r)) {
                return (r, ring == 0);
            }
        }
    }
    (at_offset(7, -7 - h), true)
}

/// An axis' extent and ticks in plot coordinates (log10 of the data on log axes).
#[derive(Clone, Debug, PartialEq)]
pub struct Ticks {
    /// Scale of the axis.
    pub scale: Scale,
    /// The axis runs from `lo` to `hi` (whole decades on log axes, tick values on linear
    /// ones).
    pub lo: f64,
    /// See `lo`.
    pub hi: f64,
    /// Labelled ticks.
    pub major: Vec<f64>,
    /// Grid lines without labels (2…9 × 10ⁿ on log axes).
    pub minor: Vec<f64>,
}

/// Aim for about this many labelled ticks on a linear axis.
const LINEAR_TICKS: f64 = 6.0;

impl Ticks {
    /// Ticks for data `values` already in plot coordinates.
    pub fn new(scale: Scale, values: &[f64]) -> Self {
        let (mut lo, mut hi) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        match scale {
            Scale::Linear => linear_ticks(lo, hi),
            Scale::Log => log_ticks(lo, hi),
        }
    }

    /// How a tick value (in plot coordinates) is written.
    fn formatter(&self) -> impl Fn(&f64) -> String {
        let scale = self.scale;
        let plain = self.lo >= -2.0 && self.hi <= 4.0;
        let step = self
            .major
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(f64::INFINITY, f64::min);
        move |&u| match scale {
            Scale::Log => log_label(u, plain),
            Scale::Linear => linear_label(u, step),
        }
    }
}

/// The axis as a plotters coordinate: linear in plot coordinates, with these ticks as its
/// key points (labelled ones for bold lines, all for light ones).
impl Ranged for Ticks {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.lo..self.hi).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.major.iter().chain(&self.minor).copied().collect()
        } else {
            self.major.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// A linear axis from `lo` to `hi` with ticks every 1, 2 or 5 × 10ⁿ, extended to the ticks
/// just outside the data.
pub fn linear_ticks(lo: f64, hi: f64) -> Ticks {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        // One value: a unit around it (or ±10% of it).
        let d = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        (lo - d, lo + d)
    };
    let rough = (hi - lo) / LINEAR_TICKS;
    let decade = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&s| s >= rough)
        .unwrap_or(10.0 * decade);
    let (first, last) = ((lo / step).floor() as i64, (hi / step).ceil() as i64);
    let major: Vec<f64> = (first..=last).map(|i| i as f64 * step).collect();
    Ticks {
        scale: Scale::Linear,
        lo: first as f64 * step,
        hi: last as f64 * step,
        major,
        minor: Vec::new(),
    }
}

/// A log axis over the whole decades around `lo..hi` (given as log10 of the data): a
/// labelled tick at every decade (every second, fifth, … when there are more than ten), grid
/// lines at 2…9 × 10ⁿ, and labelled 2 and 5 too when the axis spans at most two decades.
pub fn log_ticks(lo: f64, hi: f64) -> Ticks {
    // A little margin, so that a point on a decade does not sit on the frame.
    let a = (lo - 0.02).floor();
    let b = (hi + 0.02).ceil().max(a + 1.0);
    let (a_i, b_i) = (a as i32, b as i32);
    let every = [1, 2, 5, 10, 20]
        .into_iter()
        .find(|&k| (b_i - a_i) / k <= 10)
        .unwrap_or(50);
    let mut major: Vec<f64> = (a_i..=b_i)
        .filter(|e| e.rem_euclid(every) == 0 || every == 1)
        .map(f64::from)
        .collect();
    let mut minor = Vec::new();
    for e in a_i..b_i {
        for m in 2..=9 {
            let u = f64::from(e) + f64::from(m).log10();
            if b_i - a_i <= 2 && (m == 2 || m == 5) {
                major.push(u);
            } else if every == 1 {
                minor.push(u);
            }
        }
    }
    major.sort_by(f64::total_cmp);
    Ticks {
        scale: Scale::Log,
        lo: a,
        hi: b,
        major,
        minor,
    }
}

/// The label of the tick at log10 value `u`: `m×10ⁿ` (just `10ⁿ` for m = 1), or a plain
/// number when `plain`.
pub fn log_label(u: f64, plain: bool) -> String {
    let e = (u + 1e-9).floor();
    let m = 10f64.powf(u - e).round();
    let e = e as i32;
    if plain {
        let v = m * 10f64.powi(e);
        return if e < 0 {
            format!("{v:.*}", e.unsigned_abs() as usize)
        } else {
            format!("{v:.0}")
        };
    }
    let power = format!("10{}", superscript(e));
    if m == 1.0 {
        power
    } else {
        format!("{m}×{power}")
    }
}

/// The label of a linear tick value `v` on an axis with ticks every `step`: as many decimals
/// as the step needs, or `1.5e6`-style when the values are very large or small.
pub fn linear_label(v: f64, step: f64) -> String {
    let big = v.abs().max(step.abs());
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&big) {
        let s = format!("{v:e}");
        // Rounding noise of i·step (e.g. 3.0000000000000004e-7) is not worth printing.
        match s.split_once('e') {
            Some((mantissa, exp)) => {
                let m: f64 = mantissa.parse().unwrap_or(0.0);
                format!("{}e{exp}", (m * 1e6).round() / 1e6)
            }
            None => s,
        }
    } else {
        let decimals = if step.is_finite() && step < 1.0 {
            (-step.log10().floor()) as usize
        } else {
            0
        };
        format!("{v:.decimals$}")
    }
}

/// `n` in Unicode superscript digits (`-6` → `⁻⁶`).
fn superscript(n: i32) -> String {
    const DIGITS: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
    let mut s = String::new();
    if n < 0 {
        s.push('⁻');
    }
    for d in n.unsigned_abs().to_string().bytes() {
        s.push(DIGITS[usize::from(d - b'0')]);
    }
    s
}
