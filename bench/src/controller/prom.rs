//! Reading the controller's /metrics: a Prometheus text parser, deltas, waiting for quiet.

use super::*;

/// Samples of a Prometheus text exposition.
#[derive(Debug, Clone, Default)]
pub(super) struct Prom {
    pub(super) samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Prom {
    pub(super) fn parse(text: &str) -> Prom {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            for kv in labels.split(',').filter(|s| !s.is_empty()) {
                if let Some((k, v)) = kv.split_once('=') {
                    map.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                }
            }
            samples.push((name.to_string(), map, value));
        }
        Prom { samples }
    }

    pub(super) fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    pub(super) fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, l, v) in &self.samples {
            if n == name {
                let key = l.get(label).cloned().unwrap_or_default();
                *out.entry(key).or_insert(0.0) += v;
            }
        }
        out
    }

    pub(super) fn reconciles(&self) -> f64 {
        self.sum("vmidentity_reconciles_total", &[])
    }

    pub(super) fn kube_writes(&self) -> BTreeMap<String, f64> {
        self.by_label("vmidentity_kube_requests_total", "verb")
    }

    pub(super) fn in_flight(&self) -> f64 {
        self.sum("vmidentity_reconciles_in_flight", &[])
    }

    pub(super) fn scans(&self) -> f64 {
        self.sum("vmidentity_fleet_scans_total", &[])
    }
}

/// The sum of the values (0.0, not the -0.0 an empty float `sum()` gives).
pub(super) fn total(m: &BTreeMap<String, f64>) -> f64 {
    m.values().fold(0.0, |a, v| a + v)
}

/// `after - before` per key.
pub(super) fn delta(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// Waits until the controller has been idle for `quiet` (no reconcile running, counters
/// unchanged). Returns the last snapshot and whether it went quiet before `deadline`.
pub(super) async fn wait_quiet(
    c: &mut ControllerProc,
    quiet: Duration,
    deadline: Instant,
) -> Result<(Prom, bool)> {
    let mut last: Option<(f64, f64, Instant)> = None;
    loop {
        c.check_alive()?;
        let m = c.metrics().await?;
        let now = Instant::now();
        let rec = m.reconciles();
        let writes = total(&m.kube_writes());
        let idle = m.in_flight() == 0.0;
        match last {
            Some((r, w, since)) if r == rec && w == writes && idle => {
                if now.duration_since(since) >= quiet {
                    return Ok((m, true));
                }
            }
            _ => last = Some((rec, writes, now)),
        }
        if now > deadline {
            return Ok((m, false));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
