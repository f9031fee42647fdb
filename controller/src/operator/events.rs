//! Kubernetes events (`events.k8s.io/v1`) that cost little memory at fleet scale.
//!
//! kube-runtime's `Recorder` keeps a full copy of every event it published (its key and its
//! body) for six minutes, and scans all of them on every publish. Converging 10,000 objects
//! publishes 10,000 events within those six minutes: heaptrack measured 27 MiB held by that
//! cache, a third of the controller's heap. This recorder keeps only what a repeat needs: per
//! (object, type, reason, note), the event's name, how often it was seen and when.
//!
//! Semantics follow client-go's `tools/events`: the first occurrence creates an Event; an
//! identical one within [`SERIES_WINDOW`] patches that Event's `series` (count from 2,
//! `lastObservedTime`) instead of creating another. Unlike client-go the note is part of the
//! identity, so a repeat with a different message is a new Event rather than a count on an
//! Event that says something else.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::EventType;
use serde_json::json;

/// How long an occurrence can be counted on an earlier Event (client-go's and kube's 6 min).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// The API server refuses notes over 1 KiB.
const NOTE_MAX_BYTES: usize = 1024;
/// Forgotten occurrences are dropped at most this often (not on every publish).
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// What a publish wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// A new Event.
    Created,
    /// A count on an earlier Event's series.
    Counted,
}

/// Publishes events for the controller's objects.
pub struct EventRecorder {
    client: kube::Client,
    controller: String,
    instance: String,
    seen: Mutex<Seen>,
}

impl EventRecorder {
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        EventRecorder {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Publishes one occurrence: a new Event, or a count on the same Event within the window.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        action: &str,
        reason: &str,
        note: &str,
    ) -> Result<Published, kube::Error> {
        let note = truncate(note, NOTE_MAX_BYTES);
        let key = occurrence_key(regarding, type_, action, reason, note);
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let now = Instant::now();
        let repeat = self.with_seen(|s| s.observe(key, now));
        if let Some((name, count)) = repeat {
            let patch = json!({"series": {
                "count": count,
                "lastObservedTime": MicroTime(Timestamp::now()),
            }});
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(Published::Counted),
                // The Event expired or was deleted: start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    // Not counted: the next occurrence tries the same count again.
                    self.with_seen(|s| s.uncount(key));
                    return Err(e);
                }
            }
        }
        let event = self.event(regarding, type_, action, reason, note);
        let name = event.metadata.name.clone().unwrap_or_default();
        events.create(&PostParams::default(), &event).await?;
        self.with_seen(|s| s.created(key, name, now));
        Ok(Published::Created)
    }

    fn with_seen<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        let mut guard = match self.seen.lock() {
            Ok(g) => g,
            // A panic elsewhere left the map mid-update: it only holds hints, start afresh.
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                *g = Seen::default();
                g
            }
        };
        f(&mut guard)
    }

    fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        action: &str,
        reason: &str,
        note: &str,
    ) -> Event {
        let now = Timestamp::now();
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note.to_string()),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

/// Identifies an occurrence: who it is about and what it says. A 64-bit digest instead of
/// the strings themselves (a collision would count one occurrence on a look-alike Event).
fn occurrence_key(
    regarding: &ObjectReference,
    type_: EventType,
    action: &str,
    reason: &str,
    note: &str,
) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &regarding.namespace,
        &regarding.name,
        &regarding.uid,
        &regarding.kind,
        &regarding.api_version,
    )
        .hash(&mut h);
    matches!(type_, EventType::Warning).hash(&mut h);
    (action, reason, note).hash(&mut h);
    h.finish()
}

/// At most `max` bytes, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What was published recently: enough to count a repeat on its Event.
#[derive(Default)]
struct Seen {
    events: HashMap<u64, Occurrence>,
    pruned: Option<Instant>,
}

struct Occurrence {
    name: Box<str>,
    count: i32,
    last: Instant,
}

impl Seen {
    /// A repeat within the window: the Event to count it on and its new count (which is then
    /// recorded); `None` for a first occurrence.
    fn observe(&mut self, key: u64, now: Instant) -> Option<(String, i32)> {
        self.prune(now);
        let o = self.events.get_mut(&key)?;
        if now.saturating_duration_since(o.last) >= SERIES_WINDOW {
            self.events.remove(&key);
            return None;
        }
        o.count = o.count.saturating_add(1);
        o.last = now;
        Some((o.name.to_string(), o.count))
    }

    /// The count recorded by `observe` did not reach the API server.
    fn uncount(&mut self, key: u64) {
        if let Some(o) = self.events.get_mut(&key) {
            o.count = (o.count - 1).max(1);
        }
    }

    fn created(&mut self, key: u64, name: String, now: Instant) {
        self.events.insert(
            key,
            Occurrence {
                name: name.into_boxed_str(),
                count: 1,
                last: now,
            },
        );
    }

