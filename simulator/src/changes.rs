//! Resource Graph's `resourcechanges` table: one change record per create, update or delete
//! of a VM / VMSS, recorded from the world's real mutations (in-band PATCH / PUT / DELETE and
//! the admin API's out-of-band edits alike), delivered with a configurable ingestion delay,
//! jitter (so records become visible out of order), duplicate delivery and retention.
//!
//! Row shape: "Get resource changes"
//! (<https://learn.microsoft.com/azure/governance/resource-graph/how-to/get-resource-changes>):
//! `properties.targetResourceId`, `targetResourceType`, `changeType` (`Create` / `Update` /
//! `Delete`), `changeAttributes.{correlationId, timestamp, changesCount,
//! previousResourceSnapshotId, newResourceSnapshotId}` and `changes`: property path →
//! `{previousValue, newValue, changeCategory, propertyChangeType}`. The page says change
//! records "should be available in less than five minutes" and keeps the last fourteen days.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// How the simulated change feed delivers records (`SimConfig::change_feed`,
/// `SimHandle::set_change_feed`, `POST /_sim/change-feed`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ChangeFeedConfig {
    /// A record becomes visible this long after the change (ingestion delay). Default 0.
    #[serde(with = "millis", rename = "delayMs")]
    pub delay: Duration,
    /// Plus up to this much more, different per record (deterministic), so records become
    /// visible out of the order of their timestamps. Default 0.
    #[serde(with = "millis", rename = "jitterMs")]
    pub jitter: Duration,
    /// Every n-th record is delivered twice (the copy visible `delay` + 1 s later, same
    /// change id, correlation id and timestamp). 0 = never. Default 0.
    pub duplicate_every: u32,
    /// Records older than this (by timestamp) are gone. Default 14 days.
    #[serde(with = "millis", rename = "retentionMs")]
    pub retention: Duration,
}

impl Default for ChangeFeedConfig {
    fn default() -> Self {
        ChangeFeedConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            duplicate_every: 0,
            retention: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// One recorded change.
#[derive(Debug, Clone)]
pub(crate) struct ChangeRecord {
    pub seq: u64,
    /// When it happened, on tokio's clock (visibility).
    pub at: Instant,
    /// When it happened, wall clock (the record's timestamp).
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub target_id: String,
    pub target_type: String,
    pub subscription: String,
    pub resource_group: String,
    pub change_type: &'static str,
    pub change_id: String,
    pub correlation_id: String,
    pub changes: Map<String, Value>,
}

/// Every change of the world's VMs / VMSS, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChangeLog {
    pub records: Vec<ChangeRecord>,
    next: u64,
}

/// The properties of a row that a change names: `identity.*` and `tags.*`, flattened to
/// paths (a user-assigned identity's path is `identity.userAssignedIdentities.{id}`).
fn flatten(row: Option<&Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(row) = row else { return out };
    fn walk(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    walk(&format!("{prefix}.{k}"), x, out);
                }
            }
            Value::Null => {}
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    for top in ["identity", "tags"] {
        if let Some(v) = row.get(top) {
            walk(top, v, &mut out);
        }
    }
    out
}

