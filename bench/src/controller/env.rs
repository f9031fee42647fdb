//! The environment: kubeconfig, API client, CRDs and policy, the controller binary, the simulator.

use super::*;

pub(super) async fn kubeconfig(opt: &Options) -> Result<PathBuf> {
    if let Some(p) = &opt.kubeconfig {
        return Ok(p.clone());
    }
    if let Ok(p) = std::env::var("VMIDENTITY_E2E_KUBECONFIG") {
        return Ok(PathBuf::from(p));
    }
    let script = root().join("tests/apiserver/kube-up.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

pub(super) async fn client(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("kubeconfig")?;
    Client::try_from(cfg).context("Kubernetes client")
}

/// Server-side applies the CRDs from crds/ and waits until they are Established.
pub(super) async fn install_crd(client: &Client) -> Result<()> {
    install_one_crd(
        client,
        "vmidentity.dev_virtualmachineidentities.yaml",
        CRD_NAME,
    )
    .await?;
    install_one_crd(
        client,
        "vmidentity.dev_virtualmachineidentitypolicies.yaml",
        "virtualmachineidentitypolicies.vmidentity.dev",
    )
    .await
}

/// A policy that lets the bench's namespaces do what the bench asks (the controller fails
/// closed without one).
pub(super) async fn allow_namespaces(
    client: &Client,
    name: &str,
    namespaces: &[String],
) -> Result<()> {
    // kube-apiserver refuses objects in a namespace that does not exist.
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in namespaces {
        let body =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        nss.patch(
            ns,
            &PatchParams::apply("vmidentity-bench").force(),
            &Patch::Apply(&body),
        )
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    }
    let api: Api<vmidentity::crd::VirtualMachineIdentityPolicy> = Api::all(client.clone());
    let body = serde_json::json!({
        "apiVersion": "vmidentity.dev/v1alpha1",
        "kind": "VirtualMachineIdentityPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaces": {"names": namespaces},
            "targets": {"patterns": ["**"]},
            "userAssignedIdentities": {"patterns": ["**"]},
        },
    });
    api.patch(
        name,
        &PatchParams::apply("vmidentity-bench").force(),
        &Patch::Apply(&body),
    )
    .await
    .context("applying the bench's VirtualMachineIdentityPolicy")?;
    Ok(())
}

pub(super) async fn install_one_crd(client: &Client, file: &str, crd_name: &str) -> Result<()> {
    let path = root().join("crds").join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text).context("CRD YAML")?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        crd_name,
        &PatchParams::apply("vmidentity-bench").force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying a CRD")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = api.get(crd_name).await.context("reading the CRD")?;
        let established = c
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            break;
        }
        if Instant::now() > deadline {
            bail!("the CRD is not Established after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API server needs a moment before it serves a new (or updated) schema.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

pub(super) fn vmidentity_binary(opt: &Options) -> Result<PathBuf> {
    if let Some(p) = &opt.vmidentity {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?;
    let candidate = dir.join("vmidentity");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!(
            "{} not found: build it first (cargo build --release -p vmidentity) or pass --vmidentity PATH",
            candidate.display()
        )
    }
}

pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) async fn start_sim(vms: usize, opt: &Options) -> Result<SimHandle> {
    let yaml = world_yaml(vms, opt.vms_per_subscription, opt.identities);
    let seed = WorldSeed::from_yaml_str(&yaml).map_err(|e| anyhow!("world seed: {e}"))?;
    vmidentity_simulator::start(SimConfig {
        seed,
        lro: opt.lro,
        max_logged_requests: 200_000,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| anyhow!("starting the simulator: {e}"))
}
