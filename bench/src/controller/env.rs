//! The environment: kubeconfig, API client, CRDs and policy, the controller binary, the simulator.
//! What the tests do the same way comes from the shared kit (`vmidentity-testkit`).

use super::*;

pub(super) async fn kubeconfig(opt: &Options) -> Result<PathBuf> {
    if let Some(p) = &opt.kubeconfig {
        return Ok(p.clone());
    }
    // The kit runs tests/apiserver/kube-up.sh when VMIDENTITY_E2E_KUBECONFIG is not set.
    Ok(tokio::task::spawn_blocking(kit::kubeconfig).await??)
}

pub(super) async fn client(path: &Path) -> Result<Client> {
    Ok(kit::client(path).await?)
}

/// Server-side applies the CRDs from crds/ and waits until they are Established.
pub(super) async fn install_crd(client: &Client) -> Result<()> {
    Ok(kit::install_crds(client).await?)
}

/// A policy that lets the bench's namespaces do what the bench asks (the controller fails
/// closed without one), and the namespaces themselves.
pub(super) async fn allow_namespaces(
    client: &Client,
    name: &str,
    namespaces: &[String],
) -> Result<()> {
    for ns in namespaces {
        kit::apply_namespace(client, ns, &[]).await?;
    }
    let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    kit::apply_policy(client, name, &kit::allow_all_policy_for(&names))
        .await
        .context("applying the bench's VirtualMachineIdentityPolicy")?;
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

pub(super) async fn start_sim(vms: usize, opt: &Options) -> Result<SimHandle> {
    let yaml = world_yaml(vms, opt.vms_per_subscription, opt.identities);
    Ok(kit::start_sim(&yaml, |c| {
        c.lro = opt.lro;
        c.max_logged_requests = 200_000;
    })
    .await?)
}
