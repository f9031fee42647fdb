//! `vmidentity import`: one `VirtualMachineIdentity` per VM / VM scale set that already
//! exists, read in bulk so that `plan` of the result against the same Azure prints `[]`.
//!
//! Reads, all through the typed clients behind the [`Executor`] (nothing is written):
//! - Resource Graph `Resources` for the identity blocks of every VM and VMSS in scope (1,000
//!   rows a page, `$skipToken`; never one GET per VM), and the AKS clusters'
//!   `properties.nodeResourceGroup` (unless `--include-platform`);
//! - Resource Graph `AuthorizationResources` for the role assignments held by their
//!   principals (`--with-grants`; 500 principals a query, never one list per principal);
//! - Microsoft Graph `memberOf`, paged, for each principal's direct group memberships
//!   (`--with-groups`).
//!
//! What is written, per target:
//! - `spec.target` and every user-assigned identity ID in ARM's canonical spelling
//!   (`/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}`,
//!   names as ARM returns them);
//! - `systemAssigned` as it is (true or false); no `mode` (Merge: an imported object never
//!   removes anything); no `armApiVersion` (the default, 2025-04-01: the dictionary shape
//!   Resource Graph shows, with entity tags);
//! - the user-assigned identities, except stale entries (identity deleted under the VM: ARM
//!   shows them with empty `principalId` and `clientId`; declaring one would plan a
//!   re-attach) and platform identities, each listed on stderr;
//! - `roleAssignments`: every assignment held **directly** by one of the target's principals
//!   at its own scope (role as its definition GUID: exact, never ambiguous with a custom role
//!   of the same name, resolved without a read). Assignments the principal only inherits
//!   (through a group it is a member of, or at management-group / root scope, which a
//!   subscription's rows do not hold) are not imported: they are not the principal's own, and
//!   declaring them would make the controller create a direct assignment. An assignment at a
//!   parent scope (subscription or resource group) held by the principal itself *is* imported,
//!   at that scope, so it plans to nothing;
//! - `groupMemberships`: the principal's direct memberships (`memberOf`).
//!
//! A user-assigned identity shared by several targets carries its grants on one object only:
//! the first target (by ARM ID) that lists it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde_json::{Value, json};
use vmidentity_azure::resourcegraph::kql_string;
use vmidentity_azure::{AzureError, Executor};
use vmidentity_planner::ArmId;
use vmidentity_planner::live::parse_identity;

use crate::crd::{
    ADOPT_ANNOTATION, GroupMembership, RoleAssignment, VirtualMachineIdentity,
    VirtualMachineIdentitySpec,
};

/// Largest list the CRD accepts for `roleAssignments` / `groupMemberships` and
/// `userAssignedIdentities` (its `maxItems`).
const MAX_GRANTS: usize = 64;
const MAX_UAIS: usize = 150;
/// Longest object name written (a DNS-1123 label, so it also fits label values).
const MAX_NAME: usize = 63;

/// Why an import stops. Each is one line; nothing is printed as if it were complete.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Input(String),
    #[error("reading {what} from Resource Graph: {source}")]
    ResourceGraph {
        what: &'static str,
        #[source]
        source: Box<AzureError>,
    },
    #[error(
        "reading the group memberships of principal {principal} from Microsoft Graph: {source}"
    )]
    Graph {
        principal: String,
        #[source]
        source: Box<AzureError>,
    },
    #[error(
        "--with-groups needs Microsoft Graph: give --graph-token (or AZURE_GRAPH_ACCESS_TOKEN)"
    )]
    NoGraph,
}

/// Where each object goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceRule {
    Fixed(String),
    /// The value of this tag on the VM / VMSS (a target without it is skipped).
    FromTag(String),
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub subscriptions: Vec<String>,
    pub resource_groups: Vec<String>,
    /// `key=value` pairs, all required.
    pub tags: Vec<(String, String)>,
    /// A Resource Graph KQL `where` predicate (a leading `where` is accepted).
    pub query: Option<String>,
    pub namespace: NamespaceRule,
    pub with_grants: bool,
    pub with_groups: bool,
    pub adopt: bool,
    pub include_platform: bool,
    /// `key` or `key=value`: targets carrying it are platform-managed.
    pub skip_tags: Vec<(String, Option<String>)>,
}

/// A target or identity left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

/// Requests by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// `Resources` pages (targets and AKS clusters).
    pub resource_pages: u32,
    /// `AuthorizationResources` pages.
    pub authorization_pages: u32,
    /// Graph requests for the memberships: `$batch` POSTs of 20 `memberOf` reads each.
    pub member_of_reads: u32,
    pub targets_read: usize,
    pub role_assignments: usize,
    pub memberships: usize,
}

