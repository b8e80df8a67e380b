//! A run's plot: deliveries per second over time above latency percentiles (p50, p99, max,
//! from when each message was due) over time, as PNG and SVG beside the `--out` JSON, for
//! `RESULTS.md` to embed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::timeline::{Point, Timeline};

/// Where the system's DejaVu Sans lives (Debian's `fonts-dejavu-core`): plotters draws text
/// with a font it is given, and the harness carries none.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers [`FONT`] as plotters' sans-serif, once.
fn font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT)
                .map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
            plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .map_err(|_| format!("{FONT} is not a usable font"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Writes `<out without extension>.png` and `.svg` for `timeline`, titled `title`; the
/// paths written.
pub fn write(out: &Path, title: &str, timeline: &Timeline) -> anyhow::Result<Vec<PathBuf>> {
    let points = timeline.points();
    anyhow::ensure!(!points.is_empty(), "nothing was delivered: no plot");
    font()?;
    let png = out.with_extension("png");
    let svg = out.with_extension("svg");
    let size = (1000, 640);
    draw(
        BitMapBackend::new(&png, size).into_drawing_area(),
        title,
        &points,
    )
    .with_context(|| format!("drawing {}", png.display()))?;
    draw(
        SVGBackend::new(&svg, size).into_drawing_area(),
        title,
        &points,
    )
    .with_context(|| format!("drawing {}", svg.display()))?;
    Ok(vec![png, svg])
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    points: &[Point],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let (top, bottom) = root.split_vertically(290);
    let seconds = points.len() as u64;
    let peak = points
        .iter()
        .map(|p| p.deliveries)
        .max()
        .unwrap_or(1)
        .max(1);

    let mut rate = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0u64..seconds, 0u64..peak + peak / 10)
        .map_err(err)?;
    rate.configure_mesh()
        .x_desc("seconds")
        .y_desc("deliveries/s")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    rate.draw_series(LineSeries::new(
        points.iter().map(|p| (p.second, p.deliveries)),
        BLUE.stroke_width(2),
    ))
    .map_err(err)?
    .label("deliveries/s")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    rate.configure_series_labels()
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;

    let lat = points.iter().filter_map(|p| p.latency_ms);
    let worst = lat.clone().map(|l| l[2]).fold(1.0, f64::max);
    let least = lat.map(|l| l[0]).fold(worst, f64::min).max(0.01);
    let mut latency = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0u64..seconds, (least * 0.8..worst * 1.25).log_scale())
        .map_err(err)?;
    latency
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency (ms)")
        .y_labels(10)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, (name, color)) in [("p50", GREEN), ("p99", RED), ("max", BLACK)]
        .into_iter()
        .enumerate()
    {
        latency
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .filter_map(|p| p.latency_ms.map(|l| (p.second, l[i]))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    latency
        .configure_series_labels()
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_plots_as_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Timeline::default();
        let s = 1_000_000_000u64;
        for sec in 0..5u64 {
            for i in 0..(100 * (sec + 1)) {
                t.record(1_700_000_000 * s + sec * s + i, 1000 + 10 * i);
            }
        }
        let paths = write(&dir.path().join("run.json"), "broadcast: test", &t).unwrap();
        let png = std::fs::read(&paths[0]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("deliveries/s"),
            "{svg:.200}"
        );
        assert!(write(&dir.path().join("none.json"), "x", &Timeline::default()).is_err());
    }
}
