//! The Grafana dashboard and the alert rules against a real Prometheus (Debian's `prometheus`,
//! `VMIDENTITY_PROMETHEUS` or `prometheus` on PATH) scraping the real controller processes
//! while they converge objects on the ARM simulator (the real API server of the e2e tests):
//! every query of every panel of `dashboards/vmidentity.json` must parse and return data
//! through Prometheus' HTTP API, and every alert rule of the chart must load and evaluate
//! without error.
//!
//! The scenario makes every panel's metric move: objects Ready and Stalled (a policy denial),
//! 429s from ARM, a drift repaired at a Resource Graph resync, and a second controller whose
//! client secret is wrong (token failures).

#[path = "e2e/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use serde_json::{Value, json};
use vmidentity_simulator::{AppConfig, FaultRule};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "aaaaaaaa-0000-0000-0000-0000000000d1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET over HTTP/1.0; the body, parsed as JSON.
async fn get_json(port: u16, path: &str) -> Result<Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    let (_, body) = buf.split_once("\r\n\r\n").ok_or("no body")?;
    serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))
}

/// A Prometheus server on loopback, scraping `targets` every second as job "vmidentity", with
/// the chart's alert rules loaded.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    async fn start(targets: &[u16]) -> Prometheus {
        let bin = std::env::var("VMIDENTITY_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir =
            std::env::temp_dir().join(format!("vmidentity-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let targets: Vec<String> = targets.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let rules = repo().join("charts/vmidentity/files/prometheus-rules.yaml");
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [{"job_name": "vmidentity", "static_configs": [{"targets": targets}]}],
        });
        // JSON is YAML.
        std::fs::write(dir.join("prometheus.yml"), config.to_string()).expect("config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{bin} does not start ({e}): install Debian's prometheus package (.ci/run does)"
                )
            });
        let p = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get_json(port, "/api/v1/status/buildinfo").await.is_err() {
            assert!(Instant::now() < deadline, "prometheus not up: {}", p.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn query(&self, expr: &str) -> Result<Value, String> {
        get_json(self.port, &format!("/api/v1/query?query={}", encode(expr))).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every `expr` of every panel (rows' nested panels included): (panel title, expr).
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The dashboard's variables as Grafana fills them in for this Prometheus.
fn grafana_substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__interval", "5s")
        .replace("$__range", "5m")
        .replace("$job", "vmidentity")
}

#[tokio::test]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus_scraping_the_controller() {
    let env = Env::with_config("e2e-dash", &world(&["vm1", "vm2", "vm3"], ""), |c| {
        c.apps = vec![AppConfig::with_secret(CLIENT, TENANT, "right")];
    })
    .await;
    let other = env.namespace("b").await;
    // Both namespaces covered; targets vm1 and vm2 only (vm3 is denied).
    let mut policy = allow_all_policy(&env.ns);
    policy["namespaces"] = json!({"names": [env.ns, other]});
    policy["targets"] = json!({"ids": [vm("vm1"), vm("vm2")]});
    env.set_policy(policy).await;
    // ARM answers the first PATCHes with 429.
    env.sim
        .add_fault(FaultRule::throttle(1).method("PATCH").times(2));

    let a = env.controller("a");
    // A second controller (its own namespace and lease) whose client secret is wrong: every
    // token request fails.
    let url = env.sim.base_url();
    let b = ControllerProc::start_with_env(
        &other,
        &env.sim,
        "b",
        &[],
        &[
            ("VMIDENTITY_AUTH", "clientSecret"),
            ("AZURE_AUTHORITY_HOST", &url),
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_CLIENT_SECRET", "wrong"),
        ],
    );
    let prom = Prometheus::start(&[a.metrics_port, b.metrics_port]).await;

    for (name, v) in [("web1", "vm1"), ("web2", "vm2"), ("denied", "vm3")] {
        env.create(
            name,
            json!({"target": vm(v), "userAssignedIdentities": [uai("u1")]}),
        )
        .await
        .expect(name);
    }
    env.create_in(
        &other,
        "db",
        json!({"target": vm("vm2"), "systemAssigned": true}),
    )
    .await
    .expect("db");
    env.wait_for("web1", 60, "Ready", is_ready).await;
    env.wait_for("web2", 60, "Ready", is_ready).await;
    env.wait_for("denied", 30, "Stalled PolicyDenied", |o| {
        stalled_with(o, "PolicyDenied")
    })
    .await;
    env.wait_for_in(&other, "db", 30, "Stalled AuthenticationFailed", |o| {
        stalled_with(o, "AuthenticationFailed")
    })
    .await;
    // Someone removes the identity out of band: found by a Resource Graph resync, repaired.
    env.sim
        .set_identity(&vm("vm1"), json!({"type": "None"}))
        .expect("drift");
    env.wait_until(30, "the drift to be repaired", || {
        env.identity(&vm("vm1")).1 == vec!["u1".to_string()]
    })
    .await;

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("dashboards/vmidentity.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 18, "{} queries", queries.len());
    // Rates need two samples in their window: poll until every query has data (or time out).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        for (title, expr) in &queries {
            let q = grafana_substitute(expr);
            match prom.query(&q).await {
                Ok(v) if v["status"] == "success" => {
                    if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                        missing.push(format!("{title}: no data: {q}"));
                    }
                }
                Ok(v) => panic!("{title}: Prometheus refused {q}: {v}"),
                Err(e) => missing.push(format!("{title}: {e}")),
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        missing.is_empty(),
        "panels without data:\n{}",
        missing.join("\n")
    );

    // The $job variable's query (label_values(vmidentity_leader, job)) finds the job.
    let jobs = get_json(
        prom.port,
        &format!(
            "/api/v1/label/job/values?match[]={}",
            encode("vmidentity_leader")
        ),
    )
    .await
    .expect("label values");
    assert_eq!(jobs["data"], json!(["vmidentity"]), "{jobs}");
    // Every alert rule loads and evaluates on the real metrics without error.
    let rules = get_json(prom.port, "/api/v1/rules").await.expect("rules");
    let all: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert!(all.len() >= 8, "rules not loaded: {rules}\n{}", prom.log());
    for r in &all {
        assert_eq!(
            r["health"], "ok",
            "rule {} does not evaluate: {r}",
            r["name"]
        );
    }
    // The scenario's own signals, as Prometheus sees them.
    let value = |v: Value| -> f64 {
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let q = |e: &'static str| prom.query(e);
    // Counters as the last scrape saw them: a repair counted just after the previous scrape
    // shows at the next one (the change feed can repair within a scrape interval).
    for (expr, at_least) in [
        ("sum(vmidentity_arm_throttled_total)", 2.0),
        ("sum(vmidentity_drift_repaired_total)", 1.0),
        ("sum(vmidentity_token_failures_total)", 1.0),
        ("sum(vmidentity_policy_denied_total)", 1.0),
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = value(q(expr).await.expect("q"));
            if v >= at_least {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} = {v}, expected at least {at_least}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    assert_eq!(
        value(
            q("sum(vmidentity_objects_by_condition{condition=\"Ready\"})")
                .await
                .expect("q")
        ),
        2.0
    );
    assert_eq!(
        value(q("sum(vmidentity_leader)").await.expect("q")),
        2.0,
        "one leader per lease"
    );
    drop(prom);
    drop(b);
    env.cleanup_in(&other).await;
    env.cleanup().await;
}