/// The result: objects sorted by namespace and name.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    pub objects: Vec<VirtualMachineIdentity>,
    /// Targets left out (platform, `--skip-tag`, no namespace tag, too large for the CRD).
    pub skipped: Vec<Skipped>,
    /// Entries left out of an imported object (stale or platform identities).
    pub dropped: Vec<Skipped>,
    pub stats: ImportStats,
}

/// Parses `key=value` (`--tag`).
pub fn parse_tag(s: &str) -> Result<(String, String), ImportError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(ImportError::Input(format!(
            "--tag {s:?}: expected key=value (for a tag present with any value use --query \"isnotnull(tags['key'])\")"
        ))),
    }
}

/// Parses `key[=value]` (`--skip-tag`).
pub fn parse_skip_tag(s: &str) -> Result<(String, Option<String>), ImportError> {
    let (k, v) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (s, None),
    };
    if k.trim().is_empty() {
        return Err(ImportError::Input(format!(
            "--skip-tag {s:?}: expected key or key=value"
        )));
    }
    Ok((k.trim().to_string(), v))
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A subscription ID as Resource Graph takes it (a GUID).
pub fn is_subscription_id(s: &str) -> bool {
    is_guid(s)
}

/// A valid DNS-1123 label (namespaces).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl ImportRequest {
    /// Checks what can be checked before any request.
    pub fn validate(&self) -> Result<(), ImportError> {
        if self.subscriptions.is_empty() {
            return Err(ImportError::Input(
                "give at least one --subscription".into(),
            ));
        }
        for s in &self.subscriptions {
            if !is_guid(s) {
                return Err(ImportError::Input(format!(
                    "--subscription {s:?}: a subscription ID is a GUID"
                )));
            }
        }
        if let NamespaceRule::Fixed(ns) = &self.namespace
            && !is_dns_label(ns)
        {
            return Err(ImportError::Input(format!(
                "--namespace {ns:?}: not a valid namespace name (DNS-1123 label)"
            )));
        }
        if let Some(q) = &self.query
            && q.trim().is_empty()
        {
            return Err(ImportError::Input("--query is empty".into()));
        }
        Ok(())
    }

    /// The Resource Graph query for the targets: VMs and VMSS with their identity, narrowed
    /// by resource group, tag and `--query`, ordered by id (`id` projected for paging).
    pub fn targets_query(&self) -> String {
        let mut q = String::from(
            "Resources | where type =~ 'microsoft.compute/virtualmachines' or type =~ 'microsoft.compute/virtualmachinescalesets'",
        );
        if !self.resource_groups.is_empty() {
            let list: Vec<String> = self.resource_groups.iter().map(|g| kql_string(g)).collect();
            q.push_str(&format!(" | where resourceGroup in~ ({})", list.join(", ")));
        }
        for (k, v) in &self.tags {
            q.push_str(&format!(
                " | where tags[{}] == {}",
                kql_string(k),
                kql_string(v)
            ));
        }
        if let Some(filter) = &self.query {
            let f = filter.trim();
            let f = f
                .strip_prefix("where ")
                .or_else(|| f.strip_prefix("WHERE "))
                .unwrap_or(f);
            q.push_str(&format!(" | where ({f})"));
        }
        q.push_str(" | project id, name, type, resourceGroup, subscriptionId, tags, identity | order by id asc");
        q
    }
}

