//! `concord bench --plot FILE.svg`: throughput and p99 latency against
//! concurrency, as a self-contained SVG document.
//!
//! Written by hand rather than with a plotting crate: the chart is two line
//! series on two y axes, about a hundred lines of SVG text, while the
//! plotting crates (plotters and friends) pull in font discovery and
//! rasterisation dependencies (fontconfig, freetype) that a coordinator's
//! command line should not need to build. The SVG uses only elements every
//! browser renders and leaves font selection to the viewer.
//!
//! Layout: x = concurrency (log2 scale when the largest value is more than 8
//! times the smallest, else linear; one tick per measured concurrency), left
//! y = throughput in transactions/s, right y = p99 latency in ms, both from 0
//! with round ticks. Non-finite values are left out of their series instead
//! of producing `NaN` coordinates.

use std::fmt::{self, Write as _};

/// One measured run: its concurrency and what it achieved.
#[derive(Clone, Debug)]
pub struct PlotPoint {
    pub concurrency: usize,
    pub throughput: f64,
    pub p99_ms: f64,
}

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 450.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = WIDTH - 80.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = HEIGHT - 65.0;
/// Keeps the first and last points off the y axes.
const X_PAD: f64 = 24.0;
/// Closest two x tick labels may be, in pixels, before one is skipped.
const X_LABEL_GAP: f64 = 30.0;
const Y_TICKS_TARGET: f64 = 5.0;

const THROUGHPUT_COLOUR: &str = "#1f77b4";
const P99_COLOUR: &str = "#d62728";
const THROUGHPUT_LABEL: &str = "throughput (transactions/s)";
const P99_LABEL: &str = "p99 latency (ms)";

