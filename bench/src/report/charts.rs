//! The SVG charts: server RSS against sockets, delay against delivered rate, and the soak's
//! samples over time.

use std::path::Path;

use plotters::prelude::*;

use crate::capacity::CapacityResult;
use crate::fanout::FanoutResult;

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Server RSS against the number of sockets held, one line per server.
pub fn capacity_chart(path: &Path, runs: &[CapacityResult]) -> anyhow::Result<()> {
    let x_max = runs
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.sockets))
        .max()
        .unwrap_or(1) as f64;
    let y_max = runs
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.rss_kib))
        .max()
        .unwrap_or(1) as f64
        / 1024.0;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Server RSS against idle joined sockets", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("sockets")
        .y_desc("RSS (MiB)")
        .draw()?;
    for (run, color) in runs.iter().zip(COLORS) {
        let points: Vec<(f64, f64)> = run
            .points
            .iter()
            .map(|p| (p.sockets as f64, p.rss_kib as f64 / 1024.0))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(run.target)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// p50 and p99 delay against delivered messages per second (log scale), per server.
pub fn fanout_chart(path: &Path, room_size: usize, runs: &[&FanoutResult]) -> anyhow::Result<()> {
    let x_max = runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.delivered_per_sec))
        .fold(10.0, f64::max);
    let x_min = runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.delivered_per_sec))
        .fold(x_max, f64::min)
        .max(1.0);
    let y_max = runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.p99_ms))
        .fold(1.0, f64::max)
        .min(200.0);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("End-to-end delay against delivered rate, rooms of {room_size}"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min * 0.8..x_max * 1.25).log_scale(), 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("delivered messages per second")
        .y_desc("delay (ms)")
        .draw()?;
    for (index, run) in runs.iter().enumerate() {
        for (quantile, pick, dashed) in [("p50", 0, false), ("p99", 1, true)] {
            let color = COLORS[index % COLORS.len()];
            let points: Vec<(f64, f64)> = run
                .steps
                .iter()
                .map(|s| {
                    (
                        s.delivered_per_sec.max(x_min * 0.8),
                        if pick == 0 { s.p50_ms } else { s.p99_ms }.min(y_max * 1.1),
                    )
                })
                .collect();
            let style = if dashed {
                color.mix(0.6).stroke_width(2)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(format!("{} {quantile}", run.target))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
    }
    // The limit the steps are judged by.
    chart
        .draw_series(LineSeries::new(
            vec![(x_min * 0.8, 50.0), (x_max * 1.25, 50.0)],
            BLACK.mix(0.4),
        ))?
        .label("p99 limit (50 ms)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Each node's RSS and Redis's used memory over the soak, in MiB.
pub fn soak_chart(path: &Path, soak: &crate::soak::SoakResult) -> anyhow::Result<()> {
    let x_max = soak.samples.last().map_or(1.0, |s| s.secs).max(1.0);
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let nodes = soak.samples.first().map_or(0, |s| s.nodes.len());
    for node in 0..nodes {
        lines.push((
            format!("node {} RSS", node + 1),
            soak.samples
                .iter()
                .map(|s| (s.secs, s.nodes[node].rss_kib as f64 / 1024.0))
                .collect(),
        ));
    }
    lines.push((
        "Redis used_memory".into(),
        soak.samples
            .iter()
            .map(|s| (s.secs, s.redis_used_kib as f64 / 1024.0))
            .collect(),
    ));
    let y_max = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Soak: memory over time", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max * 1.02, 0f64..y_max * 1.2)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MiB")
        .draw()?;
    for ((name, points), color) in lines.into_iter().zip(COLORS.iter().cycle()) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 2, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
