//! The reconciler's side of the tenancy guardrails: the cached policies and namespace labels,
//! the check before any write, and which targets to look at again when a policy or a
//! namespace's labels change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use vmidentity_azure::{AzureError, ErrorClass, Executor};
use vmidentity_planner::Spec;
use vmidentity_planner::model::RoleRef;
use vmidentity_planner::policy::{self, Denial, Denied, Policy, RoleInfo, Rule};

use super::conditions;
use super::target::{representative, target_key};
use crate::crd::{VirtualMachineIdentity, VirtualMachineIdentityPolicy};

/// The reason of the Stalled condition of a denied object.
pub const POLICY_DENIED: &str = "PolicyDenied";

/// What the controller knows about policies and namespaces (reflector caches).
#[derive(Clone)]
pub struct PolicyView {
    pub policies: Store<VirtualMachineIdentityPolicy>,
    /// Namespace metadata, for label selectors (None: selectors match nothing).
    pub namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
}

impl PolicyView {
    pub fn policies(&self) -> Vec<Policy> {
        let mut out: Vec<Policy> = self
            .policies
            .state()
            .iter()
            .filter(|p| p.meta().deletion_timestamp.is_none())
            .map(|p| p.to_policy())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn labels(&self, ns: &str) -> Option<BTreeMap<String, String>> {
        let store = self.namespaces.as_ref()?;
        store
            .get(&ObjectRef::new(ns))
            .map(|n| n.metadata.labels.clone().unwrap_or_default())
    }

    /// An annotation of namespace `ns` (from the Namespace metadata cache; None when the
    /// cache is off or the namespace has no such annotation).
    pub fn namespace_annotation(&self, ns: &str, key: &str) -> Option<String> {
        let store = self.namespaces.as_ref()?;
        store
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.annotations.as_ref()?.get(key).cloned())
    }

    /// The check without Azure: namespace coverage and every rule, with built-in role names.
    pub fn check_static(&self, policies: &[Policy], ns: &str, spec: &Spec) -> Result<(), Denied> {
        let labels = self.labels(ns);
        policy::check(
            policies,
            policy::Namespace {
                name: ns,
                labels: labels.as_ref(),
            },
            spec,
            &RoleInfo::offline,
        )
    }

    /// The full check before a write (see [`check_with_azure`]), against `policies` as
    /// [`Self::policies`] read them for this pass.
    pub async fn check(
        &self,
        policies: &[Policy],
        exec: &Executor,
        ns: &str,
        spec: &Spec,
    ) -> Result<Result<(), Denied>, AzureError> {
        let labels = self.labels(ns);
        check_with_azure(
            policies,
            policy::Namespace {
                name: ns,
                labels: labels.as_ref(),
            },
            spec,
            Some(exec),
        )
        .await
    }
}

