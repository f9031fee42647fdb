//! Tenancy guardrails: what objects in a namespace may ask the controller to do.
//!
//! A `VirtualMachineIdentityPolicy` (cluster-scoped) covers a set of namespaces and lists
//! what objects there may do: which targets, which user-assigned identities, whether they may
//! disable the system-assigned identity or use `mode: Exact`, which roles at which scopes,
//! which Entra groups. Everything not listed is denied.
//!
//! Composition: an object is allowed when **at least one** policy covers its namespace and
//! **every** policy that covers it allows it (policies only ever narrow; to give a namespace
//! more, edit its policy). A namespace no policy covers may do nothing (fail closed).
//!
//! Roles on the built-in deny list ([`PRIVILEGED_ROLES`] and any role whose actions include a
//! `Microsoft.Authorization/*/write` action that its `notActions` do not take away) are
//! refused even when a role rule would allow them, unless the policy lifts them by name or
//! GUID in `allowPrivilegedRoles`.
//!
//! Pure: the caller supplies the namespace's labels and what it knows about each role.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ArmId;
use crate::grants::builtin_role_guid;
use crate::model::{IdentityRef, Mode, RoleRef, Spec};

/// Roles nobody gets through the controller unless a policy lifts them explicitly:
/// `(name, GUID)`.
pub const PRIVILEGED_ROLES: &[(&str, &str)] = &[
    ("Owner", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"),
    (
        "User Access Administrator",
        "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    ),
    (
        "Role Based Access Control Administrator",
        "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
    ),
];

/// Actions that make a role privileged when granted and not taken away by `notActions`.
const AUTHORIZATION_WRITES: &[&str] = &[
    "Microsoft.Authorization/roleAssignments/write",
    "Microsoft.Authorization/roleDefinitions/write",
    "Microsoft.Authorization/policyAssignments/write",
    "Microsoft.Authorization/locks/write",
];

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[cfg_attr(
        feature = "schema",
        schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist"]))
    )]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether `labels` match. An unknown operator matches nothing (fail closed).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let got = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => got.is_some_and(|g| e.values.contains(g)),
                    "NotIn" => got.is_none_or(|g| !e.values.contains(g)),
                    "Exists" => got.is_some(),
                    "DoesNotExist" => got.is_none(),
                    _ => false,
                }
            })
    }
}

/// Which namespaces a policy covers: listed by name, or selected by their labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSelection {
    /// Namespace names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Namespaces whose labels match (an empty selector `{}` selects every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A set of ARM resources: by subscription, by resource group, or by ID pattern.
///
/// Patterns are matched against the whole ARM ID, case-insensitively: `*` matches within one
/// path segment, `**` across segments, and a trailing `/**` also matches the prefix itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceSet {
    /// Subscription IDs (GUIDs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<String>,
    /// Resource group IDs: `/subscriptions/{sub}/resourceGroups/{name}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(
        feature = "schema",
        schemars(inner(regex(
            pattern = r"^/[Ss][Uu][Bb][Ss][Cc][Rr][Ii][Pp][Tt][Ii][Oo][Nn][Ss]/[^/]+/[Rr][Ee][Ss][Oo][Uu][Rr][Cc][Ee][Gg][Rr][Oo][Uu][Pp][Ss]/[^/]+/?$"
        )))
    )]
    pub resource_groups: Vec<String>,
    /// Exact resource IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// ID patterns (`*` within a segment, `**` across segments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(inner(regex(pattern = r"^(/.*|\*\*)$"))))]
    pub patterns: Vec<String>,
}

impl ResourceSet {
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
            && self.resource_groups.is_empty()
            && self.ids.is_empty()
            && self.patterns.is_empty()
    }

    /// Whether the set holds `id`.
    pub fn contains(&self, id: &ArmId) -> bool {
        let key = id.key();
        self.subscriptions
            .iter()
            .any(|s| s.eq_ignore_ascii_case(id.subscription()))
            || self.resource_groups.iter().any(|rg| {
                let rg = rg.trim_end_matches('/').to_ascii_lowercase();
                key.starts_with(&rg) && key[rg.len()..].starts_with('/')
            })
            || self.ids.iter().any(|i| i.eq_ignore_ascii_case(id.as_str()))
            || self.patterns.iter().any(|p| glob_match(p, id.as_str()))
    }
}

