//! The `VirtualMachineIdentity` custom resource (group `vmidentity.dev`, version `v1alpha1`).
//! The CRD YAML in `crds/` is generated from these types (`vmidentity crd`).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use vmidentity_planner as planner;

/// Which managed identities (and, with them, role assignments and group memberships) an Azure
/// virtual machine or VM scale set must carry.
// The printcolumn(...) entries repeat keys by design; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vmidentity.dev",
    version = "v1alpha1",
    kind = "VirtualMachineIdentity",
    namespaced,
    shortname = "vmid",
    category = "azure",
    status = "VirtualMachineIdentityStatus",
    doc = "Declares the managed identities of an Azure VM or VM scale set.",
    printcolumn(
        name = "Target ID",
        type_ = "string",
        json_path = ".spec.target",
        priority = "1"
    ),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.targetName"),
    printcolumn(name = "System", type_ = "boolean", json_path = ".spec.systemAssigned"),
    printcolumn(
        name = "User",
        type_ = "integer",
        json_path = ".status.userAssignedCount"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Drifted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Drifted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.roleAssignments) || self.roleAssignments.all(r, r.identity == 'SystemAssigned' || (has(self.userAssignedIdentities) && self.userAssignedIdentities.exists(u, u.lowerAscii() == r.identity.lowerAscii())))").message("each roleAssignments[].identity must be \"SystemAssigned\" or one of spec.userAssignedIdentities"),
    validation = Rule::new("!has(self.groupMemberships) || self.groupMemberships.all(g, g.identity == 'SystemAssigned' || (has(self.userAssignedIdentities) && self.userAssignedIdentities.exists(u, u.lowerAscii() == g.identity.lowerAscii())))").message("each groupMemberships[].identity must be \"SystemAssigned\" or one of spec.userAssignedIdentities"),
    validation = Rule::new("!has(self.systemAssigned) || self.systemAssigned || ((!has(self.roleAssignments) || !self.roleAssignments.exists(r, r.identity == 'SystemAssigned')) && (!has(self.groupMemberships) || !self.groupMemberships.exists(g, g.identity == 'SystemAssigned')))").message("systemAssigned is false, so no roleAssignments or groupMemberships may name the SystemAssigned identity")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineIdentitySpec {
    /// ARM ID of the VM (`.../providers/Microsoft.Compute/virtualMachines/<name>`) or VM scale
    /// set (`.../virtualMachineScaleSets/<name>`). Immutable.
    #[x_kube(
        validation = Rule::new("self.matches('(?i)^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\\\\.compute/(virtualmachines|virtualmachinescalesets)/[^/]+$')").message("spec.target must be a VM or VMSS resource ID: /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<name> (or virtualMachineScaleSets/<name>)"),
        validation = Rule::new("!self.matches('/[.]{1,2}(/|$)') && !self.matches('[%?#[:cntrl:][:space:]]') && !self.contains('\\\\')").message("spec.target must not contain '.' or '..' segments, '%', '\\', '?', '#', whitespace or control characters"),
        validation = Rule::new("self == oldSelf").message("spec.target is immutable: create a new object for another VM or VMSS")
    )]
    #[schemars(length(min = 1, max = 1024))]
    pub target: String,

    /// The Microsoft.Compute api-version used for the target (default 2025-04-01: dictionary
    /// merge and entity tags). 2017-12-01 uses the `identityIds` array (a PATCH replaces it
    /// whole); 2018-06-01 and later the `userAssignedIdentities` dictionary; from 2023-09-01
    /// the identity PATCH carries the target's entity tag (`If-Match`), so another writer's
    /// change between our read and our write is not undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$"))]
    #[x_kube(
        validation = Rule::new(planner::arm_versions::compute_cel_rule()).message(planner::arm_versions::compute_message().as_str())
    )]
    pub arm_api_version: Option<String>,

    /// How the user-assigned identities are applied. Merge (default): add what is listed and
    /// remove only what this object applied. Exact: the list is the whole user-assigned set of
    /// the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,

    /// Whether the target's system-assigned identity is on: `true` enables it, `false`
    /// disables it (destroying its principal), and absent leaves it untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_assigned: Option<bool>,

    /// Resource IDs of the user-assigned identities the target must carry
    /// (`.../providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`), each once.
    #[serde(default)]
    #[schemars(length(max = 150), inner(length(min = 1, max = 350)))]
    #[x_kube(
        validation = Rule::new("self.all(id, id.matches('(?i)^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\\\\.managedidentity/userassignedidentities/[^/]+$'))").message(Message::Expression("'each userAssignedIdentities entry must be a user-assigned identity ID (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>); this one is not: ' + self.filter(id, !id.matches('(?i)^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\\\\.managedidentity/userassignedidentities/[^/]+$'))[0]".into())),
        validation = Rule::new("self.all(id, !id.matches('/[.]{1,2}(/|$)') && !id.matches('[%?#[:cntrl:][:space:]]') && !id.contains('\\\\'))").message("each userAssignedIdentities entry must not contain '.' or '..' segments, '%', '\\', '?', '#', whitespace or control characters"),
        validation = Rule::new("self.all(a, self.filter(b, b.lowerAscii() == a.lowerAscii()).size() == 1)").message(Message::Expression("'userAssignedIdentities must not list the same identity twice (resource IDs are case-insensitive); listed more than once: ' + self.filter(a, self.filter(b, b.lowerAscii() == a.lowerAscii()).size() > 1)[0]".into()))
    )]
    pub user_assigned_identities: Vec<UserAssignedIdentityId>,

    /// Azure RBAC role assignments the identities must hold.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(
        validation = Rule::new("self.all(r, r.scope.startsWith('/') && !r.scope.endsWith('/') && !r.scope.contains('//') && !r.scope.matches('/[.]{1,2}(/|$)') && !r.scope.matches('[%?#[:cntrl:][:space:]]') && !r.scope.contains('\\\\'))").message("each roleAssignments[].scope must be an ARM scope ID starting with '/', without a trailing '/', empty, '.' or '..' segments, '%', '\\', '?', '#', whitespace or control characters")
    )]
    pub role_assignments: Vec<RoleAssignment>,

    /// Entra ID groups the identities must be members of.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub group_memberships: Vec<GroupMembership>,

    /// What deleting this object does. Detach (default): remove what this object applied
    /// (identities, role assignments, group memberships) and nobody else wants. Retain: leave
    /// everything in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// A user-assigned identity resource ID.