/// The AKS clusters' node resource groups query.
pub const CLUSTERS_QUERY: &str = "Resources | where type =~ 'microsoft.containerservice/managedclusters' | project id, properties | order by id asc";

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/{Namespace}/{type}/{name}` with the
/// literal segments spelled as ARM's documentation does; names kept as given.
pub fn canonical_id(id: &ArmId) -> String {
    use vmidentity_planner::id::ResourceKind;
    let (ns, ty) = match id.kind() {
        ResourceKind::VirtualMachine => ("Microsoft.Compute", "virtualMachines"),
        ResourceKind::VirtualMachineScaleSet => ("Microsoft.Compute", "virtualMachineScaleSets"),
        ResourceKind::UserAssignedIdentity => {
            ("Microsoft.ManagedIdentity", "userAssignedIdentities")
        }
        ResourceKind::Other => return id.as_str().to_string(),
    };
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/{ns}/{ty}/{}",
        id.subscription(),
        id.resource_group().unwrap_or_default(),
        id.name()
    )
}

/// FNV-1a, 64 bits: a stable hash (the same on every platform and run).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The short hash of a target's ARM ID (case-folded) used as a name suffix.
pub fn id_suffix(target: &str) -> String {
    format!("{:08x}", fnv1a(&target.to_ascii_lowercase()) as u32)
}

/// A DNS-1123 label from a VM / VMSS name: lower case, every run of other characters
/// (`.`, `_`, ...) one `-`, trimmed, at most 63 characters. `lossy` when the name had to be
/// cut (then it needs the suffix to stay unique).
fn base_name(name: &str) -> (String, bool) {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-').to_string();
    let base = if trimmed.is_empty() {
        "vm".to_string()
    } else {
        trimmed
    };
    if base.len() > MAX_NAME {
        (base, true)
    } else {
        (base, false)
    }
}

/// Object names for targets `(namespace, ARM ID, VM/VMSS name)`: the DNS-1123 form of the
/// name; every target whose name is shared with another target of the same namespace (after
/// the conversion), or was cut to fit, gets `-{8 hex of a hash of its ARM ID}`. Deterministic:
/// the same fleet gives the same names on every run, whatever the order.
pub fn object_names(targets: &[(String, String, String)]) -> Vec<String> {
    let bases: Vec<(String, bool)> = targets.iter().map(|(_, _, n)| base_name(n)).collect();
    let mut count: HashMap<(&str, &str), usize> = HashMap::new();
    for ((ns, _, _), (b, _)) in targets.iter().zip(&bases) {
        *count.entry((ns.as_str(), b.as_str())).or_default() += 1;
    }
    targets
        .iter()
        .zip(&bases)
        .map(|((ns, id, _), (b, lossy))| {
            let clash = count.get(&(ns.as_str(), b.as_str())).copied().unwrap_or(0) > 1;
            if clash || *lossy {
                let cut: String = b.chars().take(MAX_NAME - 9).collect();
                format!("{}-{}", cut.trim_end_matches('-'), id_suffix(id))
            } else {
                b.clone()
            }
        })
        .collect()
}

/// Why a target is platform-managed, if it is.
fn platform_target(
    rg: &str,
    tags: &Value,
    node_groups: &BTreeMap<String, String>,
    skip_tags: &[(String, Option<String>)],
) -> Option<String> {
    let lower = rg.to_ascii_lowercase();
    if let Some(cluster) = node_groups.get(&lower) {
        return Some(format!(
            "AKS node resource group {rg} of cluster {cluster} (platform-managed; --include-platform takes it in)"
        ));
    }
    if lower.starts_with("mc_") {
        return Some(format!(
            "AKS node resource group {rg} (MC_*; platform-managed; --include-platform takes it in)"
        ));
    }
    for (k, v) in skip_tags {
        let found = tags.as_object().and_then(|m| {
            m.iter()
                .find(|(tk, _)| tk.eq_ignore_ascii_case(k))
                .map(|(_, tv)| tv.as_str().unwrap_or_default().to_string())
        });
        match (found, v) {
            (Some(tv), Some(want)) if tv == *want => {
                return Some(format!("tagged {k}={want} (--skip-tag)"));
            }
            (Some(_), None) => return Some(format!("tagged {k} (--skip-tag)")),
            _ => {}
        }
    }
    None
}

/// Add-on identity name prefixes AKS gives the managed identities of its add-ons, in the
/// node resource group ("Use a managed identity in Azure Kubernetes Service", summary of
/// managed identities: `omsagent-{cluster}`, `azurepolicy-{cluster}`, `aciconnectorlinux-…`,
/// `ingressapplicationgateway-…`, `azurekeyvaultsecretsprovider-…`, `webapprouting-…`).
const AKS_ADDON_PREFIXES: &[&str] = &[
    "omsagent-",
    "azurepolicy-",
    "aciconnectorlinux-",
    "ingressapplicationgateway-",
    "azurekeyvaultsecretsprovider-",
    "webapprouting-",
    "keda-",
];

/// Why a user-assigned identity is platform-managed, if it is: AKS's kubelet identity
/// (`{cluster}-agentpool`) and add-on identities (in the node resource group), and Azure
/// Policy's built-in user-assigned identity (`built-in-identity-{location}` in
/// `Built-In-Identity-RG`, made by the Azure Monitor Agent / Defender initiatives when they
/// remediate).
fn platform_identity(uai: &ArmId, node_groups: &BTreeMap<String, String>) -> Option<String> {
    let rg = uai
        .resource_group()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name = uai.name().to_ascii_lowercase();
    if rg == "built-in-identity-rg" || name.starts_with("built-in-identity") {
        return Some("Azure Policy built-in identity (remediation)".into());
    }
    let in_node_rg = rg.starts_with("mc_") || node_groups.contains_key(&rg);
    if name.ends_with("-agentpool") {
        return Some("AKS kubelet (agentpool) identity".into());
    }
    if in_node_rg && AKS_ADDON_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Some("AKS add-on identity".into());
    }
    if in_node_rg {
        return Some("identity in an AKS node resource group".into());
    }
    None
}

/// One target as read.
struct Target {
    id: String,
    name: String,
    namespace: String,
    system: Option<String>,
    system_on: bool,
    /// Canonical UAI ID → principal ID, in ID order.
    uais: Vec<(String, Option<String>)>,
}

/// Reads the fleet and builds the objects. Nothing is written; an error stops everything.
pub async fn import(exec: &Executor, req: &ImportRequest) -> Result<Imported, ImportError> {
    req.validate()?;
    if req.with_groups && !exec.has_graph() {
        return Err(ImportError::NoGraph);
    }
    let arm = exec.client();
    let mut out = Imported::default();

    // AKS clusters: their node resource groups are platform-managed.
    let mut node_groups: BTreeMap<String, String> = BTreeMap::new();
    if !req.include_platform {
        out.stats.resource_pages += arm
            .query_each(&req.subscriptions, CLUSTERS_QUERY, |row| {
                if let (Some(id), Some(rg)) = (
                    row.get("id").and_then(Value::as_str),
                    row.pointer("/properties/nodeResourceGroup")
                        .and_then(Value::as_str),
                ) {
                    node_groups.insert(rg.to_ascii_lowercase(), id.to_string());
                }
            })
            .await
            .map_err(|source| ImportError::ResourceGraph {
                what: "the AKS clusters",
                source: Box::new(source),
            })?;
    }

    // The targets.
    let mut targets: Vec<Target> = Vec::new();
    let mut row_error: Option<String> = None;
    let query = req.targets_query();
    out.stats.resource_pages += arm
        .query_each(&req.subscriptions, &query, |row| {
            out.stats.targets_read += 1;
            match read_target(row, req, &node_groups, &mut out.skipped, &mut out.dropped) {
                Ok(Some(t)) => targets.push(t),
                Ok(None) => {}
                Err(e) => {
                    row_error.get_or_insert(e);
                }
            }
        })
        .await
        .map_err(|source| ImportError::ResourceGraph {
            what: "the VMs and scale sets",
            source: Box::new(source),
        })?;
    if let Some(e) = row_error {
        return Err(ImportError::Input(e));
    }
    targets.sort_by_key(|t| t.id.to_ascii_lowercase());

    // Who holds each principal: (target index, identity as the spec names it). A shared
    // user-assigned identity belongs to the first target listing it.
    let mut holder: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        if let Some(p) = &t.system {
            holder
                .entry(p.to_ascii_lowercase())
                .or_insert((i, "SystemAssigned".into()));
        }
        for (id, p) in &t.uais {
            if let Some(p) = p {
                holder
                    .entry(p.to_ascii_lowercase())
                    .or_insert((i, id.clone()));
            }
        }
    }
    let principals: Vec<String> = holder.keys().cloned().collect();

    let mut roles: Vec<Vec<RoleAssignment>> = vec![Vec::new(); targets.len()];
    if req.with_grants && !principals.is_empty() {
        let (rows, pages) = arm
            .query_role_assignments(&req.subscriptions, &principals)
            .await
            .map_err(|source| ImportError::ResourceGraph {
                what: "the role assignments (AuthorizationResources)",
                source: Box::new(source),
            })?;
        out.stats.authorization_pages += pages;
        let mut seen: BTreeSet<(usize, String, String, String)> = BTreeSet::new();
        for r in rows {
            let Some((i, identity)) = holder.get(&r.principal_id.to_ascii_lowercase()) else {
                continue;
            };
            let guid = r
                .role_definition_id
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !is_guid(&guid) {
                continue;
            }
            let scope = r.scope.trim_end_matches('/').to_string();
            if seen.insert((
                *i,
                identity.clone(),
                guid.clone(),
                scope.to_ascii_lowercase(),
            )) {
                roles[*i].push(RoleAssignment {
                    identity: identity.clone(),
                    role: guid,
                    scope,
                });
                out.stats.role_assignments += 1;
            }
        }
    }

    let mut groups: Vec<Vec<GroupMembership>> = vec![Vec::new(); targets.len()];
    if req.with_groups && !principals.is_empty() {
        // 20 memberOf reads per Graph `$batch` request, never one request per principal.
        let principal_ids: Vec<String> = principals.to_vec();
        let (results, requests) = exec
            .member_of_many(&principal_ids)
            .await
            .map_err(|source| ImportError::Graph {
                principal: principal_ids.first().cloned().unwrap_or_default(),
                source: Box::new(source),
            })?;
        out.stats.member_of_reads += requests;
        for p in &principal_ids {
            let ids = match results.get(&p.to_ascii_lowercase()) {
                Some(Ok(ids)) => ids.clone(),
                Some(Err(source)) => {
                    return Err(ImportError::Graph {
                        principal: p.clone(),
                        source: Box::new(source.clone()),
                    });
                }
                None => {
                    return Err(ImportError::Graph {
                        principal: p.clone(),
                        source: Box::new(AzureError::InvalidResponse {
                            url: "$batch".into(),
                            message: "no answer for this principal in the batch".into(),
                        }),
                    });
                }
            };
            if let Some((i, identity)) = holder.get(p) {
                for g in ids {
                    groups[*i].push(GroupMembership {
                        identity: identity.clone(),
                        group_object_id: g,
                    });
                    out.stats.memberships += 1;
                }
            }
        }
    }

    // Names, then objects.
    let keys: Vec<(String, String, String)> = targets
        .iter()
        .map(|t| (t.namespace.clone(), t.id.clone(), t.name.clone()))
        .collect();
    let names = object_names(&keys);
    for (((t, name), mut roles), mut groups) in
        targets.into_iter().zip(names).zip(roles).zip(groups)
    {
        roles.sort_by(|a, b| {
            (
                a.identity.to_ascii_lowercase(),
                a.scope.to_ascii_lowercase(),
                &a.role,
            )
                .cmp(&(
                    b.identity.to_ascii_lowercase(),
                    b.scope.to_ascii_lowercase(),
                    &b.role,
                ))
        });
        groups.sort_by(|a, b| {
            (a.identity.to_ascii_lowercase(), &a.group_object_id)
                .cmp(&(b.identity.to_ascii_lowercase(), &b.group_object_id))
        });
        groups.dedup();
        if roles.len() > MAX_GRANTS || groups.len() > MAX_GRANTS {
            out.skipped.push(Skipped {
                id: t.id.clone(),
                reason: format!(
                    "{} role assignments and {} group memberships: more than the {MAX_GRANTS} one object may declare (import it without --with-grants / --with-groups, or split it by hand)",
                    roles.len(),
                    groups.len()
                ),
            });
            continue;
        }
        let spec = VirtualMachineIdentitySpec {
            target: t.id.clone(),
            arm_api_version: None,
            mode: None,
            system_assigned: Some(t.system_on),
            user_assigned_identities: t.uais.iter().map(|(id, _)| id.clone()).collect(),
            role_assignments: roles,
            group_memberships: groups,
            deletion_policy: None,
        };
        let mut obj = VirtualMachineIdentity::new(&name, spec);
        obj.metadata.namespace = Some(t.namespace.clone());
        if req.adopt {
            obj.metadata.annotations = Some(
                [(ADOPT_ANNOTATION.to_string(), "true".to_string())]
                    .into_iter()
                    .collect(),
            );
        }
        out.objects.push(obj);
    }
    out.objects.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    out.skipped.sort_by_key(|a| a.id.to_ascii_lowercase());
    out.dropped.sort_by_key(|a| a.id.to_ascii_lowercase());
    Ok(out)
}

/// One `Resources` row → a target, or `None` when it is skipped (recorded in `skipped`).
/// Err: a row that is not what Resource Graph documents (the import stops).
fn read_target(
    row: &Value,
    req: &ImportRequest,
    node_groups: &BTreeMap<String, String>,
    skipped: &mut Vec<Skipped>,
    dropped: &mut Vec<Skipped>,
) -> Result<Option<Target>, String> {
    let raw = row
        .get("id")
        .and_then(Value::as_str)
        .ok_or("Resource Graph returned a row without an id")?;
    let id = ArmId::parse_target(raw).map_err(|e| format!("Resource Graph row {raw}: {e}"))?;
    let canonical = canonical_id(&id);
    let tags = row.get("tags").cloned().unwrap_or(Value::Null);
    let rg = id.resource_group().unwrap_or_default();
    if !req.include_platform
        && let Some(reason) = platform_target(rg, &tags, node_groups, &req.skip_tags)
    {
        skipped.push(Skipped {
            id: canonical,
            reason,
        });
        return Ok(None);
    }
    let namespace = match &req.namespace {
        NamespaceRule::Fixed(ns) => ns.clone(),
        NamespaceRule::FromTag(key) => {
            let value = tags.as_object().and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .and_then(|(_, v)| v.as_str())
            });
            match value {
                Some(v) if is_dns_label(v) => v.to_string(),
                Some(v) => {
                    skipped.push(Skipped {
                        id: canonical,
                        reason: format!(
                            "tag {key}={v:?} is not a valid namespace name (--namespace-from-tag)"
                        ),
                    });
                    return Ok(None);
                }
                None => {
                    skipped.push(Skipped {
                        id: canonical,
                        reason: format!("no tag {key} (--namespace-from-tag)"),
                    });
                    return Ok(None);
                }
            }
        }
    };
    let identity = match row.get("identity") {
        None | Some(Value::Null) => Default::default(),
        Some(v) => parse_identity(v).map_err(|e| format!("Resource Graph row {raw}: {e}"))?,
    };
    let mut uais = Vec::new();
    for u in identity.user_assigned.values() {
        let uid = canonical_id(&u.id);
        if u.stale {
            dropped.push(Skipped {
                id: format!("{canonical} {uid}"),
                reason: "stale entry: its identity was deleted (empty principalId and clientId)"
                    .into(),
            });
            continue;
        }
        if !req.include_platform
            && let Some(reason) = platform_identity(&u.id, node_groups)
        {
            dropped.push(Skipped {
                id: format!("{canonical} {uid}"),
                reason: format!("{reason} (--include-platform takes it in)"),
            });
            continue;
        }
        uais.push((uid, u.principal_id.clone().filter(|p| !p.is_empty())));
    }
    uais.sort_by_key(|(id, _)| id.to_ascii_lowercase());
    if uais.len() > MAX_UAIS {
        skipped.push(Skipped {
            id: canonical,
            reason: format!(
                "{} user-assigned identities: more than the {MAX_UAIS} one object may declare",
                uais.len()
            ),
        });
        return Ok(None);
    }
    Ok(Some(Target {
        id: canonical,
        name: id.name().to_string(),
        namespace,
        system: identity
            .principal_id
            .clone()
            .filter(|p| identity.system_assigned && !p.is_empty()),
        system_on: identity.system_assigned,
        uais,
    }))
}

/// Output format of `import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportOutput {
    Yaml,
    Json,
}

