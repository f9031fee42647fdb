//! End-to-end harness: a real API server (tests/apiserver/kube-up.sh), the ARM simulator in this
//! process, and the real `vmidentity controller` binary as a child process. What does not need
//! the custom resource's Rust types comes from the shared kit (`vmidentity-testkit`, also used
//! by the scenario tests and the bench); this file adds the typed `Env` and the names the tests
//! call.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vmidentity::crd::{VirtualMachineIdentity, VirtualMachineIdentitySpec};
use vmidentity_simulator::{SimConfig, SimHandle};
use vmidentity_testkit as kit;

pub use kit::{TOKEN, allow_all_policy};

pub const SUB: &str = "/subscriptions/00000000-0000-0000-0000-0000000000e2";

pub fn vm(name: &str) -> String {
    format!("{SUB}/resourceGroups/rg-e2e/providers/Microsoft.Compute/virtualMachines/{name}")
}

pub fn uai(name: &str) -> String {
    format!(
        "{SUB}/resourceGroups/rg-e2e/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

/// The kubeconfig of the test API server ([`kit::kubeconfig`], once per test binary).
pub fn kubeconfig() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| kit::kubeconfig().expect("the test API server"))
        .clone()
}

pub async fn client() -> Client {
    kit::client(&kubeconfig()).await.expect("client")
}

/// Installs (server-side apply) the CRDs from crds/ and waits until they are Established.
pub async fn install_crd(client: &Client) {
    kit::install_crds(client).await.expect("install the CRDs");
}

/// Creates namespace `ns` (labelled `vmidentity-e2e/ns: <ns>`, for tests that select it):
/// objects need their namespace.
async fn ensure_namespace(client: &Client, ns: &str) {
    kit::apply_namespace(client, ns, &[("vmidentity-e2e/ns", ns)])
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
    kit::federated_token_file(issuer, subject, name).expect("token file")
}

/// The flags of a controller that requires a credential Secret per namespace and keeps a
/// client for a second; with [`REQUIRED_CREDENTIALS_ENV`].
pub const REQUIRED_CREDENTIALS_FLAGS: [&str; 2] = [
    "--namespace-credentials=required",
    "--namespace-credential-ttl-seconds=1",
];

/// The platform token, and the simulator (at `url`) as Entra ID's authority for namespace
/// credentials.
pub fn required_credentials_env(url: &str) -> [(&'static str, &str); 2] {
    [("AZURE_ACCESS_TOKEN", TOKEN), ("AZURE_AUTHORITY_HOST", url)]
}

/// A running `vmidentity controller` process (killed on drop).
pub struct ControllerProc {
    inner: kit::ControllerProc,
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
                ("AZURE_GRAPH_ACCESS_TOKEN", kit::GRAPH_TOKEN),
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
        let url = sim.base_url();
        // A test may choose its own resync period (`extra`); 3 s otherwise.
        let resync = if extra.contains(&"--resync-seconds") {
            vec![]
        } else {
            vec!["--resync-seconds", "3"]
        };
        let mut cmd = kit::ControllerCmd::new(
            Path::new(env!("CARGO_BIN_EXE_vmidentity")),
            &kubeconfig(),
            &url,
            ns,
            identity,
            std::env::temp_dir().join(format!("vmidentity-e2e-{ns}-{identity}.log")),
        )
        .expect("controller command")
        .args(resync)
        .args([
            "--graph-endpoint",
            &url,
            "--lease-name",
            "vmidentity-leader",
            "--lease-seconds",
            "4",
            "--lro-poll-ms",
            "50",
            "--namespace-labels=true",
        ]);
        if let Some(w) = watch {
            cmd = cmd.watch(w);
        }
        let metrics_port = cmd.metrics_port();
        let inner = cmd
            .args(extra)
            .envs(env.iter().copied())
            .spawn()
            .expect("controller starts");
        ControllerProc {
            inner,
            metrics_port,
            identity: identity.to_string(),
        }
    }

    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// SIGTERM for a graceful stop, then waits (without blocking the runtime, which also
    /// serves the simulator) for the process to exit.
    pub async fn terminate(&mut self) -> Option<i32> {
        self.inner.terminate().await
    }

    /// The `/metrics` text, retried for 5 s while the controller starts; empty when it never
    /// answers.
    pub async fn metrics(&self) -> String {
        for _ in 0..50 {
            if let Ok(r) = self.inner.metrics().await {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        String::new()
    }
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
        let sim = kit::start_sim(world_yaml, f).await.expect("simulator");
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
        kit::apply_policy(&self.client, &self.policy_name(), &spec)
            .await
            .expect("apply policy");
    }

    /// Deletes this test's policy.
    pub async fn delete_policy(&self) {
        kit::delete_policy(&self.client, &self.policy_name())
            .await
            .expect("delete policy");
    }

    /// Removes every object of the namespace (finalizers included).
    pub async fn cleanup(&self) {
        self.cleanup_in(&self.ns).await;
    }

    pub fn controller(&self, identity: &str) -> ControllerProc {
        ControllerProc::start(&self.ns, &self.sim, identity, &[])
    }

    /// A controller of this test's namespace (every namespace with `cluster_wide`) that
    /// requires namespace credentials ([`REQUIRED_CREDENTIALS_FLAGS`]).
    pub fn controller_requiring_credentials(
        &self,
        identity: &str,
        cluster_wide: bool,
    ) -> ControllerProc {
        let url = self.sim.base_url();
        let env = required_credentials_env(&url);
        let watch = (!cluster_wide).then_some(self.ns.as_str());
        ControllerProc::spawn(
            watch,
            &self.ns,
            &self.sim,
            identity,
            &REQUIRED_CREDENTIALS_FLAGS,
            &env,
        )
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
        kit::clear_objects(&self.api_in(ns), 8).await;
    }

    /// Creates or replaces the credential Secret of namespace `ns`.
    pub async fn put_secret_in(&self, ns: &str, name: &str, data: Value) {
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), ns);
        let body = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name}, "stringData": data});
        // Replace, so keys of an earlier version do not linger.
        let _ = api.delete(name, &Default::default()).await;
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
        kit::identity_of(&self.sim, id)
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