/// Render the chart. Never panics: 0 points give empty axes with a note, one
/// point is drawn in the middle of the x axis.
pub fn svg(title: &str, points: &[PlotPoint]) -> String {
    let mut points: Vec<&PlotPoint> = points.iter().collect();
    points.sort_by_key(|p| p.concurrency);

    let x = XScale::new(&points);
    let throughput_axis = YAxis::new(points.iter().map(|p| p.throughput));
    let p99_axis = YAxis::new(points.iter().map(|p| p.p99_ms));

    let mut out = String::with_capacity(8 * 1024);
    let title = escape(title);
    push(
        &mut out,
        format_args!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <title>{title}</title>\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{cx}\" y=\"28\" text-anchor=\"middle\" font-size=\"17\" \
             font-weight=\"bold\">{title}</text>\n",
            cx = WIDTH / 2.0,
        ),
    );

    // Horizontal grid lines and both y axes' tick labels. The right axis
    // gets its own tick positions; only the left one draws grid lines.
    for &v in &throughput_axis.ticks {
        let y = throughput_axis.pos(v);
        push(
            &mut out,
            format_args!(
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{RIGHT}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\n\
                 <text x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\" fill=\"{THROUGHPUT_COLOUR}\">{label}</text>\n",
                lx = LEFT - 8.0,
                ty = y + 4.0,
                label = format_number(v, throughput_axis.step),
            ),
        );
    }
    for &v in &p99_axis.ticks {
        let y = p99_axis.pos(v);
        push(
            &mut out,
            format_args!(
                "<line x1=\"{RIGHT}\" y1=\"{y:.1}\" x2=\"{tx}\" y2=\"{y:.1}\" stroke=\"{P99_COLOUR}\"/>\n\
                 <text x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"start\" fill=\"{P99_COLOUR}\">{label}</text>\n",
                tx = RIGHT + 5.0,
                lx = RIGHT + 8.0,
                ty = y + 4.0,
                label = format_number(v, p99_axis.step),
            ),
        );
    }

    // x ticks: one per distinct concurrency, skipping labels that would overlap.
    let mut last_label_x = f64::NEG_INFINITY;
    let mut previous = None;
    for p in &points {
        if previous == Some(p.concurrency) {
            continue;
        }
        previous = Some(p.concurrency);
        let px = x.pos(p.concurrency);
        push(
            &mut out,
            format_args!(
                "<line x1=\"{px:.1}\" y1=\"{BOTTOM}\" x2=\"{px:.1}\" y2=\"{ty}\" stroke=\"#333\"/>\n",
                ty = BOTTOM + 5.0,
            ),
        );
        if px - last_label_x >= X_LABEL_GAP {
            last_label_x = px;
            push(
                &mut out,
                format_args!(
                    "<text x=\"{px:.1}\" y=\"{ly}\" text-anchor=\"middle\">{c}</text>\n",
                    ly = BOTTOM + 19.0,
                    c = p.concurrency,
                ),
            );
        }
    }

    // Plot frame (x axis, both y axes) and axis titles.
    push(
        &mut out,
        format_args!(
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#333\"/>\n\
             <text x=\"{cx}\" y=\"{xt}\" text-anchor=\"middle\">concurrency (transactions in flight{scale})</text>\n\
             <text transform=\"translate(22 {cy}) rotate(-90)\" text-anchor=\"middle\" \
             fill=\"{THROUGHPUT_COLOUR}\">{THROUGHPUT_LABEL}</text>\n\
             <text transform=\"translate({ry} {cy}) rotate(90)\" text-anchor=\"middle\" \
             fill=\"{P99_COLOUR}\">{P99_LABEL}</text>\n",
            w = RIGHT - LEFT,
            h = BOTTOM - TOP,
            cx = (LEFT + RIGHT) / 2.0,
            cy = (TOP + BOTTOM) / 2.0,
            xt = BOTTOM + 45.0,
            ry = WIDTH - 22.0,
            scale = if x.log2 { ", log2 scale" } else { "" },
        ),
    );

    if points.is_empty() {
        push(
            &mut out,
            format_args!(
                "<text x=\"{cx}\" y=\"{cy}\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n",
                cx = (LEFT + RIGHT) / 2.0,
                cy = (TOP + BOTTOM) / 2.0,
            ),
        );
    }

    series(
        &mut out,
        "throughput",
        THROUGHPUT_COLOUR,
        "",
        &points,
        &x,
        &throughput_axis,
        |p| p.throughput,
        |p| format!("{} transactions/s", format_number(p.throughput, 0.01)),
    );
    series(
        &mut out,
        "p99",
        P99_COLOUR,
        " stroke-dasharray=\"6 4\"",
        &points,
        &x,
        &p99_axis,
        |p| p.p99_ms,
        |p| format!("p99 {} ms", format_number(p.p99_ms, 0.001)),
    );

    // Legend, between the title and the plot.
    let legend_y = 50.0;
    for (i, (colour, dash, label)) in [
        (THROUGHPUT_COLOUR, "", THROUGHPUT_LABEL),
        (P99_COLOUR, " stroke-dasharray=\"6 4\"", P99_LABEL),
    ]
    .into_iter()
    .enumerate()
    {
        let lx = WIDTH / 2.0 - 200.0 + 220.0 * i as f64;
        push(
            &mut out,
            format_args!(
                "<line x1=\"{lx}\" y1=\"{legend_y}\" x2=\"{x2}\" y2=\"{legend_y}\" stroke=\"{colour}\" \
                 stroke-width=\"2\"{dash}/>\n\
                 <circle cx=\"{mx}\" cy=\"{legend_y}\" r=\"4\" fill=\"{colour}\"/>\n\
                 <text x=\"{tx}\" y=\"{ty}\">{label}</text>\n",
                x2 = lx + 28.0,
                mx = lx + 14.0,
                tx = lx + 36.0,
                ty = legend_y + 4.0,
            ),
        );
    }

    out.push_str("</svg>\n");
    out
}