pub type UserAssignedIdentityId = String;

/// `spec.mode` and `spec.deletionPolicy` are the planner's own types (their schema comes with
/// the planner's `schema` feature).
pub use planner::{DeletionPolicy, Mode};

/// The items of `spec.roleAssignments` and `spec.groupMemberships` are the planner's own
/// [`planner::RawSpec`] items (their schema, descriptions and bounds come with the planner's
/// `schema` feature).
pub use planner::model::{
    RawGroupMembership as GroupMembership, RawRoleAssignment as RoleAssignment,
};

/// The state the controller observed and what this object owns, kstatus style.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineIdentityStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The kstatus conditions `Ready`, `Reconciling` and `Stalled`, each with a reason and a
    /// message that says what to do.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The ownership record: what this object has put on the target. Only what is listed here
    /// is ever removed on this object's behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<AppliedIdentities>,
    /// The principal IDs (Entra object IDs) of the identities this object manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principals: Option<Principals>,
    /// The target's name (the last segment of its ID), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,
    /// How many of the user-assigned identities this object lists the target carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_assigned_count: Option<i64>,
    /// With reconcile policy `observe`: the writes the controller would send to this object's
    /// target, exactly as `vmidentity plan -o json` prints them (first ones only, see
    /// `pendingWritesOmitted`). Empty when the target is as declared or the policy is
    /// `manage`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub pending_writes: Vec<PendingWrite>,
    /// How many pending writes are not listed in `pendingWrites` (it is bounded in entries and
    /// bytes); absent when none are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_writes_omitted: Option<i64>,
    /// Grants this object lists that its identities already held, made by someone else
    /// (Terraform, a person, the portal): left alone, not in `applied`, and so never removed
    /// by this object, not even when dropped from its spec. The annotation
    /// `vmidentity.dev/adopt: "true"` takes them over. Absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_not_adopted: Option<HeldNotAdopted>,
}

