//! The report's charts, drawn in Rust as SVG (plotters' SVG backend: text stays SVG `<text>`,
//! no font file, no script).

use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use serde_json::Value;

use super::extract::{Matrix, Measured, Unit};
use crate::{
    error::{Error, Result},
    results::compare::{Comparison, Verdict},
    run::report::{bits, nanos},
};

/// Width of every chart, px.
const WIDTH: u32 = 860;
/// The colours series take in turn (colour-blind safe: Okabe-Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];
const FONT: &str = "sans-serif";

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn failed(err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::other("drawing a chart", err)
}

/// The series' legend, at `at`, in the report's look.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    at: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 11))
        .draw()
        .map_err(failed)
}

/// Draws into an SVG of `height` px and returns it.
fn svg(
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        draw(&root)?;
        root.present().map_err(failed)?;
    }
    Ok(out)
}

/// The quantiles a spectrum is drawn at: p0 to p99.999 in steps of a tenth of a decade of
/// 1 / (1 - q).
fn spectrum_points(histogram: &hdrhistogram::Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=50)
        .map(|step| {
            let inverse = 10_f64.powf(f64::from(step) / 10.0);
            let quantile = 1.0 - 1.0 / inverse;
            (
                inverse,
                histogram.value_at_quantile(quantile).max(1) as f64 / 1e3,
            )
        })
        .collect()
}

