//! Latency against offered load for `ferry bench`: one chart per measured run, side by side in
//! one SVG file, with latency on a log scale (milliseconds) against offered transfers per second,
//! one line per percentile of each measure, and the run's saturation rate marked.
//!
//! SVG only: the viewer lays out the text, so plotters needs neither a font library (its `ttf`
//! feature pulls in fontconfig and freetype through font-kit) nor a font file; without a font
//! feature it estimates text sizes, which is all the legend and axis layout need.

use std::path::Path;

use anyhow::{Context, bail};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One line: a percentile of one measure, as (offered rate per second, latency ms) points in
/// rising offered rate.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: its lines, and the saturation rate measured in the same run (a vertical marker
/// labelled with its value), if known.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
    pub saturation_per_sec: Option<f64>,
}

const PANEL_WIDTH: u32 = 640;
const HEIGHT: u32 = 480;
const FONT: &str = "sans-serif";

/// Latencies are drawn at no less than this: a log axis cannot show zero, and the bench does not
/// resolve below a tenth of a millisecond anyway.
const MIN_LATENCY_MS: f64 = 0.1;

/// Room to the right of the furthest point or saturation marker, so neither sits on the frame.
const X_HEADROOM: f64 = 1.08;

/// Colour per percentile (matplotlib's first "tab10" colours: distinct, and readable on white).
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Writes `panels` side by side (one row) into an SVG file at `path`, under `title`.
pub fn write_svg(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    if panels.is_empty() {
        bail!("no panels to draw into {}", path.display());
    }
    let width = u32::try_from(panels.len())
        .ok()
        .and_then(|n| n.checked_mul(PANEL_WIDTH))
        .with_context(|| format!("{} panels are too many for one SVG", panels.len()))?;
    let styles = LineStyles::new(panels);

    let root = SVGBackend::new(path, (width, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = root.titled(title, (FONT, 26))?;
    for (panel, area) in panels.iter().zip(body.split_evenly((1, panels.len()))) {
        draw_panel(&area, panel, &styles)
            .with_context(|| format!("drawing the panel {:?}", panel.title))?;
    }
    // The backend writes the file only here; dropping it instead would swallow an I/O error.
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Panel,
    styles: &LineStyles,
) -> anyhow::Result<()> {
    let series: Vec<(&str, Vec<(f64, f64)>)> = panel
        .series
        .iter()
        .map(|s| (s.label.as_str(), drawable_points(&s.points)))
        .filter(|(_, points)| !points.is_empty())
        .collect();

    let saturation = panel
        .saturation_per_sec
        .filter(|rate| rate.is_finite() && *rate > 0.0);
    let x_max = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|&(x, _)| x))
        .chain(saturation)
        .fold(0.0_f64, f64::max);
    let x_max = if x_max > 0.0 { x_max * X_HEADROOM } else { 1.0 };

    let (lo_exp, hi_exp) = decades(series.iter().flat_map(|(_, points)| points.iter()));
    let y_lo = 10_f64.powi(lo_exp);
    let y_hi = 10_f64.powi(hi_exp);
    // Ticks given explicitly: plotters derives log ticks through ln() and ceil(), which can land
    // a hair off a power of ten and drop the bottom label (0.1 to 10 got ticks at 1 and 10 only).
    let y_bold: Vec<f64> = (lo_exp..=hi_exp).map(|e| 10_f64.powi(e)).collect();
    let y_light: Vec<f64> = (lo_exp..hi_exp)
        .flat_map(|e| (2..10).map(move |m| f64::from(m) * 10_f64.powi(e)))
        .collect();

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 21))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(
            0.0..x_max,
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(y_bold)
                .with_light_points(y_light),
        )?;

    chart
        .configure_mesh()
        .x_desc("offered transfers/s")
        .y_desc("latency ms (log)")
        .x_labels(7)
        // A minor line between labels is enough on a linear axis; the log axis has its own.
        .x_max_light_lines(2)
        .x_label_formatter(&|x| readable(*x))
        .y_label_formatter(&|y| readable(*y))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .light_line_style(BLACK.mix(0.06))
        .bold_line_style(BLACK.mix(0.18))
        .draw()?;

    if let Some(rate) = saturation {
        let marker = ShapeStyle::from(BLACK.mix(0.7)).stroke_width(1);
        chart.draw_series(DashedLineSeries::new(
            [(rate, y_lo), (rate, y_hi)],
            6,
            4,
            marker,
        ))?;
        // At the bottom, where latency is lowest, so the label hides no data; left of the line,
        // unless the line is too near the left edge for the text to fit there.
        let (h_pos, dx) = if rate < x_max * 0.4 {
            (HPos::Left, 5)
        } else {
            (HPos::Right, -5)
        };
        let grey = BLACK.mix(0.8);
        let text = TextStyle::from((FONT, 15).into_font())
            .color(&grey)
            .pos(Pos::new(h_pos, VPos::Bottom));
        chart.draw_series(std::iter::once(
            EmptyElement::at((rate, y_lo))
                + Text::new(format!("saturation {}/s", readable(rate)), (dx, -6), text),
        ))?;
    }

    for (label, points) in &series {
        let style = styles.of(label);
        let line = ShapeStyle::from(style.color).stroke_width(style.width);
        if style.dashed {
            chart
                .draw_series(DashedLineSeries::new(points.iter().copied(), 7, 4, line))?
                .label(*label)
                .legend(move |(x, y)| DashedPathElement::new([(x, y), (x + 22, y)], 7, 4, line));
        } else {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), line))?
                .label(*label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], line));
        }
        // Hollow markers on the dashed lines: a second cue beside the dashes where lines cross.
        let marker = ShapeStyle {
            color: style.color.to_rgba(),
            filled: !style.dashed,
            stroke_width: 1,
        };
        chart.draw_series(
            points
                .iter()
                .map(|&point| Circle::new(point, if style.dashed { 3 } else { 2 }, marker)),
        )?;
    }

    if !series.is_empty() {
        chart
            .configure_series_labels()
            // Latency rises with load, so the upper left is the emptiest corner.
            .position(SeriesLabelPosition::UpperLeft)
            .margin(8)
            .legend_area_size(28)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    Ok(())
}

