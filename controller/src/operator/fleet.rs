//! The Resource Graph resync: every resync period, read the identity blocks of all targets
//! (one query per 1,000 targets), and trigger a reconcile (GET, then maybe a PATCH) only for
//! the targets that drifted or are missing; the grants of targets that carry some are read
//! in bulk too (`AuthorizationResources` and Graph `$batch`, [`crate::grant_scan`]) and only
//! those whose grants differ are reconciled.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use serde_json::Value;
use tracing::{info, warn};
use vmidentity_azure::{ArmClient, AzureError, Executor};
use vmidentity_planner::{ArmId, DesiredObject, fleet};

use super::reconcile::Context;
use super::target::{objects_on, representative, target_key};
use crate::crd::VirtualMachineIdentity;
use crate::engine::EngineError;
use crate::grant_scan::{GrantScan, GrantTarget, scan_grants};

fn desired(o: &VirtualMachineIdentity) -> Option<DesiredObject> {
    o.desired().ok()
}

/// The Resource Graph half of a scan, without Kubernetes: queries the identity blocks of
/// every subscription the objects' targets live in and compares them with the objects
/// (`groups`: objects by case-folded target ID). Returns the scan and the pages read.
/// Rows may lag behind ARM: the targets it names are reconciled (GET first), never
/// written from a row.
pub async fn scan_targets(
    arm: &ArmClient,
    groups: &BTreeMap<String, Vec<DesiredObject>>,
) -> Result<(fleet::Scan, u32), AzureError> {
    scan_groups(arm, groups, borrowed)
        .await
        .map(|(s, pages, _)| (s, pages))
}

/// [`scan_targets`], then the grants of the targets that carry some, in bulk
/// ([`crate::grant_scan::scan_grants`]): those whose grants agree are no longer reconciled
/// at every scan. Returns the scan (`with_grants` holding only the targets whose grants
/// differ or could not be judged), the identity pages read and the grant scan.
pub async fn scan_targets_with_grants(
    exec: &Executor,
    groups: &BTreeMap<String, Vec<DesiredObject>>,
) -> Result<(fleet::Scan, u32, GrantScan), EngineError> {
    let (mut scan, pages, rows) = scan_groups(exec.client(), groups, borrowed).await?;
    let targets = grant_targets(&scan, rows, |k| groups.get(k).cloned());
    let grants = scan_grants(exec, targets).await?;
    scan.with_grants = grants.drifted.clone();
    Ok((scan, pages, grants))
}

/// The targets whose grants the bulk read judges: those with grants whose identity row
/// agrees (a drifted or missing target is reconciled anyway).
fn grant_targets(
    scan: &fleet::Scan,
    rows: BTreeMap<String, (String, Value)>,
    group_of: impl Fn(&str) -> Option<Vec<DesiredObject>>,
) -> Vec<GrantTarget> {
    rows.into_iter()
        .filter(|(k, _)| !scan.drifted.contains(k) && !scan.missing.contains(k))
        .filter_map(|(key, (id, identity))| {
            let group = group_of(&key)?;
            Some(GrantTarget {
                key,
                id,
                identity,
                group,
            })
        })
        .collect()
}

/// The scan, page by page: each row is compared with its target's objects as it arrives,
/// so the scan holds one page of rows, the groups as the caller keeps them (`desired`
/// turns one into planner objects when its row comes) and the names of drifted targets.
/// Also returns the rows (`id`, identity) of the targets with grants, for the grant scan.
async fn scan_groups<G>(
    arm: &ArmClient,
    groups: &BTreeMap<String, G>,
    desired: impl for<'g> Fn(&'g G) -> Option<Cow<'g, [DesiredObject]>>,
) -> Result<(fleet::Scan, u32, BTreeMap<String, (String, Value)>), AzureError> {
    let subs: BTreeSet<String> = groups
        .keys()
        .filter_map(|k| ArmId::parse(k).ok())
        .map(|id| id.subscription().to_ascii_lowercase())
        .collect();
    let subs: Vec<String> = subs.into_iter().collect();
    let mut scan = fleet::Scan::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut grant_rows: BTreeMap<String, (String, Value)> = BTreeMap::new();
    let pages = arm
        .query_identities_each(&subs, |id, identity| {
            let key = id.to_ascii_lowercase();
            let Some(group) = groups.get(&key).and_then(&desired) else {
                return;
            };
            if fleet::has_grants(&group) {
                scan.with_grants.insert(key.clone());
                grant_rows.insert(key.clone(), (id.to_string(), identity.clone()));
            }
            scan.record(&key, fleet::judge(&group, id, identity));
            seen.insert(key);
        })
        .await?;
    for (key, g) in groups {
        if seen.contains(key) {
            continue;
        }
        if let Some(group) = desired(g) {
            if fleet::has_grants(&group) {
                scan.with_grants.insert(key.clone());
            }
            scan.missing.insert(key.clone());
        }
    }
    Ok((scan, pages, grant_rows))
}

