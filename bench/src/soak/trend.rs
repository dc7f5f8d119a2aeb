//! What the soak samples while it runs, and the growth test: a least-squares line through each
//! series after the warm-up, its slope, and the growth it implies over the measured window
//! against a limit (a share of the series' mean, with a floor for series that are small or
//! noisy by nature).

use serde::Serialize;

use crate::procfs;
use crate::target::Target;

/// One node at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeSample {
    pub rss_kib: u64,
    pub descriptors: u64,
    /// OS threads (Palisade does not expose a tokio task count; open sessions, each a fixed
    /// set of tasks, stand in for it).
    pub threads: u64,
    /// `palisade_sessions_open`, summed over the states.
    pub sessions_open: u64,
    pub alive: bool,
}

impl NodeSample {
    pub async fn of(node: &Target) -> NodeSample {
        let Some(pid) = node.pid else {
            return NodeSample::default();
        };
        NodeSample {
            rss_kib: node.sample().map_or(0, |sample| sample.rss_kib),
            descriptors: procfs::descriptors(pid).unwrap_or(0) as u64,
            threads: procfs::threads(pid).unwrap_or(0),
            sessions_open: match &node.metrics {
                Some(url) => sessions_open(url).await.unwrap_or(0),
                None => 0,
            },
            alive: node.alive(),
        }
    }
}

/// The sum of `palisade_sessions_open{state=…}` on a node's `/metrics`.
async fn sessions_open(url: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("palisade_sessions_open{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Everything sampled at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub secs: f64,
    pub nodes: Vec<NodeSample>,
    /// Redis `used_memory` (INFO memory).
    pub redis_used_kib: u64,
    pub redis_rss_kib: u64,
}

/// One series' fitted line and its verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Trend {
    pub series: String,
    pub mean: f64,
    /// Units per hour.
    pub slope_per_hour: f64,
    /// The fitted growth over the measured window (slope × window).
    pub growth: f64,
    /// The most growth allowed over the window.
    pub limit: f64,
    pub passed: bool,
}

/// A series' name, its values, the share of its mean it may grow by over the window, and the
/// floor under that limit.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub share: f64,
    pub floor: f64,
}

impl Series {
    /// The least-squares line through the points: `None` with fewer than three.
    pub fn trend(&self) -> Option<Trend> {
        let n = self.points.len() as f64;
        if self.points.len() < 3 {
            return None;
        }
        let mean_x = self.points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_y = self.points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = self.points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
        let sxy: f64 = self
            .points
            .iter()
            .map(|p| (p.0 - mean_x) * (p.1 - mean_y))
            .sum();
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let window = self.points.last()?.0 - self.points.first()?.0;
        let growth = slope * window;
        let limit = (self.share * mean_y).max(self.floor);
        Some(Trend {
            series: self.name.clone(),
            mean: mean_y,
            slope_per_hour: slope * 3600.0,
            growth,
            limit,
            passed: growth <= limit,
        })
    }
}

/// The series of every node and of Redis, from the samples taken after `warmup_secs`.
pub fn trends(samples: &[Sample], warmup_secs: f64) -> Vec<Trend> {
    let kept: Vec<&Sample> = samples.iter().filter(|s| s.secs >= warmup_secs).collect();
    let series = |name: String, share: f64, floor: f64, value: &dyn Fn(&Sample) -> f64| Series {
        name,
        points: kept.iter().map(|s| (s.secs, value(s))).collect(),
        share,
        floor,
    };
    let nodes = kept.first().map_or(0, |s| s.nodes.len());
    let mut all = Vec::new();
    for node in 0..nodes {
        let at = move |s: &Sample| s.nodes.get(node).cloned().unwrap_or_default();
        all.push(series(
            format!("node {} RSS (KiB)", node + 1),
            0.05,
            4096.0,
            &|s| at(s).rss_kib as f64,
        ));
        all.push(series(
            format!("node {} descriptors", node + 1),
            0.05,
            16.0,
            &|s| at(s).descriptors as f64,
        ));
        all.push(series(
            format!("node {} threads", node + 1),
            0.0,
            2.0,
            &|s| at(s).threads as f64,
        ));
        all.push(series(
            format!("node {} sessions open", node + 1),
            0.05,
            16.0,
            &|s| at(s).sessions_open as f64,
        ));
    }
    all.push(series(
        "Redis used_memory (KiB)".into(),
        0.05,
        1024.0,
        &|s| s.redis_used_kib as f64,
    ));
    all.push(series("Redis RSS (KiB)".into(), 0.05, 4096.0, &|s| {
        s.redis_rss_kib as f64
    }));
    all.iter().filter_map(Series::trend).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(f64, f64)]) -> Series {
        Series {
            name: "x".into(),
            points: points.to_vec(),
            share: 0.05,
            floor: 1.0,
        }
    }

    #[test]
    fn a_flat_noisy_series_passes_and_a_steady_climb_fails() {
        let flat = series(&[(0.0, 100.0), (10.0, 101.0), (20.0, 99.0), (30.0, 100.0)]);
        let trend = flat.trend().unwrap();
        assert!(trend.passed, "{trend:?}");
        let climb = series(&[(0.0, 100.0), (10.0, 110.0), (20.0, 120.0), (30.0, 130.0)]);
        let trend = climb.trend().unwrap();
        assert!((trend.slope_per_hour - 3600.0).abs() < 1e-6);
        assert!((trend.growth - 30.0).abs() < 1e-9);
        assert!(!trend.passed);
    }
}
