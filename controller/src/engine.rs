//! The one-shot engine behind `plan`, `apply` and `demo`: group objects by target, read
//! each target once, plan it, send its writes, and report.

use std::collections::BTreeMap;

use futures::StreamExt;
use vmidentity_azure::{AzureError, Executor};
use vmidentity_planner::{
    ApiVersion, Applied, DesiredObject, LiveResource, ObjectRef, PlanError, TargetPlan,
    group_by_target, plan_target,
};

use crate::input::LiveSet;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Azure(#[from] AzureError),
    #[error("no live body for target {0} (give its ARM GET body in --live)")]
    MissingLive(String),
}

impl EngineError {
    /// A stable reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EngineError::Plan(p) => p.reason(),
            EngineError::Azure(a) => a.class().reason(),
            EngineError::MissingLive(_) => "MissingLive",
        }
    }
}

/// What happened to one target.
#[derive(Debug)]
pub struct TargetResult {
    /// The target as the objects spell it.
    pub target: String,
    pub objects: Vec<ObjectRef>,
    pub plan: Option<TargetPlan>,
    /// Set when the target was refused or a write failed; nothing after the failure was sent.
    pub error: Option<EngineError>,
    /// The target as ARM answered the write (None when nothing was written).
    pub live_after: Option<LiveResource>,
}

impl TargetResult {
    pub fn writes(&self) -> usize {
        if self.error.is_some() {
            return 0;
        }
        self.plan.as_ref().map_or(0, |p| p.writes.len())
    }
}

/// The api-version to read a target with: the newest its objects ask for.
pub fn read_version(objects: &[DesiredObject]) -> ApiVersion {
    objects
        .iter()
        .map(|o| o.spec.api_version.clone())
        .max()
        .unwrap_or_default()
}

/// Plans every target against given live bodies (no I/O).
pub fn plan_offline(objects: Vec<DesiredObject>, lives: &LiveSet) -> Vec<TargetResult> {
    group_by_target(objects)
        .into_iter()
        .map(|(key, group)| {
            let target = group[0].spec.target.to_string();
            let objects: Vec<ObjectRef> = group.iter().map(|o| o.object.clone()).collect();
            let (plan, error) = match lives.get(&key) {
                None => (None, Some(EngineError::MissingLive(target.clone()))),
                Some(live) => match plan_target(&group, live) {
                    Ok(p) => (Some(p), None),
                    Err(e) => (None, Some(e.into())),
                },
            };
            TargetResult {
                target,
                objects,
                plan,
                error,
                live_after: None,
            }
        })
        .collect()
}

/// Reads, plans and writes every target, `concurrency` targets at a time. Each target gets
/// one GET and at most one PATCH; one target's failure does not stop the others.
pub async fn apply(
    exec: &Executor,
    objects: Vec<DesiredObject>,
    concurrency: usize,
) -> Vec<TargetResult> {
    let groups = group_by_target(objects);
    let mut results: Vec<TargetResult> = futures::stream::iter(groups.into_values())
        .map(|group| apply_target(exec, group))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.sort_by(|a, b| {
        a.target
            .to_ascii_lowercase()
            .cmp(&b.target.to_ascii_lowercase())
    });
    results
}

async fn apply_target(exec: &Executor, group: Vec<DesiredObject>) -> TargetResult {
    let target_id = group[0].spec.target.clone();
    let mut result = TargetResult {
        target: target_id.to_string(),
        objects: group.iter().map(|o| o.object.clone()).collect(),
        plan: None,
        error: None,
        live_after: None,
    };
    let live = match exec.read_target(&target_id, &read_version(&group)).await {
        Ok(l) => l,
        Err(e) => {
            result.error = Some(e.into());
            return result;
        }
    };
    let plan = match plan_target(&group, &live) {
        Ok(p) => p,
        Err(e) => {
            result.error = Some(e.into());
            return result;
        }
    };
    if !plan.is_converged() {
        match exec.execute(&plan).await {
            Ok(outcome) => result.live_after = outcome.live,
            Err(e) => result.error = Some(e.into()),
        }
    }
    result.plan = Some(plan);
    result
}

/// Ownership records kept between one-shot runs (`apply --state FILE`), keyed `ns/name`.
pub type State = BTreeMap<String, Applied>;

/// Overrides the objects' `status.applied` with the state file's records.
pub fn with_state(objects: Vec<DesiredObject>, state: &State) -> Vec<DesiredObject> {
    objects
        .into_iter()
        .map(|o| match state.get(&o.object.to_string()) {
            Some(a) => o.with_applied(a.clone()),
            None => o,
        })
        .collect()
}

/// The state after a run: successful targets' new records replace the old ones; objects being
/// deleted are dropped once their target succeeded.
pub fn next_state(mut state: State, objects: &[DesiredObject], results: &[TargetResult]) -> State {
    for r in results {
        let Some(plan) = &r.plan else { continue };
        if r.error.is_some() {
            continue;
        }
        for (obj, applied) in &plan.applied {
            let deleting = objects.iter().any(|o| o.object == *obj && o.deleting);
            if deleting || applied.is_empty() {
                state.remove(&obj.to_string());
            } else {
                state.insert(obj.to_string(), applied.clone());
            }
        }
    }
    state
}
