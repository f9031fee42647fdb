//! Creating, counting and cleaning up objects; when the simulator saw a PATCH.

use super::*;

pub(super) async fn create_with_retry(
    api: &Api<VirtualMachineIdentity>,
    o: &VirtualMachineIdentity,
) -> bool {
    for attempt in 0..5u32 {
        match api.create(&PostParams::default(), o).await {
            Ok(_) => return true,
            Err(kube::Error::Api(e)) if e.code == 409 => return true,
            Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await,
        }
    }
    false
}

/// Removes every object of the namespace (finalizers first) and the Events there.
pub(super) async fn cleanup(client: &Client, ns: &str, concurrency: usize) {
    let api: Api<VirtualMachineIdentity> = Api::namespaced(client.clone(), ns);
    kit::clear_objects(&api, concurrency).await;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        let _ = events
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        match events.list_metadata(&ListParams::default().limit(1)).await {
            Ok(l) if l.items.is_empty() => break,
            _ => {}
        }
    }
}

/// Objects of the namespace whose Ready condition is True for their generation.
pub(super) async fn count_ready(api: &Api<VirtualMachineIdentity>) -> Result<usize> {
    let mut ready = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.context("listing objects")?;
        ready += page
            .items
            .iter()
            .filter(|o| {
                o.status.as_ref().is_some_and(|s| {
                    s.observed_generation == o.metadata.generation
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(ready);
        }
    }
}

pub(super) fn parse_ts(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| SystemTime::from(t.with_timezone(&chrono::Utc)))
}

/// Milliseconds from `from` to `to` (negative when `to` is earlier).
pub(super) fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

/// When the simulator received the first PATCH of `vm_id` (None on timeout).
pub(super) async fn patch_arrival(
    sim: &SimHandle,
    vm_id: &str,
    deadline: Instant,
) -> Option<SystemTime> {
    let key = vm_id.to_ascii_lowercase();
    loop {
        // writes_for counts on arrival; the log entry is added when the answer is ready.
        if sim.writes_for(vm_id) > 0
            && let Some(t) = sim
                .requests()
                .iter()
                .rev()
                .find(|r| r.method == "PATCH" && r.resource_id.as_deref() == Some(key.as_str()))
                .and_then(|r| parse_ts(&r.timestamp))
        {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