/// One series: a polyline through its finite values and a marker (with a
/// hover tooltip) per point.
#[allow(clippy::too_many_arguments)]
fn series(
    out: &mut String,
    class: &str,
    colour: &str,
    dash: &str,
    points: &[&PlotPoint],
    x: &XScale,
    axis: &YAxis,
    value: impl Fn(&PlotPoint) -> f64,
    describe: impl Fn(&PlotPoint) -> String,
) {
    let coords: Vec<(f64, f64, &PlotPoint)> = points
        .iter()
        .filter(|p| value(p).is_finite())
        .map(|p| (x.pos(p.concurrency), axis.pos(value(p)), *p))
        .collect();
    push(
        out,
        format_args!("<g class=\"{class}\">\n<polyline points=\""),
    );
    for (i, (px, py, _)) in coords.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        push(out, format_args!("{sep}{px:.1},{py:.1}"));
    }
    push(
        out,
        format_args!("\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\n"),
    );
    for (px, py, p) in &coords {
        push(
            out,
            format_args!(
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"4\" fill=\"{colour}\">\
                 <title>concurrency {c}: {d}</title></circle>\n",
                c = p.concurrency,
                d = describe(p),
            ),
        );
    }
    out.push_str("</g>\n");
}

/// Map concurrency to an x pixel.
struct XScale {
    log2: bool,
    /// Transformed (log2 or not) smallest and largest concurrency; equal when
    /// there are fewer than two distinct values (then points are centred).
    lo: f64,
    hi: f64,
}

impl XScale {
    fn new(sorted: &[&PlotPoint]) -> XScale {
        let (min, max) = match (sorted.first(), sorted.last()) {
            (Some(first), Some(last)) => (first.concurrency, last.concurrency),
            _ => (0, 0),
        };
        // A log scale needs positive values; 0 falls back to linear.
        let log2 = min > 0 && max as f64 / min as f64 > 8.0;
        let mut scale = XScale {
            log2,
            lo: 0.0,
            hi: 0.0,
        };
        scale.lo = scale.transform(min);
        scale.hi = scale.transform(max);
        scale
    }

    fn transform(&self, c: usize) -> f64 {
        if self.log2 {
            (c as f64).log2()
        } else {
            c as f64
        }
    }

    fn pos(&self, c: usize) -> f64 {
        let span = self.hi - self.lo;
        if span <= 0.0 {
            return (LEFT + RIGHT) / 2.0;
        }
        let t = (self.transform(c) - self.lo) / span;
        LEFT + X_PAD + t * (RIGHT - LEFT - 2.0 * X_PAD)
    }
}

/// A y axis from 0 to a round maximum above every finite value.
struct YAxis {
    step: f64,
    top: f64,
    ticks: Vec<f64>,
}

impl YAxis {
    fn new(values: impl Iterator<Item = f64>) -> YAxis {
        let max = values.filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
        let step = nice_step(max);
        // A little headroom so the highest marker does not sit on the
        // frame, and at least one step so the axis never has zero height.
        let steps = (max * 1.04 / step).ceil().max(1.0);
        let top = steps * step;
        let ticks = (0..=steps as usize).map(|i| i as f64 * step).collect();
        YAxis { step, top, ticks }
    }

    /// Pixel row of `v`; values below 0 are drawn at 0.
    fn pos(&self, v: f64) -> f64 {
        BOTTOM - v.max(0.0) / self.top * (BOTTOM - TOP)
    }
}

/// A 1, 2 or 5 times a power of ten step giving about `Y_TICKS_TARGET`
/// ticks up to `max`; 1 for an empty or all-zero axis.
fn nice_step(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / Y_TICKS_TARGET;
    let magnitude = 10f64.powf(raw.log10().floor());
    let normalized = raw / magnitude;
    let factor = if normalized <= 1.0 {
        1.0
    } else if normalized <= 2.0 {
        2.0
    } else if normalized <= 5.0 {
        5.0
    } else {
        10.0
    };
    let step = factor * magnitude;
    if step.is_finite() && step > 0.0 {
        step
    } else {
        1.0
    }
}

