//! The change feed at run time: every `--change-poll-seconds`, read Resource Graph's
//! `resourcechanges` since the watermark and trigger one reconcile (which starts with a GET)
//! per managed target a record names. The bookkeeping (watermark, deduplication, when to
//! fall back to a full resync) is [`vmidentity_planner::changefeed`]; the full resync itself
//! is the Resource Graph scan of [`super::fleet`], which also keeps running on its own
//! period as the safety net.
//!
//! **Where the watermark lives.** On the leader Lease, as the annotation
//! [`WATERMARK_ANNOTATION`]: a new leader reads that Lease anyway to take over, the
//! controller already has `get` / `update` on it (the chart grants nothing new), and it
//! lives and dies with the controller's namespace. Only the leader writes it, with the
//! Lease's `resourceVersion` (a 409 — a renewal in between — is retried at the next poll),
//! and never backwards. It is saved after the poll's triggers were queued, so a leader that
//! dies in the middle of a poll loses nothing: the next one reads from the older watermark
//! and sees those records again (one extra reconcile each, at most). Without leader
//! election (one replica) the watermark is kept in memory: a restart is a lost watermark,
//! i.e. one full resync.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info, warn};
use vmidentity_azure::{ArmClient, AzureError};
use vmidentity_planner::ArmId;
use vmidentity_planner::changefeed::{
    FeedState, Next, RETENTION_MS, ResyncReason, format_rfc3339_ms, parse_rfc3339_ms,
};

use super::reconcile::Context;
use super::target::{objects_on, representative, target_key};
use crate::crd::VirtualMachineIdentity;

/// The leader Lease annotation that carries the feed's watermark (RFC 3339).
pub const WATERMARK_ANNOTATION: &str = "vmidentity.dev/change-feed-watermark";

/// Where the watermark is kept between polls, restarts and leaders.
pub enum WatermarkStore {
    Memory(MemoryStore),
    Lease(Box<LeaseStore>),
}

impl WatermarkStore {
    /// The stored watermark (ms since the epoch), None when there is none or it cannot be read.
    pub async fn load(&self) -> Option<i64> {
        match self {
            WatermarkStore::Memory(m) => m.load(),
            WatermarkStore::Lease(l) => l.load().await,
        }
    }

    /// Stores `ms` unless a later one is stored already.
    pub async fn save(&self, ms: i64) {
        match self {
            WatermarkStore::Memory(m) => m.save(ms),
            WatermarkStore::Lease(l) => l.save(ms).await,
        }
    }
}

/// In memory (no leader election; tests).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore(pub Arc<Mutex<Option<i64>>>);

impl MemoryStore {
    pub fn load(&self) -> Option<i64> {
        self.0.lock().ok().and_then(|g| *g)
    }

    pub fn save(&self, ms: i64) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(g.map_or(ms, |w| w.max(ms)));
        }
    }
}

/// The leader Lease's [`WATERMARK_ANNOTATION`].
pub struct LeaseStore {
    pub api: Api<Lease>,
    pub name: String,
}

impl LeaseStore {
    pub async fn load(&self) -> Option<i64> {
        match self.api.get_opt(&self.name).await {
            Ok(Some(l)) => l
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(WATERMARK_ANNOTATION))
                .and_then(|v| parse_rfc3339_ms(v)),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, lease = %self.name, "cannot read the change feed watermark");
                None
            }
        }
    }

    pub async fn save(&self, ms: i64) {
        let mut lease = match self.api.get_opt(&self.name).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "cannot read the leader Lease to store the change feed watermark");
                return;
            }
        };
        let annotations = lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        if annotations
            .get(WATERMARK_ANNOTATION)
            .and_then(|v| parse_rfc3339_ms(v))
            .is_some_and(|stored| stored >= ms)
        {
            return;
        }
        annotations.insert(WATERMARK_ANNOTATION.to_string(), format_rfc3339_ms(ms));
        // `replace` carries the resourceVersion just read: a renewal in between is a 409,
        // and the watermark is stored at the next poll.
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            debug!(error = %e, "change feed watermark not stored this time");
        }
    }
}