/// Roles that may be granted at scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleRule {
    /// Role names (case-insensitive) or role definition GUIDs; `*`: any role that is not on
    /// the built-in deny list.
    pub roles: Vec<String>,
    /// Scope patterns (`*` within a segment, `**` across, a trailing `/**` also matches the
    /// prefix itself): `/subscriptions/{sub}/resourceGroups/team-a/**` allows the resource
    /// group and everything in it, not the subscription.
    #[cfg_attr(feature = "schema", schemars(inner(regex(pattern = r"^(/.*|\*\*)$"))))]
    pub scopes: Vec<String>,
}

/// The spec of a `VirtualMachineIdentityPolicy`, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPolicy {
    /// The namespaces this policy covers.
    pub namespaces: NamespaceSelection,
    /// Targets (VMs / VM scale sets) objects in these namespaces may manage.
    #[serde(default)]
    pub targets: ResourceSet,
    /// User-assigned identities they may attach (and grant roles or groups to).
    #[serde(default)]
    pub user_assigned_identities: ResourceSet,
    /// Whether `systemAssigned: false` is allowed (disabling destroys the principal).
    #[serde(default)]
    pub allow_disable_system_assigned: bool,
    /// Whether `mode: Exact` is allowed (it removes identities nobody declared).
    #[serde(default)]
    pub allow_exact_mode: bool,
    /// Roles that may be granted, and where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_assignments: Vec<RoleRule>,
    /// Privileged roles (Owner, User Access Administrator, Role Based Access Control
    /// Administrator, roles that can write Microsoft.Authorization) this policy lifts from
    /// the built-in deny list, by name or GUID. They still need a `roleAssignments` rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_privileged_roles: Vec<String>,
    /// Entra group object IDs that may be joined (`*`: any group).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A named policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub spec: RawPolicy,
    /// What is wrong with the spec ([`validate`]); a policy with problems allows nothing.
    pub problems: Vec<String>,
}

impl Policy {
    pub fn new(name: impl Into<String>, spec: RawPolicy) -> Policy {
        Policy {
            name: name.into(),
            problems: validate(&spec),
            spec,
        }
    }
}

/// A namespace as the policy engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct Namespace<'a> {
    pub name: &'a str,
    /// Its labels; `None` when unknown (label selectors then match nothing).
    pub labels: Option<&'a BTreeMap<String, String>>,
}

impl Policy {
    /// Whether this policy covers `ns`.
    pub fn covers(&self, ns: Namespace<'_>) -> bool {
        self.spec.namespaces.names.iter().any(|n| n == ns.name)
            || match (&self.spec.namespaces.selector, ns.labels) {
                (Some(sel), Some(labels)) => sel.matches(labels),
                _ => false,
            }
    }
}

/// What is known about a role an object asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleInfo {
    /// Its role definition GUID, lower-cased.
    pub guid: Option<String>,
    /// Its role name.
    pub name: Option<String>,
    /// Whether its permissions grant a `Microsoft.Authorization/*/write` action
    /// (None: its definition was not read).
    pub writes_authorization: Option<bool>,
}

impl RoleInfo {
    /// What can be known about `role` without Azure: GUIDs as given, built-in names.
    pub fn offline(role: &RoleRef) -> RoleInfo {
        match role {
            RoleRef::Guid(g) => RoleInfo {
                guid: Some(g.to_ascii_lowercase()),
                name: builtin_role_name(g).map(str::to_string),
                writes_authorization: None,
            },
            RoleRef::DefinitionId(d) => {
                let g = d.rsplit('/').next().unwrap_or(d).to_ascii_lowercase();
                RoleInfo {
                    name: builtin_role_name(&g).map(str::to_string),
                    guid: Some(g),
                    writes_authorization: None,
                }
            }
            RoleRef::Name(n) => RoleInfo {
                guid: builtin_role_guid(n).map(str::to_string),
                name: Some(n.clone()),
                writes_authorization: None,
            },
        }
    }