/// Latency against percentile, both log scales: the shape of a tail at a glance.
pub fn spectrum(title: &str, series: &[(String, hdrhistogram::Histogram<u64>)]) -> Result<String> {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(label, histogram)| (label.as_str(), spectrum_points(histogram)))
        .collect();
    let (low, high) = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold((f64::MAX, 0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    svg(360, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (1_f64..1e5).log_scale(),
                (low * 0.8..high * 1.25).log_scale(),
            )
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency, µs")
            .x_label_formatter(&|inverse| percentile_label(*inverse))
            .draw()
            .map_err(failed)?;
        for (i, (label, points)) in curves.iter().enumerate() {
            let style = colour(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(failed)?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

fn percentile_label(inverse: f64) -> String {
    let percent = 100.0 * (1.0 - 1.0 / inverse);
    match percent {
        p if p < 1.0 => "p0".to_owned(),
        p if (p - p.round()).abs() < 1e-6 => format!("p{p:.0}"),
        p => format!("p{}", format!("{p:.4}").trim_end_matches('0')),
    }
}

/// A figure against message size (log 2), one line per series (a path, a kind).
pub fn against_size(
    title: &str,
    unit: Unit,
    series: &[(String, Vec<(u64, f64)>)],
) -> Result<String> {
    let sizes = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0));
    let (min_size, max_size) = sizes.fold((u64::MAX, 1), |(lo, hi), s| (lo.min(s), hi.max(s)));
    let values = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1));
    let (low, high) = values.fold((f64::MAX, 0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let scaled = |v: f64| match unit {
        Unit::LatencyNs => v / 1e3,
        Unit::BitsPerSecond => v / 1e6,
    };
    svg(360, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (min_size.max(1) as f64..max_size.max(2) as f64).log_scale(),
                (scaled(low).max(1e-3) * 0.8..scaled(high).max(1e-3) * 1.25).log_scale(),
            )
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("message size")
            .y_desc(match unit {
                Unit::LatencyNs => "latency p50, µs",
                Unit::BitsPerSecond => "throughput, Mbit/s",
            })
            .x_label_formatter(&|size| crate::run::sizes::human(size.round() as u64))
            .draw()
            .map_err(failed)?;
        for (i, (label, points)) in series.iter().enumerate() {
            let style = colour(i).stroke_width(2);
            let points: Vec<(f64, f64)> = points
                .iter()
                .map(|&(size, value)| (size as f64, scaled(value).max(1e-3)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(failed)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&p| Circle::new(p, 3, colour(i).filled())),
                )
                .map_err(failed)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// The kernel stages of one measurement: a bar per direction, its stages' mean times stacked
/// in path order.
pub fn stages(title: &str, kernel: &Value) -> Result<Option<String>> {
    let directions: Vec<(String, Vec<(String, f64)>)> = kernel
        .get("directions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|direction| {
            let name = direction["direction"].as_str().unwrap_or("").to_owned();
            let stages = direction["stages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|stage| {
                    (
                        stage["name"].as_str().unwrap_or("").to_owned(),
                        stage
                            .pointer("/latency/mean_ns")
                            .and_then(Value::as_f64)
                            .unwrap_or(0.0)
                            .max(0.0)
                            / 1e3,
                    )
                })
                .collect::<Vec<_>>();
            (name, stages)
        })
        .filter(|(_, stages)| !stages.is_empty())
        .collect();
    if directions.is_empty() {
        return Ok(None);
    }
    let total = directions
        .iter()
        .map(|(_, stages)| stages.iter().map(|s| s.1).sum::<f64>())
        .fold(0_f64, f64::max)
        .max(1e-3);
    let mut names: Vec<&str> = Vec::new();
    for (_, stages) in &directions {
        for (name, _) in stages {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    let height = 120 + 60 * directions.len() as u32;
    svg(height, |root| {
        let rows = directions.len();
        // Room on the right for the legend, clear of the bars.
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 15))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(16)
            .build_cartesian_2d(0_f64..total * 1.4, 0_f64..rows as f64)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("mean time in each stage, µs")
            .draw()
            .map_err(failed)?;
        for (row, (name, stages)) in directions.iter().enumerate() {
            let sum: f64 = stages.iter().map(|s| s.1).sum();
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{name}: {sum:.1} µs"),
                    (0.0, row as f64 + 0.97),
                    (FONT, 11).into_font(),
                )))
                .map_err(failed)?;
        }
        for (i, name) in names.iter().enumerate() {
            let fill = colour(i).filled();
            let bars: Vec<Rectangle<(f64, f64)>> = directions
                .iter()
                .enumerate()
                .filter_map(|(row, (_, stages))| {
                    let at = stages.iter().position(|(n, _)| n == name)?;
                    let start: f64 = stages[..at].iter().map(|s| s.1).sum();
                    let y = row as f64;
                    Some(Rectangle::new(
                        [(start, y + 0.1), (start + stages[at].1, y + 0.7)],
                        fill,
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(failed)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], fill));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
    .map(Some)
}

/// A measurement's timeline: the rate per interval, p99 latency when there is one, errors as
/// red marks and events as labelled vertical lines.
pub fn timeline(title: &str, measured: &Measured<'_>) -> Result<Option<String>> {
    let Some(timeline) = measured.timeline() else {
        return Ok(None);
    };
    let intervals: Vec<&Value> = timeline["intervals"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if intervals.is_empty() {
        return Ok(None);
    }
    let number = |value: &Value, name: &str| value.get(name).and_then(Value::as_f64).unwrap_or(0.0);
    let rr = measured.p50().is_some();
    let points: Vec<(f64, f64)> = intervals
        .iter()
        .map(|i| {
            let rate = if rr {
                number(i, "messages_per_second")
            } else {
                number(i, "bits_per_second") / 1e6
            };
            (
                number(i, "start_seconds") + number(i, "length_seconds") / 2.0,
                rate,
            )
        })
        .collect();
    let p99: Vec<(f64, f64)> = intervals
        .iter()
        .filter_map(|i| {
            Some((
                number(i, "start_seconds") + number(i, "length_seconds") / 2.0,
                i.get("latency_p99_ns")?.as_f64()? / 1e3,
            ))
        })
        .collect();
    let failures: Vec<(f64, u64)> = intervals
        .iter()
        .filter_map(|i| {
            let count =
                i["errors"].as_u64().unwrap_or(0) + i["failed_connects"].as_u64().unwrap_or(0);
            (count > 0).then(|| {
                (
                    number(i, "start_seconds") + number(i, "length_seconds") / 2.0,
                    count,
                )
            })
        })
        .collect();
    let events: Vec<(f64, String)> = timeline["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                number(e, "at_seconds"),
                e["what"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let end = intervals
        .last()
        .map_or(1.0, |i| {
            number(i, "start_seconds") + number(i, "length_seconds")
        })
        .max(1e-3);
    let top = points.iter().map(|p| p.1).fold(0_f64, f64::max).max(1e-3) * 1.15;
    let p99_top = p99.iter().map(|p| p.1).fold(0_f64, f64::max).max(1e-3) * 1.15;
    let height = 300
        + if events.is_empty() {
            0
        } else {
            14 * events.len() as u32
        };
    svg(height, |root| {
        let (plot, notes) = root.split_vertically(300);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, (FONT, 15))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(70)
            .right_y_label_area_size(if p99.is_empty() { 0 } else { 70 })
            .build_cartesian_2d(0_f64..end, 0_f64..top)
            .map_err(failed)?
            .set_secondary_coord(0_f64..end, 0_f64..p99_top);
        chart
            .configure_mesh()
            .x_desc("seconds into the measured part")
            .y_desc(if rr {
                "transactions/s"
            } else {
                "throughput, Mbit/s"
            })
            .draw()
            .map_err(failed)?;
        let rate_style = colour(0).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), rate_style))
            .map_err(failed)?
            .label(if rr { "transactions/s" } else { "Mbit/s" })
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], rate_style));
        if !p99.is_empty() {
            chart
                .configure_secondary_axes()
                .y_desc("latency p99, µs")
                .draw()
                .map_err(failed)?;
            let p99_style = colour(1).stroke_width(2);
            chart
                .draw_secondary_series(LineSeries::new(p99.iter().copied(), p99_style))
                .map_err(failed)?
                .label("p99 latency")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], p99_style));
        }
        if !failures.is_empty() {
            let red = RGBColor(200, 0, 0);
            chart
                .draw_series(
                    failures
                        .iter()
                        .map(|&(x, _)| TriangleMarker::new((x, top * 0.04), 6, red.filled())),
                )
                .map_err(failed)?
                .label("failures")
                .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 5, red.filled()));
        }
        let grey = RGBColor(90, 90, 90);
        for (i, (at, _)) in events.iter().enumerate() {
            let at = at.clamp(0.0, end);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(at, 0.0), (at, top)],
                    grey.stroke_width(1),
                )))
                .map_err(failed)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{}", i + 1),
                    (at, top * 0.97),
                    (FONT, 11).into_font().color(&grey),
                )))
                .map_err(failed)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        for (i, (at, what)) in events.iter().enumerate() {
            notes
                .draw_text(
                    &format!("{}: {at:.1} s  {what}", i + 1),
                    &(FONT, 12).into_font().color(&grey).into_text_style(&notes),
                    (84, 4 + 14 * i as i32),
                )
                .map_err(failed)?;
        }
        Ok(())
    })
    .map(Some)
}