/// The check with what Azure says about roles: first every rule with built-in role names,
/// then, for the roles the object asks for, their definitions: a role whose permissions can
/// escalate (authorization write, identity takeover: [`policy::escalation`]) is on the deny
/// list too, custom roles included. Without `exec` only the first part.
///
/// Fail closed: a definition that cannot be read for a reason retrying will not cure (403,
/// 401 or no token, a malformed answer, a request refused before sending) denies the object
/// (`spec.allowPrivilegedRoles`), until a later check can read it. Throttling, 5xx and
/// transport errors stay errors: the reconciler retries. A role Azure does not know
/// (`RoleNotFound`) is judged by the static list only; nothing can be granted with it anyway
/// (the write path stalls with RoleNotFound before any write).
pub async fn check_with_azure(
    policies: &[Policy],
    ns: policy::Namespace<'_>,
    spec: &Spec,
    exec: Option<&Executor>,
) -> Result<Result<(), Denied>, AzureError> {
    if let Err(d) = policy::check(policies, ns, spec, &RoleInfo::offline) {
        return Ok(Err(d));
    }
    let Some(exec) = exec.filter(|_| !spec.role_assignments.is_empty()) else {
        return Ok(Ok(()));
    };
    let mut infos: HashMap<String, RoleInfo> = HashMap::new();
    let mut unreadable: Vec<Denial> = Vec::new();
    for (i, ra) in spec.role_assignments.iter().enumerate() {
        let key = ra.role.to_string().to_ascii_lowercase();
        if infos.contains_key(&key) {
            continue;
        }
        match exec
            .client()
            .role_definition(&ra.scope, &ra.role.to_string())
            .await
        {
            Ok(d) => {
                infos.insert(
                    key,
                    RoleInfo {
                        guid: Some(d.guid),
                        name: d.name,
                        escalation: Some(d.escalation),
                    },
                );
            }
            // Nothing can be granted with a role Azure does not know: the write path stalls
            // with RoleNotFound. The static list still applies (RoleInfo::offline below).
            Err(e) if e.class() == ErrorClass::RoleNotFound => {}
            Err(e) if fails_closed(&e) => {
                // Denied under the same key, so later assignments of the role are not re-read.
                infos.insert(key, RoleInfo::offline(&ra.role));
                unreadable.push(Denial {
                    policy: None,
                    rule: Rule::AllowPrivilegedRoles,
                    field: format!("spec.roleAssignments[{i}]"),
                    message: format!(
                        "spec.roleAssignments[{i}]: the definition of role {:?} could not be read ({}: {e}), so whether it is privileged is unknown; the object is denied until it can be read (fail closed, spec.allowPrivilegedRoles)",
                        ra.role.to_string(),
                        e.class().reason()
                    ),
                });
            }
            Err(e) => return Err(e),
        }
    }
    let lookup = |r: &RoleRef| {
        infos
            .get(&r.to_string().to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| RoleInfo::offline(r))
    };
    match policy::check(policies, ns, spec, &lookup) {
        Ok(()) if unreadable.is_empty() => Ok(Ok(())),
        Ok(()) => Ok(Err(Denied(unreadable))),
        Err(Denied(mut d)) => {
            d.extend(unreadable);
            Ok(Err(Denied(d)))
        }
    }
}

/// Whether a failed role definition read denies the object (rather than being retried):
/// everything not retryable, and malformed answers (classed transient for other reads, but
/// a role definition read again is no better formed).
fn fails_closed(e: &AzureError) -> bool {
    !e.is_retryable() || matches!(e, AzureError::InvalidResponse { .. })
}

/// Whether `o` carries a Stalled condition with reason PolicyDenied.
pub fn is_denied(o: &VirtualMachineIdentity) -> bool {
    o.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == conditions::STALLED && c.status == "True" && c.reason == POLICY_DENIED
        })
    })
}

