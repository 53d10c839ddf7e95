//! The benchmark's figures as PNG files, drawn with `plotters`: memory per account and reply
//! latency (p50 and p99) against fleet size, one line per system, and memory over time in the
//! soak. Text is rendered with DejaVu Sans (Debian's `fonts-dejavu-core`), read at run time.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::{Row, soak::Soak, systems::Kind};

/// Where the font is looked for.
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
/// (x, y) points of one line.
type Points = Vec<(f64, f64)>;
/// The size of every figure, in pixels.
const SIZE: (u32, u32) = (900, 560);

/// Draws `fleet-memory.png` and `fleet-latency.png` into `dir`.
pub(crate) fn fleet(dir: &Path, rows: &[Row]) -> Result<()> {
    load_font()?;
    let systems = systems_in(rows);
    let max_n = rows.iter().map(|r| r.accounts).max().unwrap_or(1).max(2) as f64;

    let memory: Vec<(Kind, Points)> = systems
        .iter()
        .map(|&k| (k, points(rows, k, |r| r.rss_mib() / r.accounts as f64)))
        .collect();
    let top = max_of(memory.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)));
    draw(&dir.join("fleet-memory.png"), |area| {
        let mut chart = ChartBuilder::on(&area)
            .caption("RSS per account against fleet size", ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((1f64..max_n).log_scale(), (0.5f64..top * 1.2).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("accounts in one process")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("MiB per account (RSS / accounts)")
            .y_label_formatter(&|y| format!("{y:.1}"))
            .draw()?;
        for (kind, pts) in &memory {
            series(&mut chart, *kind, pts, false)?;
        }
        legend(&mut chart)
    })?;

    let latency: Vec<(Kind, Points, Points)> = systems
        .iter()
        .map(|&k| {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            (
                k,
                points(rows, k, |r| ms(r.p50)),
                points(rows, k, |r| ms(r.p99)),
            )
        })
        .collect();
    let top = max_of(latency.iter().flat_map(|(_, _, p)| p.iter().map(|x| x.1)));
    draw(&dir.join("fleet-latency.png"), |area| {
        let mut chart = ChartBuilder::on(&area)
            .caption(
                "Reply latency against fleet size (solid p50, dashed p99)",
                ("sans-serif", 24),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((1f64..max_n).log_scale(), 0f64..top * 1.15)?;
        chart
            .configure_mesh()
            .x_desc("accounts in one process")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("ms from send to reply seen")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (kind, p50, p99) in &latency {
            series(&mut chart, *kind, p50, false)?;
            series(&mut chart, *kind, p99, true)?;
        }
        legend(&mut chart)
    })
}

/// Draws `soak-memory.png` into `dir`.
pub(crate) fn soak(dir: &Path, soak: &Soak) -> Result<()> {
    load_font()?;
    let pts: Vec<(f64, f64)> = soak.samples.iter().map(|(s, m)| (s / 60.0, *m)).collect();
    let end = pts.last().map_or(1.0, |p| p.0).max(1.0);
    let top = max_of(pts.iter().map(|p| p.1));
    draw(&dir.join("soak-memory.png"), |area| {
        let caption = format!(
            "mxfleet RSS over a {}-minute soak ({} accounts, {} msgs/s; slope {:+.2} MiB/h)",
            soak.minutes, soak.accounts, soak.rate, soak.slope_mib_per_hour
        );
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..end, 0f64..top * 1.15)?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_desc("RSS (MiB)")
            .draw()?;
        chart.draw_series(LineSeries::new(
            pts.iter().copied(),
            color(Kind::Mxfleet).stroke_width(2),
        ))?;
        Ok(())
    })
}

/// A chart on a PNG.
type Chart<'a, X, Y> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>;

/// One system's line (dashed: a dotted line of points) with its label on the solid one.
fn series<X, Y>(
    chart: &mut Chart<'_, X, Y>,
    kind: Kind,
    pts: &[(f64, f64)],
    dashed: bool,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let style = color(kind).stroke_width(2);
    if dashed {
        chart.draw_series(DashedLineSeries::new(pts.iter().copied(), 8, 6, style))?;
    } else {
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))?
            .label(kind.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color(kind).filled())))?;
    Ok(())
}

/// The series' labels, upper right.
fn legend<X, Y>(chart: &mut Chart<'_, X, Y>) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    Ok(())
}

/// Draws into a new PNG at `path`.
fn draw(
    path: &Path,
    body: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    let area = BitMapBackend::new(path, SIZE).into_drawing_area();
    area.fill(&WHITE)?;
    body(area.clone())?;
    area.present()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Registers DejaVu Sans as `sans-serif`, once.
fn load_font() -> Result<()> {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let loaded = *LOADED.get_or_init(|| {
        let Some(bytes) = FONTS.iter().find_map(|p| std::fs::read(p).ok()) else {
            return false;
        };
        // plotters keeps the font for the process's life.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    match loaded {
        true => Ok(()),
        false => Err(anyhow!(
            "no usable font for the plots (install fonts-dejavu-core: {FONTS:?})"
        )),
    }
}

/// The systems of `rows`, in their first order.
fn systems_in(rows: &[Row]) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Vec::new();
    for r in rows {
        if !kinds.contains(&r.system) {
            kinds.push(r.system);
        }
    }
    kinds
}

/// The (accounts, `y`) points of `kind`'s rows.
fn points(rows: &[Row], kind: Kind, y: impl Fn(&Row) -> f64) -> Points {
    rows.iter()
        .filter(|r| r.system == kind)
        .map(|r| (r.accounts as f64, y(r)))
        .collect()
}

/// The largest of `values`, at least 1 (an axis needs a range).
fn max_of(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(1.0, f64::max)
}

/// One color per system, the same in every figure.
fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Mxfleet => RGBColor(0x1f, 0x77, 0xb4),
        Kind::SdkEcho => RGBColor(0xff, 0x7f, 0x0e),
        Kind::NioEcho => RGBColor(0x2c, 0xa0, 0x2c),
    }
}
