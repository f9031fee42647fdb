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
//! Roles on the built-in deny list are refused even when a role rule would allow them, unless
//! the policy lifts them by name or GUID in `allowPrivilegedRoles`. A role is on it when it
//! can **escalate** ([`escalation`]): its permissions grant an *authorization write* (role
//! assignments, role definitions, policy, locks, deny assignments, elevation…) or an
//! *identity takeover* (run code on a VM — run command, extensions, login — and so act as
//! every managed identity on it; add a federated credential to a user-assigned identity;
//! attach user-assigned identities to VMs it controls). Definitions are read from Azure when
//! the controller checks an object (a definition that cannot be read denies the object);
//! offline (`plan`, the admission policy) only the built-in roles listed in
//! [`PRIVILEGED_ROLES`] are known, by name and GUID.
//!
//! Known limits: the check looks at one role at a time. Two roles that are harmless alone
//! but escalate together (e.g. `userAssignedIdentities/assign/action` from one and
//! `virtualMachines/write` from another, both granted to the same principal, by vmidentity
//! or by anyone else) are not caught; nor are roles that run code as the identity of other
//! kinds of resources (App Service, Functions, Automation, Logic Apps, Arc machines, AKS…);
//! nor what a user-assigned identity already holds before an object grants it something.
//! ABAC conditions on a role are ignored (the role counts as unconditioned), and so is the
//! scope (a takeover role is refused even at a scope that holds no VM).
//!
//! Pure: the caller supplies the namespace's labels and what it knows about each role.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ArmId;
use crate::grants::builtin_role_guid;
use crate::model::{IdentityRef, Mode, RoleRef, Spec};

/// How a privileged role lets its holder get more than the role itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EscalationKind {
    /// It can change who may do what: role assignments and definitions, policy, locks, deny
    /// assignments, elevation, PIM requests (all under Microsoft.Authorization).
    AuthorizationWrite,
    /// It can act as managed identities it was never given: run code on a VM (run command,
    /// extensions, login) whose identities then hand tokens to that code through IMDS; add a
    /// federated credential to a user-assigned identity; attach user-assigned identities to
    /// VMs it controls.
    IdentityTakeover,
}

impl EscalationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EscalationKind::AuthorizationWrite => "authorization write",
            EscalationKind::IdentityTakeover => "identity takeover",
        }
    }
}

impl fmt::Display for EscalationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A built-in role on the static deny list, with the operation that puts it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivilegedRole {
    pub name: &'static str,
    /// Lower-case role definition GUID (the same in every tenant).
    pub guid: &'static str,
    pub kind: EscalationKind,
    /// One sensitive operation its permissions grant (see [`escalation`]).
    pub operation: &'static str,
}

const fn privileged_role(
    name: &'static str,
    guid: &'static str,
    kind: EscalationKind,
    operation: &'static str,
) -> PrivilegedRole {
    PrivilegedRole {
        name,
        guid,
        kind,
        operation,
    }
}

/// Built-in roles nobody gets through the controller unless a policy lifts them explicitly:
/// the built-in roles [`escalation`] finds privileged, known by name and GUID without reading
/// their definitions (offline `plan`, the admission policy, a role Azure cannot find). GUIDs
/// and permissions: the Azure built-in roles documentation
/// (<https://learn.microsoft.com/azure/role-based-access-control/built-in-roles>). The
/// ValidatingAdmissionPolicy of the chart (`templates/admission.yaml`, `variables.builtin` and
/// `variables.privileged`) mirrors this list: change both together.
pub const PRIVILEGED_ROLES: &[PrivilegedRole] = {
    use EscalationKind::{AuthorizationWrite as Auth, IdentityTakeover as Takeover};
    const RA_WRITE: &str = "Microsoft.Authorization/roleAssignments/write";
    const POLICY_WRITE: &str = "Microsoft.Authorization/policyAssignments/write";
    const RUN_COMMAND: &str = "Microsoft.Compute/virtualMachines/runCommand/action";
    const EXTENSIONS: &str = "Microsoft.Compute/virtualMachines/extensions/write";
    &[
        privileged_role(
            "Owner",
            "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
            Auth,
            RA_WRITE,
        ),
        privileged_role(
            "User Access Administrator",
            "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
            Auth,
            RA_WRITE,
        ),
        privileged_role(
            "Role Based Access Control Administrator",
            "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
            Auth,
            RA_WRITE,
        ),
        privileged_role(
            "Reservations Administrator",
            "a8889054-8d42-49c9-bc1c-52486c10e7cd",
            Auth,
            RA_WRITE,
        ),
        privileged_role(
            "Virtual Machine Data Access Administrator (preview)",
            "66f75aeb-eabe-4b70-9f1e-c350c4c9ad04",
            Auth,
            RA_WRITE,
        ),
        privileged_role(
            "Resource Policy Contributor",
            "36243c78-bf99-498c-9df9-86d9f8d28608",
            Auth,
            POLICY_WRITE,
        ),
        privileged_role(
            "Security Admin",
            "fb1c8493-542b-48eb-b624-b4c8fea62acd",
            Auth,
            POLICY_WRITE,
        ),
        privileged_role(
            "Contributor",
            "b24988ac-6180-42a0-ab88-20f7382dd24c",
            Takeover,
            RUN_COMMAND,
        ),
        privileged_role(
            "Virtual Machine Contributor",
            "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
            Takeover,
            RUN_COMMAND,
        ),
        privileged_role(
            "Managed Identity Contributor",
            "e40ec5ca-96e0-45a2-b4ff-59039f2c2b59",
            Takeover,
            FEDERATED_CREDENTIAL_WRITE,
        ),
        privileged_role(
            "Virtual Machine Administrator Login",
            "1c0163c0-47e6-4577-8991-ea5c82e286e4",
            Takeover,
            "Microsoft.Compute/virtualMachines/loginAsAdmin/action",
        ),
        privileged_role(
            "Virtual Machine User Login",
            "fb879df8-f326-4884-b1cf-06f3ad86be52",
            Takeover,
            "Microsoft.Compute/virtualMachines/login/action",
        ),
        privileged_role(
            "Log Analytics Contributor",
            "92aaf0da-9dab-42b6-94a3-d43ce8d16293",
            Takeover,
            EXTENSIONS,
        ),
        privileged_role(
            "VM Restore Operator",
            "dfce8971-25e3-42e3-ba33-6055438e3080",
            Takeover,
            EXTENSIONS,
        ),
    ]
};