/// `{previousValue, newValue, ...}` per changed path (values as strings, `"null"` when
/// absent, as in the page's example).
fn diff(prev: Option<&Value>, new: Option<&Value>) -> Map<String, Value> {
    let (a, b) = (flatten(prev), flatten(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let s = |v: Option<&Value>| match v {
        None => "null".to_string(),
        Some(Value::String(x)) => x.clone(),
        Some(x) => x.to_string(),
    };
    let mut out = Map::new();
    for k in keys {
        let (p, n) = (a.get(k), b.get(k));
        if p == n {
            continue;
        }
        let kind = match (p, n) {
            (None, _) => "Insert",
            (_, None) => "Remove",
            _ => "Update",
        };
        out.insert(
            k.clone(),
            json!({
                "newValue": s(n),
                "previousValue": s(p),
                "changeCategory": "User",
                "propertyChangeType": kind,
            }),
        );
    }
    out
}

impl ChangeLog {
    /// Records the change from `prev` to `new` (rows as Resource Graph shows them; `None` =
    /// absent). Nothing when neither the identity nor the tags changed.
    pub fn record(&mut self, key: &str, prev: Option<&Value>, new: Option<&Value>) {
        let change_type = match (prev, new) {
            (None, None) => return,
            (None, Some(_)) => "Create",
            (Some(_), None) => "Delete",
            (Some(_), Some(_)) => "Update",
        };
        let changes = diff(prev, new);
        if change_type == "Update" && changes.is_empty() {
            return;
        }
        let row = new.or(prev);
        let field = |f: &str| {
            row.and_then(|r| r.get(f))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let target_id = match field("id") {
            s if s.is_empty() => key.to_string(),
            s => s,
        };
        self.next += 1;
        self.records.push(ChangeRecord {
            seq: self.next,
            at: Instant::now(),
            timestamp: chrono::Utc::now(),
            target_id,
            target_type: field("type"),
            subscription: field("subscriptionId"),
            resource_group: field("resourceGroup"),
            change_type,
            change_id: format!(
                "{}_{}",
                chrono::Utc::now().timestamp_micros(),
                uuid::Uuid::new_v4()
            ),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            changes,
        });
    }

    /// The rows visible at `now` (tokio clock) and `wall` (wall clock with the simulator's
    /// offset): each record once its delay (and jitter) passed, duplicates included, none
    /// older than the retention. In the order they became visible (CHOSEN).
    pub fn visible(
        &self,
        cfg: &ChangeFeedConfig,
        now: Instant,
        wall: chrono::DateTime<chrono::Utc>,
        tenant: &str,
    ) -> Vec<Value> {
        let retention = chrono::Duration::from_std(cfg.retention).unwrap_or(chrono::Duration::MAX);
        let mut out: Vec<(Instant, u64, Value)> = Vec::new();
        for r in &self.records {
            if wall.signed_duration_since(r.timestamp) > retention {
                continue;
            }
            let jitter = cfg
                .jitter
                .mul_f64((r.seq.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0);
            let first = r.at + cfg.delay + jitter;
            let mut copies = vec![first];
            if cfg.duplicate_every > 0 && r.seq % u64::from(cfg.duplicate_every) == 0 {
                copies.push(first + cfg.delay + Duration::from_secs(1));
            }
            for (i, v) in copies.into_iter().enumerate() {
                if v <= now {
                    out.push((v, r.seq * 2 + i as u64, row(r, tenant)));
                }
            }
        }
        out.sort_by_key(|(v, k, _)| (*v, *k));
        out.into_iter().map(|(_, _, r)| r).collect()
    }
}

/// A change record as a `resourcechanges` row.
fn row(r: &ChangeRecord, tenant: &str) -> Value {
    let rg = r.resource_group.to_ascii_lowercase();
    json!({
        "id": format!("{}/providers/Microsoft.Resources/changes/{}", r.target_id, r.change_id),
        "name": r.change_id,
        "type": "microsoft.resources/changes",
        "tenantId": tenant,
        "location": "",
        "resourceGroup": rg,
        "subscriptionId": r.subscription,
        "properties": {
            "targetResourceId": r.target_id,
            "targetResourceType": r.target_type,
            "changeType": r.change_type,
            "changeAttributes": {
                "previousResourceSnapshotId": format!("{}_prev", r.change_id),
                "newResourceSnapshotId": format!("{}_new", r.change_id),
                "correlationId": r.correlation_id,
                "changedByType": "AppId",
                "changesCount": r.changes.len(),
                "clientType": "armsim",
                "changedBy": "",
                "operation": format!("{}/{}", r.target_type, if r.change_type == "Delete" { "delete" } else { "write" }),
                "timestamp": r.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            },
            "changes": Value::Object(r.changes.clone()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(identity: Value) -> Value {
        json!({"id": "/subscriptions/s/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm", "type": "microsoft.compute/virtualmachines", "subscriptionId": "s", "resourceGroup": "rg", "tags": {}, "identity": identity})
    }

    #[test]
    fn records_what_changed_with_the_documented_shape() {
        let mut log = ChangeLog::default();
        let before = vm(
            json!({"type": "UserAssigned", "userAssignedIdentities": {"/u/a": {"principalId": "p", "clientId": "c"}}}),
        );
        let after = vm(Value::Null);
        log.record("k", Some(&before), Some(&before));
        assert!(log.records.is_empty(), "no change, no record");
        log.record("k", Some(&before), Some(&after));
        log.record("k", Some(&after), None);
        let rows = log.visible(
            &ChangeFeedConfig::default(),
            Instant::now(),
            chrono::Utc::now(),
            "t",
        );
        assert_eq!(rows.len(), 2);
        let p = &rows[0]["properties"];
        assert_eq!(p["changeType"], "Update");
        assert_eq!(p["targetResourceType"], "microsoft.compute/virtualmachines");
        assert_eq!(
            p["changes"]["identity.type"],
            json!({"newValue": "null", "previousValue": "UserAssigned", "changeCategory": "User", "propertyChangeType": "Remove"})
        );
        assert!(p["changes"]["identity.userAssignedIdentities./u/a.principalId"].is_object());
        assert!(
            p["changeAttributes"]["timestamp"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert_eq!(rows[1]["properties"]["changeType"], "Delete");
    }

    #[tokio::test]
    async fn delay_jitter_duplicates_and_retention() {
        let mut log = ChangeLog::default();
        let cfg = ChangeFeedConfig {
            delay: Duration::from_secs(10),
            jitter: Duration::from_secs(5),
            duplicate_every: 2,
            retention: Duration::from_secs(3600),
        };
        for i in 0..4 {
            log.record("k", None, Some(&vm(json!({"type": format!("T{i}")}))));
        }
        let t0 = Instant::now();
        let wall = chrono::Utc::now();
        assert!(
            log.visible(&cfg, t0, wall, "t").is_empty(),
            "nothing before the delay"
        );
        let all = log.visible(&cfg, t0 + Duration::from_secs(30), wall, "t");
        assert_eq!(all.len(), 6, "records 2 and 4 twice");
        let later = log.visible(
            &cfg,
            t0 + Duration::from_secs(30),
            wall + chrono::Duration::hours(2),
            "t",
        );
        assert!(later.is_empty(), "beyond retention");
    }
}
