//! One PNG per case: the share of the device each container got over time (100 ms bins, thin, and a
//! 1-second moving average, thick) against its limit (dashed) and the ±3-point band (dotted).
//!
//! plotters is built without a font backend (no system fonts needed), so the few labels are drawn
//! with a 3x5 pixel font of our own.

use std::path::Path;

use plotters::prelude::*;

use crate::measure::{BIN_NS, TOLERANCE_POINTS, WINDOW_NS};

/// One container's line.
pub struct Line<'a> {
    pub label: String,
    pub target: f64,
    pub series: &'a [f64],
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

const WIDTH: u32 = 900;
const HEIGHT: u32 = 420;
const LEFT: u32 = 60;
const RIGHT: u32 = 20;
const TOP: u32 = 40;
const BOTTOM: u32 = 40;

pub fn draw(path: &Path, title: &str, lines: &[Line<'_>]) -> Result<(), String> {
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    render(&mut pixels, title, lines).map_err(|e| format!("plot {}: {e}", path.display()))?;
    write_png(path, &pixels).map_err(|e| format!("plot {}: {e}", path.display()))
}

/// An RGB PNG of `WIDTH` x `HEIGHT` from `pixels`.
fn write_png(path: &Path, pixels: &[u8]) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(pixels).map_err(|e| e.to_string())
}

fn render(pixels: &mut [u8], title: &str, lines: &[Line<'_>]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let seconds = lines
        .iter()
        .map(|l| l.series.len())
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * BIN_NS as f64
        / 1e9;
    let area = root.margin(TOP, BOTTOM, LEFT, RIGHT);
    let mut chart = ChartBuilder::on(&area)
        .build_cartesian_2d(0f64..seconds, 0f64..100f64)
        .map_err(|e| err(&e))?;
    let grey = RGBColor(225, 225, 225);
    // Frame and grid: every 10 points and every second.
    for y in (0..=100).step_by(10) {
        let y = f64::from(y);
        let style = if y == 0.0 || y == 100.0 {
            BLACK.stroke_width(1)
        } else {
            grey.stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new([(0.0, y), (seconds, y)], style))
            .map_err(|e| err(&e))?;
    }
    let mut s = 0.0;
    while s <= seconds + 1e-9 {
        let style = if s == 0.0 || (s - seconds).abs() < 1e-9 {
            BLACK.stroke_width(1)
        } else {
            grey.stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new([(s, 0.0), (s, 100.0)], style))
            .map_err(|e| err(&e))?;
        s += 1.0;
    }
    let bin_s = BIN_NS as f64 / 1e9;
    let per_window = (WINDOW_NS / BIN_NS) as usize;
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let light = RGBColor(
            (color.0 as u16 * 2 / 5 + 153) as u8,
            (color.1 as u16 * 2 / 5 + 153) as u8,
            (color.2 as u16 * 2 / 5 + 153) as u8,
        );
        // Band and limit.
        for (y, dash) in [
            (line.target - TOLERANCE_POINTS, 3.0),
            (line.target + TOLERANCE_POINTS, 3.0),
            (line.target, 12.0),
        ] {
            let mut x = 0.0;
            let step = seconds / (WIDTH as f64 / dash);
            while x < seconds {
                let style = if dash > 5.0 {
                    color.stroke_width(2)
                } else {
                    color.stroke_width(1)
                };
                chart
                    .draw_series(LineSeries::new(
                        [(x, y), ((x + step / 2.0).min(seconds), y)],
                        style,
                    ))
                    .map_err(|e| err(&e))?;
                x += step;
            }
        }
        // Raw bins.
        let raw = line
            .series
            .iter()
            .enumerate()
            .map(|(b, &v)| ((b as f64 + 0.5) * bin_s, v.min(100.0)));
        chart
            .draw_series(LineSeries::new(raw, light.stroke_width(1)))
            .map_err(|e| err(&e))?;
        // 1-second moving average, plotted at the window's end.
        let smooth: Vec<(f64, f64)> = (per_window..=line.series.len())
            .map(|end| {
                let mean =
                    line.series[end - per_window..end].iter().sum::<f64>() / per_window as f64;
                (end as f64 * bin_s, mean.min(100.0))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(smooth, color.stroke_width(3)))
            .map_err(|e| err(&e))?;
    }
    // Labels (pixel font): title, legend, axes.
    let text = |x: i32, y: i32, s: &str, color: &RGBColor| -> Result<(), String> {
        draw_text(&root, x, y, s, color, 2).map_err(|e| err(&e))
    };
    text(LEFT as i32, 6, title, &BLACK)?;
    let mut x = LEFT as i32;
    for (i, line) in lines.iter().enumerate() {
        let label = format!("{} LIMIT {}%", line.label, line.target);
        text(x, 22, &label, &COLORS[i % COLORS.len()])?;
        x += 8 * (label.chars().count() as i32 + 3);
    }
    for y in (0..=100).step_by(20) {
        let (px, py) = chart.backend_coord(&(0.0, f64::from(y)));
        let label = format!("{y}%");
        text(px - 8 * label.len() as i32 - 6, py - 5, &label, &BLACK)?;
    }
    let mut s = 0;
    while f64::from(s) <= seconds + 1e-9 {
        let (px, py) = chart.backend_coord(&(f64::from(s), 0.0));
        let label = format!("{s}S");
        text(px - 4 * label.len() as i32, py + 8, &label, &BLACK)?;
        s += if seconds > 12.0 { 2 } else { 1 };
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// 3x5 glyphs, one row per entry (bit 2 = left column).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '%' => [5, 1, 2, 4, 5],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        ':' => [0, 2, 0, 2, 0],
        '(' => [2, 4, 4, 4, 2],
        ')' => [2, 1, 1, 1, 2],
        '_' => [0, 0, 0, 0, 7],
        '=' => [0, 7, 0, 7, 0],
        'µ' => [5, 5, 5, 7, 4],
        _ => [0, 0, 0, 0, 0],
    }
}

/// Draws `s` with its top-left corner at (x, y), each font pixel `scale` screen pixels.
fn draw_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: i32,
    y: i32,
    s: &str,
    color: &RGBColor,
    scale: i32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (i, c) in s.chars().enumerate() {
        let rows = glyph(c);
        let cx = x + i as i32 * 4 * scale;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            area.draw_pixel(
                                (cx + col * scale + dx, y + r as i32 * scale + dy),
                                color,
                            )?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
