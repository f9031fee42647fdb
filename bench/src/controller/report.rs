//! The printed report.

use super::*;

pub(super) fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

pub(super) fn per_reconcile(writes: &BTreeMap<String, f64>, reconciles: f64) -> String {
    let total = total(writes);
    if writes.is_empty() || total == 0.0 {
        return "0.00".into();
    }
    let denom = reconciles.max(1.0);
    writes
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {:.2}", v / denom))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn per_object(writes: &BTreeMap<String, f64>, n: usize) -> String {
    let denom = (n as f64).max(1.0);
    let parts: Vec<String> = writes
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {:.2}", v / denom))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

pub(super) fn pass_line(p: &Pass) -> String {
    let mut line = format!(
        "{:.0} reconciles in {:.1} s{}, API writes {:.0} ({}/reconcile), ARM GET {} PATCH {}",
        p.reconciles,
        p.secs,
        if p.complete { "" } else { " (TIMED OUT)" },
        total(&p.writes),
        per_reconcile(&p.writes, p.reconciles),
        p.arm_reads,
        p.arm_writes
    );
    if p.scans > 0.0 || p.arg_queries > 0 {
        let _ = write!(
            line,
            ", Resource Graph scans {:.0} queries {}",
            p.scans, p.arg_queries
        );
    }
    line
}

/// The "(resync)" cell: writes per reconcile of each resync mode.
pub(super) fn resync_cell(runs: &[ResyncRun]) -> String {
    runs.iter()
        .map(|r| {
            let p = &r.resync;
            let what = if r.error.is_some() {
                "failed".to_string()
            } else if p.reconciles > 0.0 {
                per_reconcile(&p.writes, p.reconciles)
            } else {
                format!("{:.0} writes, 0 reconciles", total(&p.writes))
            };
            format!("{}: {what}", r.mode)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn header(opt: &Options) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let subs = if opt.vms_per_subscription == 0 {
        "all VMs in one subscription".to_string()
    } else {
        format!("{} VMs per subscription", opt.vms_per_subscription)
    };
    let debounce = opt
        .debounce_ms
        .map_or_else(|| "default".to_string(), |ms| ms.to_string());
    format!(
        "controller benchmark (kube-apiserver + etcd on loopback, ARM simulator lro={:?}, {subs}, {cores} cores, controller --concurrency {} --debounce-ms {debounce})",
        opt.lro, opt.controller_concurrency
    )
}

pub(super) fn latency_line(lat: &Result<Latency>) -> String {
    match lat {
        Ok(l) if l.ms.is_empty() && l.timed_out == 0 => {
            "apply-to-PATCH latency: not measured (--samples 0)".to_string()
        }
        Ok(l) => {
            let mut v = l.ms.clone();
            v.sort_by(f64::total_cmp);
            let mean = v.iter().fold(0.0, |a, x| a + x) / (v.len().max(1) as f64);
            let pairs = if l.pair_patches.is_empty() {
                String::new()
            } else {
                let mut p = l.pair_ms.clone();
                p.sort_by(f64::total_cmp);
                let patches = l.pair_patches.iter().sum::<u64>();
                format!(
                    "\napply-to-PATCH latency, two objects on one VM created back to back: p50 {:.1} ms  max {:.1} ms (from the first create); {patches} PATCHes for {} VMs ({:.2} per VM)",
                    percentile(&p, 0.50),
                    p.last().copied().unwrap_or(f64::NAN),
                    l.pair_patches.len(),
                    patches as f64 / l.pair_patches.len() as f64
                )
            };
            format!(
                "apply-to-PATCH latency, single object, idle controller: p50 {:.1} ms  p99 {:.1} ms  (n={}; min {:.1}, mean {:.1}, max {:.1} ms{}){pairs}",
                percentile(&v, 0.50),
                percentile(&v, 0.99),
                v.len(),
                v.first().copied().unwrap_or(f64::NAN),
                mean,
                v.last().copied().unwrap_or(f64::NAN),
                if l.timed_out > 0 {
                    format!("; {} timed out", l.timed_out)
                } else {
                    String::new()
                }
            )
        }
        Err(e) => format!("apply-to-PATCH latency: failed: {e:#}"),
    }
}

pub(super) fn table(opt: &Options, scales: &[Scale]) -> String {
    let mut out = String::new();
    if scales.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<9} {:<11} {:>8} {:>10}   {:<8} {:<9}  {:<60} (resync)",
        "objects",
        "converge",
        "ARM GET",
        "ARM PATCH",
        "RSS",
        "peak RSS",
        "API writes/reconcile (converge)",
    );
    for s in scales {
        let converge = match s.converge_secs {
            Some(t) => format!("{t:.1} s"),
            None => format!(">{:.0} s", opt.timeout.as_secs_f64()),
        };
        let _ = writeln!(
            out,
            "{:<9} {:<11} {:>8} {:>10}   {:<8} {:<9}  {:<60} {}",
            s.n,
            converge,
            s.arm_reads,
            s.arm_writes,
            mib(s.rss.rss_kib),
            mib(s.rss.hwm_kib),
            per_reconcile(&s.converge.writes, s.converge.reconciles),
            resync_cell(&s.resyncs),
        );
    }
    out
}

pub(super) fn details(s: &Scale) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} objects:", s.n);
    if let Some(e) = &s.error {
        let _ = writeln!(out, "  ERROR: {e}");
    }
    let _ = writeln!(
        out,
        "  created {}/{} in {:.1} s ({:.0}/s); ARM PATCHes {}/{}{}; controller idle {:.1} s after the first create{}; Ready {}",
        s.created,
        s.n,
        s.create_secs,
        s.created as f64 / s.create_secs.max(1e-9),
        s.arm_writes_reached,
        s.n,
        match s.converge_secs {
            Some(t) => format!(" (last at {t:.1} s)"),
            None => " (TIMED OUT)".into(),
        },
        s.settle_secs,
        if s.settled {
            ""
        } else {
            " (NOT idle: timed out)"
        },
        s.ready
            .map_or_else(|| "?".to_string(), |r| format!("{r}/{}", s.n)),
    );
    let results: Vec<String> = s
        .results
        .iter()
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect();
    let _ = writeln!(
        out,
        "  converge: {:.0} reconciles ({:.2}/object: {}); API writes/object: {}",
        s.converge.reconciles,
        s.converge.reconciles / (s.n as f64).max(1.0),
        results.join(", "),
        per_object(&s.converge.writes, s.n),
    );
    let secs = |v: Option<f64>| v.map_or_else(|| "?".to_string(), |v| format!("{v:.1} s"));
    let _ = writeln!(
        out,
        "  CPU while converging ({:.1} s wall): controller {:.1} s, apiserver {}, etcd {}, bench+simulator {}; load average {}",
        s.settle_secs,
        s.cpu_secs,
        secs(s.cpu_others.apiserver),
        secs(s.cpu_others.etcd),
        secs(s.cpu_others.bench),
        s.load
    );
    for r in &s.resyncs {
        let _ = writeln!(out, "  restarted with --resync-mode {}:", r.mode);
        if let Some(e) = &r.error {
            let _ = writeln!(out, "    ERROR: {e}");
        }
        let _ = writeln!(out, "    start-up pass: {}", pass_line(&r.restart));
        let _ = writeln!(out, "    resync ({} s): {}", r.period, pass_line(&r.resync));
        let _ = writeln!(
            out,
            "    RSS after the resync {} (peak {})",
            mib(r.rss.rss_kib),
            mib(r.rss.hwm_kib)
        );
    }
    out
}
