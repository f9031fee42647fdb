//! `vmidentity audit`: a read-only security review of the managed identities of every VM and
//! VM scale set of some subscriptions, against the objects that declare them (from files or a
//! cluster), per target and per principal.
//!
//! Reads (the same bulk reads as `import`, nothing written): Resource Graph `Resources`
//! (identity blocks) and `AuthorizationResources` (role assignments of the principals), the
//! role definitions of the roles they hold (Authorization API, cached per role), and Graph
//! `memberOf` when a Graph token is given.
//!
//! Classes of findings (`--fail-on` takes these names):
//! - `unmanaged`: an identity on a target that no object declares (system-assigned on while no
//!   object says `systemAssigned: true`; a user-assigned entry no object lists), and a role
//!   assignment or direct group membership of a VM identity that no object declares;
//! - `drift`: declared but missing or different (the planner's own identity plan against the
//!   Resource Graph row: any change it would make; a declared role assignment or membership
//!   that does not exist; an object whose target does not exist);
//! - `privileged`: a role assignment held by a VM identity whose role lets its holder escalate
//!   (Owner, User Access Administrator, Role Based Access Control Administrator, any role whose
//!   definition grants `Microsoft.Authorization/*/write`, `*` without excluding it, or an
//!   identity takeover such as VM run command: [`vmidentity_planner::policy::escalation`],
//!   read from the definition, so custom roles count too);
//! - `policy`: an object a `VirtualMachineIdentityPolicy` (`--policy`) denies, as the
//!   controller would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde_json::{Value, json};
use vmidentity_azure::{AzureError, Executor};
use vmidentity_planner::DesiredObject;
use vmidentity_planner::live::LiveResource;
use vmidentity_planner::model::IdentityRef;

use crate::import::canonical_id;

/// A class of findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Class {
    Unmanaged,
    Drift,
    Privileged,
    Policy,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Unmanaged,
        Class::Drift,
        Class::Privileged,
        Class::Policy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Unmanaged => "unmanaged",
            Class::Drift => "drift",
            Class::Privileged => "privileged",
            Class::Policy => "policy",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Class::Unmanaged => {
                "An identity, role assignment or group membership of a VM / VM scale set that no VirtualMachineIdentity declares."
            }
            Class::Drift => {
                "Something a VirtualMachineIdentity declares that is missing or different in Azure."
            }
            Class::Privileged => {
                "A role assignment held by a VM identity whose role lets its holder change access (Microsoft.Authorization writes) or act as other identities."
            }
            Class::Policy => "A VirtualMachineIdentity that a VirtualMachineIdentityPolicy denies.",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub class: Class,
    /// The VM / VMSS ARM ID (canonical spelling).
    pub target: String,
    /// `SystemAssigned`, a user-assigned identity ID, or empty.
    pub identity: String,
    /// The principal (Entra object ID), when known.
    pub principal: String,
    /// `namespace/name` of the object concerned, if any.
    pub object: String,
    pub message: String,
    /// The file the object came from (`-f`), for SARIF locations.
    pub source: Option<String>,
}

/// Requests by kind and sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    pub targets: usize,
    pub principals: usize,
    pub role_assignments: usize,
    pub resource_pages: u32,
    pub authorization_pages: u32,
    pub role_definition_reads: usize,
    /// Graph `$batch` requests for the memberships (20 `memberOf` reads each).
    pub member_of_reads: u32,
    /// False when no Graph token was given: memberships were not read.
    pub read_memberships: bool,
}

/// The audit's result, findings sorted.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    pub findings: Vec<Finding>,
    pub stats: AuditStats,
}

impl AuditReport {
    pub fn count(&self, c: Class) -> usize {
        self.findings.iter().filter(|f| f.class == c).count()
    }
}

/// Why an audit stops: one line.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Input(String),
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: Box<AzureError>,
    },
}

fn read_err(what: impl Into<String>) -> impl FnOnce(AzureError) -> AuditError {
    let what = what.into();
    move |source| AuditError::Read {
        what,
        source: Box::new(source),
    }
}