/// `status.heldNotAdopted`: listed grants held before and not owned by the object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldNotAdopted {
    /// Role assignments, under their existing IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub role_assignments: Vec<AppliedRoleAssignment>,
    /// Group memberships.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub group_memberships: Vec<AppliedGroupMembership>,
}

/// One write vmidentity would send, as `vmidentity plan -o json` prints it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingWrite {
    /// `PATCH`, `PUT`, `POST` or `DELETE`.
    pub method: String,
    /// The ARM resource ID (or Graph path after its version) the write goes to.
    pub id: String,
    /// The ARM api-version (or Graph's version, `v1.0`).
    pub api_version: String,
    /// The exact JSON body (absent for a DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_object")]
    pub body: Option<serde_json::Value>,
    /// The `If-Match` entity tag, when the write is conditional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_match: Option<String>,
}

/// An object of any shape (the API server keeps its fields as they are).
fn any_json_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// `metadata.annotations` key by which an object adopts what it lists and was on its target
/// before (value `"true"`; `"false"` or absent: no adoption). An annotation rather than a
/// spec field: `vmidentity import --adopt`, a GitOps overlay or `kubectl annotate` can turn
/// it on for an existing object without a spec change (no new generation, no schema
/// migration of v1alpha1), and it says what it is, a one-time handover of ownership, not a
/// property of the desired state; its value is still validated (anything else is
/// `InvalidSpec`). Issue 15 part 2.
pub const ADOPT_ANNOTATION: &str = "vmidentity.dev/adopt";

/// `metadata.annotations` key, on an object or on its Namespace, that chooses the reconcile
/// policy: `manage` (read, plan and write) or `observe` (read and plan, never write; report
/// the drift). The object's wins over the Namespace's, which wins over the controller's
/// `--default-reconcile-policy`.
pub const RECONCILE_POLICY_ANNOTATION: &str = "vmidentity.dev/reconcile-policy";

/// `status.applied`, the ownership record, is the planner's [`planner::Applied`] itself (its
/// schema comes with the planner's `schema` feature): no copy to keep in step.
pub use planner::Applied as AppliedIdentities;
pub use planner::model::{AppliedGroupMembership, AppliedRoleAssignment};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Principals {
    /// The system-assigned identity's principal ID, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_assigned: Option<String>,
    /// The principal ID of each user-assigned identity, by identity ID.
    #[serde(default, skip_serializing_if = "StringMap::is_empty")]
    pub user_assigned: StringMap,
}

/// A string-to-string map, sorted by key, that serialises as a JSON object (its schema is a
/// `BTreeMap<String, String>`'s). Every cached object carries one, mostly with one or two
/// entries: a `BTreeMap` spends a 544-byte node on those, 5 MiB over 10,000 objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StringMap(Vec<(String, String)>);

impl StringMap {
    pub fn insert(&mut self, key: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for StringMap {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let sorted: BTreeMap<String, String> = iter.into_iter().collect();
        StringMap(sorted.into_iter().collect())
    }
}

impl Serialize for StringMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sorted = BTreeMap::<String, String>::deserialize(d)?;
        Ok(StringMap(sorted.into_iter().collect()))
    }
}

impl JsonSchema for StringMap {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        <BTreeMap<String, String>>::schema_name()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, String>>::json_schema(g)
    }
}

/// The one conversion of an object into the planner's input.
impl VirtualMachineIdentity {
    /// The object as the planner names it (`default` when the namespace is not set, as for
    /// an object read from a file).
    pub fn planner_ref(&self) -> planner::ObjectRef {
        planner::ObjectRef::new(
            self.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            self.metadata.name.clone().unwrap_or_default(),
        )
    }

    /// True once the object has a deletion timestamp.
    pub fn is_deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// The ownership record (`status.applied`), empty when there is none.
    pub fn applied(&self) -> planner::Applied {
        self.status
            .as_ref()
            .and_then(|s| s.applied.as_ref())
            .cloned()
            .unwrap_or_default()
    }

