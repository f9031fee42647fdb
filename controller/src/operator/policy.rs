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
use vmidentity_planner::policy::{self, Denied, Policy, RoleInfo};

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

    /// The full check before a write (see [`check_with_azure`]).
    pub async fn check(
        &self,
        exec: &Executor,
        ns: &str,
        spec: &Spec,
    ) -> Result<Result<(), Denied>, AzureError> {
        let policies = self.policies();
        let labels = self.labels(ns);
        check_with_azure(
            &policies,
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
/// then, for the roles the object asks for, their definitions (a custom role that can write
/// Microsoft.Authorization is on the deny list too). Without `exec` only the first part.
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
    for ra in &spec.role_assignments {
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
                        writes_authorization: Some(d.writes_authorization),
                    },
                );
            }
            // Reported by the write path with its own reason.
            Err(e) if e.class() == ErrorClass::RoleNotFound => {}
            Err(e) => return Err(e),
        }
    }
    let lookup = |r: &RoleRef| {
        infos
            .get(&r.to_string().to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| RoleInfo::offline(r))
    };
    Ok(policy::check(policies, ns, spec, &lookup))
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