/// Authorization writes: granted and not taken away by `notActions`, they make a role
/// privileged ([`EscalationKind::AuthorizationWrite`]). Concrete operations, so that patterns
/// such as `Microsoft.Authorization/roleAssignments/*` or `*/action` are caught, and named in
/// the message.
const AUTHORIZATION_WRITES: &[&str] = &[
    "Microsoft.Authorization/roleAssignments/write",
    "Microsoft.Authorization/roleAssignments/delete",
    "Microsoft.Authorization/roleDefinitions/write",
    "Microsoft.Authorization/roleDefinitions/delete",
    "Microsoft.Authorization/classicAdministrators/write",
    "Microsoft.Authorization/elevateAccess/Action",
    "Microsoft.Authorization/denyAssignments/write",
    "Microsoft.Authorization/denyAssignments/delete",
    "Microsoft.Authorization/locks/write",
    "Microsoft.Authorization/locks/delete",
    "Microsoft.Authorization/policyAssignments/write",
    "Microsoft.Authorization/policyAssignments/delete",
    "Microsoft.Authorization/policyDefinitions/write",
    "Microsoft.Authorization/policySetDefinitions/write",
    "Microsoft.Authorization/policyExemptions/write",
    "Microsoft.Authorization/roleAssignmentScheduleRequests/write",
    "Microsoft.Authorization/roleEligibilityScheduleRequests/write",
    "Microsoft.Authorization/roleManagementPolicies/write",
    "Microsoft.Authorization/roleManagementPolicyAssignments/write",
];

/// Generic probes: operation names no real role lists, that only a wildcard matches, so that
/// `*`, `*/write`, `Microsoft.Authorization/*`, `Microsoft.Authorization/*/write` and the like
/// count for every write or delete under Microsoft.Authorization, including ones Azure adds
/// later (`(probe, how the message names it)`). There is no `…/action` probe: Contributor's
/// `*` keeps Microsoft.Authorization actions such as `policies/audit/action` (policy effects,
/// no escalation), so a generic action probe would make every `*` role an authorization
/// writer whatever its notActions; the escalating actions are on the concrete list.
const AUTHORIZATION_PROBES: &[(&str, &str)] = &[
    (
        "Microsoft.Authorization/vmidentityProbe/write",
        "Microsoft.Authorization/<any type>/write",
    ),
    (
        "Microsoft.Authorization/vmidentityProbe/delete",
        "Microsoft.Authorization/<any type>/delete",
    ),
    (
        "Microsoft.Authorization/vmidentityProbe/vmidentityProbe/write",
        "Microsoft.Authorization/<any type>/<any child>/write",
    ),
    (
        "Microsoft.Authorization/vmidentityProbe/vmidentityProbe/delete",
        "Microsoft.Authorization/<any type>/<any child>/delete",
    ),
];

const FEDERATED_CREDENTIAL_WRITE: &str =
    "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write";

/// Control-plane operations that take over identities ([`EscalationKind::IdentityTakeover`]),
/// with why.
const TAKEOVER_ACTIONS: &[(&str, &str)] = &[
    (
        FEDERATED_CREDENTIAL_WRITE,
        "it can let an outside token issuer sign in as a user-assigned identity",
    ),
    (
        "Microsoft.Compute/virtualMachines/runCommand/action",
        "it can run commands on VMs, as every managed identity attached to them",
    ),
    (
        "Microsoft.Compute/virtualMachines/runCommands/write",
        "it can run commands on VMs, as every managed identity attached to them",
    ),
    (
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/runCommand/action",
        "it can run commands on scale set instances, as every managed identity attached to them",
    ),
    (
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/runCommands/write",
        "it can run commands on scale set instances, as every managed identity attached to them",
    ),
    (
        "Microsoft.Compute/virtualMachines/extensions/write",
        "it can install extensions (custom scripts) on VMs, which run as every managed identity attached to them",
    ),
    (
        "Microsoft.Compute/virtualMachineScaleSets/extensions/write",
        "it can install extensions (custom scripts) on scale sets, which run as every managed identity attached to them",
    ),
    (
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/extensions/write",
        "it can install extensions (custom scripts) on scale set instances, which run as every managed identity attached to them",
    ),
];