    fn is(&self, entry: &str) -> bool {
        let entry = entry.trim();
        let entry_guid = entry.rsplit('/').next().unwrap_or(entry);
        self.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(entry))
            || self
                .guid
                .as_deref()
                .is_some_and(|g| g.eq_ignore_ascii_case(entry_guid))
    }

    /// On the built-in deny list, and why.
    pub fn privileged(&self) -> Option<String> {
        if let Some((name, _)) = PRIVILEGED_ROLES.iter().find(|(n, g)| {
            self.guid
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(g))
                || self
                    .name
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(n))
        }) {
            return Some(format!("{name} is on the built-in deny list"));
        }
        if self.writes_authorization == Some(true) {
            return Some(
                "its actions include Microsoft.Authorization/*/write (built-in deny list)".into(),
            );
        }
        None
    }
}

fn builtin_role_name(guid: &str) -> Option<&'static str> {
    PRIVILEGED_ROLES
        .iter()
        .find(|(_, g)| g.eq_ignore_ascii_case(guid))
        .map(|(n, _)| *n)
}

/// Whether a role definition's permission blocks (`actions`, `notActions` each) grant a
/// `Microsoft.Authorization/*/write` action.
pub fn writes_authorization<'a>(
    permissions: impl IntoIterator<Item = (&'a [String], &'a [String])>,
) -> bool {
    permissions.into_iter().any(|(actions, not_actions)| {
        AUTHORIZATION_WRITES.iter().any(|op| {
            actions.iter().any(|a| action_match(a, op))
                && !not_actions.iter().any(|n| action_match(n, op))
        })
    })
}

/// Azure RBAC action matching: case-insensitive, `*` matches any characters.
fn action_match(pattern: &str, op: &str) -> bool {
    wildcard(
        pattern.to_ascii_lowercase().as_bytes(),
        op.to_ascii_lowercase().as_bytes(),
        true,
    )
}

/// ARM ID pattern matching: case-insensitive; `*` within a segment, `**` across segments,
/// a trailing `/**` also matches the bare prefix.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.trim().to_ascii_lowercase();
    let t = text.trim().trim_end_matches('/').to_ascii_lowercase();
    if let Some(prefix) = p.strip_suffix("/**")
        && wildcard(prefix.as_bytes(), t.as_bytes(), false)
    {
        return true;
    }
    wildcard(p.as_bytes(), t.as_bytes(), false)
}

/// `*` (within a segment unless `cross`) and `**` (across segments).
fn wildcard(p: &[u8], t: &[u8], cross: bool) -> bool {
    enum Tok {
        Lit(u8),
        Star(bool),
    }
    let mut toks = Vec::new();
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'*' {
            let double = i + 1 < p.len() && p[i + 1] == b'*';
            toks.push(Tok::Star(cross || double));
            i += if double { 2 } else { 1 };
        } else {
            toks.push(Tok::Lit(p[i]));
            i += 1;
        }
    }
    // reach[j]: the tokens so far can consume exactly t[..j].
    let m = t.len();
    let mut reach = vec![false; m + 1];
    reach[0] = true;
    for tok in &toks {
        let mut next = vec![false; m + 1];
        match tok {
            Tok::Lit(c) => {
                for j in 0..m {
                    if reach[j] && t[j] == *c {
                        next[j + 1] = true;
                    }
                }
            }
            Tok::Star(any) => {
                let mut on = false;
                for j in 0..=m {
                    on = on || reach[j];
                    if on {
                        next[j] = true;
                    }
                    if j < m && !*any && t[j] == b'/' {
                        on = false;
                    }
                }
            }
        }
        reach = next;
    }
    reach[m]
}

/// Which rule refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Namespaces,
    Targets,
    UserAssignedIdentities,
    AllowDisableSystemAssigned,
    AllowExactMode,
    RoleAssignments,
    AllowPrivilegedRoles,
    Groups,
}

impl Rule {
    /// The policy field that states the rule.
    pub fn field(self) -> &'static str {
        match self {
            Rule::Namespaces => "spec.namespaces",
            Rule::Targets => "spec.targets",
            Rule::UserAssignedIdentities => "spec.userAssignedIdentities",
            Rule::AllowDisableSystemAssigned => "spec.allowDisableSystemAssigned",
            Rule::AllowExactMode => "spec.allowExactMode",
            Rule::RoleAssignments => "spec.roleAssignments",
            Rule::AllowPrivilegedRoles => "spec.allowPrivilegedRoles",
            Rule::Groups => "spec.groups",
        }
    }
}