/// An object to audit against, and the file it came from.
#[derive(Debug, Clone)]
pub struct AuditObject {
    pub desired: DesiredObject,
    pub source: Option<String>,
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

struct Live {
    id: String,
    resource: LiveResource,
}

/// Runs the audit. `policies`: the `--policy` set, checked per object as the controller does.
pub async fn audit(
    exec: &Executor,
    subscriptions: &[String],
    objects: &[AuditObject],
    policies: Option<&crate::input::PolicySet>,
) -> Result<AuditReport, AuditError> {
    let arm = exec.client();
    let mut report = AuditReport::default();
    let mut findings: Vec<Finding> = Vec::new();

    // Targets.
    let mut lives: BTreeMap<String, Live> = BTreeMap::new();
    let mut bad_row: Option<String> = None;
    let query = "Resources | where type =~ 'microsoft.compute/virtualmachines' or type =~ 'microsoft.compute/virtualmachinescalesets' | project id, identity | order by id asc";
    report.stats.resource_pages = arm
        .query_each(subscriptions, query, |row| {
            let Some(raw) = row.get("id").and_then(Value::as_str) else {
                return;
            };
            let body =
                json!({"id": raw, "identity": row.get("identity").cloned().unwrap_or(Value::Null)});
            match LiveResource::from_arm_json(&body) {
                Ok(resource) => {
                    lives.insert(
                        raw.to_ascii_lowercase(),
                        Live {
                            id: canonical_id(&resource.id),
                            resource,
                        },
                    );
                }
                Err(e) => {
                    bad_row.get_or_insert(format!("Resource Graph row {raw}: {e}"));
                }
            }
        })
        .await
        .map_err(read_err("the VMs and scale sets from Resource Graph"))?;
    if let Some(e) = bad_row {
        return Err(AuditError::Input(e));
    }
    report.stats.targets = lives.len();

    // Objects by target.
    let mut by_target: BTreeMap<String, Vec<&AuditObject>> = BTreeMap::new();
    for o in objects.iter().filter(|o| !o.desired.deleting) {
        by_target
            .entry(o.desired.spec.target.key().to_string())
            .or_default()
            .push(o);
    }

    // Principals: (target key, identity as the spec names it).
    let mut principal_of: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, l) in &lives {
        let ident = &l.resource.identity;
        if ident.system_assigned
            && let Some(p) = ident.principal_id.as_deref().filter(|p| !p.is_empty())
        {
            principal_of
                .entry(p.to_ascii_lowercase())
                .or_insert((key.clone(), "SystemAssigned".into()));
        }
        for u in ident.user_assigned.values() {
            if let Some(p) = u.principal_id.as_deref().filter(|p| !p.is_empty()) {
                principal_of
                    .entry(p.to_ascii_lowercase())
                    .or_insert((key.clone(), canonical_id(&u.id)));
            }
        }
    }
    report.stats.principals = principal_of.len();
    let principals: Vec<String> = principal_of.keys().cloned().collect();

    // Role assignments of the principals.
    let (rows, pages) = if principals.is_empty() {
        (Vec::new(), 0)
    } else {
        arm.query_role_assignments(subscriptions, &principals)
            .await
            .map_err(read_err(
                "the role assignments from Resource Graph (AuthorizationResources)",
            ))?
    };
    report.stats.authorization_pages = pages;
    report.stats.role_assignments = rows.len();

    // Group memberships.
    let mut member_of: HashMap<String, BTreeSet<String>> = HashMap::new();
    if exec.has_graph() && !principals.is_empty() {
        report.stats.read_memberships = true;
        // 20 memberOf reads per Graph `$batch` request, never one request per principal.
        let principal_ids: Vec<String> = principals.to_vec();
        let (mut results, requests) = exec.member_of_many(&principal_ids).await.map_err(
            read_err("the group memberships from Microsoft Graph ($batch)".to_string()),
        )?;
        report.stats.member_of_reads += requests;
        for p in principal_ids {
            let groups = match results.remove(&p.to_ascii_lowercase()) {
                Some(r) => r,
                None => Err(AzureError::InvalidResponse {
                    url: "$batch".into(),
                    message: "no answer for this principal in the batch".into(),
                }),
            }
            .map_err(read_err(format!(
                "the group memberships of principal {p} from Microsoft Graph"
            )))?;
            member_of.insert(p, groups.into_iter().collect());
        }
    }

    // Role definitions: privileged or not, read once per role.
    let mut privileged: HashMap<String, Option<String>> = HashMap::new();
    for r in &rows {
        let guid = last_segment(&r.role_definition_id).to_ascii_lowercase();
        if privileged.contains_key(&guid) {
            continue;
        }
        let def = arm
            .role_definition(&r.scope, &guid)
            .await
            .map_err(read_err(format!("role definition {guid}")))?;
        report.stats.role_definition_reads += 1;
        privileged.insert(
            guid,
            def.escalation.map(|e| {
                format!(
                    "{}{}",
                    def.name.map(|n| format!("{n}: ")).unwrap_or_default(),
                    e
                )
            }),
        );
    }