    /// The validated spec with its ownership record: what the planner plans for the object.
    pub fn desired(&self) -> Result<planner::DesiredObject, Vec<planner::model::FieldError>> {
        let (spec, adopt) = match (self.spec.to_raw().validate(), self.adopts()) {
            (Ok(spec), Ok(adopt)) => (spec, adopt),
            (Err(mut errs), Err(e)) => {
                errs.push(e);
                return Err(errs);
            }
            (Err(errs), _) => return Err(errs),
            (_, Err(e)) => return Err(vec![e]),
        };
        let mut d = planner::DesiredObject::new(self.planner_ref(), spec)
            .with_applied(self.applied())
            .adopting(adopt);
        d.deleting = self.is_deleting();
        Ok(d)
    }

    /// The [`ADOPT_ANNOTATION`]: `"true"` adopts, `"false"` or absent does not; any other
    /// value is an error naming the annotation.
    pub fn adopts(&self) -> Result<bool, planner::model::FieldError> {
        match self.annotation(ADOPT_ANNOTATION) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(planner::model::FieldError {
                field: format!("metadata.annotations[{ADOPT_ANNOTATION}]"),
                message: format!("is {other:?}; it must be \"true\" or \"false\""),
            }),
        }
    }

    /// One of the object's annotations.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// What the object holds of `applied` on its target, whatever its spec now says (for an
    /// object that is refused): its user-assigned identities in Merge mode with its own
    /// deletion policy, and nothing else. `None` when its target is not a VM or VMSS ID.
    pub fn holding(&self, applied: &planner::Applied) -> Option<planner::DesiredObject> {
        let raw = self.spec.to_raw();
        let spec = planner::Spec {
            target: planner::ArmId::parse_target(&raw.target).ok()?,
            api_version: planner::ApiVersion::default(),
            mode: planner::Mode::Merge,
            system_assigned: None,
            user_assigned: applied
                .user_assigned_identities
                .iter()
                .filter_map(|s| planner::ArmId::parse_uai(s).ok())
                .collect(),
            role_assignments: vec![],
            group_memberships: vec![],
            deletion_policy: raw
                .deletion_policy
                .unwrap_or(planner::DeletionPolicy::Detach),
        };
        Some(planner::DesiredObject::new(self.planner_ref(), spec))
    }
}

impl VirtualMachineIdentitySpec {
    /// The planner's view of the spec (validated by [`planner::RawSpec::validate`]).
    pub fn to_raw(&self) -> planner::RawSpec {
        planner::RawSpec {
            target: self.target.clone(),
            arm_api_version: self.arm_api_version.clone(),
            mode: self.mode,
            system_assigned: self.system_assigned,
            user_assigned_identities: self.user_assigned_identities.clone(),
            role_assignments: self.role_assignments.clone(),
            group_memberships: self.group_memberships.clone(),
            deletion_policy: self.deletion_policy,
        }
    }
}

/// Descriptions as `kubectl explain` shows them: the line breaks of the doc comments they come
/// from are joined (a paragraph break stays), so no sentence looks cut.
fn tidy_descriptions(crd: &mut CustomResourceDefinition) {
    fn join_lines(text: &str) -> String {
        text.split("\n\n")
            .map(|para| para.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
    fn walk(p: &mut JSONSchemaProps) {
        if let Some(d) = &mut p.description {
            *d = join_lines(d);
        }
        for child in p.properties.iter_mut().flat_map(|m| m.values_mut()) {
            walk(child);
        }
        match &mut p.items {
            Some(JSONSchemaPropsOrArray::Schema(s)) => walk(s),
            Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().for_each(walk),
            None => {}
        }
        if let Some(JSONSchemaPropsOrBool::Schema(s)) = &mut p.additional_properties {
            walk(s);
        }
    }
    for v in &mut crd.spec.versions {
        if let Some(s) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            walk(s);
        }
    }
}

/// The CRD as YAML, as `vmidentity crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    let mut crd = VirtualMachineIdentity::crd();
    tidy_descriptions(&mut crd);
    Ok(format!(
        "# Generated by `vmidentity crd`: do not edit.\n{}",
        serde_yaml_ng::to_string(&crd)?
    ))
}

