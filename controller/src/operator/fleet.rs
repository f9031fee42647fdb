//! The Resource Graph resync: every resync period, read the identity blocks of all targets
//! (one query per 1,000 targets), and trigger a reconcile (GET, then maybe a PATCH) only for
//! the targets that drifted, are missing, or carry grants Resource Graph cannot show.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};
use vmidentity_azure::{ArmClient, AzureError};
use vmidentity_planner::{ArmId, DesiredObject, fleet};

use super::reconcile::Context;
use super::target::{objects_on, representative, target_key};
use crate::crd::VirtualMachineIdentity;

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
    scan_groups(arm, groups, borrowed).await
}

/// The scan, page by page: each row is compared with its target's objects as it arrives,
/// so the scan holds one page of rows, the groups as the caller keeps them (`desired`
/// turns one into planner objects when its row comes) and the names of drifted targets.
async fn scan_groups<G>(
    arm: &ArmClient,
    groups: &BTreeMap<String, G>,
    desired: impl for<'g> Fn(&'g G) -> Option<Cow<'g, [DesiredObject]>>,
) -> Result<(fleet::Scan, u32), AzureError> {
    let subs: BTreeSet<String> = groups
        .keys()
        .filter_map(|k| ArmId::parse(k).ok())
        .map(|id| id.subscription().to_ascii_lowercase())
        .collect();
    let subs: Vec<String> = subs.into_iter().collect();
    let mut scan = fleet::Scan::default();
    let mut seen: HashSet<String> = HashSet::new();
    let pages = arm
        .query_identities_each(&subs, |id, identity| {
            let key = id.to_ascii_lowercase();
            let Some(group) = groups.get(&key).and_then(&desired) else {
                return;
            };
            if fleet::has_grants(&group) {
                scan.with_grants.insert(key.clone());
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
    Ok((scan, pages))
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
        Ok((s, pages)) => {
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