    // Declared grants, resolved: (principal, role guid, scope) and (principal, group).
    let mut declared_roles: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut declared_groups: BTreeSet<(String, String)> = BTreeSet::new();
    for (key, objs) in &by_target {
        let Some(l) = lives.get(key) else {
            for o in objs {
                findings.push(Finding {
                    class: Class::Drift,
                    target: o.desired.spec.target.to_string(),
                    identity: String::new(),
                    principal: String::new(),
                    object: o.desired.object.to_string(),
                    message:
                        "the target does not exist (no Resource Graph row in these subscriptions)"
                            .into(),
                    source: o.source.clone(),
                });
            }
            continue;
        };
        let principal = |identity: &IdentityRef| -> Option<String> {
            match identity {
                IdentityRef::SystemAssigned => l.resource.identity.principal_id.clone(),
                IdentityRef::UserAssigned(id) => l
                    .resource
                    .identity
                    .user_assigned
                    .get(id.key())
                    .and_then(|u| u.principal_id.clone()),
            }
            .filter(|p| !p.is_empty())
            .map(|p| p.to_ascii_lowercase())
        };
        for o in objs {
            for ra in &o.desired.spec.role_assignments {
                let guid = arm
                    .resolve_role(&ra.scope, &ra.role.to_string())
                    .await
                    .map_err(read_err(format!("role {} at {}", ra.role, ra.scope)))?;
                let Some(p) = principal(&ra.identity) else {
                    continue; // the identity itself is missing: reported as identity drift
                };
                let k = (p.clone(), guid.clone(), ra.scope_key());
                declared_roles.insert(k.clone());
                let exists = rows.iter().any(|r| {
                    r.principal_id.eq_ignore_ascii_case(&p)
                        && last_segment(&r.role_definition_id).eq_ignore_ascii_case(&guid)
                        && r.scope
                            .trim_end_matches('/')
                            .eq_ignore_ascii_case(&ra.scope)
                });
                if !exists {
                    findings.push(Finding {
                        class: Class::Drift,
                        target: l.id.clone(),
                        identity: ra.identity.to_string(),
                        principal: p,
                        object: o.desired.object.to_string(),
                        message: format!(
                            "role assignment missing: {} at {}",
                            vmidentity_planner::grants::role_label(&guid),
                            ra.scope
                        ),
                        source: o.source.clone(),
                    });
                }
            }
            for gm in &o.desired.spec.group_memberships {
                let Some(p) = principal(&gm.identity) else {
                    continue;
                };
                declared_groups.insert((p.clone(), gm.group_object_id.to_ascii_lowercase()));
                if report.stats.read_memberships
                    && !member_of
                        .get(&p)
                        .is_some_and(|g| g.contains(&gm.group_object_id.to_ascii_lowercase()))
                {
                    findings.push(Finding {
                        class: Class::Drift,
                        target: l.id.clone(),
                        identity: gm.identity.to_string(),
                        principal: p,
                        object: o.desired.object.to_string(),
                        message: format!("group membership missing: group {}", gm.group_object_id),
                        source: o.source.clone(),
                    });
                }
            }
        }
        // Identity drift: what the planner would change.
        let group: Vec<DesiredObject> = objs.iter().map(|o| o.desired.clone()).collect();
        let lives_one: crate::input::LiveSet =
            [(key.clone(), l.resource.clone())].into_iter().collect();
        for r in crate::engine::plan_offline(group, &lives_one) {
            if let Some(p) = &r.plan {
                for c in &p.changes {
                    findings.push(Finding {
                        class: Class::Drift,
                        target: l.id.clone(),
                        identity: String::new(),
                        principal: String::new(),
                        object: r
                            .objects
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        message: format!("would {c}"),
                        source: objs.first().and_then(|o| o.source.clone()),
                    });
                }
            }
            for refused in &r.refused {
                findings.push(Finding {
                    class: Class::Drift,
                    target: l.id.clone(),
                    identity: String::new(),
                    principal: String::new(),
                    object: refused.object.to_string(),
                    message: format!("refused: {refused}"),
                    source: None,
                });
            }
            if let Some(e) = &r.error {
                findings.push(Finding {
                    class: Class::Drift,
                    target: l.id.clone(),
                    identity: String::new(),
                    principal: String::new(),
                    object: String::new(),
                    message: format!("cannot plan: {e}"),
                    source: None,
                });
            }
        }
    }