/// The manifest of one object: `apiVersion`, `kind`, `metadata` (name, namespace,
/// annotations), `spec`.
pub fn manifest(o: &VirtualMachineIdentity) -> Value {
    let mut md = serde_json::Map::new();
    md.insert("name".into(), json!(o.metadata.name));
    md.insert("namespace".into(), json!(o.metadata.namespace));
    if let Some(a) = &o.metadata.annotations {
        md.insert("annotations".into(), json!(a));
    }
    json!({
        "apiVersion": "vmidentity.dev/v1alpha1",
        "kind": "VirtualMachineIdentity",
        "metadata": Value::Object(md),
        "spec": serde_json::to_value(&o.spec).unwrap_or(Value::Null),
    })
}

/// One document (YAML) or object (JSON).
pub fn render_one(o: &VirtualMachineIdentity, format: ImportOutput) -> Result<String, String> {
    let m = manifest(o);
    match format {
        ImportOutput::Yaml => serde_yaml_ng::to_string(&m).map_err(|e| e.to_string()),
        ImportOutput::Json => serde_json::to_string_pretty(&m)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
    }
}

/// Everything on stdout: multi-document YAML, or a JSON `v1` `List` (which `kubectl apply`
/// and `vmidentity plan -f` read).
pub fn render_all(
    objects: &[VirtualMachineIdentity],
    format: ImportOutput,
) -> Result<String, String> {
    match format {
        ImportOutput::Yaml => {
            let docs: Vec<String> = objects
                .iter()
                .map(|o| render_one(o, format))
                .collect::<Result<_, _>>()?;
            Ok(docs.iter().map(|d| format!("---\n{d}")).collect::<String>())
        }
        ImportOutput::Json => {
            let items: Vec<Value> = objects.iter().map(manifest).collect();
            serde_json::to_string_pretty(
                &json!({"apiVersion": "v1", "kind": "List", "items": items}),
            )
            .map(|s| s + "\n")
            .map_err(|e| e.to_string())
        }
    }
}