/// A node x node heatmap: each cell coloured from best (green) to worst (red) of the matrix,
/// with its figure written in it.
pub fn heatmap(matrix: &Matrix) -> Result<String> {
    let n = matrix.nodes.len().max(1);
    let cell = (600 / n as u32).clamp(14, 64);
    let height = 120 + cell * n as u32;
    let values = matrix.cells.iter().map(|c| c.2);
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let shade = |value: f64| {
        let spread = (high - low).max(f64::EPSILON);
        let mut badness = (value - low) / spread;
        if matrix.unit == Unit::BitsPerSecond {
            badness = 1.0 - badness;
        }
        let g = (190.0 * (1.0 - badness) + 40.0) as u8;
        let r = (200.0 * badness + 40.0) as u8;
        RGBColor(r, g, 70)
    };
    let label = |value: f64| match matrix.unit {
        Unit::LatencyNs => nanos(value as u64),
        Unit::BitsPerSecond => bits(value),
    };
    svg(height, |root| {
        root.draw_text(
            &format!(
                "{}: {}, client (row) to server (column)",
                matrix.title,
                match matrix.unit {
                    Unit::LatencyNs => "latency p50",
                    Unit::BitsPerSecond => "throughput",
                }
            ),
            &(FONT, 15).into_font().into_text_style(root),
            (12, 10),
        )
        .map_err(failed)?;
        let (left, top) = (110_i32, 70_i32);
        let side = cell as i32;
        let small = (FONT, 10).into_font();
        let centred = Pos::new(HPos::Center, VPos::Center);
        for (i, node) in matrix.nodes.iter().enumerate() {
            let i = i as i32;
            root.draw_text(
                node,
                &small
                    .clone()
                    .into_text_style(root)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
                (left - 6, top + i * side + side / 2),
            )
            .map_err(failed)?;
            root.draw_text(
                node,
                &small.clone().into_text_style(root).pos(centred),
                (left + i * side + side / 2, top - 10),
            )
            .map_err(failed)?;
        }
        for &(row, column, value) in &matrix.cells {
            let (x, y) = (left + column as i32 * side, top + row as i32 * side);
            root.draw(&Rectangle::new(
                [(x, y), (x + side - 1, y + side - 1)],
                shade(value).filled(),
            ))
            .map_err(failed)?;
            if side >= 40 {
                root.draw_text(
                    &label(value),
                    &small
                        .clone()
                        .color(&WHITE)
                        .into_text_style(root)
                        .pos(centred),
                    (x + side / 2, y + side / 2),
                )
                .map_err(failed)?;
            }
        }
        Ok(())
    })
}

