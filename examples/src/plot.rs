//! Line charts of the comparison, written as PNG and SVG with `plotters`.
//! PNG text is rendered with the DejaVu Sans font shipped in `assets/`, so
//! no system font library is needed.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

/// A named line: (x, y) points in x order.
pub type Series = (String, Vec<(f64, f64)>);

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; registering it can only fail if it is not a font.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Writes `<stem>.png` and `<stem>.svg`: one line per series on shared axes.
pub fn line_chart(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), String> {
    register_font();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw(BitMapBackend::new(&png, (960, 600)).into_drawing_area(), title, x_label, y_label, series)
        .map_err(|e| format!("{}: {e}", png.display()))?;
    draw(SVGBackend::new(&svg, (960, 600)).into_drawing_area(), title, x_label, y_label, series)
        .map_err(|e| format!("{}: {e}", svg.display()))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (0f64, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x_max = x_max.max(*x);
        y_min = y_min.min(*y);
        y_max = y_max.max(*y);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max.max(1e-9), (y_min - pad)..(y_max + pad))?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).label_style(("sans-serif", 14)).draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = if name == "baseline" { BLACK.stroke_width(2) } else { color.stroke_width(2) };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()
}

/// The moving average of `points` over `window` neighbours (by index).
pub fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, (x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= w {
            sum -= points[i - w].1;
        }
        if i + 1 >= w.min(points.len()) {
            out.push((*x, sum / (i + 1).min(w) as f64));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_averages_a_window() {
        let p: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(smooth(&p, 2), vec![(1.0, 0.5), (2.0, 1.5), (3.0, 2.5), (4.0, 3.5)]);
        assert_eq!(smooth(&p, 10), vec![(4.0, 2.0)]);
    }

    #[test]
    fn writes_png_and_svg() {
        let dir = std::env::temp_dir().join(format!("plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let series = vec![
            ("sync".to_string(), vec![(0.0, 0.1), (1.0, 0.8)]),
            ("baseline".to_string(), vec![(0.0, 0.2)]),
        ];
        line_chart(&dir.join("acc"), "accuracy", "s", "acc", &series).unwrap();
        let png = std::fs::read(dir.join("acc.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(dir.join("acc.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("sync"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
