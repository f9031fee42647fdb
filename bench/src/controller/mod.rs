//! `bench controller`: the real `vmidentity controller` process against a real Kubernetes API
//! server (tests/apiserver/kube-up.sh: kube-apiserver + etcd on loopback) and the ARM simulator
//! running in this process. Prints numbers, never asserts.
//!
//! 1. Apply-to-PATCH latency of single objects on an idle controller.
//! 2. For each `--objects` count: time to converge, ARM reads/writes, controller RSS (VmRSS and
//!    VmHWM), and Kubernetes API writes per reconcile while converging; then, after a
//!    controller restart, the same for a pass with nothing to do and for one timer resync.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{StreamExt, stream};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use vmidentity::crd::{VirtualMachineIdentity, VirtualMachineIdentitySpec};
use vmidentity_simulator::{Counters, LroMode, SimHandle};
use vmidentity_testkit::{self as kit, TOKEN};

/// Resync period of a controller that must not resync during the measurement.
pub(super) const NO_RESYNC_SECS: u64 = 3600;

/// What `bench controller` was asked to do.
pub struct Options {
    pub samples: usize,
    /// Pairs of objects created back to back on one VM (latency phase).
    pub pairs: usize,
    /// The controller's `--debounce-ms` (None: its default).
    pub debounce_ms: Option<u64>,
    pub objects: Vec<usize>,
    pub timeout: Duration,
    pub kubeconfig: Option<PathBuf>,
    pub vmidentity: Option<PathBuf>,
    pub create_concurrency: usize,
    pub controller_concurrency: u16,
    pub resync_secs: u64,
    /// Values of the controller's `--resync-mode` to measure a resync with.
    pub resync_modes: Vec<String>,
    pub identities: usize,
    /// VMs per simulated subscription (0: all in one). The controller's ARM client paces
    /// requests per subscription at ARM's limits.
    pub vms_per_subscription: usize,
    pub lro: LroMode,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sub(k: usize) -> String {
    format!(
        "/subscriptions/00000000-0000-0000-0000-{:012x}",
        0xbe00_0000 + k
    )
}

/// The id of VM `i`: `per_sub` VMs per subscription (0: all in the first).
fn vm(i: usize, per_sub: usize) -> String {
    let k = i.checked_div(per_sub).unwrap_or(0);
    format!(
        "{}/resourceGroups/rg-bench/providers/Microsoft.Compute/virtualMachines/vm-{i}",
        sub(k)
    )
}

/// The pool of user-assigned identities lives in the first subscription.
fn uai(i: usize) -> String {
    format!(
        "{}/resourceGroups/rg-bench-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai-{i}",
        sub(0)
    )
}

/// A world with VMs 0..vms (no identity yet) and `pool` UAIs.
fn world_yaml(vms: usize, per_sub: usize, pool: usize) -> String {
    let mut s = String::from("userAssignedIdentities:\n");
    for i in 0..pool.max(1) {
        let _ = writeln!(s, "  - id: {}", uai(i));
    }
    s.push_str("virtualMachines:\n");
    for i in 0..vms {
        let _ = writeln!(s, "  - id: {}", vm(i, per_sub));
    }
    s
}

/// The object on VM `i`: one UAI of the pool, and the system-assigned identity on every
/// other object.
fn object(name: &str, i: usize, opt: &Options) -> Result<VirtualMachineIdentity> {
    let mut spec = json!({
        "target": vm(i, opt.vms_per_subscription),
        "userAssignedIdentities": [uai(i % opt.identities.max(1))],
    });
    if i.is_multiple_of(2) {
        spec["systemAssigned"] = json!(true);
    }
    let spec: VirtualMachineIdentitySpec = serde_json::from_value(spec).context("object spec")?;
    Ok(VirtualMachineIdentity::new(name, spec))
}

mod env;
mod latency;
mod objects;
mod process;
mod prom;
mod report;
mod scale;
mod usage;

use env::*;
use latency::*;
use objects::*;
use process::*;
use prom::*;
use report::*;
use scale::*;
use usage::*;

pub async fn run(opt: Options) -> Result<()> {
    let t0 = Instant::now();
    let bin = vmidentity_binary(&opt)?;
    let kubeconfig = kubeconfig(&opt).await?;
    let client = client(&kubeconfig).await?;
    install_crd(&client).await?;
    let b = Bench {
        opt,
        bin,
        kubeconfig,
        client,
    };
    let run_id = std::process::id();
    eprintln!(
        "[bench] controller binary {}, kubeconfig {}",
        b.bin.display(),
        b.kubeconfig.display()
    );
    let latency_ns = format!("bench-{run_id}-latency");
    let scale_ns = |n: usize| format!("bench-{run_id}-n{n}");
    let mut covered = vec![latency_ns.clone()];
    covered.extend(b.opt.objects.iter().map(|n| scale_ns(*n)));
    allow_namespaces(&b.client, &format!("bench-{run_id}"), &covered).await?;
    let phases = async {
        let lat = if b.opt.samples > 0 {
            eprintln!(
                "[bench] latency: {} samples in namespace {latency_ns}",
                b.opt.samples
            );
            latency_phase(&b, &latency_ns).await
        } else {
            Ok(Latency {
                ms: vec![],
                timed_out: 0,
                pair_ms: vec![],
                pair_patches: vec![],
            })
        };
        eprintln!("[bench] {}", latency_line(&lat));
        let mut scales = Vec::new();
        for &n in b.opt.objects.iter().filter(|&&n| n > 0) {
            let ns = scale_ns(n);
            eprintln!("[bench] {n} objects in namespace {ns}");
            let s = scale_phase(&b, &ns, n).await;
            eprint!("{}", details(&s));
            scales.push(s);
        }
        (lat, scales)
    };
    // Ctrl-C drops the phases (which kills the controller: kill_on_drop) and cleans up.
    let (lat, scales) = tokio::select! {
        r = phases => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("[bench] interrupted: removing the objects of this run");
            let mut all = vec![latency_ns.clone()];
            all.extend(b.opt.objects.iter().map(|&n| scale_ns(n)));
            for ns in all {
                cleanup(&b.client, &ns, b.opt.create_concurrency).await;
            }
            bail!("interrupted");
        }
    };
    println!("{}", header(&b.opt));
    println!("{}", latency_line(&lat));
    print!("{}", table(&b.opt, &scales));
    for s in &scales {
        print!("{}", details(s));
    }
    println!("total run time {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmidentity_simulator::WorldSeed;

    #[test]
    pub(super) fn parses_prometheus_text() {
        let p = Prom::parse(
            "# HELP x\nvmidentity_kube_requests_total{verb=\"patch-status\"} 4\n\
             vmidentity_kube_requests_total{verb=\"create-event\"} 2\n\
             vmidentity_reconciles_total{result=\"applied\"} 2\n\
             vmidentity_reconciles_total{result=\"converged\"} 3\n\
             vmidentity_reconciles_in_flight 0\n# EOF\n",
        );
        assert_eq!(p.reconciles(), 5.0);
        assert_eq!(p.kube_writes().get("patch-status"), Some(&4.0));
        assert_eq!(
            per_reconcile(&p.kube_writes(), 2.0),
            "create-event 1.00, patch-status 2.00"
        );
    }

    #[test]
    pub(super) fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 25.0);
        assert_eq!(percentile(&v, 0.99), 50.0);
    }

    #[test]
    pub(super) fn world_parses() {
        assert!(WorldSeed::from_yaml_str(&world_yaml(5, 2, 3)).is_ok());
        assert!(vm(5, 2).starts_with(&sub(2)));
        assert!(vm(5, 0).starts_with(&sub(0)));
        assert_eq!(resync_period("get", 10_000, 15), 100);
        assert_eq!(resync_period("get", 1000, 15), 15);
        assert_eq!(resync_period("resource-graph", 10_000, 15), 15);
    }
}