/// Data-plane operations that take over identities.
const TAKEOVER_DATA_ACTIONS: &[(&str, &str)] = &[
    (
        "Microsoft.Compute/virtualMachines/loginAsAdmin/action",
        "a login on a VM can take the tokens of its managed identities from IMDS",
    ),
    (
        "Microsoft.Compute/virtualMachines/login/action",
        "a login on a VM can take the tokens of its managed identities from IMDS",
    ),
];

/// With one of [`VM_WRITES`] in the same role: attach any user-assigned identity it may
/// assign to a VM it controls (and run code there through the VM's own configuration).
const IDENTITY_ASSIGN: &str = "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action";
const VM_WRITES: &[&str] = &[
    "Microsoft.Compute/virtualMachines/write",
    "Microsoft.Compute/virtualMachineScaleSets/write",
];

/// One permission block of a role definition (`properties.permissions[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionBlock {
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    pub data_actions: Vec<String>,
    pub not_data_actions: Vec<String>,
}

/// Why a role definition is privileged: which kind of escalation, which operation, and a
/// message for the denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub kind: EscalationKind,
    /// The sensitive operation granted (for a generic probe, how it is named, e.g.
    /// `Microsoft.Authorization/<any type>/write`).
    pub operation: String,
    pub message: String,
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Whether a role definition's permission blocks let its holder escalate, and how.
///
/// A sensitive operation counts when, in one block, an `actions` (`dataActions` for data
/// operations) pattern matches it and no `notActions` (`notDataActions`) pattern of that block
/// does. Matching is Azure RBAC's: case-insensitive, `*` matches any characters including `/`;
/// for granting patterns a `/*/` also matches a single `/` (as Azure reads
/// `userAssignedIdentities/*/assign/action`), never for `notActions` (fail closed). Sensitive:
/// the authorization writes (a concrete list and generic probes for any
/// Microsoft.Authorization write or delete); the identity takeovers (federated credential
/// writes, VM and scale set run commands and extension writes, VM login data actions, and
/// `userAssignedIdentities/assign/action` together with a VM or scale set write in the same
/// role). Contributor and Virtual Machine Contributor are privileged (run command); Reader,
/// Storage Blob Data Reader and Managed Identity Operator are not.
///
/// One role at a time: see the module documentation for what that misses.
pub fn escalation(blocks: &[PermissionBlock]) -> Option<Escalation> {
    let granted = |op: &str, data: bool| -> Option<String> {
        blocks.iter().find_map(|b| {
            let (allow, deny) = if data {
                (&b.data_actions, &b.not_data_actions)
            } else {
                (&b.actions, &b.not_actions)
            };
            if deny.iter().any(|n| action_match(n, op)) {
                return None;
            }
            allow.iter().find(|a| action_grants(a, op)).cloned()
        })
    };
    for op in AUTHORIZATION_WRITES {
        if let Some(by) = granted(op, false) {
            return Some(Escalation {
                kind: EscalationKind::AuthorizationWrite,
                operation: op.to_string(),
                message: format!(
                    "authorization write: its actions grant {op}{}, so it can change who may do what",
                    through(&by, op)
                ),
            });
        }
    }
    for (probe, named) in AUTHORIZATION_PROBES {
        if let Some(by) = granted(probe, false) {
            return Some(Escalation {
                kind: EscalationKind::AuthorizationWrite,
                operation: named.to_string(),
                message: format!(
                    "authorization write: its actions grant {named}{}, so it can change who may do what",
                    through(&by, probe)
                ),
            });
        }
    }
    for (data, list) in [(false, TAKEOVER_ACTIONS), (true, TAKEOVER_DATA_ACTIONS)] {
        for (op, why) in list {
            if let Some(by) = granted(op, data) {
                let field = if data { "dataActions" } else { "actions" };
                return Some(Escalation {
                    kind: EscalationKind::IdentityTakeover,
                    operation: op.to_string(),
                    message: format!(
                        "identity takeover: its {field} grant {op}{}: {why}",
                        through(&by, op)
                    ),
                });
            }
        }
    }
    if let Some(by) = granted(IDENTITY_ASSIGN, false) {
        for w in VM_WRITES {
            if let Some(by_w) = granted(w, false) {
                return Some(Escalation {
                    kind: EscalationKind::IdentityTakeover,
                    operation: IDENTITY_ASSIGN.to_string(),
                    message: format!(
                        "identity takeover: its actions grant {IDENTITY_ASSIGN}{} together with {w}{}: it can attach user-assigned identities to VMs it controls and act as them there",
                        through(&by, IDENTITY_ASSIGN),
                        through(&by_w, w)
                    ),
                });
            }
        }
    }
    None
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels a namespace must carry, each with exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements on a namespace's labels; all of them must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key the requirement is about.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[cfg_attr(
        feature = "schema",
        schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist"]))
    )]
    pub operator: String,
    /// The label values for `In` and `NotIn` (empty for `Exists` and `DoesNotExist`).
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
    /// Role names (case-insensitive) or role definition GUIDs. `*`: any role, built-in or
    /// custom, that is not privileged, at these scopes. Privileged (refused unless listed in
    /// `allowPrivilegedRoles`): a role whose permissions can escalate, i.e. grant an
    /// authorization write (role assignments, role definitions, policy, locks, elevation…)
    /// or an identity takeover (run commands or install extensions on VMs or scale sets,
    /// log in to VMs, write federated credentials, attach user-assigned identities to VMs it
    /// can write) — Owner, User Access Administrator, Contributor, Virtual Machine
    /// Contributor, Managed Identity Contributor, the VM login roles among others. The
    /// controller reads custom roles' definitions from Azure before any write; offline
    /// (`plan`, admission) only the built-in privileged roles are known.
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
    /// Roles that may be granted, and where. `roles: ["*"]` allows any role that is not
    /// privileged (see `allowPrivilegedRoles`) at the rule's scopes, custom roles included
    /// (their definitions are read from Azure before any write; offline only the built-in
    /// privileged roles are known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_assignments: Vec<RoleRule>,
    /// Privileged roles this policy lifts from the built-in deny list, by name or GUID. They
    /// still need a `roleAssignments` rule. Privileged: a role whose permissions grant an
    /// authorization write (Microsoft.Authorization role assignments, role definitions,
    /// policy, locks, deny assignments, elevateAccess) or an identity takeover (VM or scale
    /// set run commands and extension writes, VM login, federated identity credential
    /// writes, user-assigned identity assign together with VM writes); built-in ones include
    /// Owner, User Access Administrator, Role Based Access Control Administrator,
    /// Contributor, Virtual Machine Contributor, Managed Identity Contributor, Virtual
    /// Machine Administrator Login and Virtual Machine User Login. Custom roles are judged by
    /// their definitions, read from Azure (a definition that cannot be read denies the
    /// object).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_privileged_roles: Vec<String>,
    /// Entra group object IDs that may be joined. `*`: any group, including groups that hold
    /// Owner or other privileged roles, or Entra admin roles: membership gives the identity
    /// everything the group holds, and no deny list applies to groups. List group IDs
    /// explicitly instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The Azure identities that namespaces this policy covers may reconcile with, through
    /// their namespace credential Secret (`--namespace-credentials`). A Secret naming a client
    /// ID that is not bound here (by every policy that covers the namespace) is refused: the
    /// binding of a namespace to an Azure identity is the platform admin's, never the tenant's.
    #[serde(default, skip_serializing_if = "CredentialBinding::is_empty")]
    pub credentials: CredentialBinding,
}

