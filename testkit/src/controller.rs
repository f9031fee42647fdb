//! A `vmidentity controller` process: its flags, its log, its `/metrics`, stopping it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::{Error, Result, io};

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("finding a free port"))
}

/// The command line of a `vmidentity controller` against the simulator at `endpoint`:
/// `--arm-endpoint`, `--metrics-addr` on a free port, `--lease-namespace`, `--identity`;
/// `KUBECONFIG`, text logs, and none of the caller's `AZURE_*ACCESS_TOKEN` variables.
/// Builder methods add the rest.
#[derive(Debug, Clone)]
pub struct ControllerCmd {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    metrics_port: u16,
    rust_log: String,
    log: PathBuf,
}

impl ControllerCmd {
    pub fn new(
        bin: &Path,
        kubeconfig: &Path,
        endpoint: &str,
        lease_namespace: &str,
        identity: &str,
        log: PathBuf,
    ) -> Result<ControllerCmd> {
        let metrics_port = free_port()?;
        let args = [
            "controller",
            "--arm-endpoint",
            endpoint,
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--lease-namespace",
            lease_namespace,
            "--identity",
            identity,
        ];
        Ok(ControllerCmd {
            bin: bin.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("KUBECONFIG".to_string(), kubeconfig.display().to_string())],
            metrics_port,
            rust_log: "info,kube=warn".to_string(),
            log,
        })
    }

    /// Adds command-line arguments.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|s| s.as_ref().to_string()));
        self
    }

    /// `--namespace ns`: watch that namespace only.
    pub fn watch(self, ns: &str) -> Self {
        self.args(["--namespace", ns])
    }

    /// Sets environment variables of the process.
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env.extend(
            vars.into_iter()
                .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string())),
        );
        self
    }

    /// `RUST_LOG` of the process (default `info,kube=warn`).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }

    /// The port of `--metrics-addr`.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Starts the process (killed when the [`ControllerProc`] is dropped); stderr goes to the
    /// log file.
    pub fn spawn(self) -> Result<ControllerProc> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let file = std::fs::File::create(&self.log)
            .map_err(io(format!("creating {}", self.log.display())))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env_remove("AZURE_ACCESS_TOKEN")
            .env_remove("AZURE_GRAPH_ACCESS_TOKEN")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("VMIDENTITY_LOG_FORMAT", "text")
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", self.bin.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| Error::Failed("the controller exited at once".into()))?;
        Ok(ControllerProc {
            child,
            pid,
            metrics_addr: format!("127.0.0.1:{}", self.metrics_port),
            log: self.log,
        })
    }
}

/// A running `vmidentity controller` (killed on drop).
#[derive(Debug)]
pub struct ControllerProc {
    child: Child,
    pub pid: u32,
    /// `127.0.0.1:<port>` of `/metrics`.
    pub metrics_addr: String,
    /// Its stderr.
    pub log: PathBuf,
}

impl ControllerProc {
    /// An error with the end of the log when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            return Err(Error::Failed(format!(
                "the controller exited ({status}); log {}:\n{tail}",
                self.log.display()
            )));
        }
        Ok(())
    }

    /// Waits until `/metrics` answers (the controller is up), or fails after `timeout` or when
    /// the process exits.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if self.metrics().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Failed(format!(
                    "the controller did not serve /metrics within {timeout:?} (log: {})",
                    self.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The body of `GET /metrics` (a Prometheus text exposition), within 5 s.
    pub async fn metrics(&self) -> Result<String> {
        tokio::time::timeout(
            Duration::from_secs(5),
            http_get(&self.metrics_addr, "/metrics"),
        )
        .await
        .map_err(|_| Error::Failed("GET /metrics timed out".into()))?
    }

    /// SIGKILL, without waiting.
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// SIGTERM for a graceful stop, then waits up to 30 s for the exit code (SIGKILL after
    /// that, and `None`).
    pub async fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg(self.pid.to_string())
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        }
    }

    /// SIGKILL, and waits for the exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A plain HTTP/1.0 GET on loopback; the body of a 200 answer.
async fn http_get(addr: &str, path: &str) -> Result<String> {
    let failed = |e: std::io::Error| Error::Failed(format!("GET http://{addr}{path}: {e}"));
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(failed)?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(failed)?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.map_err(failed)?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Failed(format!("GET http://{addr}{path}: malformed answer")))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(Error::Failed(format!(
            "GET http://{addr}{path} answered {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_string())
}