/// The points the axes can show, in order: non-finite ones and negative rates (left of the
/// axis) dropped, latencies raised to [`MIN_LATENCY_MS`].
fn drawable_points(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|(x, y)| x.is_finite() && *x >= 0.0 && y.is_finite())
        .map(|&(x, y)| (x, y.max(MIN_LATENCY_MS)))
        .collect()
}

/// The powers of ten (as exponents) below the lowest and above the highest latency, at least one
/// decade apart; 1 to 1,000 ms when there is nothing to draw, so an empty panel still has axes.
fn decades<'a>(points: impl Iterator<Item = &'a (f64, f64)>) -> (i32, i32) {
    let (min, max) = points.fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), &(_, y)| {
        (min.min(y), max.max(y))
    });
    if min > max {
        return (0, 3);
    }
    // Latencies are clamped to 0.1..f64::MAX, so both logarithms are finite and fit an i32.
    let lo = min.log10().floor() as i32;
    let hi = max.log10().ceil() as i32;
    (lo, hi.max(lo + 1))
}

/// How one series is drawn. Colour tells the percentile and dashing the measure, so the same
/// percentile of two measures reads as a pair.
#[derive(Clone, Copy)]
struct LineStyle {
    color: RGBColor,
    dashed: bool,
    width: u32,
}

/// Line styles for every series label across all panels, so a label looks the same in each.
///
/// A label is "<measure> <percentile>" ("to posted p99"). The bench lists measures in pipeline
/// order, so the last one is end to end, the one to read first: it is drawn solid and thicker,
/// earlier ones (intake) dashed and thinner.
struct LineStyles {
    percentiles: Vec<String>,
    last_measure: Option<String>,
}

impl LineStyles {
    fn new(panels: &[Panel]) -> Self {
        let mut percentiles: Vec<String> = Vec::new();
        let mut last_measure = None;
        for series in panels.iter().flat_map(|p| &p.series) {
            let (measure, percentile) = split_label(&series.label);
            if !percentiles.iter().any(|p| p == percentile) {
                percentiles.push(percentile.to_owned());
            }
            last_measure = Some(measure.to_owned());
        }
        Self {
            percentiles,
            last_measure,
        }
    }

    fn of(&self, label: &str) -> LineStyle {
        let (measure, percentile) = split_label(label);
        let index = self
            .percentiles
            .iter()
            .position(|p| p == percentile)
            .unwrap_or(0);
        let dashed = self
            .last_measure
            .as_deref()
            .is_some_and(|last| last != measure);
        LineStyle {
            color: PALETTE[index % PALETTE.len()],
            dashed,
            width: if dashed { 1 } else { 2 },
        }
    }
}

/// ("to posted", "p99") from "to posted p99"; a label without a space is all percentile.
fn split_label(label: &str) -> (&str, &str) {
    label.rsplit_once(' ').unwrap_or(("", label))
}