/// The targets to look at again after policies or namespace labels changed: those with an
/// object that is denied now (statically) or was denied before. Everything else is
/// unaffected, so a policy edit does not cost one ARM read per target.
pub fn affected(
    objects: &Store<VirtualMachineIdentity>,
    view: &PolicyView,
) -> Vec<ObjectRef<VirtualMachineIdentity>> {
    let policies = view.policies();
    let mut by_target: HashMap<String, Vec<Arc<VirtualMachineIdentity>>> = HashMap::new();
    for o in objects.state() {
        by_target.entry(target_key(&o)).or_default().push(o);
    }
    let mut out = Vec::new();
    for objs in by_target.values() {
        let hit = objs.iter().any(|o| {
            if o.meta().deletion_timestamp.is_some() {
                return false;
            }
            let Ok(spec) = o.spec.to_raw().validate() else {
                return false;
            };
            let ns = o.namespace().unwrap_or_default();
            is_denied(o) || view.check_static(&policies, &ns, &spec).is_err()
        });
        if hit && let Some(rep) = representative(objs) {
            out.push(ObjectRef::from_obj(&*rep));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use vmidentity_planner::model::{RawRoleAssignment, RawSpec};
    use vmidentity_planner::policy::{NamespaceSelection, RawPolicy, ResourceSet, RoleRule};
    use vmidentity_simulator::{FaultRule, SimConfig, SimHandle, WorldSeed};

    use super::*;

    const SUB: &str = "0a1b2c3d-0000-4000-8000-0000000000b1";
    const RUNNER: &str = "5b0c3c9e-2222-4b43-9a8e-000000000def";

    fn rg() -> String {
        format!("/subscriptions/{SUB}/resourceGroups/rg-a")
    }

    async fn sim() -> SimHandle {
        let yaml = format!(
            "resourceGroups:\n  - id: {rg}\nroleDefinitions:\n  - id: {RUNNER}\n    roleName: Command Runner\n    assignableScopes: [/subscriptions/{SUB}]\n    permissions:\n      - actions: ['*/read', Microsoft.Compute/virtualMachines/runCommand/action]\n",
            rg = rg()
        );
        vmidentity_simulator::start(SimConfig {
            seed: WorldSeed::from_yaml_str(&yaml).expect("seed"),
            ..SimConfig::default()
        })
        .await
        .expect("simulator")
    }

    use crate::operator::test_support::sim_exec as exec;

    /// `roles: ["*"]` everywhere: only the deny list can refuse a role.
    fn any_role() -> Vec<Policy> {
        vec![Policy::new(
            "team-a",
            RawPolicy {
                namespaces: NamespaceSelection {
                    names: vec!["team-a".into()],
                    selector: None,
                },
                targets: ResourceSet {
                    patterns: vec!["**".into()],
                    ..Default::default()
                },
                role_assignments: vec![RoleRule {
                    roles: vec!["*".into()],
                    scopes: vec!["/**".into()],
                }],
                ..Default::default()
            },
        )]
    }

    fn spec(role: &str) -> Spec {
        RawSpec {
            target: format!("{}/providers/Microsoft.Compute/virtualMachines/vm1", rg()),
            role_assignments: vec![RawRoleAssignment {
                identity: "SystemAssigned".into(),
                role: role.into(),
                scope: rg(),
            }],
            ..Default::default()
        }
        .validate()
        .expect("valid spec")
    }

    async fn check(exec: &Executor, role: &str) -> Result<Result<(), Denied>, AzureError> {
        check_with_azure(
            &any_role(),
            policy::Namespace {
                name: "team-a",
                labels: None,
            },
            &spec(role),
            Some(exec),
        )
        .await
    }

    #[tokio::test]
    async fn definitions_decide_and_an_unreadable_one_fails_closed() {
        let sim = sim().await;
        // Readable: Reader passes, a custom role that runs commands on VMs is refused.
        assert_eq!(check(&exec(&sim), "Reader").await.unwrap(), Ok(()));
        let d = check(&exec(&sim), "Command Runner")
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(d.0[0].rule, Rule::AllowPrivilegedRoles);
        assert!(
            d.to_string().contains("(identity takeover: its actions grant Microsoft.Compute/virtualMachines/runCommand/action"),
            "{d}"
        );
        // Offline the custom role is unknown, so the static check alone lets it through.
        assert_eq!(
            policy::check(
                &any_role(),
                policy::Namespace {
                    name: "team-a",
                    labels: None
                },
                &spec("Command Runner"),
                &RoleInfo::offline
            ),
            Ok(())
        );

        // 403 on the definition: denied, saying why (fail closed), even for Reader.
        sim.add_fault(FaultRule::status(403).path_contains("/roleDefinitions"));
        for role in ["Reader", RUNNER] {
            let d = check(&exec(&sim), role).await.unwrap().unwrap_err();
            assert_eq!(d.0.len(), 1, "{d}");
            assert_eq!(d.0[0].rule, Rule::AllowPrivilegedRoles);
            let m = d.to_string();
            assert!(
                m.contains("spec.roleAssignments[0]: the definition of role"),
                "{m}"
            );
            assert!(
                m.contains("could not be read (AuthorizationFailed: "),
                "{m}"
            );
            assert!(
                m.contains("denied until it can be read (fail closed"),
                "{m}"
            );
        }
        sim.clear_faults();

        // 503 (retryable): an error for the reconciler to retry, not a denial.
        sim.add_fault(FaultRule::status(503).path_contains("/roleDefinitions"));
        let e = check(&exec(&sim), "Reader").await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        sim.clear_faults();

        // A role Azure does not know: judged by the static list (the write path stalls with
        // RoleNotFound before anything is written).
        assert_eq!(check(&exec(&sim), "No Such Role").await.unwrap(), Ok(()));
        assert!(
            check(&exec(&sim), "Owner")
                .await
                .unwrap()
                .unwrap_err()
                .to_string()
                .contains("Owner is on the built-in deny list")
        );
    }
}