/// The file name of an object under `--out-dir`: `{namespace}_{name}.{yaml|json}`.
pub fn file_name(o: &VirtualMachineIdentity, format: ImportOutput) -> PathBuf {
    let ext = match format {
        ImportOutput::Yaml => "yaml",
        ImportOutput::Json => "json",
    };
    PathBuf::from(format!(
        "{}_{}.{ext}",
        o.metadata.namespace.as_deref().unwrap_or("default"),
        o.metadata.name.as_deref().unwrap_or("object")
    ))
}

/// `vmidentity import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Subscription to read (repeatable).
    #[arg(long = "subscription", required = true, value_name = "ID")]
    pub subscriptions: Vec<String>,
    /// Only VMs / VMSS in this resource group (repeatable).
    #[arg(long = "resource-group", value_name = "NAME")]
    pub resource_groups: Vec<String>,
    /// Only VMs / VMSS with this tag, `key=value` (repeatable; all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// A Resource Graph KQL filter on the VMs / VMSS rows (a `where` predicate, e.g.
    /// `location =~ 'westeurope' and tags['env'] == 'prod'`).
    #[arg(long, value_name = "KQL")]
    pub query: Option<String>,
    /// Namespace of the objects.
    #[arg(long, default_value = "default", conflicts_with = "namespace_from_tag")]
    pub namespace: String,
    /// Namespace of each object from this tag of its VM / VMSS (targets without it are
    /// skipped and listed).
    #[arg(long, value_name = "TAG_KEY")]
    pub namespace_from_tag: Option<String>,
    /// Declare the role assignments the identities hold (Resource Graph AuthorizationResources).
    #[arg(long)]
    pub with_grants: bool,
    /// Declare the identities' direct group memberships (Microsoft Graph memberOf; needs a
    /// Graph token).
    #[arg(long)]
    pub with_groups: bool,
    /// Annotate each object `vmidentity.dev/adopt: "true"` (it takes ownership of what it lists).
    #[arg(long)]
    pub adopt: bool,
    /// Take in platform-managed targets and identities (AKS node resource groups, AKS and
    /// Azure Policy identities, --skip-tag), which are otherwise skipped.
    #[arg(long)]
    pub include_platform: bool,
    /// Targets tagged `key` (any value) or `key=value` are platform-managed: skipped
    /// (repeatable).
    #[arg(long = "skip-tag", value_name = "KEY[=VALUE]")]
    pub skip_tags: Vec<String>,
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: ImportOutput,
    /// Write one file per object here (`{namespace}_{name}.yaml`) instead of stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    #[command(flatten)]
    pub azure: crate::connect::AzureArgs,
}