/// One refusal: which policy and rule, which field of the object, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The policy (None: no policy covers the namespace).
    pub policy: Option<String>,
    pub rule: Rule,
    /// The object's field, e.g. `spec.roleAssignments[0]`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            Some(p) => write!(
                f,
                "{}: {} (policy {p}, {})",
                self.field,
                self.message,
                self.rule.field()
            ),
            None => write!(f, "{}", self.message),
        }
    }
}

/// Everything refused about one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Denied(pub Vec<Denial>);

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "denied by policy: {}", parts.join("; "))
    }
}

/// Checks one object's spec against the policies. `role_info` tells what is known about each
/// role the spec asks for (see [`RoleInfo::offline`]).
pub fn check(
    policies: &[Policy],
    ns: Namespace<'_>,
    spec: &Spec,
    role_info: &dyn Fn(&RoleRef) -> RoleInfo,
) -> Result<(), Denied> {
    let covering: Vec<&Policy> = policies.iter().filter(|p| p.covers(ns)).collect();
    if covering.is_empty() {
        return Err(Denied(vec![Denial {
            policy: None,
            rule: Rule::Namespaces,
            field: "metadata.namespace".into(),
            message: format!(
                "no VirtualMachineIdentityPolicy covers namespace {:?}; the controller does nothing for it",
                ns.name
            ),
        }]));
    }
    let mut out = Vec::new();
    for p in covering {
        check_one(p, spec, role_info, &mut out);
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(Denied(out))
    }
}

fn check_one(
    p: &Policy,
    spec: &Spec,
    role_info: &dyn Fn(&RoleRef) -> RoleInfo,
    out: &mut Vec<Denial>,
) {
    let s = &p.spec;
    if !p.problems.is_empty() {
        out.push(Denial {
            policy: Some(p.name.clone()),
            rule: Rule::Namespaces,
            field: "metadata.namespace".into(),
            message: format!(
                "the policy is invalid and allows nothing until it is fixed: {}",
                p.problems.join("; ")
            ),
        });
        return;
    }
    let mut deny = |rule: Rule, field: String, message: String| {
        out.push(Denial {
            policy: Some(p.name.clone()),
            rule,
            field,
            message,
        })
    };
    if !s.targets.contains(&spec.target) {
        deny(
            Rule::Targets,
            "spec.target".into(),
            format!("{} is not among the allowed targets", spec.target),
        );
    }
    for (i, u) in spec.user_assigned.iter().enumerate() {
        if !s.user_assigned_identities.contains(u) {
            deny(
                Rule::UserAssignedIdentities,
                format!("spec.userAssignedIdentities[{i}]"),
                format!("{u} is not among the allowed user-assigned identities"),
            );
        }
    }
    if spec.system_assigned == Some(false) && !s.allow_disable_system_assigned {
        deny(
            Rule::AllowDisableSystemAssigned,
            "spec.systemAssigned".into(),
            "systemAssigned: false (it destroys the principal) is not allowed".into(),
        );
    }
    if spec.mode == Mode::Exact && !s.allow_exact_mode {
        deny(
            Rule::AllowExactMode,
            "spec.mode".into(),
            "mode: Exact is not allowed".into(),
        );
    }
    for (i, ra) in spec.role_assignments.iter().enumerate() {
        let field = format!("spec.roleAssignments[{i}]");
        if let IdentityRef::UserAssigned(u) = &ra.identity
            && !s.user_assigned_identities.contains(u)
            && !spec.user_assigned.iter().any(|x| x == u)
        {
            deny(
                Rule::UserAssignedIdentities,
                field.clone(),
                format!("{u} is not among the allowed user-assigned identities"),
            );
        }
        let info = role_info(&ra.role);
        if let Some(why) = info.privileged()
            && !s.allow_privileged_roles.iter().any(|e| info.is(e))
        {
            deny(
                Rule::AllowPrivilegedRoles,
                field.clone(),
                format!(
                    "role {:?} is privileged ({why}); only a policy that lists it in allowPrivilegedRoles can allow it",
                    ra.role.to_string()
                ),
            );
            continue;
        }
        let role_ok: Vec<&RoleRule> = s
            .role_assignments
            .iter()
            .filter(|r| r.roles.iter().any(|e| e.trim() == "*" || info.is(e)))
            .collect();
        if role_ok.is_empty() {
            deny(
                Rule::RoleAssignments,
                field,
                format!("role {:?} is not allowed", ra.role.to_string()),
            );
        } else if !role_ok
            .iter()
            .any(|r| r.scopes.iter().any(|sc| glob_match(sc, &ra.scope)))
        {
            deny(
                Rule::RoleAssignments,
                field,
                format!(
                    "role {:?} is not allowed at scope {}",
                    ra.role.to_string(),
                    ra.scope
                ),
            );
        }
    }
    for (i, g) in spec.group_memberships.iter().enumerate() {
        if !s
            .groups
            .iter()
            .any(|a| a.trim() == "*" || a.trim().eq_ignore_ascii_case(&g.group_object_id))
        {
            deny(
                Rule::Groups,
                format!("spec.groupMemberships[{i}]"),
                format!("group {} is not allowed", g.group_object_id),
            );
        }
    }
}

