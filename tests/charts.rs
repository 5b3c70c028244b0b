//! The examples' chart module (`examples/support/chart.rs`): ticks at round values, labels,
//! and SVG that needs no font library (text as `<text>`, series and legend present).

#[path = "../examples/support/chart.rs"]
#[allow(dead_code)]
mod chart;

use chart::{
    equalize, linear_ticks, log_label, log_ticks, Axis, Chart, Facets, Marker, Scale, Series, Ticks,
};

#[test]
fn linear_ticks_step_by_one_two_or_five_and_enclose_the_data() {
    let t = linear_ticks(0.13, 0.87);
    assert_eq!(t.major.len(), 6, "{t:?}");
    for (i, v) in t.major.iter().enumerate() {
        assert!((v - 0.2 * i as f64).abs() < 1e-12, "{t:?}");
    }
    assert_eq!((t.lo, t.hi), (0.0, 1.0));
    let t = linear_ticks(-3.0, 41.0);
    let steps: Vec<f64> = t.major.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(steps.iter().all(|&s| (s - 10.0).abs() < 1e-9), "{t:?}");
    assert!(
        t.lo <= -3.0 && t.hi >= 41.0 && t.lo == -10.0 && t.hi == 50.0,
        "{t:?}"
    );
    // One value: an interval around it, not a zero-width axis.
    let t = linear_ticks(5.0, 5.0);
    assert!(t.lo < 5.0 && t.hi > 5.0, "{t:?}");
}

#[test]
fn log_ticks_sit_on_decades_and_short_axes_get_two_and_five() {
    // Data from 5e-7 to 8e-3 (log10 values).
    let t = log_ticks(5e-7f64.log10(), 8e-3f64.log10());
    assert_eq!((t.lo, t.hi), (-7.0, -2.0));
    assert_eq!(t.major, vec![-7.0, -6.0, -5.0, -4.0, -3.0, -2.0]);
    assert_eq!(t.minor.len(), 5 * 8);
    // Two decades: 1, 2, 5 in each.
    let t = log_ticks(1.2f64.log10(), 80f64.log10());
    let values: Vec<f64> = t.major.iter().map(|u| 10f64.powf(*u)).collect();
    let want = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
    assert_eq!(values.len(), want.len(), "{values:?}");
    for (v, w) in values.iter().zip(want) {
        assert!((v / w - 1.0).abs() < 1e-12, "{values:?}");
    }
    // Thirty decades: every fifth labelled, so labels do not collide.
    let t = log_ticks(-20.0, 10.0);
    assert!(t.major.len() <= 11 && t.major.contains(&-20.0) && t.major.contains(&10.0));
}

#[test]
fn labels_are_powers_of_ten_or_plain_numbers() {
    assert_eq!(log_label(-6.0, false), "10⁻⁶");
    assert_eq!(log_label(12.0, false), "10¹²");
    assert_eq!(log_label(5f64.log10() - 3.0, false), "5×10⁻³");
    assert_eq!(log_label(-2.0, true), "0.01");
    assert_eq!(log_label(2f64.log10() + 3.0, true), "2000");
    assert_eq!(chart::linear_label(0.30000000000000004, 0.1), "0.3");
    assert_eq!(chart::linear_label(2.5e7, 5e6), "2.5e7");
}

/// The contents of the SVG's `<text>` elements, trimmed.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..t.find("</text>")?];
            Some(body.trim().to_string())
        })
        .collect()
}