/// What objects in a set of namespaces may ask the controller to do (cluster-scoped).
///
/// An object is reconciled only when at least one policy covers its namespace and every
/// policy that covers it allows it; everything a policy does not list is denied.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vmidentity.dev",
    version = "v1alpha1",
    kind = "VirtualMachineIdentityPolicy",
    shortname = "vmidpolicy",
    category = "azure",
    doc = "What VirtualMachineIdentity objects in a set of namespaces may do.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineIdentityPolicySpec {
    #[serde(flatten)]
    pub policy: planner::policy::RawPolicy,
}

impl VirtualMachineIdentityPolicy {
    /// The policy as the planner checks it. A policy with problems allows nothing (it still
    /// covers its namespaces, so it can only narrow) and says why in every denial.
    pub fn to_policy(&self) -> planner::policy::Policy {
        use kube::ResourceExt;
        planner::policy::Policy::new(self.name_any(), self.spec.policy.clone())
    }
}

/// The policy CRD as YAML (`vmidentity crd --policy`).
pub fn policy_crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    let mut crd = VirtualMachineIdentityPolicy::crd();
    tidy_descriptions(&mut crd);
    Ok(format!(
        "# Generated by `vmidentity crd --policy`: do not edit.\n{}",
        serde_yaml_ng::to_string(&crd)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_conversion_to_the_planner_input() {
        let vm =
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
        let u1 = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1";
        let mut o: VirtualMachineIdentity = serde_json::from_value(serde_json::json!({
            "apiVersion": "vmidentity.dev/v1alpha1", "kind": "VirtualMachineIdentity",
            "metadata": {"name": "a"},
            "spec": {"target": vm, "userAssignedIdentities": [u1], "deletionPolicy": "Retain"},
            "status": {"applied": {"userAssignedIdentities": [u1]}}
        }))
        .unwrap();
        // No namespace (a file): `default`.
        assert_eq!(o.planner_ref().to_string(), "default/a");
        let d = o.desired().unwrap();
        assert_eq!(d.applied.user_assigned_identities, vec![u1.to_string()]);
        assert_eq!(d.spec.deletion_policy, planner::DeletionPolicy::Retain);
        assert!(!d.deleting);
        let held = o.holding(&o.applied()).unwrap();
        assert_eq!(held.spec.deletion_policy, planner::DeletionPolicy::Retain);
        assert_eq!(held.spec.user_assigned.len(), 1);
        o.spec.target = "not a target".into();
        assert!(o.desired().is_err());
        assert!(o.holding(&o.applied()).is_none());
    }

    /// The one mirror left: the CRD's spec (with its CEL rules) and the planner's `RawSpec`
    /// must have the same fields, each of the same JSON type, and the same required ones.
    #[test]
    fn the_crd_spec_and_the_planner_raw_spec_have_the_same_fields() {
        fn shape(
            schema: schemars::Schema,
        ) -> (Vec<(String, serde_json::Value)>, serde_json::Value) {
            let v = schema.to_value();
            let props = v["properties"]
                .as_object()
                .expect("properties")
                .iter()
                .map(|(k, p)| (k.clone(), p["type"].clone()))
                .collect();
            (props, v["required"].clone())
        }
        let crd = shape(schemars::schema_for!(VirtualMachineIdentitySpec));
        let raw = shape(schemars::schema_for!(planner::RawSpec));
        assert_eq!(crd, raw);
        assert_eq!(crd.0.len(), 8, "{crd:?}");
        assert_eq!(crd.1, serde_json::json!(["target"]));
    }

    #[test]
    fn string_map_is_a_sorted_json_object_with_a_map_schema() {
        let mut m = StringMap::default();
        m.insert("b".into(), "2".into());
        m.insert("a".into(), "1".into());
        m.insert("b".into(), "3".into());
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("b"), Some("3"));
        assert_eq!(m.get("c"), None);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json, serde_json::json!({"a": "1", "b": "3"}));
        let back: StringMap =
            serde_json::from_value(serde_json::json!({"b": "3", "a": "1"})).unwrap();
        assert_eq!(back, m);
        let as_btree: BTreeMap<String, String> = serde_json::from_value(json).unwrap();
        assert_eq!(as_btree.len(), 2);
        assert_eq!(
            schemars::schema_for!(StringMap),
            schemars::schema_for!(BTreeMap<String, String>)
        );
        assert!(serde_json::from_value::<StringMap>(serde_json::json!({"a": 1})).is_err());
    }
}