/// Which Azure identities a namespace's credential Secret may name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialBinding {
    /// Application (client) IDs (GUIDs) the Secret's `AZURE_CLIENT_ID` may be. Empty: the
    /// namespaces may not use a credential Secret at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(
        feature = "schema",
        schemars(inner(regex(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        )))
    )]
    pub client_ids: Vec<String>,
    /// Entra tenant IDs (GUIDs) or verified domains the Secret's `AZURE_TENANT_ID` may be.
    /// Empty: any tenant (the client ID alone is bound).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenant_ids: Vec<String>,
}

impl CredentialBinding {
    pub fn is_empty(&self) -> bool {
        self.client_ids.is_empty() && self.tenant_ids.is_empty()
    }
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
    /// What its definition says ([`escalation`]): `None` when the definition was not read
    /// (offline: only [`PRIVILEGED_ROLES`] applies), `Some(None)` when it was read and cannot
    /// escalate, `Some(Some(why))` when it can.
    pub escalation: Option<Option<Escalation>>,
}

impl RoleInfo {
    /// What can be known about `role` without Azure: GUIDs as given, built-in names.
    pub fn offline(role: &RoleRef) -> RoleInfo {
        match role {
            RoleRef::Guid(g) => RoleInfo {
                guid: Some(g.to_ascii_lowercase()),
                name: builtin_role_name(g).map(str::to_string),
                escalation: None,
            },
            RoleRef::DefinitionId(d) => {
                let g = d.rsplit('/').next().unwrap_or(d).to_ascii_lowercase();
                RoleInfo {
                    name: builtin_role_name(&g).map(str::to_string),
                    guid: Some(g),
                    escalation: None,
                }
            }
            RoleRef::Name(n) => RoleInfo {
                guid: builtin_role_guid(n)
                    .or_else(|| privileged_builtin(None, Some(n)).map(|r| r.guid))
                    .map(str::to_string),
                name: Some(n.clone()),
                escalation: None,
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

    /// On the built-in deny list (by name or GUID, or by what its definition grants), and
    /// why: which kind of escalation and which operation.
    pub fn privileged(&self) -> Option<String> {
        if let Some(r) = privileged_builtin(self.guid.as_deref(), self.name.as_deref()) {
            return Some(format!(
                "{} is on the built-in deny list ({}: {})",
                r.name, r.kind, r.operation
            ));
        }
        match &self.escalation {
            Some(Some(e)) => Some(e.to_string()),
            _ => None,
        }
    }
}

/// The entry of [`PRIVILEGED_ROLES`] with this GUID or name (case-insensitive).
fn privileged_builtin(guid: Option<&str>, name: Option<&str>) -> Option<&'static PrivilegedRole> {
    PRIVILEGED_ROLES.iter().find(|r| {
        guid.is_some_and(|g| g.trim().eq_ignore_ascii_case(r.guid))
            || name.is_some_and(|n| n.trim().eq_ignore_ascii_case(r.name))
    })
}

fn builtin_role_name(guid: &str) -> Option<&'static str> {
    privileged_builtin(Some(guid), None).map(|r| r.name)
}

/// ` (through "pattern")` when the role's pattern is not the operation itself.
fn through(pattern: &str, op: &str) -> String {
    if pattern.eq_ignore_ascii_case(op) {
        String::new()
    } else {
        format!(" (through {pattern:?})")
    }
}

/// Azure RBAC action matching: case-insensitive, `*` matches any characters.
fn action_match(pattern: &str, op: &str) -> bool {
    wildcard(
        pattern.to_ascii_lowercase().as_bytes(),
        op.to_ascii_lowercase().as_bytes(),
        true,
    )
}

/// Matching of a granting pattern (`actions`, `dataActions`): [`action_match`], and a `/*/`
/// may also stand for a single `/` (Managed Identity Operator's
/// `userAssignedIdentities/*/assign/action` grants `userAssignedIdentities/assign/action`).
/// Broader than Azure at worst, so a role counts as privileged rather than not.
fn action_grants(pattern: &str, op: &str) -> bool {
    action_match(pattern, op)
        || (pattern.contains("/*/") && action_match(&pattern.replace("/*/", "/"), op))
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

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn block(actions: &[&str], not_actions: &[&str]) -> PermissionBlock {
        PermissionBlock {
            actions: strings(actions),
            not_actions: strings(not_actions),
            ..Default::default()
        }
    }

    fn data_block(actions: &[&str], data_actions: &[&str], not_data: &[&str]) -> PermissionBlock {
        PermissionBlock {
            actions: strings(actions),
            data_actions: strings(data_actions),
            not_data_actions: strings(not_data),
            ..Default::default()
        }
    }

    fn kind(blocks: &[PermissionBlock]) -> Option<EscalationKind> {
        escalation(blocks).map(|e| e.kind)
    }

    const AUTH: Option<EscalationKind> = Some(EscalationKind::AuthorizationWrite);
    const TAKEOVER: Option<EscalationKind> = Some(EscalationKind::IdentityTakeover);

    /// Contributor's real permission block (Azure built-in roles documentation).
    fn contributor() -> PermissionBlock {
        block(
            &["*"],
            &[
                "Microsoft.Authorization/*/Delete",
                "Microsoft.Authorization/*/Write",
                "Microsoft.Authorization/elevateAccess/Action",
                "Microsoft.Blueprint/blueprintAssignments/write",
                "Microsoft.Blueprint/blueprintAssignments/delete",
                "Microsoft.Compute/galleries/share/action",
                "Microsoft.Purview/consents/write",
                "Microsoft.Purview/consents/delete",
                "Microsoft.Resources/deploymentStacks/manageDenySetting/action",
            ],
        )
    }

    #[test]
    fn wildcards_that_write_authorization_are_privileged() {
        for a in [
            "*",
            "*/write",
            "*/delete",
            "*/action",
            "Microsoft.Authorization/*",
            "Microsoft.Authorization/*/write",
            "microsoft.authorization/*/WRITE",
            "microsoft.authorization/roleassignments/*",
            "Microsoft.Authorization/role*",
            "Microsoft.Authorization/*/delete",
            "Microsoft.Authorization/policyAssignments/*",
            "Microsoft.Authorization/locks/*",
            "Microsoft.Authorization/elevateAccess/Action",
            "Microsoft.Authorization/roleManagementPolicies/write",
            "Microsoft.Authorization/roleEligibilityScheduleRequests/*",
            // A Microsoft.Authorization type no list names: the generic probes.
            "Microsoft.Authorization/somethingNew/write",
            "Microsoft.Authorization/*/*/write",
        ] {
            // `Microsoft.Authorization/somethingNew/write` names no probe: only wildcards do.
            let want = if a.contains("somethingNew") {
                None
            } else {
                AUTH
            };
            assert_eq!(kind(&[block(&[a], &[])]), want, "{a}");
        }
        let e = escalation(&[block(&["*/write"], &[])]).unwrap();
        assert_eq!(e.operation, "Microsoft.Authorization/roleAssignments/write");
        assert!(e.message.starts_with("authorization write: "), "{e}");
        assert!(e.message.contains("(through \"*/write\")"), "{e}");
        // A type no concrete entry names is named generically.
        let e = escalation(&[block(
            &["Microsoft.Authorization/*/write"],
            &[
                "Microsoft.Authorization/role*",
                "Microsoft.Authorization/policy*",
                "Microsoft.Authorization/locks/*",
                "Microsoft.Authorization/denyAssignments/*",
                "Microsoft.Authorization/classicAdministrators/*",
            ],
        )])
        .unwrap();
        assert_eq!(e.operation, "Microsoft.Authorization/<any type>/write");
        // User Access Administrator, Role Based Access Control Administrator.
        assert_eq!(
            kind(&[block(
                &["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
                &[]
            )]),
            AUTH
        );
        assert_eq!(
            kind(&[block(
                &[
                    "Microsoft.Authorization/roleAssignments/write",
                    "Microsoft.Authorization/roleAssignments/delete",
                    "*/read",
                    "Microsoft.Support/*"
                ],
                &[]
            )]),
            AUTH
        );
        // Resource Policy Contributor.
        assert_eq!(
            kind(&[block(
                &[
                    "*/read",
                    "Microsoft.Authorization/policyassignments/*",
                    "Microsoft.Authorization/policydefinitions/*",
                    "Microsoft.Authorization/policyexemptions/*",
                    "Microsoft.Authorization/policysetdefinitions/*",
                    "Microsoft.PolicyInsights/*",
                    "Microsoft.Support/*"
                ],
                &[]
            )]),
            AUTH
        );
    }

    #[test]
    fn contributor_cannot_write_authorization_but_takes_over_identities() {
        let e = escalation(&[contributor()]).expect("Contributor is privileged");
        assert_eq!(e.kind, EscalationKind::IdentityTakeover, "{e}");
        assert!(
            e.message
                .starts_with("identity takeover: its actions grant "),
            "{e}"
        );
        assert!(e.message.contains("(through \"*\")"), "{e}");
        // Not authorization: the same notActions with takeovers taken away too leave nothing.
        let mut c = contributor();
        c.not_actions.extend(strings(&[
            "Microsoft.Compute/*/runCommand/action",
            "Microsoft.Compute/*/runCommands/write",
            "Microsoft.Compute/*/extensions/write",
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/*",
            "Microsoft.Compute/virtualMachines/write",
            "Microsoft.Compute/virtualMachineScaleSets/write",
        ]));
        assert_eq!(escalation(&[c]), None);
        // Nor do Contributor-style notActions leave any generic authorization write.
        assert_eq!(
            kind(&[block(
                &["*/write", "*/delete"],
                &[
                    "Microsoft.Authorization/*/Write",
                    "Microsoft.Authorization/*/Delete",
                    "Microsoft.Compute/*",
                    "Microsoft.ManagedIdentity/*",
                ]
            )]),
            None
        );
    }

    #[test]
    fn takeovers_are_privileged() {
        let fic =
            "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write";
        for a in [
            fic,
            "Microsoft.ManagedIdentity/userAssignedIdentities/*",
            "Microsoft.ManagedIdentity/*/write",
            "Microsoft.Compute/virtualMachines/runCommand/action",
            "microsoft.compute/virtualmachines/runcommands/WRITE",
            "Microsoft.Compute/virtualMachines/*",
            "Microsoft.Compute/*/action",
            "Microsoft.Compute/virtualMachineScaleSets/*",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/runCommand/action",
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/runCommands/write",
            "Microsoft.Compute/virtualMachines/extensions/write",
            "Microsoft.Compute/virtualMachines/extensions/*",
            "Microsoft.Compute/virtualMachineScaleSets/extensions/write",
        ] {
            assert_eq!(kind(&[block(&[a], &[])]), TAKEOVER, "{a}");
        }
        let e = escalation(&[block(&[fic], &[])]).unwrap();
        assert_eq!(e.operation, fic);
        assert!(e.message.contains("federated"), "{e}");
        // Login data actions (the VM login roles); as actions they grant nothing.
        for d in [
            "Microsoft.Compute/virtualMachines/login/action",
            "Microsoft.Compute/virtualMachines/loginAsAdmin/action",
            "Microsoft.Compute/virtualMachines/*",
            "*",
        ] {
            let e = escalation(&[data_block(&[], &[d], &[])]).expect(d);
            assert_eq!(e.kind, EscalationKind::IdentityTakeover);
            assert!(e.message.contains("its dataActions grant"), "{e}");
            assert!(e.message.contains("IMDS"), "{e}");
        }
        assert_eq!(
            kind(&[block(
                &["Microsoft.Compute/virtualMachines/login/action"],
                &[]
            )]),
            None
        );
        // notDataActions take the login away.
        assert_eq!(
            kind(&[data_block(
                &[],
                &["Microsoft.Compute/virtualMachines/*"],
                &["Microsoft.Compute/virtualMachines/login*"]
            )]),
            None
        );
        // Virtual Machine Administrator Login, as documented.
        assert_eq!(
            kind(&[data_block(
                &[
                    "Microsoft.Network/publicIPAddresses/read",
                    "Microsoft.Compute/virtualMachines/*/read",
                    "Microsoft.HybridCompute/machines/*/read",
                    "Microsoft.HybridConnectivity/endpoints/listCredentials/action"
                ],
                &[
                    "Microsoft.Compute/virtualMachines/login/action",
                    "Microsoft.Compute/virtualMachines/loginAsAdmin/action",
                    "Microsoft.HybridCompute/machines/login/action",
                    "Microsoft.HybridCompute/machines/loginAsAdmin/action"
                ],
                &[]
            )]),
            TAKEOVER
        );
    }

    #[test]
    fn assigning_identities_escalates_only_with_a_vm_write() {
        let assign = "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action";
        // Managed Identity Operator: assign alone (through `*/assign/action`).
        let operator = block(
            &[
                "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
                "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
                "Microsoft.Authorization/*/read",
                "Microsoft.Insights/alertRules/*",
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                "Microsoft.Resources/deployments/*",
                "Microsoft.Support/*",
            ],
            &[],
        );
        assert_eq!(escalation(std::slice::from_ref(&operator)), None);
        assert_eq!(kind(&[block(&[assign], &[])]), None);
        assert_eq!(
            kind(&[block(&["Microsoft.Compute/virtualMachines/write"], &[])]),
            None
        );
        // With a VM or scale set write in the same role (another block counts too).
        for w in [
            "Microsoft.Compute/virtualMachines/write",
            "Microsoft.Compute/virtualMachineScaleSets/write",
            "Microsoft.Compute/*/write",
        ] {
            let e = escalation(&[block(&[assign, w], &[])]).expect(w);
            assert_eq!(e.kind, EscalationKind::IdentityTakeover);
            if !w.contains('*') {
                // (`Microsoft.Compute/*/write` also grants runCommands/write on its own.)
                assert_eq!(e.operation, assign);
                assert!(e.message.contains("together with"), "{e}");
            }
            let mut two = operator.clone();
            two.actions.clear();
            two.actions.push(w.into());
            assert_eq!(kind(&[operator.clone(), two]), TAKEOVER, "{w}");
        }
        // notActions of the block that grants it count; another block's do not.
        assert_eq!(
            kind(&[block(
                &[assign, "Microsoft.Compute/virtualMachines/write"],
                &["Microsoft.ManagedIdentity/*"]
            )]),
            None
        );
    }

    #[test]
    fn not_actions_take_takeovers_away() {
        assert_eq!(
            kind(&[block(
                &["Microsoft.Compute/virtualMachines/*"],
                &[
                    "Microsoft.Compute/virtualMachines/runCommand/action",
                    "Microsoft.Compute/virtualMachines/runCommands/*",
                    "Microsoft.Compute/virtualMachines/extensions/*",
                ]
            )]),
            None
        );
        // Only runCommand taken away: extensions remain.
        let e = escalation(&[block(
            &["Microsoft.Compute/virtualMachines/*"],
            &["Microsoft.Compute/virtualMachines/runCommand*"],
        )])
        .unwrap();
        assert_eq!(
            e.operation,
            "Microsoft.Compute/virtualMachines/extensions/write"
        );
        // A notActions `/*/` is not widened: it takes away only what it matches.
        assert_eq!(
            kind(&[block(
                &["Microsoft.Compute/virtualMachines/runCommand/action"],
                &["Microsoft.Compute/virtualMachines/*/runCommand/action"]
            )]),
            TAKEOVER
        );
    }

    #[test]
    fn readers_are_not_privileged() {
        assert_eq!(escalation(&[block(&["*/read"], &[])]), None);
        assert_eq!(escalation(&[]), None);
        assert_eq!(escalation(&[PermissionBlock::default()]), None);
        // Storage Blob Data Reader.
        assert_eq!(
            escalation(&[data_block(
                &[
                    "Microsoft.Storage/storageAccounts/blobServices/containers/read",
                    "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action"
                ],
                &["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"],
                &[]
            )]),
            None
        );
        // Key Vault Secrets User; Monitoring Metrics Publisher.
        assert_eq!(
            escalation(&[data_block(
                &[],
                &[
                    "Microsoft.KeyVault/vaults/secrets/getSecret/action",
                    "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
                ],
                &[]
            )]),
            None
        );
        assert_eq!(
            escalation(&[data_block(
                &[
                    "Microsoft.Insights/Register/Action",
                    "Microsoft.Support/*",
                    "Microsoft.Resources/subscriptions/resourceGroups/read"
                ],
                &[
                    "Microsoft.Insights/Metrics/Write",
                    "Microsoft.Insights/Telemetry/Write"
                ],
                &[]
            )]),
            None
        );
        // Reading Microsoft.Authorization is not writing it.
        assert_eq!(
            escalation(&[block(&["Microsoft.Authorization/*/read"], &[])]),
            None
        );
    }

    #[test]
    fn the_static_list_agrees_with_the_rule() {
        // Every entry's operation is one `escalation` finds, of the entry's kind.
        for r in PRIVILEGED_ROLES {
            let b = if r.operation.contains("/login") {
                data_block(&[], &[r.operation], &[])
            } else {
                block(&[r.operation], &[])
            };
            assert_eq!(kind(&[b]), Some(r.kind), "{}", r.name);
            assert_eq!(r.guid, r.guid.to_ascii_lowercase(), "{}", r.name);
            assert_eq!(r.guid.len(), 36, "{}", r.name);
        }
        let mut guids: Vec<&str> = PRIVILEGED_ROLES.iter().map(|r| r.guid).collect();
        guids.sort();
        guids.dedup();
        assert_eq!(guids.len(), PRIVILEGED_ROLES.len());
        for (name, guid) in [
            ("Owner", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"),
            (
                "User Access Administrator",
                "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
            ),
            (
                "Role Based Access Control Administrator",
                "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
            ),
            ("Contributor", "b24988ac-6180-42a0-ab88-20f7382dd24c"),
            (
                "Virtual Machine Contributor",
                "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
            ),
            (
                "Managed Identity Contributor",
                "e40ec5ca-96e0-45a2-b4ff-59039f2c2b59",
            ),
            (
                "Virtual Machine Administrator Login",
                "1c0163c0-47e6-4577-8991-ea5c82e286e4",
            ),
            (
                "Virtual Machine User Login",
                "fb879df8-f326-4884-b1cf-06f3ad86be52",
            ),
        ] {
            for r in [
                RoleRef::Name(name.to_ascii_uppercase()),
                RoleRef::Guid(guid.to_ascii_uppercase()),
                RoleRef::DefinitionId(format!(
                    "/providers/Microsoft.Authorization/roleDefinitions/{guid}"
                )),
            ] {
                let info = RoleInfo::offline(&r);
                let why = info.privileged().unwrap_or_else(|| panic!("{r:?}"));
                assert!(why.contains("is on the built-in deny list ("), "{why}");
                // Name and GUID both known offline, so either lifts it.
                assert!(info.is(name) && info.is(guid), "{info:?}");
            }
        }
        // Reader, and a custom role nobody read: not on the static list.
        assert_eq!(
            RoleInfo::offline(&RoleRef::Name("Reader".into())).privileged(),
            None
        );
        assert_eq!(
            RoleInfo::offline(&RoleRef::Name("Access Granter".into())).privileged(),
            None
        );
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
        let blob_contributor = spec(|r| {
            r.role_assignments = vec![crate::model::RawRoleAssignment {
                identity: uai("ids-a", "app"),
                role: "Storage Blob Data Contributor".into(),
                scope: format!("/subscriptions/{SUB}/resourceGroups/rg-a"),
            }];
        });
        assert_eq!(
            rules(run(&p, "team-a", &blob_contributor)),
            vec![Rule::RoleAssignments]
        );
        // Contributor can run commands on VMs (identity takeover): privileged, even under
        // `roles: ["*"]`, until lifted.
        let contributor = spec(|r| {
            r.role_assignments = vec![crate::model::RawRoleAssignment {
                identity: uai("ids-a", "app"),
                role: "Contributor".into(),
                scope: format!("/subscriptions/{SUB}/resourceGroups/rg-a"),
            }];
        });
        let mut any_role = team_a();
        any_role.spec.role_assignments[0].roles = vec!["*".into()];
        let d = run(&[any_role.clone()], "team-a", &contributor).unwrap_err();
        assert_eq!(d.0[0].rule, Rule::AllowPrivilegedRoles);
        assert!(
            d.to_string().contains(
                "Contributor is on the built-in deny list (identity takeover: Microsoft.Compute/virtualMachines/runCommand/action)"
            ),
            "{d}"
        );
        assert_eq!(
            run(&[any_role.clone()], "team-a", &blob_contributor),
            Ok(())
        );
        any_role.spec.allow_privileged_roles = vec!["b24988ac-6180-42a0-ab88-20f7382dd24c".into()];
        assert_eq!(run(&[any_role], "team-a", &contributor), Ok(()));
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
        let info = |actions: &[&str]| {
            let e = escalation(&[block(actions, &[])]);
            move |_: &RoleRef| RoleInfo {
                guid: Some("99999999-9999-9999-9999-999999999999".into()),
                name: Some("Access Granter".into()),
                escalation: Some(e.clone()),
            }
        };
        let ns = Namespace {
            name: "team-a",
            labels: None,
        };
        let granter = info(&["Microsoft.Authorization/roleAssignments/write", "*/read"]);
        let d = check(&[p.clone()], ns, &s, &granter).unwrap_err();
        assert_eq!(d.0[0].rule, Rule::AllowPrivilegedRoles);
        assert!(
            d.to_string().contains(
                "is privileged (authorization write: its actions grant Microsoft.Authorization/roleAssignments/write"
            ),
            "{d}"
        );
        // A custom role that runs commands on VMs.
        let runner = info(&["Microsoft.Compute/virtualMachines/runCommand/action"]);
        let d = check(&[p.clone()], ns, &s, &runner).unwrap_err();
        assert!(d.to_string().contains("(identity takeover: "), "{d}");
        // Read, and harmless.
        assert_eq!(check(&[p.clone()], ns, &s, &info(&["*/read"])), Ok(()));
        // Lifted by name.
        let mut lifted = p.clone();
        lifted.spec.allow_privileged_roles = vec!["access granter".into()];
        assert_eq!(check(&[lifted], ns, &s, &granter), Ok(()));
        // Offline the definition is unknown: only the static list applies.
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