impl ImportArgs {
    /// The request, or the first bad argument.
    pub fn request(&self) -> Result<ImportRequest, ImportError> {
        let req = ImportRequest {
            subscriptions: self.subscriptions.clone(),
            resource_groups: self.resource_groups.clone(),
            tags: self
                .tags
                .iter()
                .map(|t| parse_tag(t))
                .collect::<Result<_, _>>()?,
            query: self.query.clone(),
            namespace: match &self.namespace_from_tag {
                Some(k) => NamespaceRule::FromTag(k.clone()),
                None => NamespaceRule::Fixed(self.namespace.clone()),
            },
            with_grants: self.with_grants,
            with_groups: self.with_groups,
            adopt: self.adopt,
            include_platform: self.include_platform,
            skip_tags: self
                .skip_tags
                .iter()
                .map(|t| parse_skip_tag(t))
                .collect::<Result<_, _>>()?,
        };
        req.validate()?;
        Ok(req)
    }
}

/// One line per skipped target / dropped entry, then a summary, on stderr.
pub fn report(imported: &Imported) -> String {
    let mut s = String::new();
    for k in &imported.skipped {
        s.push_str(&format!("skipped {}: {}\n", k.id, k.reason));
    }
    for k in &imported.dropped {
        s.push_str(&format!("left out {}: {}\n", k.id, k.reason));
    }
    let st = &imported.stats;
    s.push_str(&format!(
        "imported {} objects from {} VMs / scale sets ({} skipped); {} role assignments, {} group memberships; requests: {} Resource Graph Resources pages, {} AuthorizationResources pages, {} Graph $batch requests (memberOf, 20 a request)\n",
        imported.objects.len(),
        st.targets_read,
        imported.skipped.len(),
        st.role_assignments,
        st.memberships,
        st.resource_pages,
        st.authorization_pages,
        st.member_of_reads
    ));
    s
}

