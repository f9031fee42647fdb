//! Every refusal is logged once at WARN: the moment an object becomes `Stalled` with a
//! reason and message it did not have (or for a new generation of its spec).

use kube::ResourceExt;
use tracing::warn;

use super::conditions::STALLED;
use crate::crd::{VirtualMachineIdentity, VirtualMachineIdentityStatus};

/// A refusal that `new` states and `old` did not: its reason and message.
pub fn newly_stalled<'a>(
    old: Option<&VirtualMachineIdentityStatus>,
    new: &'a VirtualMachineIdentityStatus,
) -> Option<(&'a str, &'a str)> {
    let stalled = |s: &'a VirtualMachineIdentityStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == STALLED && c.status == "True")
    };
    let now = stalled(new)?;
    let before = old.and_then(|o| {
        o.conditions
            .iter()
            .find(|c| c.type_ == STALLED && c.status == "True")
            .map(|c| (c, o.observed_generation))
    });
    match before {
        Some((b, generation))
            if b.reason == now.reason
                && b.message == now.message
                && generation == new.observed_generation =>
        {
            None
        }
        _ => Some((now.reason.as_str(), now.message.as_str())),
    }
}

/// An object as logs name it: `namespace/name`.
pub fn key(o: &VirtualMachineIdentity) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Logs `new`'s refusal of `o` at WARN (object as namespace/name, target, reason, message)
/// if it is one `o`'s current status does not already state.
pub fn log_new(o: &VirtualMachineIdentity, new: &VirtualMachineIdentityStatus) {
    if let Some((reason, message)) = newly_stalled(o.status.as_ref(), new) {
        warn!(
            object = %key(o),
            target = %o.spec.target,
            reason,
            "refused: {message}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::conditions::{Phase, conditions};
    use k8s_openapi::jiff::Timestamp;

    fn status(phase: Phase, generation: i64) -> VirtualMachineIdentityStatus {
        VirtualMachineIdentityStatus {
            observed_generation: Some(generation),
            conditions: conditions(&[], &phase, Some(generation), Timestamp::UNIX_EPOCH),
            ..Default::default()
        }
    }

    fn stalled(reason: &str, message: &str) -> Phase {
        Phase::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn a_refusal_is_reported_once_per_reason_message_and_generation() {
        let ready = status(
            Phase::Ready {
                reason: "Converged".into(),
                message: "ok".into(),
            },
            1,
        );
        let denied = status(stalled("PolicyDenied", "target not allowed"), 1);
        assert_eq!(newly_stalled(None, &ready), None);
        assert_eq!(
            newly_stalled(None, &denied),
            Some(("PolicyDenied", "target not allowed"))
        );
        assert_eq!(
            newly_stalled(Some(&ready), &denied),
            Some(("PolicyDenied", "target not allowed"))
        );
        // The same refusal again (a resync): not logged again.
        assert_eq!(newly_stalled(Some(&denied), &denied), None);
        // Another reason, another message, or a new spec: logged.
        let conflict = status(stalled("Conflict", "a/b says false"), 1);
        assert_eq!(
            newly_stalled(Some(&denied), &conflict),
            Some(("Conflict", "a/b says false"))
        );
        let other = status(stalled("PolicyDenied", "UAI not allowed"), 1);
        assert!(newly_stalled(Some(&denied), &other).is_some());
        let edited = status(stalled("PolicyDenied", "target not allowed"), 2);
        assert!(newly_stalled(Some(&denied), &edited).is_some());
        // Not stalled any more: nothing to say.
        assert_eq!(newly_stalled(Some(&denied), &ready), None);
    }
}
