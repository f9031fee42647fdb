//! The test API server: connecting to it, the CRDs and policies, namespaces, clearing objects.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{Error, Result, io, kube_err};

/// The field manager of everything the kit applies.
pub const MANAGER: &str = "vmidentity-testkit";

/// The CRDs in `crds/`, by file and name.
const CRDS: [(&str, &str); 2] = [
    (
        "vmidentity.dev_virtualmachineidentities.yaml",
        "virtualmachineidentities.vmidentity.dev",
    ),
    (
        "vmidentity.dev_virtualmachineidentitypolicies.yaml",
        "virtualmachineidentitypolicies.vmidentity.dev",
    ),
];

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kubeconfig of the test API server: `VMIDENTITY_E2E_KUBECONFIG`, or the path that
/// `tests/apiserver/kube-up.sh` prints (idempotent, and fast once the server is built). Blocks
/// while the script runs.
pub fn kubeconfig() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("VMIDENTITY_E2E_KUBECONFIG") {
        return Ok(PathBuf::from(p));
    }
    let script = repo_root().join("tests/apiserver/kube-up.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(io(format!("running {}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "{} failed ({})",
            script.display(),
            out.status
        )));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// A client of the API server that `path` describes.
pub async fn client(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    Client::try_from(cfg).map_err(kube_err("building the Kubernetes client"))
}

/// Server-side applies both CRDs from `crds/` and waits until they are Established.
pub async fn install_crds(client: &Client) -> Result<()> {
    for (file, name) in CRDS {
        install_crd(client, file, name).await?;
    }
    // The API server needs a moment before it serves a new (or updated) schema.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

async fn install_crd(client: &Client, file: &str, name: &str) -> Result<()> {
    let path = repo_root().join("crds").join(file);
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    let crd: CustomResourceDefinition =
        serde_yaml_ng::from_str(&text).map_err(|source| Error::Yaml {
            what: path.display().to_string(),
            source,
        })?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    server_side_apply(&api, name, &crd, "the CRD").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = api
            .get(name)
            .await
            .map_err(kube_err(format!("reading the CRD {name}")))?;
        let established = c
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "the CRD {name} is not Established after 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates or updates namespace `ns` with these labels (the API server refuses objects in a
/// namespace that does not exist).
pub async fn apply_namespace(client: &Client, ns: &str, labels: &[(&str, &str)]) -> Result<()> {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), json!(v)))
        .collect();
    let body = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": labels}});
    server_side_apply(
        &Api::<Namespace>::all(client.clone()),
        ns,
        &body,
        "namespace",
    )
    .await
}

/// Server-side apply of `body` as [`MANAGER`], taking over conflicting fields.
async fn server_side_apply<K, B>(api: &Api<K>, name: &str, body: &B, what: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    B: Serialize + Debug,
{
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(kube_err(format!("applying {what} {name}")))?;
    Ok(())
}

fn policies(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("vmidentity.dev", "v1alpha1", "VirtualMachineIdentityPolicy");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "virtualmachineidentitypolicies");
    Api::all_with(client.clone(), &ar)
}

/// Creates or replaces the cluster-scoped `VirtualMachineIdentityPolicy` `name` with `spec`.
pub async fn apply_policy(client: &Client, name: &str, spec: &Value) -> Result<()> {
    let body = json!({
        "apiVersion": "vmidentity.dev/v1alpha1",
        "kind": "VirtualMachineIdentityPolicy",
        "metadata": {"name": name},
        "spec": spec,
    });
    server_side_apply(&policies(client), name, &body, "the policy").await
}

/// Deletes the policy `name` (absent is fine).
pub async fn delete_policy(client: &Client, name: &str) -> Result<()> {
    match policies(client)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err(format!("deleting the policy {name}"))(e)),
    }
}

/// A policy spec that lets `namespaces` do everything but lift the built-in deny list.
pub fn allow_all_policy_for(namespaces: &[&str]) -> Value {
    json!({
        "namespaces": {"names": namespaces},
        "targets": {"patterns": ["**"]},
        "userAssignedIdentities": {"patterns": ["**"]},
        "allowDisableSystemAssigned": true,
        "allowExactMode": true,
        "roleAssignments": [{"roles": ["*"], "scopes": ["/**"]}],
        "groups": ["*"],
    })
}

/// [`allow_all_policy_for`] one namespace.
pub fn allow_all_policy(ns: &str) -> Value {
    allow_all_policy_for(&[ns])
}

/// Names of the objects `api` lists, a page of 500 at a time.
pub async fn names<K>(api: &Api<K>) -> Result<Vec<String>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api
            .list_metadata(&lp)
            .await
            .map_err(kube_err("listing objects"))?;
        out.extend(page.items.into_iter().filter_map(|o| o.metadata.name));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Removes every object `api` lists, finalizers first (`concurrency` patches at a time), then
/// all of them in one request; three rounds at most, for objects created meanwhile.
pub async fn clear_objects<K>(api: &Api<K>, concurrency: usize)
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    for _ in 0..3 {
        let Ok(list) = names(api).await else { break };
        if list.is_empty() {
            break;
        }
        stream::iter(list)
            .map(|name| async move {
                let _ = api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
        let _ = api
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
    }
}
