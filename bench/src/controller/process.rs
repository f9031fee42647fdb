//! The controller process: start, stop, RSS. Spawning it and reading `/metrics` is the shared
//! kit's (`vmidentity-testkit`), as for the end-to-end tests.

use super::*;

/// Resident set size of a process (from /proc/<pid>/status).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rss {
    pub(super) rss_kib: u64,
    pub(super) hwm_kib: u64,
}

/// Everything the phases share.
pub(super) struct Bench {
    pub(super) opt: Options,
    pub(super) bin: PathBuf,
    pub(super) kubeconfig: PathBuf,
    pub(super) client: Client,
}

/// A running `vmidentity controller` (killed on drop).
pub(super) struct ControllerProc {
    proc: kit::ControllerProc,
    pub(super) log: PathBuf,
}

impl ControllerProc {
    pub(super) async fn start(
        b: &Bench,
        ns: &str,
        sim: &SimHandle,
        resync_secs: u64,
        extra: &[String],
        log_name: &str,
    ) -> Result<ControllerProc> {
        let opt = &b.opt;
        let log = root()
            .join("target/bench")
            .join(format!("controller-{log_name}.log"));
        let mut cmd =
            kit::ControllerCmd::new(&b.bin, &b.kubeconfig, &sim.base_url(), ns, "bench", log)?
                .watch(ns)
                .args([
                    "--resync-seconds",
                    &resync_secs.to_string(),
                    "--concurrency",
                    &opt.controller_concurrency.to_string(),
                    "--no-leader-election",
                    // Policies name the bench's namespaces; no label selectors to watch.
                    "--namespace-labels=false",
                ]);
        if opt.lro != LroMode::Sync {
            cmd = cmd.args(["--lro-poll-ms", "50"]);
        }
        if let Some(ms) = opt.debounce_ms {
            cmd = cmd.args(["--debounce-ms".to_string(), ms.to_string()]);
        }
        let mut proc = cmd
            .args(extra)
            .envs([("AZURE_ACCESS_TOKEN", TOKEN)])
            .rust_log("warn")
            .spawn()?;
        // Up when /metrics answers.
        proc.wait_serving(Duration::from_secs(30)).await?;
        let log = proc.log.clone();
        Ok(ControllerProc { proc, log })
    }

    pub(super) fn check_alive(&mut self) -> Result<()> {
        Ok(self.proc.check_alive()?)
    }

    pub(super) fn rss(&self) -> Result<Rss> {
        let path = format!("/proc/{}/status", self.proc.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(Rss {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        })
    }

    pub(super) fn cpu_secs(&self) -> f64 {
        cpu_secs_of(&self.proc.pid.to_string()).unwrap_or(0.0)
    }

    pub(super) async fn metrics(&self) -> Result<Prom> {
        Ok(Prom::parse(&self.proc.metrics().await?))
    }

    pub(super) async fn stop(self) {
        self.proc.stop().await;
    }
}
