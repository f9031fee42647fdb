//! The controller process: start, stop, RSS.

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

/// A running `vmidentity controller`.
pub(super) struct ControllerProc {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) metrics_addr: String,
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
        let (bin, opt) = (&b.bin, &b.opt);
        let port = free_port()?;
        let metrics_addr = format!("127.0.0.1:{port}");
        let log_dir = root().join("target/bench");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let log = log_dir.join(format!("controller-{log_name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "controller",
            "--namespace",
            ns,
            "--arm-endpoint",
            &sim.base_url(),
            "--resync-seconds",
            &resync_secs.to_string(),
            "--concurrency",
            &opt.controller_concurrency.to_string(),
            "--metrics-addr",
            &metrics_addr,
            "--lease-namespace",
            ns,
            "--identity",
            "bench",
            "--no-leader-election",
            // Policies name the bench's namespaces; no label selectors to watch.
            "--namespace-labels=false",
        ]);
        if opt.lro != LroMode::Sync {
            cmd.args(["--lro-poll-ms", "50"]);
        }
        if let Some(ms) = opt.debounce_ms {
            cmd.args(["--debounce-ms".to_string(), ms.to_string()]);
        }
        cmd.args(extra);
        let child = cmd
            .env("KUBECONFIG", &b.kubeconfig)
            .env("AZURE_ACCESS_TOKEN", TOKEN)
            .env("VMIDENTITY_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the controller exited at once"))?;
        let mut c = ControllerProc {
            child,
            pid,
            metrics_addr,
            log,
        };
        // Up when /metrics answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            c.check_alive()?;
            if c.metrics().await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller did not serve /metrics within 30 s (log: {})",
                    c.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(c)
    }

    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the controller exited ({status}); log {}:\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    pub(super) fn rss(&self) -> Result<Rss> {
        let path = format!("/proc/{}/status", self.pid);
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
        cpu_secs_of(&self.pid.to_string()).unwrap_or(0.0)
    }

    pub(super) async fn metrics(&self) -> Result<Prom> {
        let text = tokio::time::timeout(Duration::from_secs(5), http_get(&self.metrics_addr))
            .await
            .map_err(|_| anyhow!("GET /metrics timed out"))??;
        Ok(Prom::parse(&text))
    }

    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