/// `v` with as many decimals as `step` needs, thousands grouped with commas.
fn format_number(v: f64, step: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let decimals = if step > 0.0 && step < 1.0 {
        ((-step.log10()).ceil() as usize).min(6)
    } else {
        0
    };
    let text = format!("{:.*}", decimals, v.abs());
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (text.as_str(), None),
    };
    let mut grouped = String::new();
    if v < 0.0 && text.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        grouped.push('-');
    }
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    if let Some(frac) = frac {
        grouped.push('.');
        grouped.push_str(frac);
    }
    grouped
}

/// Escape text for use in SVG element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if c.is_control() && c != '\t' && c != '\n' && c != '\r' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Append formatted text; writing to a `String` cannot fail.
fn push(out: &mut String, args: fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(concurrency: usize, throughput: f64, p99_ms: f64) -> PlotPoint {
        PlotPoint {
            concurrency,
            throughput,
            p99_ms,
        }
    }

    fn sample() -> Vec<PlotPoint> {
        vec![
            point(1, 1_800.0, 0.9),
            point(4, 6_500.0, 1.1),
            point(16, 15_200.0, 2.4),
            point(64, 21_300.0, 6.8),
        ]
    }

    fn assert_sane(svg: &str) {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
        assert!(!svg.contains("inf"), "{svg}");
    }

    #[test]
    fn draws_both_series_with_markers() {
        let svg = svg("concord bench", &sample());
        assert_sane(&svg);
        assert!(svg.contains("<g class=\"throughput\">"));
        assert!(svg.contains("<g class=\"p99\">"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        // 4 markers per series + 2 in the legend.
        assert_eq!(svg.matches("<circle").count(), 10);
        assert!(svg.contains(THROUGHPUT_LABEL) && svg.contains(P99_LABEL));
        assert!(svg.contains("log2 scale"), "64/1 > 8 should be log2");
        for c in ["1", "4", "16", "64"] {
            assert!(svg.contains(&format!(">{c}</text>")), "x tick {c}");
        }
    }

    #[test]
    fn linear_scale_for_a_narrow_range() {
        let svg = svg("t", &[point(2, 10.0, 1.0), point(8, 20.0, 2.0)]);
        assert_sane(&svg);
        assert!(!svg.contains("log2 scale"));
    }

    #[test]
    fn title_is_escaped() {
        let svg = svg("a <&> \"b\"", &sample());
        assert_sane(&svg);
        assert!(svg.contains("a &lt;&amp;&gt; &quot;b&quot;"));
        assert!(!svg.contains("<&>"));
    }

    #[test]
    fn zero_and_one_point_do_not_panic() {
        let empty = svg("empty", &[]);
        assert_sane(&empty);
        assert!(empty.contains("no data"));

        let one = svg("one", &[point(8, 12_345.0, 1.5)]);
        assert_sane(&one);
        let centre = format!("cx=\"{:.1}\"", (LEFT + RIGHT) / 2.0);
        assert!(one.contains(&centre), "{one}");

        // Same concurrency twice, zero values, concurrency 0.
        let degenerate = svg("d", &[point(0, 0.0, 0.0), point(0, 0.0, 0.0)]);
        assert_sane(&degenerate);
    }

    #[test]
    fn non_finite_values_never_reach_the_output() {
        let svg = svg(
            "nan",
            &[
                point(1, f64::NAN, f64::INFINITY),
                point(2, 100.0, -1.0),
                point(4, f64::NEG_INFINITY, 3.0),
            ],
        );
        assert_sane(&svg);
    }

    #[test]
    fn nice_ticks() {
        assert_eq!(nice_step(21_300.0), 5_000.0);
        assert_eq!(nice_step(6.8), 2.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(f64::NAN), 1.0);
        let axis = YAxis::new([21_300.0].into_iter());
        assert_eq!(axis.ticks.first(), Some(&0.0));
        assert_eq!(axis.top, 25_000.0);
        assert_eq!(format_number(25_000.0, 5_000.0), "25,000");
        assert_eq!(format_number(0.5, 0.5), "0.5");
        assert_eq!(format_number(1234.5678, 0.01), "1,234.57");
    }
}