#[test]
fn svg_has_text_elements_series_and_legend_and_skips_undrawable_points() {
    let svg = Chart::new("Error & tolerance")
        .x_axis(Axis::log("rtol"))
        .y_axis(Axis::log("relative error"))
        .series("backsolve", vec![(1e-3, 2e-2), (1e-6, 3e-5), (1e-9, 0.0)])
        .add(
            Series::scatter("taped", vec![(1e-3, 1e-4), (1e-9, 1e-10)])
                .marker(Marker::Diamond)
                .color(0xd62728)
                .labels(vec!["first".into(), String::new()]),
        )
        .to_svg()
        .unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
    let text = texts(&svg);
    for want in [
        "Error &amp; tolerance",
        "backsolve",
        "taped",
        "first",
        "rtol",
        "relative error",
        "10⁻⁶",
        "10⁻¹⁰",
    ] {
        assert!(
            text.iter().any(|t| t == want),
            "no text {want:?} in {text:?}"
        );
    }
    // No raster text: plotters' SVG backend writes glyphs only as <text>.
    assert!(!svg.contains("<image"));
    // The backsolve line has its two drawable points (0 cannot sit on a log axis).
    let polyline = svg
        .lines()
        .find(|l| l.contains("<polyline") && l.contains(r##"stroke="#1F77B4" stroke-width="2""##))
        .unwrap();
    let points = polyline.split('"').nth(9).unwrap();
    assert_eq!(points.split_whitespace().count(), 2, "{polyline}");
    // Backsolve's two markers and its legend's; taped's two diamonds, its legend's and the
    // label "first", all in its own colour.
    assert_eq!(svg.matches("<circle").count(), 3);
    assert_eq!(svg.matches(r##"fill="#D62728""##).count(), 4);
}

#[test]
fn an_empty_chart_still_draws() {
    let svg = Chart::new("nothing").to_svg().unwrap();
    assert!(texts(&svg).iter().any(|t| t == "nothing"));
    let t = Ticks::new(Scale::Log, &[]);
    assert!(t.hi > t.lo);
}

#[test]
fn equal_aspect_widens_the_short_axis_about_its_middle() {
    // 4 units on 800 px across, 4 on 400 px up: x is widened to 8 units about 0.
    let (x, y) = equalize(linear_ticks(-2.0, 2.0), linear_ticks(-2.0, 2.0), 800, 400);
    assert_eq!((y.lo, y.hi), (-2.0, 2.0));
    assert!(
        (x.lo + 4.0).abs() < 1e-12 && (x.hi - 4.0).abs() < 1e-12,
        "{x:?}"
    );
    assert!(x.major.iter().all(|&v| v >= x.lo && v <= x.hi), "{x:?}");
    assert!(x.major.contains(&-4.0) && x.major.contains(&4.0), "{x:?}");
    // 2 units on 200 px across, 4 on 800 px up: y is widened to 8 units about 2.
    let (x, y) = equalize(linear_ticks(0.0, 2.0), linear_ticks(0.0, 4.0), 200, 800);
    assert_eq!((x.lo, x.hi), (0.0, 2.0));
    assert!(
        ((x.hi - x.lo) / 200.0 - (y.hi - y.lo) / 800.0).abs() < 1e-12,
        "{y:?}"
    );
    assert!((0.5 * (y.lo + y.hi) - 2.0).abs() < 1e-12, "{y:?}");
}

#[test]
fn facets_draw_every_panel_with_one_legend() {
    let panel = |title: &str, k: f64| {
        Chart::new(title)
            .x_axis(Axis::log("NFE"))
            .y_axis(Axis::log("MiB"))
            .add(Series::line_points("taped", vec![(10.0, k), (100.0, 10.0 * k)]).color(0xd62728))
            .add(Series::line_points("backsolve", vec![(20.0, 0.5), (200.0, 0.5)]).color(0x1f77b4))
    };
    let svg = Facets::new("Peak heap against NFE", 2)
        .panel(panel("batch 8", 1.0))
        .panel(panel("batch 32", 4.0))
        .panel(panel("batch 128", 16.0))
        .to_svg()
        .unwrap();
    for text in ["Peak heap against NFE", "batch 8", "batch 32", "batch 128"] {
        assert_eq!(svg.matches(&format!(">\n{text}\n<")).count(), 1, "{text}");
    }
    // One legend entry per series name, however many panels draw it.
    assert_eq!(svg.matches(">\ntaped\n<").count(), 1);
    assert_eq!(svg.matches(">\nbacksolve\n<").count(), 1);
    // Every panel has its axis titles.
    assert_eq!(svg.matches(">\nNFE\n<").count(), 3);
}