    // Unmanaged identities.
    for (key, l) in &lives {
        let objs = by_target.get(key).map(Vec::as_slice).unwrap_or_default();
        let ident = &l.resource.identity;
        if ident.system_assigned
            && !objs
                .iter()
                .any(|o| o.desired.spec.system_assigned == Some(true))
        {
            findings.push(Finding {
                class: Class::Unmanaged,
                target: l.id.clone(),
                identity: "SystemAssigned".into(),
                principal: ident.principal_id.clone().unwrap_or_default(),
                object: String::new(),
                message: "system-assigned identity on, and no object declares systemAssigned: true"
                    .into(),
                source: None,
            });
        }
        for u in ident.user_assigned.values() {
            if !objs.iter().any(|o| {
                o.desired
                    .spec
                    .user_assigned
                    .iter()
                    .any(|x| x.key() == u.id.key())
            }) {
                findings.push(Finding {
                    class: Class::Unmanaged,
                    target: l.id.clone(),
                    identity: canonical_id(&u.id),
                    principal: u.principal_id.clone().unwrap_or_default(),
                    object: String::new(),
                    message: if u.stale {
                        "stale user-assigned identity entry (its identity was deleted) that no object lists".into()
                    } else {
                        "user-assigned identity that no object lists".into()
                    },
                    source: None,
                });
            }
        }
    }

    // Grants: unmanaged and privileged, per principal.
    for r in &rows {
        let p = r.principal_id.to_ascii_lowercase();
        let Some((key, identity)) = principal_of.get(&p) else {
            continue;
        };
        let target = lives.get(key).map(|l| l.id.clone()).unwrap_or_default();
        let guid = last_segment(&r.role_definition_id).to_ascii_lowercase();
        let label = vmidentity_planner::grants::role_label(&guid);
        let scope = r.scope.trim_end_matches('/').to_ascii_lowercase();
        if !declared_roles.contains(&(p.clone(), guid.clone(), scope)) {
            findings.push(Finding {
                class: Class::Unmanaged,
                target: target.clone(),
                identity: identity.clone(),
                principal: p.clone(),
                object: String::new(),
                message: format!("role assignment no object declares: {label} at {}", r.scope),
                source: None,
            });
        }
        if let Some(Some(why)) = privileged.get(&guid) {
            findings.push(Finding {
                class: Class::Privileged,
                target,
                identity: identity.clone(),
                principal: p.clone(),
                object: String::new(),
                message: format!("{label} at {} ({why})", r.scope),
                source: None,
            });
        }
    }
    for (p, groups) in &member_of {
        let Some((key, identity)) = principal_of.get(p) else {
            continue;
        };
        let target = lives.get(key).map(|l| l.id.clone()).unwrap_or_default();
        for g in groups {
            if !declared_groups.contains(&(p.clone(), g.clone())) {
                findings.push(Finding {
                    class: Class::Unmanaged,
                    target: target.clone(),
                    identity: identity.clone(),
                    principal: p.clone(),
                    object: String::new(),
                    message: format!("group membership no object declares: group {g}"),
                    source: None,
                });
            }
        }
    }

    // Policy.
    if let Some(set) = policies {
        for o in objects.iter().filter(|o| !o.desired.deleting) {
            let ns = &o.desired.object.namespace;
            let labels = o
                .namespace_labels
                .as_ref()
                .or_else(|| set.namespace_labels.get(ns));
            let verdict = crate::operator::policy::check_with_azure(
                &set.policies,
                vmidentity_planner::policy::Namespace { name: ns, labels },
                &o.desired.spec,
                Some(exec),
            )
            .await
            .map_err(read_err(format!(
                "role definitions to check {} against the policies",
                o.desired.object
            )))?;
            if let Err(d) = verdict {
                findings.push(Finding {
                    class: Class::Policy,
                    target: canonical_id(&o.desired.spec.target),
                    identity: String::new(),
                    principal: String::new(),
                    object: o.desired.object.to_string(),
                    message: d.to_string(),
                    source: o.source.clone(),
                });
            }
        }
    }

    findings.sort();
    findings.dedup();
    report.findings = findings;
    Ok(report)
}

fn last_segment(s: &str) -> &str {
    s.trim_end_matches('/').rsplit('/').next().unwrap_or(s)
}

