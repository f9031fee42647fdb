//! The simulated world: seed format (`WorldSeed`), the live model (`World`) and how
//! resources render as ARM JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::authz::{Authorization, RoleAssignment, RoleDefinition, SeedPermission};
use crate::directory::{Directory, EntraGroup, NewPrincipal, PrincipalKind, is_guid};
use crate::errors::SimError;
use crate::identity::{self, IdType, IdentityState, Mode, Shape};
use crate::ids::{IdError, ResourceId, ResourceKind, group_key};
use crate::scope::Scope;

/// Tenant used when the seed gives none (a fixed, obviously synthetic uuid).
pub const DEFAULT_TENANT_ID: &str = "f0e1d2c3-b4a5-4969-8877-665544332211";
/// Location used when a seeded resource gives none.
pub const DEFAULT_LOCATION: &str = "westeurope";

// ---------------------------------------------------------------------------
// Seed format
// ---------------------------------------------------------------------------

/// The world a simulator starts with. YAML (or JSON) with camelCase keys; unknown keys
/// are refused. Resource groups are implied by the resources; list them under
/// `resourceGroups` only to have an empty group (e.g. for PUT-creating resources in it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorldSeed {
    /// Tenant of every system-assigned and user-assigned identity. Default: a fixed uuid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Location for resources that do not give one. Default `westeurope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_location: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_groups: Vec<SeedResourceGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_assigned_identities: Vec<SeedUserAssignedIdentity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_machines: Vec<SeedComputeResource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_machine_scale_sets: Vec<SeedComputeResource>,
    /// Extra directory objects (users, groups, application service principals).
    /// Managed identities' service principals are created automatically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<SeedPrincipal>,
    /// Entra ID security groups (Graph), each also a principal of type Group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<SeedGroup>,
    /// Custom role definitions (the built-in roles are always present).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_definitions: Vec<SeedRoleDefinition>,
    /// Role assignments present at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_assignments: Vec<SeedRoleAssignment>,
    /// AKS clusters, served by Resource Graph only (`Resources` rows of type
    /// `microsoft.containerservice/managedclusters` with `properties.nodeResourceGroup`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_clusters: Vec<SeedManagedCluster>,
}

/// A `Microsoft.ContainerService/managedClusters` resource (Resource Graph rows only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedManagedCluster {
    /// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{name}`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The resource group AKS keeps the cluster's nodes in; default `MC_{rg}_{name}_{location}`
    /// (the documented default name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_resource_group: Option<String>,
}

/// A seeded directory object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedPrincipal {
    /// Object id (GUID).
    pub id: String,
    /// `User`, `ServicePrincipal` or `Group` (a group listed here has no Graph group
    /// behind it; list it under `groups` for that).
    #[serde(rename = "type")]
    pub principal_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `appId` of a service principal; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
}

/// A seeded Entra ID security group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedGroup {
    /// Object id (GUID).
    pub id: String,
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Object ids of direct members: seeded principals, groups, or principal ids of
    /// seeded user-assigned / system-assigned identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

/// A seeded custom role definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedRoleDefinition {
    /// The definition's name (GUID).
    pub id: String,
    pub role_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Scopes at (and below) which it is visible and assignable.
    pub assignable_scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<SeedPermission>,
}

/// A seeded role assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedRoleAssignment {
    /// Name (GUID); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub scope: String,
    /// A role definition id (`…/providers/Microsoft.Authorization/roleDefinitions/{guid}`)
    /// or just the GUID.
    pub role_definition_id: String,
    pub principal_id: String,
    /// Default: the principal's type, or `ServicePrincipal` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_type: Option<String>,
}

/// An explicitly declared resource group: `/subscriptions/{sub}/resourceGroups/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedResourceGroup {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// A `Microsoft.ManagedIdentity/userAssignedIdentities` resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedUserAssignedIdentity {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Service-principal object id; generated (uuid v4) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// Application (client) id; generated (uuid v4) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// A virtual machine or scale set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedComputeResource {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// The identity as a 2018-06-01 GET would describe it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SeedIdentity>,
    /// Free-form `properties` returned on GET (hardwareProfile, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
}

/// Seed identity: `type` as in the 2018-06-01 spec (case/spacing tolerated);
/// `userAssignedIdentities` either a list of ids or a map id → anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedIdentity {
    #[serde(rename = "type")]
    pub identity_type: String,
    /// System principal id; generated when the type has SystemAssigned and none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_assigned_identities: Option<SeedUserIds>,
}