// `&Vec`: the groups' value type, as `scan_groups` hands it over.
#[allow(clippy::ptr_arg)]
fn borrowed(g: &Vec<DesiredObject>) -> Option<Cow<'_, [DesiredObject]>> {
    Some(Cow::Borrowed(g.as_slice()))
}

#[allow(clippy::ptr_arg)]
fn cached(objs: &Vec<Arc<VirtualMachineIdentity>>) -> Option<Cow<'_, [DesiredObject]>> {
    let ds: Vec<DesiredObject> = objs.iter().filter_map(|o| desired(o)).collect();
    (!ds.is_empty()).then_some(Cow::Owned(ds))
}

/// One scan: returns the targets to reconcile (all of them if Resource Graph failed).
pub async fn scan_once(ctx: &Context, arm: &ArmClient) -> BTreeSet<String> {
    // The cached objects by target (shared with the cache, not copied): each group becomes
    // planner objects only while its row is compared.
    let mut groups: BTreeMap<String, Vec<Arc<VirtualMachineIdentity>>> = BTreeMap::new();
    for o in ctx.store.state() {
        groups.entry(target_key(&o)).or_default().push(o);
    }
    if groups.is_empty() {
        return BTreeSet::new();
    }
    match scan_groups(arm, &groups, cached).await {
        Ok((mut s, pages, rows)) => {
            // Grants in bulk: only targets whose grants differ are reconciled.
            if !rows.is_empty() {
                let targets = grant_targets(&s, rows, |k| {
                    groups.get(k).and_then(cached).map(Cow::into_owned)
                });
                match scan_grants(&ctx.exec, targets).await {
                    Ok(g) => {
                        info!(
                            converged = g.converged,
                            drifted = g.drifted.len(),
                            resource_graph_reads = g.resource_graph_reads,
                            graph_requests = g.graph_requests,
                            "grants resync"
                        );
                        s.with_grants = g.drifted;
                    }
                    Err(e) => {
                        warn!(error = %e, "bulk grant read failed: reconciling every target with grants");
                    }
                }
            }
            ctx.metrics
                .fleet_scanned(groups.len(), pages, s.drifted.len(), s.missing.len());
            info!(
                targets = groups.len(),
                pages,
                drifted = s.drifted.len(),
                missing = s.missing.len(),
                with_grants = s.with_grants.len(),
                "Resource Graph resync"
            );
            s.to_reconcile()
        }
        Err(e) => {
            warn!(error = %e, "Resource Graph query failed: falling back to a GET per target");
            groups
                .into_iter()
                .filter(|(_, objs)| objs.iter().any(|o| desired(o).is_some()))
                .map(|(k, _)| k)
                .collect()
        }
    }
}

/// Runs scans every `period` until the receiver goes away.
pub async fn scan_loop(
    ctx: Arc<Context>,
    arm: ArmClient,
    tx: UnboundedSender<ObjectRef<VirtualMachineIdentity>>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for key in scan_once(&ctx, &arm).await {
            if let Some(rep) = representative(&objects_on(&ctx.store, &key)) {
                ctx.mark_dirty(&key);
                if tx.unbounded_send(ObjectRef::from_obj(&*rep)).is_err() {
                    return;
                }
            }
        }
    }
}