/// What one poll found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Poll {
    /// Managed targets (case-folded IDs) to reconcile.
    pub targets: BTreeSet<String>,
    /// The feed cannot be trusted: a full resync is due (the caller runs it, then calls
    /// [`FeedState::resynced`]).
    pub full_resync: Option<ResyncReason>,
    /// Resource Graph requests made.
    pub pages: u32,
    /// Records read (duplicates included).
    pub records: usize,
}

/// One poll at `now_ms`: the records since the watermark (minus the overlap), absorbed into
/// `state`; `managed` says which targets (case-folded) have objects.
pub async fn poll_once(
    state: &mut FeedState,
    arm: &ArmClient,
    subscriptions: &[String],
    managed: &(dyn Fn(&str) -> bool + Sync),
    now_ms: i64,
) -> Result<Poll, AzureError> {
    match state.next(now_ms) {
        Next::FullResync { reason } => Ok(Poll {
            full_resync: Some(reason),
            ..Poll::default()
        }),
        Next::Query { since_ms } => {
            let (records, pages) = arm.query_changes(subscriptions, since_ms).await?;
            let targets = state.absorb(now_ms, &records, managed);
            Ok(Poll {
                targets,
                full_resync: None,
                pages,
                records: records.len(),
            })
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Polls the feed every `period` until the receiver goes away.
pub async fn poll_loop(
    ctx: Arc<Context>,
    arm: ArmClient,
    tx: UnboundedSender<ObjectRef<VirtualMachineIdentity>>,
    period: Duration,
    overlap: Duration,
    store: WatermarkStore,
) {
    let overlap_ms = i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX);
    let mut state = FeedState::new(store.load().await, overlap_ms, RETENTION_MS);
    info!(watermark = ?state.watermark_ms().map(format_rfc3339_ms), period_secs = period.as_secs(), "change feed on");
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let keys: BTreeSet<String> = ctx.store.state().iter().map(|o| target_key(o)).collect();
        if keys.is_empty() {
            continue;
        }
        let subs: BTreeSet<String> = keys
            .iter()
            .filter_map(|k| ArmId::parse(k).ok())
            .map(|id| id.subscription().to_ascii_lowercase())
            .collect();
        let subs: Vec<String> = subs.into_iter().collect();
        let started = now_ms();
        let targets = match poll_once(&mut state, &arm, &subs, &|t| keys.contains(t), started).await
        {
            Ok(p) => match p.full_resync {
                Some(reason) => {
                    info!(reason = reason.as_str(), "change feed: full resync");
                    let all = super::fleet::scan_once(&ctx, &arm).await;
                    state.resynced(started);
                    all
                }
                None => {
                    debug!(
                        records = p.records,
                        pages = p.pages,
                        targets = p.targets.len(),
                        "change feed poll"
                    );
                    p.targets
                }
            },
            Err(e) => {
                warn!(error = %e, "change feed poll failed (the next poll reads from the same watermark)");
                continue;
            }
        };
        for key in targets {
            if let Some(rep) = representative(&objects_on(&ctx.store, &key)) {
                ctx.mark_dirty(&key);
                if tx.unbounded_send(ObjectRef::from_obj(&*rep)).is_err() {
                    return;
                }
            }
        }
        if let Some(w) = state.watermark_ms() {
            store.save(w).await;
        }
    }
}

// Test-only file section: unwrap/expect are allowed in tests.
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use vmidentity_azure::{ClientConfig, StaticToken};
    use vmidentity_simulator::{ChangeFeedConfig, SimConfig, SimHandle, WorldSeed};

    const SUB: &str = "0a1b2c3d-0000-4000-8000-00000000fee0";
    const OVERLAP_MS: i64 = 3_000;

    fn vm(i: usize) -> String {
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-{i}"
        )
    }

    async fn setup(feed: ChangeFeedConfig) -> (SimHandle, ArmClient) {
        let mut yaml = String::from("virtualMachines:\n");
        for i in 0..10 {
            yaml.push_str(&format!(
                "  - id: {}\n    identity: {{ type: SystemAssigned }}\n",
                vm(i)
            ));
        }
        let sim = vmidentity_simulator::start(SimConfig {
            seed: WorldSeed::from_yaml_str(&yaml).unwrap(),
            change_feed: feed,
            ..Default::default()
        })
        .await
        .unwrap();
        let arm = ArmClient::new(
            ClientConfig {
                endpoint: sim.base_url(),
                ..ClientConfig::default()
            },
            Arc::new(StaticToken::new("sim-token")),
        )
        .unwrap();
        (sim, arm)
    }

    fn managed(t: &str) -> bool {
        // vm-9 has no object.
        !t.ends_with("/vm-9")
    }

    fn drop_identity(sim: &SimHandle, i: usize) {
        sim.set_identity(&vm(i), json!({"type": "None"})).unwrap();
    }

    async fn poll(state: &mut FeedState, arm: &ArmClient) -> Poll {
        poll_once(state, arm, &[SUB.to_string()], &managed, now_ms())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn late_duplicated_and_out_of_order_records_trigger_each_target_once() {
        // Records show up 0.3–1.3 s late, in another order than their timestamps, every second
        // one twice.
        let (sim, arm) = setup(ChangeFeedConfig {
            delay: Duration::from_millis(300),
            jitter: Duration::from_millis(1000),
            duplicate_every: 2,
            ..ChangeFeedConfig::default()
        })
        .await;
        let store = MemoryStore::default();
        store.save(now_ms() - 100);
        let mut state = FeedState::new(store.load(), OVERLAP_MS, RETENTION_MS);
        for i in 0..10 {
            drop_identity(&sim, i);
        }
        let mut triggered: Vec<String> = Vec::new();
        for _ in 0..6 {
            let p = poll(&mut state, &arm).await;
            assert_eq!(p.full_resync, None);
            triggered.extend(p.targets);
            store.save(state.watermark_ms().unwrap());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        triggered.sort();
        let mut unique = triggered.clone();
        unique.dedup();
        assert_eq!(triggered, unique, "no target triggered twice");
        assert_eq!(triggered.len(), 9, "every managed target, vm-9 left out");
    }

    #[tokio::test]
    async fn a_lost_watermark_or_a_gap_beyond_retention_is_a_full_resync() {
        let (_sim, arm) = setup(ChangeFeedConfig::default()).await;
        // Lost: nothing stored.
        let store = MemoryStore::default();
        let mut state = FeedState::new(store.load(), OVERLAP_MS, RETENTION_MS);
        let p = poll(&mut state, &arm).await;
        assert_eq!(p.full_resync, Some(ResyncReason::NoWatermark));
        assert_eq!(p.pages, 0, "no feed read when it cannot be trusted");
        state.resynced(now_ms());
        assert_eq!(poll(&mut state, &arm).await.full_resync, None);
        // A gap of 15 days (the feed keeps 14).
        let fifteen_days = 15 * 24 * 3600 * 1000;
        let mut old = FeedState::new(Some(now_ms() - fifteen_days), OVERLAP_MS, RETENTION_MS);
        assert_eq!(
            poll(&mut old, &arm).await.full_resync,
            Some(ResyncReason::BeyondRetention)
        );
    }

    #[tokio::test]
    async fn a_leader_hand_over_during_a_poll_loses_no_change() {
        let (sim, arm) = setup(ChangeFeedConfig::default()).await;
        let lease = MemoryStore::default();
        lease.save(now_ms() - 100);
        // Leader A starts, polls, and dies after queueing its triggers but before saving the
        // watermark.
        let mut a = FeedState::new(lease.load(), OVERLAP_MS, RETENTION_MS);
        let w0 = lease.load();
        drop_identity(&sim, 1);
        drop_identity(&sim, 2);
        let seen_by_a = poll(&mut a, &arm).await.targets;
        assert_eq!(seen_by_a.len(), 2);
        assert_eq!(lease.load(), w0, "A died before saving");
        // Leader B takes over from the stored watermark: it sees the same records (an extra
        // reconcile each, nothing lost), and a change made during the hand-over.
        drop_identity(&sim, 3);
        let mut b = FeedState::new(lease.load(), OVERLAP_MS, RETENTION_MS);
        let seen_by_b = poll(&mut b, &arm).await.targets;
        assert!(seen_by_a.is_subset(&seen_by_b));
        assert_eq!(seen_by_b.len(), 3);
        lease.save(b.watermark_ms().unwrap());
        // A, coming back with an older watermark, cannot move the stored one backwards.
        lease.save(a.watermark_ms().unwrap() - 10_000);
        assert_eq!(lease.load(), b.watermark_ms());
    }
}
