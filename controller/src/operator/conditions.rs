//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`) that keep their transition times.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
/// The condition an object under `observe` carries: `True` when its target differs from
/// what its objects declare (writes are pending), `False` when it is as declared.
pub const DRIFTED: &str = "Drifted";

/// Where an object stands after a pass, as kstatus reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Converged: Ready=True, Reconciling=False, Stalled=False.
    Ready { reason: String, message: String },
    /// Work in progress or a retryable error: Ready=False, Reconciling=True.
    Progressing { reason: String, message: String },
    /// A permanent error that needs a human (a spec change): Ready=False, Stalled=True.
    Stalled { reason: String, message: String },
}

fn cond(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.chars().take(32 * 1024).collect(),
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// The three conditions for `phase`, keeping `lastTransitionTime` of any condition whose
/// status did not change.
pub fn conditions(
    previous: &[Condition],
    phase: &Phase,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let now = Time(now);
    let (ready, reconciling, stalled, reason, message) = match phase {
        Phase::Ready { reason, message } => (true, false, false, reason, message),
        Phase::Progressing { reason, message } => (false, true, false, reason, message),
        Phase::Stalled { reason, message } => (false, false, true, reason, message),
    };
    let mut out = vec![
        cond(READY, ready, reason, message, generation, &now),
        cond(
            RECONCILING,
            reconciling,
            if reconciling { reason } else { "Idle" },
            if reconciling { message } else { "" },
            generation,
            &now,
        ),
        cond(
            STALLED,
            stalled,
            if stalled { reason } else { "Healthy" },
            if stalled { message } else { "" },
            generation,
            &now,
        ),
    ];
    for c in out.iter_mut() {
        if let Some(old) = previous.iter().find(|p| p.type_ == c.type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    out
}

/// True when the conditions say the same as before (ignoring transition times).
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_transition_times_of_unchanged_conditions() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let p = Phase::Progressing {
            reason: "Throttled".into(),
            message: "m".into(),
        };
        let first = conditions(&[], &p, Some(1), t0);
        assert_eq!(first[1].status, "True");
        let ready = Phase::Ready {
            reason: "Converged".into(),
            message: "ok".into(),
        };
        let second = conditions(&first, &ready, Some(1), t1);
        // Ready flipped: new time. Stalled stayed False: old time.
        assert_eq!(second[0].last_transition_time.0, t1);
        assert_eq!(second[2].last_transition_time.0, t0);
        assert!(!same(&first, &second));
        let third = conditions(&second, &ready, Some(1), t1);
        assert!(same(&second, &third));
    }
}