/// Problems with a policy itself (reported on the policy, and the policy then allows
/// nothing).
pub fn validate(p: &RawPolicy) -> Vec<String> {
    let mut out = Vec::new();
    let pattern_ok = |pat: &str| {
        let t = pat.trim();
        !t.is_empty() && (t.starts_with('/') || t == "**")
    };
    let sets = [
        ("spec.targets", &p.targets),
        ("spec.userAssignedIdentities", &p.user_assigned_identities),
    ];
    for (name, set) in sets {
        for (i, pat) in set.patterns.iter().enumerate() {
            if !pattern_ok(pat) {
                out.push(format!(
                    "{name}.patterns[{i}]: {pat:?} must start with '/' (or be \"**\")"
                ));
            }
        }
        for (i, rg) in set.resource_groups.iter().enumerate() {
            let segs: Vec<&str> = rg.trim().trim_matches('/').split('/').collect();
            let ok = segs.len() == 4
                && segs[0].eq_ignore_ascii_case("subscriptions")
                && segs[2].eq_ignore_ascii_case("resourceGroups")
                && !segs[1].is_empty()
                && !segs[3].is_empty();
            if !ok {
                out.push(format!(
                    "{name}.resourceGroups[{i}]: {rg:?} is not /subscriptions/{{id}}/resourceGroups/{{name}}"
                ));
            }
        }
    }
    for (i, r) in p.role_assignments.iter().enumerate() {
        if r.roles.is_empty() {
            out.push(format!("spec.roleAssignments[{i}].roles: empty"));
        }
        for (j, sc) in r.scopes.iter().enumerate() {
            if !pattern_ok(sc) {
                out.push(format!(
                    "spec.roleAssignments[{i}].scopes[{j}]: {sc:?} must start with '/'"
                ));
            }
        }
    }
    if let Some(sel) = &p.namespaces.selector {
        for (i, e) in sel.match_expressions.iter().enumerate() {
            if !matches!(
                e.operator.as_str(),
                "In" | "NotIn" | "Exists" | "DoesNotExist"
            ) {
                out.push(format!(
                    "spec.namespaces.selector.matchExpressions[{i}].operator: {:?} is not In, NotIn, Exists or DoesNotExist",
                    e.operator
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RawSpec;

    #[test]
    fn globs() {
        let vm = "/subscriptions/s/resourceGroups/team-a/providers/Microsoft.Compute/virtualMachines/web-1";
        assert!(glob_match("/subscriptions/s/resourceGroups/team-a/**", vm));
        assert!(glob_match("/subscriptions/S/resourcegroups/TEAM-A/**", vm));
        assert!(glob_match(
            "/subscriptions/s/resourceGroups/team-a",
            "/subscriptions/s/resourceGroups/team-a/"
        ));
        assert!(glob_match(
            "/subscriptions/s/resourceGroups/team-a/**",
            "/subscriptions/s/resourceGroups/team-a"
        ));
        assert!(!glob_match(
            "/subscriptions/s/resourceGroups/team-a/**",
            "/subscriptions/s"
        ));
        assert!(!glob_match(
            "/subscriptions/s/resourceGroups/team-a/**",
            "/subscriptions/s/resourceGroups/team-ab"
        ));
        assert!(glob_match("/subscriptions/*/resourceGroups/team-*/**", vm));
        // `*` stays inside one segment.
        assert!(!glob_match("/subscriptions/*", vm));
        assert!(!glob_match("/subscriptions/s/resourceGroups/team-*", vm));
        assert!(glob_match("/subscriptions/s/**/virtualMachines/web-*", vm));
        assert!(!glob_match("/subscriptions/s/**/virtualMachines/db-*", vm));
        assert!(glob_match("**", vm));
    }

    #[test]
    fn authorization_writes() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let owner = (s(&["*"]), s(&[]));
        let contributor = (
            s(&["*"]),
            s(&[
                "Microsoft.Authorization/*/Delete",
                "Microsoft.Authorization/*/Write",
                "Microsoft.Authorization/elevateAccess/Action",
            ]),
        );
        let uaa = (
            s(&["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"]),
            s(&[]),
        );
        let reader = (s(&["*/read"]), s(&[]));
        let custom = (
            s(&["Microsoft.Authorization/roleAssignments/write"]),
            s(&[]),
        );
        let w = |p: &(Vec<String>, Vec<String>)| {
            writes_authorization([(p.0.as_slice(), p.1.as_slice())])
        };
        assert!(w(&owner));
        assert!(!w(&contributor));
        assert!(w(&uaa));
        assert!(!w(&reader));
        assert!(w(&custom));
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "a".to_string())]
            .into_iter()
            .collect();
        let sel = |ml: &[(&str, &str)], op: &str, vals: &[&str]| LabelSelector {
            match_labels: ml
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: if op.is_empty() {
                vec![]
            } else {
                vec![LabelSelectorRequirement {
                    key: "team".into(),
                    operator: op.into(),
                    values: vals.iter().map(|v| v.to_string()).collect(),
                }]
            },
        };
        assert!(sel(&[], "", &[]).matches(&labels));
        assert!(sel(&[("team", "a")], "", &[]).matches(&labels));
        assert!(!sel(&[("team", "b")], "", &[]).matches(&labels));
        assert!(sel(&[], "In", &["a", "b"]).matches(&labels));
        assert!(!sel(&[], "NotIn", &["a"]).matches(&labels));
        assert!(sel(&[], "Exists", &[]).matches(&labels));
        assert!(!sel(&[], "DoesNotExist", &[]).matches(&labels));
        assert!(!sel(&[], "Bogus", &[]).matches(&labels));
    }

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    fn vm(rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
        )
    }

    fn uai(rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        )
    }

    fn team_a() -> Policy {
        Policy::new(
            "team-a",
            RawPolicy {
                namespaces: NamespaceSelection {
                    names: vec!["team-a".into()],
                    selector: None,
                },
                targets: ResourceSet {
                    resource_groups: vec![format!("/subscriptions/{SUB}/resourceGroups/rg-a")],
                    ..Default::default()
                },
                user_assigned_identities: ResourceSet {
                    patterns: vec![format!(
                        "/subscriptions/{SUB}/resourceGroups/ids-a/providers/Microsoft.ManagedIdentity/userAssignedIdentities/*"
                    )],
                    ..Default::default()
                },
                role_assignments: vec![RoleRule {
                    roles: vec!["Storage Blob Data Reader".into(), "Reader".into()],
                    scopes: vec![format!("/subscriptions/{SUB}/resourceGroups/rg-a/**")],
                }],
                groups: vec!["11111111-1111-1111-1111-111111111111".into()],
                ..Default::default()
            },
        )
    }

    fn spec(f: impl FnOnce(&mut RawSpec)) -> Spec {
        let mut r = RawSpec {
            target: vm("rg-a", "vm1"),
            user_assigned_identities: vec![uai("ids-a", "app")],
            ..Default::default()
        };
        f(&mut r);
        r.validate().expect("valid spec")
    }

    fn run(policies: &[Policy], ns: &str, s: &Spec) -> Result<(), Denied> {
        check(
            policies,
            Namespace {
                name: ns,
                labels: None,
            },
            s,
            &RoleInfo::offline,
        )
    }

    fn rules(r: Result<(), Denied>) -> Vec<Rule> {
        r.err()
            .map(|d| d.0.iter().map(|x| x.rule).collect())
            .unwrap_or_default()
    }

    #[test]
    fn allowed_object_passes() {
        let s = spec(|r| {
            r.role_assignments = vec![crate::model::RawRoleAssignment {
                identity: uai("ids-a", "app"),
                role: "Storage Blob Data Reader".into(),
                scope: format!(
                    "/subscriptions/{SUB}/resourceGroups/rg-a/providers/Microsoft.Storage/storageAccounts/x"
                ),
            }];
            r.group_memberships = vec![crate::model::RawGroupMembership {
                identity: "SystemAssigned".into(),
                group_object_id: "11111111-1111-1111-1111-111111111111".into(),
            }];
            r.system_assigned = Some(true);
        });
        assert_eq!(run(&[team_a()], "team-a", &s), Ok(()));
    }

    #[test]
    fn attacker_list_is_refused_with_the_rule() {
        let p = [team_a()];
        // A namespace no policy covers.
        let d = run(&p, "team-b", &spec(|_| {})).unwrap_err();
        assert_eq!(d.0[0].rule, Rule::Namespaces);
        assert!(
            d.to_string()
                .contains("no VirtualMachineIdentityPolicy covers namespace \"team-b\"")
        );
        // A target outside the allowed resource groups.
        assert_eq!(
            rules(run(&p, "team-a", &spec(|r| r.target = vm("rg-b", "vm1")))),
            vec![Rule::Targets]
        );
        // A resource group whose name only starts like an allowed one.
        assert_eq!(
            rules(run(
                &p,
                "team-a",
                &spec(|r| r.target = vm("rg-a-evil", "vm1"))
            )),
            vec![Rule::Targets]
        );
        // A UAI outside the allowed set.
        assert_eq!(
            rules(run(
                &p,
                "team-a",
                &spec(|r| r.user_assigned_identities = vec![uai("ids-b", "x")])
            )),
            vec![Rule::UserAssignedIdentities]
        );
        // Owner at subscription scope: privileged, even with a rule for it.
        let mut lifted_rule = team_a();
        lifted_rule.spec.role_assignments.push(RoleRule {
            roles: vec!["Owner".into()],
            scopes: vec!["/**".into()],
        });
        let owner = spec(|r| {
            r.role_assignments = vec![crate::model::RawRoleAssignment {
                identity: uai("ids-a", "app"),
                role: "Owner".into(),
                scope: format!("/subscriptions/{SUB}"),
            }];
        });
        let d = run(&[lifted_rule.clone()], "team-a", &owner).unwrap_err();
        assert_eq!(d.0[0].rule, Rule::AllowPrivilegedRoles);
        assert!(
            d.to_string().contains("Owner is on the built-in deny list"),
            "{d}"
        );
        // ... by GUID too.
        let owner_guid = spec(|r| {
            r.role_assignments = vec![crate::model::RawRoleAssignment {
                identity: uai("ids-a", "app"),
                role: "8e3af657-a8ff-443c-a75c-2fe8c4bcb635".into(),
                scope: format!("/subscriptions/{SUB}"),
            }];
        });
        assert_eq!(
            rules(run(&[lifted_rule.clone()], "team-a", &owner_guid)),
            vec![Rule::AllowPrivilegedRoles]
        );
        // Lifted explicitly: allowed.
        lifted_rule.spec.allow_privileged_roles = vec!["owner".into()];
        assert_eq!(run(&[lifted_rule.clone()], "team-a", &owner), Ok(()));
        assert_eq!(run(&[lifted_rule], "team-a", &owner_guid), Ok(()));
        // A role allowed at a resource group, asked at the subscription.
        let reader_sub = spec(|r| {
            r.role_assignments = vec![crate::model::RawRoleAssignment {
                identity: uai("ids-a", "app"),
                role: "Reader".into(),
                scope: format!("/subscriptions/{SUB}"),
            }];
        });
        let d = run(&p, "team-a", &reader_sub).unwrap_err();
        assert_eq!(d.0[0].rule, Rule::RoleAssignments);
        assert!(d.to_string().contains("not allowed at scope"), "{d}");
        // A role not listed at all.
        let contributor = spec(|r| {
            r.role_assignments = vec![crate::model::RawRoleAssignment {
                identity: uai("ids-a", "app"),
                role: "Contributor".into(),
                scope: format!("/subscriptions/{SUB}/resourceGroups/rg-a"),
            }];
        });
        assert_eq!(
            rules(run(&p, "team-a", &contributor)),
            vec![Rule::RoleAssignments]
        );
        // A group not allowed.
        let group = spec(|r| {
            r.group_memberships = vec![crate::model::RawGroupMembership {
                identity: uai("ids-a", "app"),
                group_object_id: "22222222-2222-2222-2222-222222222222".into(),
            }];
        });
        assert_eq!(rules(run(&p, "team-a", &group)), vec![Rule::Groups]);
        // Exact where it is not allowed; systemAssigned: false where it is not allowed.
        assert_eq!(
            rules(run(&p, "team-a", &spec(|r| r.mode = Some(Mode::Exact)))),
            vec![Rule::AllowExactMode]
        );
        assert_eq!(
            rules(run(
                &p,
                "team-a",
                &spec(|r| r.system_assigned = Some(false))
            )),
            vec![Rule::AllowDisableSystemAssigned]
        );
    }

    #[test]
    fn custom_role_that_writes_authorization_is_privileged() {
        let mut p = team_a();
        p.spec.role_assignments[0]
            .roles
            .push("Access Granter".into());
        let s = spec(|r| {
            r.role_assignments = vec![crate::model::RawRoleAssignment {
                identity: uai("ids-a", "app"),
                role: "Access Granter".into(),
                scope: format!("/subscriptions/{SUB}/resourceGroups/rg-a"),
            }];
        });
        let info = |_: &RoleRef| RoleInfo {
            guid: Some("99999999-9999-9999-9999-999999999999".into()),
            name: Some("Access Granter".into()),
            writes_authorization: Some(true),
        };
        let ns = Namespace {
            name: "team-a",
            labels: None,
        };
        let d = check(&[p.clone()], ns, &s, &info).unwrap_err();
        assert_eq!(d.0[0].rule, Rule::AllowPrivilegedRoles);
        // Offline the definition is unknown: only the rule list applies.
        assert_eq!(check(&[p], ns, &s, &RoleInfo::offline), Ok(()));
    }

    #[test]
    fn every_covering_policy_must_allow() {
        let mut narrow = team_a();
        narrow.name = "narrow".into();
        narrow.spec.namespaces = NamespaceSelection {
            names: vec![],
            selector: Some(LabelSelector {
                match_labels: [("tier".to_string(), "prod".to_string())]
                    .into_iter()
                    .collect(),
                match_expressions: vec![],
            }),
        };
        narrow.spec.user_assigned_identities = ResourceSet::default();
        let s = spec(|_| {});
        let prod: BTreeMap<String, String> = [("tier".to_string(), "prod".to_string())]
            .into_iter()
            .collect();
        let ns = |labels| Namespace {
            name: "team-a",
            labels,
        };
        let policies = [team_a(), narrow];
        assert_eq!(check(&policies, ns(None), &s, &RoleInfo::offline), Ok(()));
        let d = check(&policies, ns(Some(&prod)), &s, &RoleInfo::offline).unwrap_err();
        assert_eq!(d.0.len(), 1);
        assert_eq!(d.0[0].policy.as_deref(), Some("narrow"));
    }

    #[test]
    fn an_invalid_policy_allows_nothing_and_says_why() {
        let mut raw = team_a().spec;
        raw.role_assignments[0].roles.clear();
        let p = Policy::new("broken", raw);
        let d = run(&[p], "team-a", &spec(|_| {})).unwrap_err();
        assert!(d.to_string().contains("the policy is invalid"), "{d}");
        assert!(d.to_string().contains("roles: empty"), "{d}");
    }

    #[test]
    fn policy_validation() {
        let mut p = team_a().spec;
        assert!(validate(&p).is_empty());
        p.targets.patterns = vec!["rg-a/*".into()];
        p.targets.resource_groups = vec!["rg-a".into()];
        p.role_assignments[0].scopes = vec!["subscription".into()];
        assert_eq!(validate(&p).len(), 3, "{:?}", validate(&p));
    }
}