/// List form (`[id, …]`) or map form (`{id: {}, …}`) of seeded user-assigned identities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SeedUserIds {
    List(Vec<String>),
    Map(Map<String, Value>),
}

impl SeedUserIds {
    fn ids(&self) -> Vec<String> {
        match self {
            SeedUserIds::List(v) => v.clone(),
            SeedUserIds::Map(m) => m.keys().cloned().collect(),
        }
    }
}

impl SeedIdentity {
    /// A seed identity of the given type and user-assigned ids.
    pub fn new(identity_type: &str, user_assigned: &[&str]) -> Self {
        SeedIdentity {
            identity_type: identity_type.to_string(),
            principal_id: None,
            user_assigned_identities: if user_assigned.is_empty() {
                None
            } else {
                Some(SeedUserIds::List(
                    user_assigned.iter().map(|s| s.to_string()).collect(),
                ))
            },
        }
    }

    /// The identity in the 2018-06-01 request shape.
    fn to_request_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(self.identity_type.clone()));
        if let Some(ids) = &self.user_assigned_identities {
            let mut d = Map::new();
            for id in ids.ids() {
                d.insert(id, json!({}));
            }
            m.insert("userAssignedIdentities".into(), Value::Object(d));
        }
        Value::Object(m)
    }
}

impl WorldSeed {
    /// Parses and validates a YAML seed. Unknown fields, bad ids, duplicates and
    /// references to undeclared user-assigned identities are refused.
    pub fn from_yaml_str(yaml: &str) -> Result<WorldSeed, SimError> {
        let seed: WorldSeed = if yaml.trim().is_empty() {
            WorldSeed::default()
        } else {
            serde_yaml_ng::from_str(yaml).map_err(|e| SimError::SeedYaml(e.to_string()))?
        };
        World::from_seed(&seed)?;
        Ok(seed)
    }

    /// Adds a user-assigned identity (builder style).
    pub fn with_user_assigned_identity(mut self, id: &str) -> Self {
        self.user_assigned_identities
            .push(SeedUserAssignedIdentity {
                id: id.to_string(),
                location: None,
                tags: None,
                principal_id: None,
                client_id: None,
            });
        self
    }

    /// Adds a virtual machine (builder style).
    pub fn with_virtual_machine(mut self, id: &str, identity: Option<SeedIdentity>) -> Self {
        self.virtual_machines.push(SeedComputeResource {
            id: id.to_string(),
            location: None,
            tags: None,
            identity,
            properties: None,
        });
        self
    }

    /// Adds a virtual machine scale set (builder style).
    pub fn with_virtual_machine_scale_set(
        mut self,
        id: &str,
        identity: Option<SeedIdentity>,
    ) -> Self {
        self.virtual_machine_scale_sets.push(SeedComputeResource {
            id: id.to_string(),
            location: None,
            tags: None,
            identity,
            properties: None,
        });
        self
    }
}

