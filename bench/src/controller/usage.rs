//! CPU time and load of the processes involved.

use super::*;

/// User + system CPU seconds of process `pid` ("self" for this one) so far.
pub(super) fn cpu_secs_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces):
    // state is field 3, utime 14, stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
    // /proc reports in USER_HZ, which is 100 on Linux.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// CPU seconds used so far by this process (the simulator and the object creation), and by
/// tests/apiserver's apiserver and etcd when the bench talks to them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CpuSnap {
    pub(super) bench: Option<f64>,
    pub(super) apiserver: Option<f64>,
    pub(super) etcd: Option<f64>,
}

impl CpuSnap {
    pub(super) fn take(b: &Bench) -> CpuSnap {
        let dir = root().join("target/kube-apiserver");
        let canon = |p: &Path| std::fs::canonicalize(p).ok();
        let ours = canon(&b.kubeconfig).is_some()
            && canon(&b.kubeconfig) == canon(&dir.join("kubeconfig"));
        let of = |name: &str| -> Option<f64> {
            if !ours {
                return None;
            }
            let pid = std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok()?;
            cpu_secs_of(pid.trim())
        };
        CpuSnap {
            bench: cpu_secs_of("self"),
            apiserver: of("kube-apiserver"),
            etcd: of("etcd"),
        }
    }

    pub(super) fn since(&self, before: &CpuSnap) -> CpuSnap {
        let d = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        CpuSnap {
            bench: d(self.bench, before.bench),
            apiserver: d(self.apiserver, before.apiserver),
            etcd: d(self.etcd, before.etcd),
        }
    }
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