/// A number as a reader wants it on a chart: whole numbers with thousands separated by commas
/// ("5,120", "10,000"), and one decimal below 10 where it matters ("0.1", "2.5", but "2").
fn readable(value: f64) -> String {
    let tenths = (value * 10.0).round();
    if value.abs() < 10.0 && tenths % 10.0 != 0.0 {
        return format!("{:.1}", tenths / 10.0);
    }
    let rounded = value.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if rounded < 0.0 {
        out.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's percentiles: flat until near `knee`, then climbing steeply.
    fn run(measure: &str, knee: f64, base_ms: f64) -> Vec<Series> {
        let rates: Vec<f64> = (1..=12).map(|i| f64::from(i) * 500.0).collect();
        [("p50", 1.0), ("p99", 6.0), ("p99.9", 15.0)]
            .into_iter()
            .map(|(percentile, spread)| Series {
                label: format!("{measure} {percentile}"),
                points: rates
                    .iter()
                    .map(|&rate| {
                        let load = rate / knee;
                        let queueing = if load < 0.8 {
                            1.0
                        } else {
                            (load / 0.8).powi(8)
                        };
                        (rate, (base_ms * spread * queueing).min(2_000.0))
                    })
                    .collect(),
            })
            .collect()
    }

    fn sample_panels() -> Vec<Panel> {
        let panel = |title: &str, knee: f64, saturation: f64| Panel {
            title: title.to_owned(),
            series: run("intake", knee, 2.0)
                .into_iter()
                .chain(run("to posted", knee, 4.0))
                .collect(),
            saturation_per_sec: Some(saturation),
        };
        vec![
            panel("baseline", 5_000.0, 5_120.0),
            panel("with webhooks", 4_000.0, 4_310.0),
        ]
    }

    #[test]
    fn writes_every_label_into_the_svg() -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!("ferry-plot-test-{}.svg", std::process::id()));
        let panels = sample_panels();
        write_svg(&path, "ferry bench: latency against offered load", &panels)?;
        let svg = std::fs::read_to_string(&path);
        std::fs::remove_file(&path)?;
        let svg = svg?;

        assert!(svg.contains("<svg"));
        for series in panels.iter().flat_map(|p| &p.series) {
            assert!(svg.contains(&series.label), "missing {:?}", series.label);
        }
        assert!(svg.contains("saturation 5,120/s"));
        assert!(svg.contains("saturation 4,310/s"));
        assert!(svg.contains("offered transfers/s"));
        assert!(svg.contains("latency ms (log)"));
        Ok(())
    }

    #[test]
    fn no_panels_is_an_error() {
        let path = std::env::temp_dir().join("ferry-plot-test-never-written.svg");
        assert!(write_svg(&path, "nothing", &[]).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn an_unwritable_path_is_an_error() {
        let path = std::env::temp_dir()
            .join(format!("ferry-plot-test-missing-{}", std::process::id()))
            .join("chart.svg");
        assert!(write_svg(&path, "nowhere", &sample_panels()).is_err());
    }

    #[test]
    fn empty_and_degenerate_series_still_draw() -> anyhow::Result<()> {
        let path = std::env::temp_dir().join(format!(
            "ferry-plot-test-degenerate-{}.svg",
            std::process::id()
        ));
        let panels = [
            Panel {
                title: "nothing measured".to_owned(),
                series: vec![Series {
                    label: "intake p50".to_owned(),
                    points: Vec::new(),
                }],
                saturation_per_sec: None,
            },
            Panel {
                title: "zero latency".to_owned(),
                series: vec![Series {
                    label: "p50".to_owned(),
                    points: vec![(0.0, 0.0), (100.0, -1.0), (200.0, f64::NAN)],
                }],
                saturation_per_sec: Some(0.0),
            },
        ];
        let written = write_svg(&path, "edge cases", &panels);
        let removed = std::fs::remove_file(&path);
        written?;
        removed?;
        Ok(())
    }

    #[test]
    fn decades_span_the_data() {
        let points = [(1.0, 2.0), (2.0, 40.0), (3.0, 2_000.0)];
        assert_eq!(decades(points.iter()), (0, 4));
        assert_eq!(decades([(1.0, 10.0)].iter()), (1, 2));
        assert_eq!(decades([(1.0, 0.1)].iter()), (-1, 0));
        assert_eq!(decades([].iter()), (0, 3));
    }

    #[test]
    fn numbers_read_as_on_a_chart() {
        assert_eq!(readable(5_120.4), "5,120");
        assert_eq!(readable(999.6), "1,000");
        assert_eq!(readable(1_234_567.0), "1,234,567");
        assert_eq!(readable(10_000.0), "10,000");
        assert_eq!(readable(0.0), "0");
        assert_eq!(readable(0.1), "0.1");
        assert_eq!(readable(0.30000000000000004), "0.3");
        assert_eq!(readable(2.5), "2.5");
        assert_eq!(readable(2.0), "2");
        assert_eq!(readable(9.96), "10");
    }
}