// ---------------------------------------------------------------------------
// Live model
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub subscription: String,
    pub name: String,
    pub location: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Uai {
    pub id: ResourceId,
    pub location: String,
    pub tags: Option<Value>,
    pub principal_id: String,
    pub client_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ComputeResource {
    pub id: ResourceId,
    pub location: String,
    pub tags: Option<Value>,
    /// Other top-level members given on PUT/PATCH (sku, plan, zones, …).
    pub extra: Map<String, Value>,
    pub properties: Map<String, Value>,
    /// `vmId` (VM) / `uniqueId` (VMSS).
    pub unique_id: String,
    pub provisioning_state: String,
    pub identity: IdentityState,
    /// Every system-assigned principal id this resource has had, oldest first.
    pub principal_history: Vec<String>,
    /// The long-running operation currently running on it.
    pub current_op: Option<String>,
    /// Entity tag counter: `"{etag}"` on the wire (2023-09-01 and later); 1 when created,
    /// bumped by every accepted PATCH / PUT and every out-of-band write.
    pub etag: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct World {
    pub tenant_id: String,
    pub default_location: String,
    pub groups: BTreeMap<String, Group>,
    pub uais: BTreeMap<String, Uai>,
    pub compute: BTreeMap<String, ComputeResource>,
    /// Entra ID principals and groups.
    pub directory: Directory,
    /// Role definitions and assignments.
    pub authz: Authorization,
    /// Snapshots of Resource Graph rows (for the configurable lag).
    pub arg_history: crate::resourcegraph::RowHistory,
    /// Resource Graph's `resourcechanges` records.
    pub changes: crate::changes::ChangeLog,
    /// Seeded AKS clusters: Resource Graph rows by lower-cased id.
    pub managed_clusters: BTreeMap<String, Value>,
}

pub(crate) fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn tags_value(tags: &Option<BTreeMap<String, String>>) -> Option<Value> {
    tags.as_ref().map(|t| {
        Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    })
}

fn seed_id(what: &str, id: &str, kind: ResourceKind) -> Result<ResourceId, SimError> {
    ResourceId::parse_kind(id, kind).map_err(|e| SimError::InvalidResourceId {
        id: id.to_string(),
        reason: match e {
            IdError::NotFullyQualified => format!("{what}: not a fully qualified resource id"),
            IdError::WrongShape => format!(
                "{what}: expected /subscriptions/{{sub}}/resourceGroups/{{rg}}/providers/{}/{{name}}",
                kind.arm_type()
            ),
        },
    })
}

impl World {
    pub fn empty() -> World {
        World {
            tenant_id: DEFAULT_TENANT_ID.to_string(),
            default_location: DEFAULT_LOCATION.to_string(),
            groups: BTreeMap::new(),
            uais: BTreeMap::new(),
            compute: BTreeMap::new(),
            directory: Directory::default(),
            authz: Authorization::default(),
            arg_history: Default::default(),
            changes: Default::default(),
            managed_clusters: BTreeMap::new(),
        }
    }

    pub fn from_seed(seed: &WorldSeed) -> Result<World, SimError> {
        let mut w = World::empty();
        if let Some(t) = &seed.tenant_id {
            w.tenant_id = t.clone();
        }
        if let Some(l) = &seed.default_location {
            w.default_location = l.clone();
        }
        for (i, g) in seed.resource_groups.iter().enumerate() {
            let segs: Vec<&str> = g.id.trim_end_matches('/').split('/').collect();
            let ok = segs.len() == 5
                && segs[0].is_empty()
                && segs[1].eq_ignore_ascii_case("subscriptions")
                && segs[3].eq_ignore_ascii_case("resourcegroups")
                && !segs[2].is_empty()
                && !segs[4].is_empty();
            if !ok {
                return Err(SimError::InvalidResourceId {
                    id: g.id.clone(),
                    reason: format!(
                        "resourceGroups[{i}]: expected /subscriptions/{{sub}}/resourceGroups/{{name}}"
                    ),
                });
            }
            let loc = g
                .location
                .clone()
                .unwrap_or_else(|| w.default_location.clone());
            w.ensure_group(segs[2], segs[4], &loc);
        }
        for (i, u) in seed.user_assigned_identities.iter().enumerate() {
            let what = format!("userAssignedIdentities[{i}]");
            let id = seed_id(&what, &u.id, ResourceKind::UserAssignedIdentity)?;
            if w.uais.contains_key(&id.key()) {
                return Err(SimError::Seed(format!(
                    "{what}: duplicate user-assigned identity '{}'",
                    u.id
                )));
            }
            let loc = u
                .location
                .clone()
                .unwrap_or_else(|| w.default_location.clone());
            w.put_uai(
                &id,
                &loc,
                tags_value(&u.tags),
                u.principal_id.clone(),
                u.client_id.clone(),
            );
        }
        let lists = [
            (
                "virtualMachines",
                ResourceKind::VirtualMachine,
                &seed.virtual_machines,
            ),
            (
                "virtualMachineScaleSets",
                ResourceKind::VirtualMachineScaleSet,
                &seed.virtual_machine_scale_sets,
            ),
        ];
        for (list, kind, items) in lists {
            for (i, r) in items.iter().enumerate() {
                let what = format!("{list}[{i}]");
                let id = seed_id(&what, &r.id, kind)?;
                if w.compute.contains_key(&id.key()) {
                    return Err(SimError::Seed(format!(
                        "{what}: duplicate resource '{}'",
                        r.id
                    )));
                }
                let properties = match &r.properties {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(m)) => m.clone(),
                    Some(_) => {
                        return Err(SimError::Seed(format!(
                            "{what}.properties: must be a mapping"
                        )));
                    }
                };
                let loc = r
                    .location
                    .clone()
                    .unwrap_or_else(|| w.default_location.clone());
                w.ensure_group(&id.subscription, &id.resource_group, &loc);
                let mut res = ComputeResource::new(id.clone(), &loc);
                res.tags = tags_value(&r.tags);
                res.properties = properties;
                if let Some(ident) = &r.identity {
                    if let Some(ids) = &ident.user_assigned_identities {
                        for uid in ids.ids() {
                            let uid_parsed = seed_id(
                                &format!("{what}.identity.userAssignedIdentities"),
                                &uid,
                                ResourceKind::UserAssignedIdentity,
                            )?;
                            if !w.uais.contains_key(&uid_parsed.key()) {
                                return Err(SimError::Seed(format!(
                                    "{what}.identity references user-assigned identity '{uid}' which is not declared under userAssignedIdentities"
                                )));
                            }
                        }
                    }
                    let state = w
                        .out_of_band_identity(
                            &res,
                            &ident.to_request_json(),
                            ident.principal_id.clone(),
                        )
                        .map_err(|e| SimError::Seed(format!("{what}.identity: {e}")))?;
                    res.set_identity(state);
                }
                let key = id.key();
                w.compute.insert(key.clone(), res);
                w.sync_compute_principals(&key);
            }
        }
        w.seed_directory(seed)?;
        w.seed_managed_clusters(seed)?;
        // Seeded rows exist since forever for Resource Graph's lag.
        for v in w.arg_history.rows.values_mut() {
            for e in v.iter_mut() {
                e.0 = None;
            }
        }
        // Nor are they changes.
        w.changes = Default::default();
        Ok(w)
    }

    /// Seeded AKS clusters as Resource Graph `Resources` rows (documented columns; `type` and
    /// `resourceGroup` lower-cased as in the Resource Graph examples).
    fn seed_managed_clusters(&mut self, seed: &WorldSeed) -> Result<(), SimError> {
        for (i, c) in seed.managed_clusters.iter().enumerate() {
            let what = format!("managedClusters[{i}]");
            let segs: Vec<&str> = c.id.split('/').collect();
            let ok = segs.len() == 9
                && segs[0].is_empty()
                && segs[1].eq_ignore_ascii_case("subscriptions")
                && segs[3].eq_ignore_ascii_case("resourceGroups")
                && segs[5].eq_ignore_ascii_case("providers")
                && segs[6].eq_ignore_ascii_case("Microsoft.ContainerService")
                && segs[7].eq_ignore_ascii_case("managedClusters")
                && segs.iter().skip(1).all(|s| !s.is_empty());
            if !ok {
                return Err(SimError::Seed(format!(
                    "{what}: '{}' is not a managed cluster id",
                    c.id
                )));
            }
            let location = c
                .location
                .clone()
                .unwrap_or_else(|| self.default_location.clone());
            let node_rg = c
                .node_resource_group
                .clone()
                .unwrap_or_else(|| format!("MC_{}_{}_{location}", segs[4], segs[8]));
            let row = serde_json::json!({
                "id": c.id,
                "name": segs[8],
                "type": "microsoft.containerservice/managedclusters",
                "tenantId": self.tenant_id,
                "kind": "",
                "location": location,
                "resourceGroup": segs[4].to_ascii_lowercase(),
                "subscriptionId": segs[2],
                "tags": {},
                "identity": Value::Null,
                "properties": {"nodeResourceGroup": node_rg},
            });
            self.managed_clusters.insert(c.id.to_ascii_lowercase(), row);
        }
        Ok(())
    }

    /// Seeded principals, groups, custom roles and role assignments.
    fn seed_directory(&mut self, seed: &WorldSeed) -> Result<(), SimError> {
        // Everything seeded counts as replicated long ago.
        for p in self.directory.principals.values_mut() {
            p.created = None;
        }
        for (i, p) in seed.principals.iter().enumerate() {
            let what = format!("principals[{i}]");
            if !is_guid(&p.id) {
                return Err(SimError::Seed(format!(
                    "{what}: id '{}' is not a GUID",
                    p.id
                )));
            }
            let kind = match p.principal_type.to_ascii_lowercase().as_str() {
                "user" => PrincipalKind::User,
                "serviceprincipal" => PrincipalKind::ServicePrincipal,
                "group" => PrincipalKind::Group,
                other => {
                    return Err(SimError::Seed(format!(
                        "{what}: type '{other}' is not User, ServicePrincipal or Group"
                    )));
                }
            };
            if self.directory.live(&p.id).is_some() {
                return Err(SimError::Seed(format!(
                    "{what}: duplicate principal '{}'",
                    p.id
                )));
            }
            let sp = kind == PrincipalKind::ServicePrincipal;
            self.directory.register(NewPrincipal {
                id: p.id.clone(),
                kind,
                display_name: p.display_name.clone().unwrap_or_else(|| p.id.clone()),
                app_id: if sp {
                    Some(p.app_id.clone().unwrap_or_else(new_uuid))
                } else {
                    None
                },
                service_principal_type: sp.then(|| "Application".to_string()),
                alternative_names: Vec::new(),
                seeded: true,
            });
        }
        for (i, g) in seed.groups.iter().enumerate() {
            let what = format!("groups[{i}]");
            if !is_guid(&g.id) {
                return Err(SimError::Seed(format!(
                    "{what}: id '{}' is not a GUID",
                    g.id
                )));
            }
            if self.directory.live(&g.id).is_some() {
                return Err(SimError::Seed(format!(
                    "{what}: duplicate principal '{}'",
                    g.id
                )));
            }
            self.directory.register(NewPrincipal {
                id: g.id.clone(),
                kind: PrincipalKind::Group,
                display_name: g.display_name.clone(),
                app_id: None,
                service_principal_type: None,
                alternative_names: Vec::new(),
                seeded: true,
            });
            self.directory.groups.insert(
                g.id.to_ascii_lowercase(),
                EntraGroup {
                    id: g.id.clone(),
                    description: g.description.clone(),
                    members: Vec::new(),
                },
            );
        }
        for (i, g) in seed.groups.iter().enumerate() {
            for m in &g.members {
                if self.directory.live(m).is_none() {
                    return Err(SimError::Seed(format!(
                        "groups[{i}].members: '{m}' is not a known principal"
                    )));
                }
                let key = m.to_ascii_lowercase();
                if let Some(eg) = self.directory.groups.get_mut(&g.id.to_ascii_lowercase())
                    && !eg.members.contains(&key)
                {
                    eg.members.push(key);
                }
            }
        }
        for (i, d) in seed.role_definitions.iter().enumerate() {
            let what = format!("roleDefinitions[{i}]");
            if !is_guid(&d.id) {
                return Err(SimError::Seed(format!(
                    "{what}: id '{}' is not a GUID",
                    d.id
                )));
            }
            let guid = d.id.to_ascii_lowercase();
            if self.authz.definitions.contains_key(&guid) {
                return Err(SimError::Seed(format!(
                    "{what}: duplicate role definition '{}'",
                    d.id
                )));
            }
            let mut keys = Vec::new();
            for s in &d.assignable_scopes {
                let sc = Scope::parse(s).ok_or_else(|| {
                    SimError::Seed(format!("{what}: assignable scope '{s}' is not a scope"))
                })?;
                keys.push(sc.key());
            }
            self.authz.definitions.insert(
                guid.clone(),
                RoleDefinition {
                    guid,
                    role_name: d.role_name.clone(),
                    description: d.description.clone().unwrap_or_default(),
                    builtin: false,
                    permissions: if d.permissions.is_empty() {
                        vec![SeedPermission::default()]
                    } else {
                        d.permissions.clone()
                    },
                    assignable_scopes: keys,
                    assignable_scopes_raw: d.assignable_scopes.clone(),
                },
            );
        }
        for (i, a) in seed.role_assignments.iter().enumerate() {
            let what = format!("roleAssignments[{i}]");
            let name = a.name.clone().unwrap_or_else(new_uuid);
            if !is_guid(&name) {
                return Err(SimError::Seed(format!(
                    "{what}: name '{name}' is not a GUID"
                )));
            }
            if self
                .authz
                .assignments
                .contains_key(&name.to_ascii_lowercase())
            {
                return Err(SimError::Seed(format!("{what}: duplicate name '{name}'")));
            }
            let scope = Scope::parse(&a.scope)
                .ok_or_else(|| SimError::Seed(format!("{what}: '{}' is not a scope", a.scope)))?;
            let guid = if is_guid(&a.role_definition_id) {
                a.role_definition_id.to_ascii_lowercase()
            } else {
                crate::authz::role_guid_of(&a.role_definition_id).ok_or_else(|| {
                    SimError::Seed(format!(
                        "{what}: '{}' is not a role definition id",
                        a.role_definition_id
                    ))
                })?
            };
            if !self
                .authz
                .definitions
                .get(&guid)
                .is_some_and(|d| d.visible_at(&scope.key()))
            {
                return Err(SimError::Seed(format!(
                    "{what}: role definition '{guid}' does not exist at '{}'",
                    a.scope
                )));
            }
            if !is_guid(&a.principal_id) {
                return Err(SimError::Seed(format!(
                    "{what}: principalId '{}' is not a GUID",
                    a.principal_id
                )));
            }
            let principal_type = a.principal_type.clone().unwrap_or_else(|| {
                self.directory
                    .live(&a.principal_id)
                    .map_or("ServicePrincipal", |p| p.kind.principal_type())
                    .to_string()
            });
            let now = crate::state::now_rfc3339();
            let seq = self.authz.next_seq;
            self.authz.next_seq += 1;
            self.authz.assignments.insert(
                name.to_ascii_lowercase(),
                RoleAssignment {
                    name,
                    scope,
                    role_guid: guid,
                    principal_id: a.principal_id.clone(),
                    principal_type,
                    description: None,
                    condition: None,
                    condition_version: None,
                    created_on: now.clone(),
                    updated_on: now,
                    created_by: None,
                    seq,
                },
            );
        }
        Ok(())
    }

    /// Registers the current system-assigned principal of a VM/VMSS in the directory and
    /// deletes every earlier one (disable / re-enable gives a new principal).
    pub fn sync_compute_principals(&mut self, key: &str) {
        let row = crate::resourcegraph::row_of(self, key);
        let prev = self.arg_history.latest(key);
        self.changes.record(key, prev.as_ref(), row.as_ref());
        self.arg_history
            .record(key, Some(tokio::time::Instant::now()), row);
        let Some(res) = self.compute.get(key) else {
            return;
        };
        let current = res.identity.system_principal.clone();
        let history = res.principal_history.clone();
        let name = res.id.name.clone();
        let rid = res.id.to_string();
        for p in &history {
            if Some(p) != current.as_ref() && self.directory.live(p).is_some() {
                self.directory.delete(p);
            }
        }
        if let Some(p) = current {
            self.directory.register(NewPrincipal {
                id: p,
                kind: PrincipalKind::ServicePrincipal,
                display_name: name,
                app_id: Some(new_uuid()),
                service_principal_type: Some("ManagedIdentity".into()),
                alternative_names: vec!["isExplicit=False".into(), rid],
                seeded: false,
            });
        }
    }

    /// Removes a VM/VMSS and deletes its system-assigned principals. True if it existed.
    pub fn remove_compute(&mut self, key: &str) -> bool {
        match self.compute.remove(key) {
            Some(res) => {
                let prev = self.arg_history.latest(key);
                self.changes.record(key, prev.as_ref(), None);
                self.arg_history
                    .record(key, Some(tokio::time::Instant::now()), None);
                for p in &res.principal_history {
                    self.directory.delete(p);
                }
                true
            }
            None => false,
        }
    }

    /// Removes a user-assigned identity and deletes its service principal. True if it existed.
    pub fn remove_uai(&mut self, key: &str) -> bool {
        match self.uais.remove(key) {
            Some(u) => {
                self.directory.delete(&u.principal_id);
                true
            }
            None => false,
        }
    }

    pub fn ensure_group(&mut self, subscription: &str, name: &str, location: &str) {
        self.groups
            .entry(group_key(subscription, name))
            .or_insert_with(|| Group {
                subscription: subscription.to_string(),
                name: name.to_string(),
                location: location.to_string(),
            });
    }

    pub fn group_exists(&self, id: &ResourceId) -> bool {
        self.groups.contains_key(&id.group_key())
    }

    /// Creates a UAI, or updates tags of an existing one (its ids are kept, as a PUT does).
    /// Returns true when created.
    pub fn put_uai(
        &mut self,
        id: &ResourceId,
        location: &str,
        tags: Option<Value>,
        principal_id: Option<String>,
        client_id: Option<String>,
    ) -> bool {
        self.ensure_group(&id.subscription, &id.resource_group, location);
        if let Some(u) = self.uais.get_mut(&id.key()) {
            if tags.is_some() {
                u.tags = tags;
            }
            return false;
        }
        let u = Uai {
            id: id.clone(),
            location: location.to_string(),
            tags,
            principal_id: principal_id.unwrap_or_else(new_uuid),
            client_id: client_id.unwrap_or_else(new_uuid),
        };
        self.directory.register(NewPrincipal {
            id: u.principal_id.clone(),
            kind: PrincipalKind::ServicePrincipal,
            display_name: id.name.clone(),
            app_id: Some(u.client_id.clone()),
            service_principal_type: Some("ManagedIdentity".into()),
            alternative_names: vec!["isExplicit=True".into(), id.msi_spelling()],
            seeded: false,
        });
        self.uais.insert(id.key(), u);
        true
    }

    /// Resolves an out-of-band identity (2018-06-01 shape, full replace). Referenced
    /// identities need not exist (entries are then stale); everything else is checked.
    pub fn out_of_band_identity(
        &self,
        res: &ComputeResource,
        identity: &Value,
        principal_id: Option<String>,
    ) -> Result<IdentityState, SimError> {
        let mut state = identity::resolve(
            self,
            res,
            Some(identity),
            Shape::Dictionary,
            Mode::OutOfBand,
        )
        .map_err(|e| SimError::Identity {
            code: e.code.clone(),
            message: e.message.clone(),
        })?;
        if state.system_principal.is_some()
            && let Some(p) = principal_id
        {
            state.system_principal = Some(p);
        }
        Ok(state)
    }

    pub fn render_uai(&self, u: &Uai) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), Value::String(u.id.msi_spelling()));
        m.insert("name".into(), Value::String(u.id.name.clone()));
        m.insert("type".into(), Value::String(u.id.kind.arm_type().into()));
        m.insert("location".into(), Value::String(u.location.clone()));
        if let Some(t) = &u.tags {
            m.insert("tags".into(), t.clone());
        }
        m.insert(
            "properties".into(),
            json!({
                "tenantId": self.tenant_id,
                "principalId": u.principal_id,
                "clientId": u.client_id,
            }),
        );
        Value::Object(m)
    }

    /// The `identity` block as GET shows it at the given shape; `None` when the
    /// resource has no identity (GET then omits `identity`, as in
    /// `compute/2024-11-01/examples/VirtualMachine_Get.json`).
    pub fn render_identity(&self, res: &ComputeResource, shape: Shape) -> Option<Value> {
        let st = &res.identity;
        let ty = st.identity_type();
        if ty == IdType::NONE {
            return None;
        }
        let mut m = Map::new();
        if let Some(p) = &st.system_principal {
            m.insert("principalId".into(), Value::String(p.clone()));
            m.insert("tenantId".into(), Value::String(self.tenant_id.clone()));
        }
        m.insert("type".into(), Value::String(ty.as_str().into()));
        if !st.user.is_empty() {
            match shape {
                Shape::Dictionary => {
                    let mut d = Map::new();
                    for e in &st.user {
                        let (p, c) = match (self.uais.get(&e.key), &e.bound_principal) {
                            (Some(u), Some(b)) if &u.principal_id == b => {
                                (u.principal_id.clone(), u.client_id.clone())
                            }
                            // Stale entry: the identity was deleted (and maybe recreated).
                            _ => (String::new(), String::new()),
                        };
                        d.insert(e.id.clone(), json!({ "principalId": p, "clientId": c }));
                    }
                    m.insert("userAssignedIdentities".into(), Value::Object(d));
                }
                Shape::IdentityIds => {
                    m.insert(
                        "identityIds".into(),
                        Value::Array(
                            st.user
                                .iter()
                                .map(|e| Value::String(e.id.clone()))
                                .collect(),
                        ),
                    );
                }
            }
        }
        Some(Value::Object(m))
    }

    /// A VM / VMSS as GET shows it; `with_etag` adds `etag` (after `tags`, as in
    /// `compute/2024-11-01/examples/VirtualMachine_Get.json`) for api-versions that have it.
    pub fn render_compute(&self, res: &ComputeResource, shape: Shape, with_etag: bool) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(res.id.name.clone()));
        m.insert("id".into(), Value::String(res.id.to_string()));
        m.insert("type".into(), Value::String(res.id.kind.arm_type().into()));
        m.insert("location".into(), Value::String(res.location.clone()));
        if let Some(t) = &res.tags {
            m.insert("tags".into(), t.clone());
        }
        if with_etag {
            m.insert("etag".into(), Value::String(res.etag_value()));
        }
        for (k, v) in &res.extra {
            m.insert(k.clone(), v.clone());
        }
        if let Some(i) = self.render_identity(res, shape) {
            m.insert("identity".into(), i);
        }
        let mut props = Map::new();
        let uid_key = match res.id.kind {
            ResourceKind::VirtualMachineScaleSet => "uniqueId",
            _ => "vmId",
        };
        props.insert(uid_key.into(), Value::String(res.unique_id.clone()));
        for (k, v) in &res.properties {
            props.insert(k.clone(), v.clone());
        }
        props.insert(
            "provisioningState".into(),
            Value::String(res.provisioning_state.clone()),
        );
        m.insert("properties".into(), Value::Object(props));
        Value::Object(m)
    }

    /// A JSON dump of the whole world (admin endpoint `GET /_sim/world`).
    pub fn dump(&self) -> Value {
        let groups: Vec<Value> = self
            .groups
            .values()
            .map(|g| {
                json!({
                    "id": format!("/subscriptions/{}/resourceGroups/{}", g.subscription, g.name),
                    "location": g.location,
                })
            })
            .collect();
        let uais: Vec<Value> = self.uais.values().map(|u| self.render_uai(u)).collect();
        let render = |kind: ResourceKind| -> Vec<Value> {
            self.compute
                .values()
                .filter(|r| r.id.kind == kind)
                .map(|r| {
                    let mut v = self.render_compute(r, Shape::Dictionary, true);
                    if let Value::Object(m) = &mut v {
                        m.insert("principalHistory".into(), json!(r.principal_history));
                    }
                    v
                })
                .collect()
        };
        let principals: Vec<Value> = self
            .directory
            .principals
            .values()
            .map(|p| {
                let mut v = self.directory.render(p);
                if let Value::Object(m) = &mut v {
                    m.insert("createdAt".into(), json!(p.created_at));
                    m.insert("deleted".into(), json!(p.deleted));
                }
                v
            })
            .collect();
        let entra_groups: Vec<Value> = self
            .directory
            .groups
            .values()
            .map(|g| json!({ "id": g.id, "members": g.members }))
            .collect();
        let mut assignments: Vec<&RoleAssignment> = self.authz.assignments.values().collect();
        assignments.sort_by_key(|a| a.seq);
        let assignments: Vec<Value> = assignments.iter().map(|a| a.render()).collect();
        json!({
            "tenantId": self.tenant_id,
            "principals": principals,
            "groups": entra_groups,
            "roleAssignments": assignments,
            "resourceGroups": groups,
            "userAssignedIdentities": uais,
            "virtualMachines": render(ResourceKind::VirtualMachine),
            "virtualMachineScaleSets": render(ResourceKind::VirtualMachineScaleSet),
        })
    }
}

impl ComputeResource {
    pub fn new(id: ResourceId, location: &str) -> ComputeResource {
        ComputeResource {
            id,
            location: location.to_string(),
            tags: None,
            extra: Map::new(),
            properties: Map::new(),
            unique_id: new_uuid(),
            provisioning_state: "Succeeded".to_string(),
            identity: IdentityState::default(),
            principal_history: Vec::new(),
            current_op: None,
            etag: 1,
        }
    }

    /// The entity tag as ARM sends it: a quoted counter, e.g. `"3"`.
    pub fn etag_value(&self) -> String {
        format!("\"{}\"", self.etag)
    }

    /// A write was accepted: the entity tag changes.
    pub fn bump_etag(&mut self) {
        self.etag += 1;
    }

    /// Installs a new identity state, recording a new system principal in the history.
    pub fn set_identity(&mut self, state: IdentityState) {
        if let Some(p) = &state.system_principal
            && self.principal_history.last() != Some(p)
            && self.identity.system_principal.as_ref() != Some(p)
        {
            self.principal_history.push(p.clone());
        }
        self.identity = state;
    }
}