fn short(id: &str) -> String {
    vmidentity_planner::ArmId::parse(id)
        .map(|i| i.short())
        .unwrap_or_else(|_| id.to_string())
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// `-o` of `audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditOutput {
    Table,
    Json,
    Csv,
    Sarif,
}

/// The counts line: `unmanaged: 3, drift: 1, privileged: 2, policy: 0 (12 targets, 15 principals)`.
pub fn counts_line(r: &AuditReport) -> String {
    let counts: Vec<String> = Class::ALL
        .iter()
        .map(|c| format!("{}: {}", c.as_str(), r.count(*c)))
        .collect();
    format!(
        "{} ({} VMs / scale sets, {} principals, {} role assignments{})",
        counts.join(", "),
        r.stats.targets,
        r.stats.principals,
        r.stats.role_assignments,
        if r.stats.read_memberships {
            ""
        } else {
            "; group memberships not read: no Graph token"
        }
    )
}

/// Aligned columns CLASS, TARGET, IDENTITY, OBJECT, FINDING; sorted; the counts at the end.
pub fn render_table(r: &AuditReport) -> String {
    let header = ["CLASS", "TARGET", "IDENTITY", "OBJECT", "FINDING"];
    let rows: Vec<[String; 5]> = r
        .findings
        .iter()
        .map(|f| {
            [
                f.class.as_str().to_string(),
                short(&f.target),
                if f.identity.is_empty() || f.identity == "SystemAssigned" {
                    f.identity.clone()
                } else {
                    short(&f.identity)
                },
                f.object.clone(),
                f.message.clone(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out.push_str(&format!("\n{}\n", counts_line(r)));
    out
}

fn finding_json(f: &Finding) -> Value {
    json!({
        "class": f.class.as_str(),
        "target": f.target,
        "identity": f.identity,
        "principalId": f.principal,
        "object": f.object,
        "message": f.message,
    })
}

/// `{"findings":[…],"counts":{class: n},"targets":n,"principals":n,"roleAssignments":n}`.
pub fn render_json(r: &AuditReport) -> Value {
    let counts: serde_json::Map<String, Value> = Class::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), json!(r.count(*c))))
        .collect();
    json!({
        "findings": r.findings.iter().map(finding_json).collect::<Vec<_>>(),
        "counts": counts,
        "targets": r.stats.targets,
        "principals": r.stats.principals,
        "roleAssignments": r.stats.role_assignments,
        "groupMembershipsRead": r.stats.read_memberships,
    })
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// RFC 4180: a header, then one line per finding.
pub fn render_csv(r: &AuditReport) -> String {
    let mut out = String::from("class,target,identity,principalId,object,message\r\n");
    for f in &r.findings {
        let cells = [
            f.class.as_str(),
            &f.target,
            &f.identity,
            &f.principal,
            &f.object,
            &f.message,
        ];
        out.push_str(
            &cells
                .iter()
                .map(|c| csv_cell(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    out
}

/// SARIF 2.1.0 ("Static Analysis Results Interchange Format (SARIF) Version 2.1.0", OASIS
/// Standard, <https://docs.oasis-open.org/sarif/sarif/v2.1.0/sarif-v2.1.0.html>): one run, the
/// tool `vmidentity` with one rule per class, one result per finding with `ruleId`,
/// `ruleIndex`, `level` (`error` for privileged, `warning` otherwise), `message.text` and one
/// location: the object's file when it came from one, else the Azure resource (its portal
/// URI), with the ARM ID as a logical location.
pub fn render_sarif(r: &AuditReport) -> Value {
    let rules: Vec<Value> = Class::ALL
        .iter()
        .map(|c| {
            json!({
                "id": c.as_str(),
                "name": c.as_str(),
                "shortDescription": {"text": c.description()},
                "defaultConfiguration": {"level": level(*c)},
            })
        })
        .collect();
    let results: Vec<Value> = r
        .findings
        .iter()
        .map(|f| {
            let uri = match &f.source {
                Some(s) => s.split('#').next().unwrap_or(s).to_string(),
                None => format!("https://portal.azure.com/#resource{}", f.target),
            };
            json!({
                "ruleId": f.class.as_str(),
                "ruleIndex": Class::ALL.iter().position(|c| *c == f.class).unwrap_or(0),
                "level": level(f.class),
                "message": {"text": format!(
                    "{}{}: {}",
                    short(&f.target),
                    if f.identity.is_empty() { String::new() } else { format!(" ({})", if f.identity == "SystemAssigned" { f.identity.clone() } else { short(&f.identity) }) },
                    f.message
                )},
                "locations": [{
                    "physicalLocation": {"artifactLocation": {"uri": uri}},
                    "logicalLocations": [{"fullyQualifiedName": f.target, "kind": "resource"}],
                }],
                "properties": {"principalId": f.principal, "object": f.object, "identity": f.identity},
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "vmidentity",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

fn level(c: Class) -> &'static str {
    match c {
        Class::Privileged => "error",
        _ => "warning",
    }
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

/// `vmidentity audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Subscription to audit (repeatable).
    #[arg(long = "subscription", required = true, value_name = "ID")]
    pub subscriptions: Vec<String>,
    /// VirtualMachineIdentity YAML files or directories: the declared state.
    #[arg(short = 'f', long = "filename", num_args = 1.., conflicts_with = "kubeconfig")]
    pub files: Vec<PathBuf>,
    /// Read the VirtualMachineIdentity objects of every namespace from this cluster instead.
    #[arg(long, value_name = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// VirtualMachineIdentityPolicy YAML (files or directories; `Namespace` documents give
    /// namespace labels): each object is checked as the controller would.
    #[arg(long = "policy", value_name = "FILE")]
    pub policy: Vec<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: AuditOutput,
    /// Exit 3 when a finding of one of these classes is found.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub fail_on: Vec<Class>,
    #[command(flatten)]
    pub azure: crate::connect::AzureArgs,
}

async fn objects_from_cluster(path: &PathBuf) -> Result<Vec<AuditObject>, String> {
    use kube::api::ListParams;
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let api: kube::Api<crate::crd::VirtualMachineIdentity> = kube::Api::all(client);
    let mut out = Vec::new();
    let mut lp = ListParams::default().limit(500);
    loop {
        let list = api
            .list(&lp)
            .await
            .map_err(|e| format!("listing VirtualMachineIdentity objects: {e}"))?;
        for o in &list.items {
            let d = o.desired().map_err(|errs| {
                format!(
                    "{}: {}",
                    o.planner_ref(),
                    errs.first().map(ToString::to_string).unwrap_or_default()
                )
            })?;
            out.push(AuditObject {
                desired: d,
                source: None,
                namespace_labels: None,
            });
        }
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    Ok(out)
}

/// Runs `vmidentity audit`: 0, 3 when a `--fail-on` class is found, 1 on errors.
pub async fn run(a: AuditArgs) -> Result<i32, crate::error::CliError> {
    use crate::error::CliError;
    for s in &a.subscriptions {
        if !crate::import::is_subscription_id(s) {
            return Err(CliError::Other(format!(
                "--subscription {s:?}: a subscription ID is a GUID"
            )));
        }
    }
    // Every input before a request.
    let objects: Vec<AuditObject> = match &a.kubeconfig {
        Some(path) => objects_from_cluster(path).await.map_err(CliError::Other)?,
        None => {
            let loaded = crate::input::load_objects(&a.files)?;
            loaded
                .iter()
                .map(|l| {
                    Ok(AuditObject {
                        desired: l.to_desired()?,
                        source: Some(l.source.clone()),
                        namespace_labels: None,
                    })
                })
                .collect::<Result<_, crate::input::InputError>>()?
        }
    };
    let policies = if a.policy.is_empty() {
        None
    } else {
        Some(crate::input::load_policies(&a.policy)?)
    };
    let azure = crate::connect::connect(&a.azure).await?;
    let report = audit(&azure.exec, &a.subscriptions, &objects, policies.as_ref())
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    let text = match a.output {
        AuditOutput::Table => render_table(&report),
        AuditOutput::Csv => render_csv(&report),
        AuditOutput::Json => {
            serde_json::to_string_pretty(&render_json(&report)).unwrap_or_default() + "\n"
        }
        AuditOutput::Sarif => {
            serde_json::to_string_pretty(&render_sarif(&report)).unwrap_or_default() + "\n"
        }
    };
    crate::out!("{text}");
    if a.output != AuditOutput::Table {
        eprintln!("{}", counts_line(&report));
    }
    let failed: Vec<&str> = a
        .fail_on
        .iter()
        .filter(|c| report.count(**c) > 0)
        .map(|c| c.as_str())
        .collect();
    if failed.is_empty() {
        Ok(0)
    } else {
        eprintln!("audit: found {} (--fail-on)", failed.join(", "));
        Ok(3)
    }
}