/// Runs `vmidentity import`: reads everything first, prints only a complete result.
pub async fn run(a: ImportArgs) -> Result<i32, crate::error::CliError> {
    use crate::error::CliError;
    let req = a.request().map_err(|e| CliError::Other(e.to_string()))?;
    let azure = crate::connect::connect(&a.azure).await?;
    let imported = import(&azure.exec, &req)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    match &a.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::Other(format!("{}: {e}", dir.display())))?;
            for o in &imported.objects {
                let text = render_one(o, a.output).map_err(CliError::Other)?;
                let path = dir.join(file_name(o, a.output));
                std::fs::write(&path, text)
                    .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let text = render_all(&imported.objects, a.output).map_err(CliError::Other)?;
            crate::out!("{text}");
        }
    }
    eprint!("{}", report(&imported));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_unique_and_stable() {
        let id = |n: &str| {
            format!(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{n}"
            )
        };
        let t = |ns: &str, n: &str| (ns.to_string(), id(n), n.to_string());
        let long = "A".repeat(300);
        let input = vec![
            t("a", "Web_01"),
            t("a", "web.01"),
            t("a", "db-1"),
            t("b", "Web_01"),
            t("a", "..."),
            t("a", &long),
        ];
        let names = object_names(&input);
        assert_eq!(names[2], "db-1");
        assert_eq!(names[3], "web-01", "alone in its namespace");
        assert!(names[0].starts_with("web-01-") && names[1].starts_with("web-01-"));
        assert_ne!(names[0], names[1]);
        assert_eq!(names[4], "vm");
        assert!(names[5].len() <= MAX_NAME && names[5].starts_with("aaaa"));
        for n in &names {
            assert!(is_dns_label(n), "{n}");
        }
        // Order does not change the names.
        let mut rev = input.clone();
        rev.reverse();
        let mut again = object_names(&rev);
        again.reverse();
        assert_eq!(names, again);
        assert_eq!(id_suffix(&id("Web_01")), id_suffix(&id("web_01")));
    }

    #[test]
    fn tags_and_ids() {
        assert_eq!(
            parse_tag("env=prod").unwrap(),
            ("env".into(), "prod".into())
        );
        assert_eq!(parse_tag("env=").unwrap(), ("env".into(), String::new()));
        assert!(parse_tag("env").is_err());
        assert!(parse_tag("=x").is_err());
        assert_eq!(
            parse_skip_tag("aks-managed").unwrap(),
            ("aks-managed".into(), None)
        );
        let id = ArmId::parse("/SUBSCRIPTIONS/s/resourcegroups/Rg/providers/microsoft.managedidentity/USERASSIGNEDIDENTITIES/Id-1").unwrap();
        assert_eq!(
            canonical_id(&id),
            "/subscriptions/s/resourceGroups/Rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/Id-1"
        );
        let req = ImportRequest {
            subscriptions: vec!["0a1b2c3d-0000-4000-8000-0000000000a1".into()],
            resource_groups: vec!["rg-a".into()],
            tags: vec![("env".into(), "it's".into())],
            query: Some("where location =~ 'westeurope'".into()),
            namespace: NamespaceRule::Fixed("team-a".into()),
            with_grants: false,
            with_groups: false,
            adopt: false,
            include_platform: false,
            skip_tags: vec![],
        };
        req.validate().unwrap();
        let q = req.targets_query();
        assert!(q.contains("| where resourceGroup in~ ('rg-a')"), "{q}");
        assert!(q.contains("| where tags['env'] == 'it\\'s'"), "{q}");
        assert!(q.contains("| where (location =~ 'westeurope')"), "{q}");
        assert!(q.ends_with("| order by id asc"));
        let bad = ImportRequest {
            subscriptions: vec!["not-a-guid".into()],
            ..req.clone()
        };
        assert!(bad.validate().is_err());
        let bad = ImportRequest {
            namespace: NamespaceRule::Fixed("Team_A".into()),
            ..req
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn platform_rules() {
        let groups: BTreeMap<String, String> =
            [("aks2-nodes".to_string(), "cluster-2".to_string())].into();
        let none = json!({});
        assert!(platform_target("MC_rg_aks_westeurope", &none, &groups, &[]).is_some());
        assert!(platform_target("AKS2-Nodes", &none, &groups, &[]).is_some());
        assert!(platform_target("rg-web", &none, &groups, &[]).is_none());
        let tags = json!({"managed-by": "databricks"});
        let skip = vec![("managed-by".to_string(), Some("databricks".to_string()))];
        assert!(platform_target("rg", &tags, &groups, &skip).is_some());
        let skip = vec![("managed-by".to_string(), Some("other".to_string()))];
        assert!(platform_target("rg", &tags, &groups, &skip).is_none());
        let skip = vec![("Managed-By".to_string(), None)];
        assert!(platform_target("rg", &tags, &groups, &skip).is_some());
        let uai = |rg: &str, n: &str| {
            ArmId::parse_uai(&format!(
                "/subscriptions/s/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{n}"
            ))
            .unwrap()
        };
        assert!(platform_identity(&uai("MC_x_y_z", "aks-1-agentpool"), &groups).is_some());
        assert!(platform_identity(&uai("aks2-nodes", "omsagent-aks-2"), &groups).is_some());
        assert!(
            platform_identity(
                &uai("Built-In-Identity-RG", "built-in-identity-westeurope"),
                &groups
            )
            .is_some()
        );
        assert!(platform_identity(&uai("rg-apps", "app-id"), &groups).is_none());
    }
}
