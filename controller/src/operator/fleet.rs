//! The Resource Graph resync: every resync period, read the identity blocks of all targets
//! (one query per 1,000 targets), and trigger a reconcile (GET, then maybe a PATCH) only for
//! the targets that drifted, are missing, or carry grants Resource Graph cannot show.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};
use vmidentity_azure::{ArmClient, AzureError};
use vmidentity_planner::{DesiredObject, ObjectRef as PlannerRef, fleet};

use super::reconcile::Context;
use super::target::{objects_on, representative, target_key};
use crate::crd::VirtualMachineIdentity;

fn desired(o: &VirtualMachineIdentity) -> Option<DesiredObject> {
    use kube::ResourceExt;
    let spec = o.spec.to_raw().validate().ok()?;
    let applied = o
        .status
        .as_ref()
        .and_then(|s| s.applied.as_ref())
        .map(Into::into)
        .unwrap_or_default();
    let mut d = DesiredObject::new(
        PlannerRef::new(o.namespace().unwrap_or_default(), o.name_any()),
        spec,
    )
    .with_applied(applied);
    d.deleting = o.metadata.deletion_timestamp.is_some();
    Some(d)
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
    let subs: BTreeSet<String> = groups
        .values()
        .flatten()
        .map(|d| d.spec.target.subscription().to_ascii_lowercase())
        .collect();
    let subs: Vec<String> = subs.into_iter().collect();
    let (rows, pages) = arm.query_identities(&subs).await?;
    let rows: Vec<(String, serde_json::Value)> =
        rows.into_iter().map(|r| (r.id, r.identity)).collect();
    Ok((fleet::scan(groups, &rows), pages))
}

/// One scan: returns the targets to reconcile (all of them if Resource Graph failed).
pub async fn scan_once(ctx: &Context, arm: &ArmClient) -> BTreeSet<String> {
    let mut groups: BTreeMap<String, Vec<DesiredObject>> = BTreeMap::new();
    for o in ctx.store.state() {
        if let Some(d) = desired(&o) {
            groups.entry(target_key(&o)).or_default().push(d);
        }
    }
    if groups.is_empty() {
        return BTreeSet::new();
    }
    match scan_targets(arm, &groups).await {
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
            groups.into_keys().collect()
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
