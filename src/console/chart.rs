//! Line charts as inline SVG, drawn on the server: no script, no third-party library, and
//! nothing the Content-Security-Policy has to allow. Colours come from the stylesheet
//! (`series-N` classes).

use std::fmt::Write;

/// One line: its label and its points (x in seconds before now, y in its unit; NaN where
/// there was nothing to measure).
pub struct Series<'a> {
    pub label: &'a str,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// A chart of `series` over the last `span_secs` (x runs from `-span_secs` to now), y from 0
/// to the largest value (at least `y_floor`), labelled in `unit`.
pub fn line_chart(
    title: &str,
    unit: &str,
    span_secs: f64,
    y_floor: f64,
    series: &[Series],
) -> String {
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .fold(y_floor, f64::max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |secs_ago: f64| LEFT + plot_w * (1.0 - (secs_ago / span_secs).clamp(0.0, 1.0));
    let y_of = |y: f64| TOP + plot_h * (1.0 - (y / y_max).clamp(0.0, 1.0));
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}">"#,
        escape(title)
    );
    // Grid: 0, half and full scale.
    for fraction in [0.0, 0.5, 1.0] {
        let y = TOP + plot_h * (1.0 - fraction);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            format_value(y_max * fraction)
        );
    }
    let minutes = (span_secs / 60.0).round();
    let _ = write!(
        svg,
        r#"<text class="axis" x="{LEFT}" y="{:.1}">−{minutes} min</text><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">now</text><text class="axis unit" x="{LEFT}" y="{:.1}" dx="4">{}</text>"#,
        HEIGHT - 6.0,
        WIDTH - RIGHT,
        HEIGHT - 6.0,
        TOP + 10.0,
        escape(unit)
    );
    for (index, line) in series.iter().enumerate() {
        // A point without a value (NaN: nothing to measure then) breaks the line rather than
        // bridging the gap with a straight segment.
        let mut path = String::new();
        let mut pen_down = false;
        for (secs_ago, y) in &line.points {
            if !y.is_finite() {
                pen_down = false;
                continue;
            }
            let command = if pen_down { 'L' } else { 'M' };
            pen_down = true;
            let _ = write!(path, "{command}{:.1},{:.1} ", x_of(*secs_ago), y_of(*y));
        }
        let _ = write!(
            svg,
            r#"<path class="line series-{index}" d="{}"><title>{}</title></path>"#,
            path.trim_end(),
            escape(line.label)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn format_value(value: f64) -> String {
    if value >= 100.0 || value == 0.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_land_inside_the_plot_and_labels_are_escaped() {
        let svg = line_chart(
            "a <b>",
            "per s",
            3_600.0,
            1.0,
            &[Series {
                label: "posted\"",
                points: vec![(3_600.0, 0.0), (0.0, 10.0), (1_800.0, f64::NAN)],
            }],
        );
        assert!(svg.contains(r#"aria-label="a &lt;b&gt;""#), "{svg}");
        assert!(svg.contains("<title>posted&quot;</title>"), "{svg}");
        // Oldest point at the left edge, bottom; newest at the right edge, top; NaN dropped.
        assert!(svg.contains(r#"d="M56.0,148.0 L632.0,10.0""#), "{svg}");
    }

    #[test]
    fn a_point_without_a_value_breaks_the_line() {
        let svg = line_chart(
            "t",
            "ms",
            3_600.0,
            1.0,
            &[Series {
                label: "p99",
                points: vec![(3_600.0, 0.0), (1_800.0, f64::NAN), (0.0, 10.0)],
            }],
        );
        assert!(svg.contains(r#"d="M56.0,148.0 M632.0,10.0""#), "{svg}");
    }
}