/// A comparison's changes: each metric's median change with its interval, coloured by
/// verdict, against the threshold's band.
pub fn changes(comparison: &Comparison) -> Result<Option<String>> {
    let rows = &comparison.rows;
    if rows.is_empty() {
        return Ok(None);
    }
    let threshold = comparison.settings.threshold * 100.0;
    let extent = rows
        .iter()
        .flat_map(|r| [r.change_interval[0], r.change_interval[1], r.change])
        .filter(|v| v.is_finite())
        .fold(threshold / 100.0, |m, v| m.max(v.abs()))
        * 100.0
        * 1.15;
    let height = 80 + 22 * rows.len() as u32;
    svg(height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("change of the median, with its 95% interval", (FONT, 15))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(8)
            .build_cartesian_2d(-extent..extent, 0_f64..rows.len() as f64)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("change, %")
            .draw()
            .map_err(failed)?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(-threshold, 0.0), (threshold, rows.len() as f64)],
                RGBColor(220, 220, 220).filled(),
            )))
            .map_err(failed)?;
        for (i, row) in rows.iter().enumerate() {
            let y = rows.len() as f64 - i as f64 - 0.5;
            let colour = match row.verdict {
                Verdict::Regressed => RGBColor(200, 0, 0),
                Verdict::Improved => RGBColor(0, 140, 60),
                Verdict::Same => RGBColor(90, 90, 90),
                Verdict::Unknown => RGBColor(230, 159, 0),
            };
            let [low, high] = row
                .change_interval
                .map(|v| if v.is_finite() { v * 100.0 } else { 0.0 });
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(low, y), (high, y)],
                    colour.stroke_width(2),
                )))
                .map_err(failed)?;
            chart
                .draw_series(std::iter::once(Circle::new(
                    (row.change * 100.0, y),
                    4,
                    colour.filled(),
                )))
                .map_err(failed)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{}: {}", row.measurement, row.metric),
                    (-extent * 0.98, y + 0.3),
                    (FONT, 10).into_font(),
                )))
                .map_err(failed)?;
        }
        Ok(())
    })
    .map(Some)
}
