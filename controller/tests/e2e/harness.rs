//! End-to-end harness: a real API server (tests/apiserver/kube-up.sh), the ARM simulator in this
//! process, and the real `vmidentity controller` binary as a child process.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use vmidentity::crd::{
    VirtualMachineIdentity, VirtualMachineIdentityPolicy, VirtualMachineIdentitySpec,
};
use vmidentity_simulator::{SimConfig, SimHandle, WorldSeed};

pub const SUB: &str = "/subscriptions/00000000-0000-0000-0000-0000000000e2";
pub const TOKEN: &str = "sim-token";

pub fn vm(name: &str) -> String {
    format!("{SUB}/resourceGroups/rg-e2e/providers/Microsoft.Compute/virtualMachines/{name}")
}

pub fn uai(name: &str) -> String {
    format!(
        "{SUB}/resourceGroups/rg-e2e/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kubeconfig of the test API server: `VMIDENTITY_E2E_KUBECONFIG`, or what
/// `tests/apiserver/kube-up.sh` prints (it is idempotent and fast once built).
pub fn kubeconfig() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(p) = std::env::var("VMIDENTITY_E2E_KUBECONFIG") {
            return PathBuf::from(p);
        }
        let out = Command::new("bash")
            .arg(root().join("tests/apiserver/kube-up.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("tests/apiserver/kube-up.sh runs");
        assert!(out.status.success(), "tests/apiserver/kube-up.sh failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .clone()
}

pub async fn client() -> Client {
    let kc = Kubeconfig::read_from(kubeconfig()).expect("kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

/// Installs (server-side apply) the CRDs from crds/ and waits until they are Established.
pub async fn install_crd(client: &Client) {
    for (file, name) in [
        (
            "crds/vmidentity.dev_virtualmachineidentities.yaml",
            "virtualmachineidentities.vmidentity.dev",
        ),
        (
            "crds/vmidentity.dev_virtualmachineidentitypolicies.yaml",
            "virtualmachineidentitypolicies.vmidentity.dev",
        ),
    ] {
        install_one_crd(client, file, name).await;
    }
    // The API server needs a moment before it serves the new (or updated) schema.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn install_one_crd(client: &Client, file: &str, name: &str) {
    let text = std::fs::read_to_string(root().join(file)).expect("crds/");
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).expect("crd yaml");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        name,
        &PatchParams::apply("vmidentity-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = api.get(name).await.expect("get CRD");
        let established = c
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            break;
        }
        assert!(Instant::now() < deadline, "CRD not Established");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates namespace `ns` (labelled `vmidentity-e2e/ns: <ns>`, for tests that select it):
/// objects need their namespace.
async fn ensure_namespace(client: &Client, ns: &str) {
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let body = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": {"vmidentity-e2e/ns": ns}}});
    nss.patch(
        ns,
        &PatchParams::apply("vmidentity-e2e").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("namespace");
}

/// [`allow_all_policy`] that also binds these Azure client IDs to the namespace's credential
/// Secret (`spec.credentials.clientIds`).
pub fn allow_all_binding(ns: &str, client_ids: &[&str]) -> Value {
    let mut p = allow_all_policy(ns);
    p["credentials"] = json!({ "clientIds": client_ids });
    p
}

/// A federated (service account) token for the simulator's Entra, written to a file of this
/// process; returns the file.
pub fn federated_token_file(issuer: &str, subject: &str, name: &str) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let jwt = vmidentity_simulator::make_jwt(&json!({"iss": issuer, "sub": subject,
        "aud": ["api://AzureADTokenExchange"], "exp": now + 3600, "iat": now}));
    let file = std::env::temp_dir().join(format!("vmidentity-e2e-{name}-{}", std::process::id()));
    std::fs::write(&file, jwt).expect("token file");
    file
}

/// A policy that lets namespace `ns` do everything but lift the built-in deny list.
pub fn allow_all_policy(ns: &str) -> Value {
    json!({
        "namespaces": {"names": [ns]},
        "targets": {"patterns": ["**"]},
        "userAssignedIdentities": {"patterns": ["**"]},
        "allowDisableSystemAssigned": true,
        "allowExactMode": true,
        "roleAssignments": [{"roles": ["*"], "scopes": ["/**"]}],
        "groups": ["*"],
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `vmidentity controller` process.
pub struct ControllerProc {
    child: Child,
    pub metrics_port: u16,
    pub identity: String,
}

impl ControllerProc {
    pub fn start(ns: &str, sim: &SimHandle, identity: &str, extra: &[&str]) -> ControllerProc {
        Self::start_with_env(
            ns,
            sim,
            identity,
            extra,
            &[
                ("AZURE_ACCESS_TOKEN", TOKEN),
                ("AZURE_GRAPH_ACCESS_TOKEN", "sim-graph-token"),
            ],
        )
    }

    /// Starts the controller with these credential variables (and no others).
    pub fn start_with_env(
        ns: &str,
        sim: &SimHandle,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProc {
        Self::spawn(Some(ns), ns, sim, identity, extra, env)
    }

    /// Starts a controller that watches every namespace (its Lease in `lease_ns`). Only for
    /// tests that run alone in their binary: it reconciles every object of the cluster.
    pub fn start_cluster_wide(
        lease_ns: &str,
        sim: &SimHandle,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProc {
        Self::spawn(None, lease_ns, sim, identity, extra, env)
    }

    fn spawn(
        watch: Option<&str>,
        ns: &str,
        sim: &SimHandle,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ControllerProc {
        let port = free_port();
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("vmidentity-e2e-{ns}-{identity}.log")),
        )
        .expect("log file");
        let watch_args: Vec<&str> = match watch {
            Some(w) => vec!["--namespace", w],
            None => vec![],
        };
        let child = Command::new(env!("CARGO_BIN_EXE_vmidentity"))
            .arg("controller")
            .args(watch_args)
            .args([
                "--arm-endpoint",
                &sim.base_url(),
                "--graph-endpoint",
                &sim.base_url(),
                "--resync-seconds",
                "3",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--lease-name",
                "vmidentity-leader",
                "--lease-namespace",
                ns,
                "--identity",
                identity,
                "--lease-seconds",
                "4",
                "--lro-poll-ms",
                "50",
                "--namespace-labels=true",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig())
            .env_remove("AZURE_ACCESS_TOKEN")
            .env_remove("AZURE_GRAPH_ACCESS_TOKEN")
            .envs(env.iter().copied())
            .env("VMIDENTITY_LOG_FORMAT", "text")
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("controller starts");
        ControllerProc {
            child,
            metrics_port: port,
            identity: identity.to_string(),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM for a graceful stop, then waits (without blocking the runtime, which also
    /// serves the simulator) for the process to exit.
    pub async fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
        None
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        for _ in 0..50 {
            if let Ok(r) = reqwest_get(&url).await {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        String::new()
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn reqwest_get(url: &str) -> Result<String, String> {
    // A tiny HTTP/1.0 GET over a TCP stream (the metrics endpoint is plain HTTP).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or("not http")?;
    let (host, path) = rest.split_once('/').ok_or("no path")?;
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// A test's world: its own namespace, simulator and API handle.
pub struct Env {
    pub ns: String,
    pub sim: SimHandle,
    pub client: Client,
    pub api: Api<VirtualMachineIdentity>,
}

impl Env {
    pub async fn new(ns: &str, world_yaml: &str) -> Env {
        Env::with_config(ns, world_yaml, |_| {}).await
    }

    pub async fn with_config(ns: &str, world_yaml: &str, f: impl FnOnce(&mut SimConfig)) -> Env {
        let client = client().await;
        install_crd(&client).await;
        let mut cfg = SimConfig {
            seed: WorldSeed::from_yaml_str(world_yaml).expect("world"),
            ..SimConfig::default()
        };
        f(&mut cfg);
        let sim = vmidentity_simulator::start(cfg).await.expect("simulator");
        let ns = format!("{ns}-{}", std::process::id());
        let api = Api::namespaced(client.clone(), &ns);
        ensure_namespace(&client, &ns).await;
        let env = Env {
            ns,
            sim,
            client,
            api,
        };
        env.cleanup().await;
        env.set_policy(allow_all_policy(&env.ns)).await;
        env
    }

    /// The name of this test's own policy.
    pub fn policy_name(&self) -> String {
        format!("e2e-{}", self.ns)
    }

    /// Creates or replaces this test's policy (cluster-scoped, covering its namespace).
    pub async fn set_policy(&self, spec: Value) {
        let api: Api<VirtualMachineIdentityPolicy> = Api::all(self.client.clone());
        let name = self.policy_name();
        let body = json!({
            "apiVersion": "vmidentity.dev/v1alpha1",
            "kind": "VirtualMachineIdentityPolicy",
            "metadata": {"name": name},
            "spec": spec,
        });
        api.patch(
            &name,
            &PatchParams::apply("vmidentity-e2e").force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("apply policy");
    }

    /// Deletes this test's policy.
    pub async fn delete_policy(&self) {
        let api: Api<VirtualMachineIdentityPolicy> = Api::all(self.client.clone());
        let _ = api
            .delete(&self.policy_name(), &DeleteParams::default())
            .await;
    }

    /// Removes every object of the namespace (finalizers included).
    pub async fn cleanup(&self) {
        if let Ok(list) = self.api.list(&Default::default()).await {
            for o in list {
                let name = o.metadata.name.clone().unwrap_or_default();
                let _ = self
                    .api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
                let _ = self.api.delete(&name, &DeleteParams::default()).await;
            }
        }
    }

    pub fn controller(&self, identity: &str) -> ControllerProc {
        ControllerProc::start(&self.ns, &self.sim, identity, &[])
    }

    pub async fn create(
        &self,
        name: &str,
        spec: Value,
    ) -> Result<VirtualMachineIdentity, kube::Error> {
        self.create_in(&self.ns, name, spec).await
    }

    /// Creates another namespace of this test, `<ns>-<suffix>` (labelled like the test's own),
    /// covered by no policy unless the test adds one; removed objects first on reuse.
    pub async fn namespace(&self, suffix: &str) -> String {
        let ns = format!("{}-{suffix}", self.ns);
        ensure_namespace(&self.client, &ns).await;
        self.cleanup_in(&ns).await;
        ns
    }

    fn api_in(&self, ns: &str) -> Api<VirtualMachineIdentity> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// [`Env::create`] in another namespace.
    pub async fn create_in(
        &self,
        ns: &str,
        name: &str,
        spec: Value,
    ) -> Result<VirtualMachineIdentity, kube::Error> {
        let spec: VirtualMachineIdentitySpec = serde_json::from_value(spec).expect("spec");
        let o = VirtualMachineIdentity::new(name, spec);
        self.api_in(ns).create(&PostParams::default(), &o).await
    }

    /// [`Env::get`] in another namespace.
    pub async fn get_in(&self, ns: &str, name: &str) -> Option<VirtualMachineIdentity> {
        self.api_in(ns).get_opt(name).await.expect("get")
    }

    /// [`Env::wait_for`] in another namespace.
    pub async fn wait_for_in(
        &self,
        ns: &str,
        name: &str,
        secs: u64,
        what: &str,
        f: impl Fn(&VirtualMachineIdentity) -> bool,
    ) -> VirtualMachineIdentity {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(o) = self.get_in(ns, name).await
                && f(&o)
            {
                return o;
            }
            if Instant::now() > deadline {
                panic!(
                    "{ns}/{name}: timed out waiting for {what}; last: {:#?}",
                    self.get_in(ns, name).await.map(|o| o.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`Env::cleanup`] of another namespace.
    pub async fn cleanup_in(&self, ns: &str) {
        let api = self.api_in(ns);
        if let Ok(list) = api.list(&Default::default()).await {
            for o in list {
                let name = o.metadata.name.clone().unwrap_or_default();
                let _ = api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        }
    }

    /// Creates or replaces the credential Secret of namespace `ns`.
    pub async fn put_secret_in(&self, ns: &str, name: &str, data: Value) {
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), ns);
        let body = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name}, "stringData": data});
        // Replace, so keys of an earlier version do not linger.
        let _ = api.delete(name, &DeleteParams::default()).await;
        for _ in 0..50 {
            match api
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(body.clone()).expect("secret"),
                )
                .await
            {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("secret: {e}"),
            }
        }
        panic!("secret {ns}/{name} still being deleted");
    }

    /// Creates an object from raw JSON (so the API server, not serde, judges it).
    pub async fn create_raw(&self, obj: Value) -> Result<kube::api::DynamicObject, kube::Error> {
        let ar = kube::api::ApiResource::erase::<VirtualMachineIdentity>(&());
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &ar);
        let o: kube::api::DynamicObject = serde_json::from_value(obj).expect("object");
        api.create(&PostParams::default(), &o).await
    }

    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .expect("patch spec");
    }

    pub async fn get(&self, name: &str) -> Option<VirtualMachineIdentity> {
        self.get_in(&self.ns, name).await
    }

    /// Waits until `f` holds for the object (or fails the test after `secs`).
    pub async fn wait_for(
        &self,
        name: &str,
        secs: u64,
        what: &str,
        f: impl Fn(&VirtualMachineIdentity) -> bool,
    ) -> VirtualMachineIdentity {
        self.wait_for_in(&self.ns.clone(), name, secs, what, f)
            .await
    }

    pub async fn wait_gone(&self, name: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.get(name).await.is_some() {
            assert!(
                Instant::now() < deadline,
                "{name} still there (stuck finalizer?)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_until(&self, secs: u64, what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `(type, sorted lower-cased UAI names)` of a VM.
    pub fn identity(&self, id: &str) -> (String, Vec<String>) {
        let ident = self.sim.identity_of(id).unwrap_or(Value::Null);
        let ty = ident
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("None")
            .to_string();
        let mut names: Vec<String> = ident
            .get("userAssignedIdentities")
            .and_then(Value::as_object)
            .map(|m| {
                m.keys()
                    .map(|k| {
                        k.rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .to_ascii_lowercase()
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        (ty, names)
    }

    /// Token requests the simulator's Entra saw for `client_id`.
    pub fn logins_for(&self, client_id: &str) -> usize {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| {
                r.path.contains("oauth2")
                    && r.body
                        .as_ref()
                        .is_some_and(|b| b.to_string().contains(client_id))
            })
            .count()
    }

    /// Bodies of the PATCHes ARM accepted (200/202).
    pub fn accepted_patches(&self) -> Vec<Value> {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && (r.status == 200 || r.status == 202))
            .filter_map(|r| r.body)
            .collect()
    }
}

pub fn condition(o: &VirtualMachineIdentity, type_: &str) -> Option<(String, String)> {
    o.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn is_ready(o: &VirtualMachineIdentity) -> bool {
    condition(o, "Ready").is_some_and(|(s, _)| s == "True")
        && o.status.as_ref().and_then(|s| s.observed_generation) == o.metadata.generation
}

pub fn stalled_with(o: &VirtualMachineIdentity, reason: &str) -> bool {
    condition(o, "Stalled") == Some(("True".into(), reason.into()))
}

/// A world with UAIs u1..u4 and the named VMs (no identity), plus extra YAML.
pub fn world(vms: &[&str], extra: &str) -> String {
    let mut s = String::from("userAssignedIdentities:\n");
    for u in ["u1", "u2", "u3", "u4"] {
        s.push_str(&format!("  - id: {}\n", uai(u)));
    }
    s.push_str("virtualMachines:\n");
    for v in vms {
        s.push_str(&format!("  - id: {}\n", vm(v)));
    }
    s.push_str(extra);
    s
}
