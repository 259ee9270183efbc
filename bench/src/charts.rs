//! The bench's pictures, written as SVG next to its JSON report (the README
//! shows them): latency distributions as cumulative curves on a log axis,
//! where a 2 ms median and a 1 s tail fit one picture, and the at-scale cost
//! as one bar per figure.
use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// Raw samples the phases keep for the pictures; empty when a phase did not
/// run.
#[derive(Default)]
pub(crate) struct Charts {
    /// Propagation at 500/s per relay design: (label, samples in ms).
    pub(crate) propagation: Vec<(String, Vec<f64>)>,
    /// not_ready time to success with and without the read-your-writes wait.
    pub(crate) not_ready: Vec<(String, Vec<f64>)>,
    /// At-scale cost per figure: (name, at scale ÷ empty, as a cost).
    pub(crate) at_scale: Vec<(String, f64)>,
}

const COLOURS: [RGBColor; 3] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
];

impl Charts {
    /// Writes each chart that has data beside `json` (`x.json` →
    /// `x-propagation.svg`, …); returns the files written.
    pub(crate) fn write(&self, json: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let stem = json.with_extension("");
        let path = |name: &str| PathBuf::from(format!("{}-{name}.svg", stem.display()));
        let mut written = Vec::new();
        let curves = [
            (
                "propagation",
                "Propagation signup → replica at 500 signups/s",
                "commit → applied in task's replica (ms, log scale)",
                &self.propagation,
            ),
            (
                "not-ready",
                "not_ready: CreateTask right after SignUp, time to success",
                "time to a created task (ms, log scale)",
                &self.not_ready,
            ),
        ];
        for (name, title, x_desc, series) in curves {
            if !series.is_empty() {
                let file = path(name);
                cumulative(&file, title, x_desc, series)?;
                written.push(file);
            }
        }
        if !self.at_scale.is_empty() {
            let file = path("at-scale");
            bars(&file, &self.at_scale)?;
            written.push(file);
        }
        Ok(written)
    }
}

/// The fraction of samples at or below each latency, one curve per series.
fn cumulative(
    file: &Path,
    title: &str,
    x_desc: &str,
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let positive = || {
        series
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .filter(|v| *v > 0.0)
    };
    let low = positive().fold(f64::INFINITY, f64::min).max(0.01);
    let high = positive().fold(0.0, f64::max).max(low * 10.0);
    let root = SVGBackend::new(file, (800, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((low * 0.8..high * 1.25).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("fraction of calls at or below")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()?;
    for (i, (label, samples)) in series.iter().enumerate() {
        let mut sorted: Vec<f64> = samples.iter().map(|v| v.max(low)).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                sorted
                    .iter()
                    .enumerate()
                    .map(|(k, v)| (*v, (k + 1) as f64 / n)),
                colour.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}

/// One horizontal bar per figure: its cost at scale relative to empty
/// tables, with the 1.25× target marked.
fn bars(file: &Path, ratios: &[(String, f64)]) -> anyhow::Result<()> {
    let n = ratios.len();
    let high = ratios.iter().map(|(_, r)| *r).fold(1.5, f64::max) * 1.1;
    let root = SVGBackend::new(file, (800, 60 + 45 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cost at scale ÷ cost on empty tables (lower is better; 1.25× is the target)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(230)
        .build_cartesian_2d(0.0..high, 0.0..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            let slot = y - y.floor();
            let i = y.floor() as usize;
            if (slot - 0.5).abs() < 0.01 && i < n {
                ratios[n - 1 - i].0.clone()
            } else {
                String::new()
            }
        })
        .x_label_formatter(&|x| format!("{x:.2}×"))
        .draw()?;
    chart.draw_series(ratios.iter().enumerate().map(|(i, (_, r))| {
        let y = (n - 1 - i) as f64;
        let colour = if *r <= 1.25 { COLOURS[2] } else { COLOURS[1] };
        Rectangle::new([(0.0, y + 0.2), (*r, y + 0.8)], colour.filled())
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        [(1.25, 0.0), (1.25, n as f64)],
        BLACK.stroke_width(1),
    )))?;
    chart.draw_series(std::iter::once(PathElement::new(
        [(1.0, 0.0), (1.0, n as f64)],
        BLACK.mix(0.4).stroke_width(1),
    )))?;
    root.present()?;
    Ok(())
}