    fn prune(&mut self, now: Instant) {
        if self
            .pruned
            .is_some_and(|p| now.saturating_duration_since(p) < PRUNE_EVERY)
        {
            return;
        }
        self.pruned = Some(now);
        self.events
            .retain(|_, o| now.saturating_duration_since(o.last) < SERIES_WINDOW);
        // Give a burst's memory back once it is over.
        if self.events.capacity() > 64 && self.events.len() < self.events.capacity() / 4 {
            self.events.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("vmidentity.dev/v1alpha1".into()),
            kind: Some("VirtualMachineIdentity".into()),
            name: Some(name.into()),
            namespace: Some("team-a".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn key(o: &ObjectReference, reason: &str, note: &str) -> u64 {
        occurrence_key(o, EventType::Warning, "Reconcile", reason, note)
    }

    #[test]
    fn a_repeat_within_the_window_counts_on_the_first_event() {
        let mut s = Seen::default();
        let t0 = Instant::now();
        let k = key(&obj("a", "1"), "ArmThrottled", "429");
        assert_eq!(s.observe(k, t0), None);
        s.created(k, "a.1".into(), t0);
        assert_eq!(
            s.observe(k, t0 + Duration::from_secs(10)),
            Some(("a.1".to_string(), 2))
        );
        assert_eq!(
            s.observe(k, t0 + Duration::from_secs(20)),
            Some(("a.1".to_string(), 3))
        );
    }

    #[test]
    fn the_window_runs_from_the_last_occurrence_and_then_a_new_event_starts() {
        let mut s = Seen::default();
        let t0 = Instant::now();
        let k = key(&obj("a", "1"), "ArmThrottled", "429");
        s.created(k, "a.1".into(), t0);
        let t1 = t0 + SERIES_WINDOW - Duration::from_secs(1);
        assert_eq!(s.observe(k, t1), Some(("a.1".to_string(), 2)));
        // Counted at t1: still within the window 5 min later.
        assert_eq!(
            s.observe(k, t1 + Duration::from_secs(300)),
            Some(("a.1".to_string(), 3))
        );
        assert_eq!(
            s.observe(k, t1 + Duration::from_secs(300) + SERIES_WINDOW),
            None
        );
    }

    #[test]
    fn different_objects_reasons_or_notes_are_different_events() {
        let a = obj("a", "1");
        let keys = [
            key(&a, "ArmThrottled", "429"),
            key(&a, "ArmThrottled", "503"),
            key(&a, "Applied", "429"),
            key(&obj("b", "1"), "ArmThrottled", "429"),
            key(&obj("a", "2"), "ArmThrottled", "429"),
            occurrence_key(&a, EventType::Normal, "Reconcile", "ArmThrottled", "429"),
        ];
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
        assert_eq!(keys[0], key(&obj("a", "1"), "ArmThrottled", "429"));
    }

    #[test]
    fn a_failed_count_is_taken_back() {
        let mut s = Seen::default();
        let t0 = Instant::now();
        let k = key(&obj("a", "1"), "ArmThrottled", "429");
        s.created(k, "a.1".into(), t0);
        assert_eq!(s.observe(k, t0), Some(("a.1".to_string(), 2)));
        s.uncount(k);
        assert_eq!(s.observe(k, t0), Some(("a.1".to_string(), 2)));
    }

    #[test]
    fn old_occurrences_are_forgotten_and_their_memory_returned() {
        let mut s = Seen::default();
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let k = key(&obj(&format!("o-{i}"), "u"), "Applied", "done");
            s.created(k, format!("o-{i}.1"), t0);
        }
        assert_eq!(s.len(), 10_000);
        let later = t0 + SERIES_WINDOW + Duration::from_secs(1);
        let k = key(&obj("new", "u"), "Applied", "done");
        assert_eq!(s.observe(k, later), None);
        assert_eq!(s.len(), 0);
        assert!(s.events.capacity() < 1_000, "{}", s.events.capacity());
    }

    #[test]
    fn pruning_is_not_done_on_every_publish() {
        let mut s = Seen::default();
        let t0 = Instant::now();
        let old = key(&obj("old", "u"), "Applied", "done");
        s.created(old, "old.1".into(), t0);
        let other = key(&obj("other", "u"), "Applied", "done");
        // First publish prunes (nothing old yet) and starts the clock.
        assert_eq!(s.observe(other, t0), None);
        // Inside PRUNE_EVERY nothing is scanned, even though `old` has not expired anyway.
        assert_eq!(s.observe(other, t0 + Duration::from_secs(1)), None);
        assert_eq!(s.len(), 1);
        // An expired entry is not counted on even before the next prune.
        let mut s2 = Seen {
            pruned: Some(t0 + SERIES_WINDOW),
            ..Seen::default()
        };
        s2.created(old, "old.1".into(), t0);
        assert_eq!(
            s2.observe(old, t0 + SERIES_WINDOW + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_character_boundary() {
        let long = "é".repeat(600); // 1,200 bytes
        let cut = truncate(&long, NOTE_MAX_BYTES);
        assert!(cut.len() <= NOTE_MAX_BYTES);
        assert_eq!(cut.len(), 1024);
        let odd = format!("a{long}");
        let cut = truncate(&odd, NOTE_MAX_BYTES);
        assert_eq!(cut.len(), 1023);
        assert_eq!(truncate("short", NOTE_MAX_BYTES), "short");
    }
}
