//! The grants half of the fleet resync: whether the targets that carry role assignments or
//! group memberships still hold what their objects want, read in bulk instead of per
//! principal: the role assignments of all their principals from Resource Graph's
//! `AuthorizationResources` table (one query per 500 principals, paged;
//! [`vmidentity_azure::ArmClient::query_role_assignments`]) and their group memberships with
//! Graph `$batch` (20 `memberOf` reads per request; [`Executor::member_of_many`]). Role
//! definitions come from the client's cache. Each target is then planned offline
//! ([`grants::plan_grants`]); only those with something to do are reconciled (which reads
//! again from ARM and Graph before writing anything: Resource Graph lags behind ARM).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use tracing::debug;
use vmidentity_azure::Executor;
use vmidentity_planner::grants::{self, LiveGrants, LiveRoleAssignment, Resolved};
use vmidentity_planner::{DesiredObject, LiveResource};

use crate::engine::{EngineError, principals_of, resolve_roles, subscription_of};

/// A target with grants, and its identity as the Resource Graph row shows it.
#[derive(Debug, Clone)]
pub struct GrantTarget {
    /// Case-folded target ID.
    pub key: String,
    pub id: String,
    pub identity: Value,
    pub group: Vec<DesiredObject>,
}

/// What the bulk grant read found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantScan {
    /// Targets (case-folded IDs) whose grants differ from what their objects want, or that
    /// could not be judged: they are reconciled.
    pub drifted: BTreeSet<String>,
    /// Targets whose grants agree.
    pub converged: usize,
    /// Resource Graph requests (`AuthorizationResources`).
    pub resource_graph_reads: u32,
    /// Microsoft Graph requests (`$batch`).
    pub graph_requests: u32,
}

struct Prepared {
    target: GrantTarget,
    resolved: Resolved,
    principals: BTreeSet<String>,
    wants_groups: bool,
}

fn wants_groups(group: &[DesiredObject]) -> bool {
    group
        .iter()
        .any(|o| !o.spec.group_memberships.is_empty() || !o.applied.group_memberships.is_empty())
}

/// Judges the grants of `targets` with bulk reads (see the module documentation).
pub async fn scan_grants(
    exec: &Executor,
    targets: Vec<GrantTarget>,
) -> Result<GrantScan, EngineError> {
    let mut out = GrantScan::default();
    let mut prepared = Vec::new();
    let mut subs: BTreeSet<String> = BTreeSet::new();
    let mut role_principals: BTreeSet<String> = BTreeSet::new();
    let mut group_principals: BTreeSet<String> = BTreeSet::new();
    for t in targets {
        let live = match LiveResource::from_arm_json(&json!({"id": t.id, "identity": t.identity})) {
            Ok(l) => l,
            Err(_) => {
                out.drifted.insert(t.key.clone());
                continue;
            }
        };
        let mut resolved = principals_of(&live);
        resolve_roles(exec, &t.group, &mut resolved).await?;
        let principals: BTreeSet<String> = grants::principals_to_read(&t.group, &resolved)
            .into_iter()
            .filter(|p| p != grants::KNOWN_AFTER_APPLY)
            .collect();
        if let Some(s) = subscription_of(&t.id) {
            subs.insert(s);
        }
        for o in &t.group {
            subs.extend(
                o.spec
                    .role_assignments
                    .iter()
                    .filter_map(|r| subscription_of(&r.scope)),
            );
            subs.extend(
                o.applied
                    .role_assignments
                    .iter()
                    .filter_map(|r| subscription_of(&r.scope)),
            );
        }
        let wg = wants_groups(&t.group);
        role_principals.extend(principals.iter().cloned());
        if wg {
            group_principals.extend(principals.iter().cloned());
        }
        prepared.push(Prepared {
            target: t,
            resolved,
            principals,
            wants_groups: wg,
        });
    }
    let subs: Vec<String> = subs.into_iter().collect();
    let principals: Vec<String> = role_principals.into_iter().collect();
    let mut by_principal: BTreeMap<String, Vec<LiveRoleAssignment>> = BTreeMap::new();
    if !principals.is_empty() {
        let (rows, pages) = exec
            .client()
            .query_role_assignments(&subs, &principals)
            .await?;
        out.resource_graph_reads += pages;
        for r in rows {
            let role_guid = r
                .role_definition_id
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            by_principal
                .entry(r.principal_id.to_ascii_lowercase())
                .or_default()
                .push(LiveRoleAssignment {
                    id: r.id,
                    scope: r.scope,
                    role_guid,
                    principal_id: r.principal_id,
                });
        }
    }
    let mut memberships = BTreeMap::new();
    if !group_principals.is_empty() {
        if !exec.has_graph() {
            return Err(EngineError::NoGraph);
        }
        let ids: Vec<String> = group_principals.into_iter().collect();
        let (m, requests) = exec.member_of_many(&ids).await?;
        out.graph_requests += requests;
        memberships = m;
    }
    for p in prepared {
        let mut held = LiveGrants::default();
        let mut unknown = false;
        for pr in &p.principals {
            held.role_assignments
                .extend(by_principal.get(pr).cloned().unwrap_or_default());
            if p.wants_groups {
                match memberships.get(pr) {
                    Some(Ok(groups)) => {
                        held.memberships
                            .insert(pr.clone(), groups.iter().cloned().collect());
                    }
                    _ => unknown = true,
                }
            }
        }
        held.role_assignments
            .sort_by_key(|a| a.id.to_ascii_lowercase());
        held.role_assignments
            .dedup_by(|a, b| a.id.eq_ignore_ascii_case(&b.id));
        let gp = grants::plan_grants(&p.target.group, &p.resolved, &held);
        if unknown || !gp.is_empty() || !gp.pending.is_empty() {
            debug!(target = %p.target.key, writes = gp.removals.len() + gp.additions.len(), pending = gp.pending.len(), unknown, "grants differ");
            out.drifted.insert(p.target.key);
        } else {
            out.converged += 1;
        }
    }
    Ok(out)
}
