//! Identity semantics of Microsoft.Compute VM/VMSS (`identity` block).
//!
//! * api-version 2018-06-01 and later: `userAssignedIdentities` dictionary; PATCH merges
//!   (`{}` adds/keeps, `null` removes, unlisted keys stay). Sources: the Compute spec
//!   `specification/compute/resource-manager/Microsoft.Compute/stable/2018-06-01/compute.json`
//!   (`VirtualMachineIdentity`, `VirtualMachineScaleSetIdentity`) in Azure/azure-rest-api-specs,
//!   and the REST recipes of "Configure managed identities on Azure virtual machines (VMs)",
//!   <https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-configure-managed-identities?pivots=qs-configure-rest-vm>
//! * api-version 2017-12-01: `identityIds` array replacing the whole set when present.
//!   Sources: `specification/compute/resource-manager/Microsoft.Compute/stable/2017-12-01/compute.json`
//!   and the same page.
//! * Refusals: what ARM answered in the field, as captured in the issue threads cited in the
//!   simulator's README.md (observed; the specs do not list these errors).

use serde_json::{Map, Value};

use crate::errors::ArmError;
use crate::ids::{IdError, ResourceId, ResourceKind};
use crate::world::{ComputeResource, World, new_uuid};

/// Maximum user-assigned identities in one request: above it ARM answers 400 `BadRequest`
/// "User Assigned Identities Number '151' Assign exceed limit '150' in one request."
/// (observed: Azure/bicep#16559, Azure/aad-pod-identity#813).
pub const MAX_UAI_PER_REQUEST: usize = 150;

/// How the identity block is spelled at an api-version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// 2017-12-01: `identityIds` array.
    IdentityIds,
    /// 2018-06-01 and later: `userAssignedIdentities` dictionary.
    Dictionary,
}

/// What kind of write the identity comes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PATCH: merge (dictionary) / replace-if-present (array); no identity = unchanged.
    Patch,
    /// PUT: the request describes the whole identity.
    Put,
    /// Out-of-band write by a test (full replace, referenced identities need not exist).
    OutOfBand,
}

/// The identity type as a pair of flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdType {
    pub system: bool,
    pub user: bool,
}

impl IdType {
    pub const NONE: IdType = IdType {
        system: false,
        user: false,
    };

    /// Parses `SystemAssigned`, `UserAssigned`, `SystemAssigned, UserAssigned`, `None`
    /// case-insensitively, tolerating any spacing around the comma.
    pub fn parse(s: &str) -> Option<IdType> {
        let compact: String = s
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        if compact == "none" {
            return Some(IdType::NONE);
        }
        let mut t = IdType::NONE;
        for part in compact.split(',') {
            match part {
                "systemassigned" if !t.system => t.system = true,
                "userassigned" if !t.user => t.user = true,
                _ => return None,
            }
        }
        Some(t)
    }

    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match (self.system, self.user) {
            (false, false) => "None",
            (true, false) => "SystemAssigned",
            (false, true) => "UserAssigned",
            (true, true) => "SystemAssigned, UserAssigned",
        }
    }
}

/// One user-assigned identity attached to a VM/VMSS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// The id as first sent (stored spelling).
    pub id: String,
    /// Case-folded key.
    pub key: String,
    /// principalId of the identity incarnation it was attached to (None: it did not
    /// exist when attached out-of-band). A mismatch with the live identity = stale entry.
    pub bound_principal: Option<String>,
}

/// The identity of a VM/VMSS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityState {
    pub system_principal: Option<String>,
    pub user: Vec<UserEntry>,
}

impl IdentityState {
    pub fn identity_type(&self) -> IdType {
        IdType {
            system: self.system_principal.is_some(),
            user: !self.user.is_empty(),
        }
    }
}

enum Op {
    Add,
    Remove,
}

fn get_ci<'a>(m: &'a Map<String, Value>, name: &str) -> Option<(&'a String, &'a Value)> {
    m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))
}

/// Computes the identity state a write would produce, or the ARM error refusing it.
/// Nothing is modified; the caller commits the result.
pub fn resolve(
    world: &World,
    res: &ComputeResource,
    req: Option<&Value>,
    shape: Shape,
    mode: Mode,
) -> Result<IdentityState, ArmError> {
    let current = &res.identity;
    let obj = match req {
        None | Some(Value::Null) => {
            return Ok(match mode {
                Mode::Patch => current.clone(),
                Mode::Put | Mode::OutOfBand => IdentityState::default(),
            });
        }
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ArmError::invalid_content(format!(
                "Error converting value to type '{}'. Path 'identity'",
                identity_type_name(res.id.kind)
            )));
        }
    };

    // Members the api-version's schema knows (Json.NET matches member names case-insensitively).
    let list_member = match shape {
        Shape::Dictionary => "userAssignedIdentities",
        Shape::IdentityIds => "identityIds",
    };
    for k in obj.keys() {
        let known = ["type", "principalId", "tenantId", list_member]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(k));
        if !known {
            return Err(ArmError::invalid_content(format!(
                "Could not find member '{k}' on object of type '{}'. Path 'identity.{k}'",
                identity_type_name(res.id.kind)
            )));
        }
    }

    // type
    let ty = match get_ci(obj, "type").map(|(_, v)| v) {
        None | Some(Value::Null) => match mode {
            Mode::Patch => current.identity_type(),
            Mode::Put | Mode::OutOfBand => {
                return Err(ArmError::bad_request(
                    "InvalidParameter",
                    "Required parameter 'identity.type' is missing (null).",
                )
                .with_target("identity.type"));
            }
        },
        Some(Value::String(s)) => IdType::parse(s).ok_or_else(|| {
            ArmError::bad_request(
                "InvalidParameter",
                format!(
                    "The value '{s}' of parameter 'identity.type' is invalid. Allowed values are 'SystemAssigned', 'UserAssigned', 'SystemAssigned, UserAssigned', 'None'."
                ),
            )
            .with_target("identity.type")
        })?,
        Some(_) => {
            return Err(ArmError::invalid_content(
                "Error converting value to type 'ResourceIdentityType'. Path 'identity.type'",
            ));
        }
    };

    // user-assigned entries
    let path = format!("identity.{list_member}");
    let mut entries: Vec<(String, Op)> = Vec::new();
    let mut present = false;
    match get_ci(obj, list_member).map(|(_, v)| v) {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) if shape == Shape::Dictionary => {
            present = true;
            for (k, v) in d {
                match v {
                    Value::Null => entries.push((k.clone(), Op::Remove)),
                    Value::Object(_) => entries.push((k.clone(), Op::Add)),
                    _ => {
                        return Err(ArmError::bad_request(
                            "InvalidIdentityValues",
                            format!(
                                "Invalid value for the identities '{k}'. The 'UserAssignedIdentities' property keys should only be empty json objects, null or the resource exisiting property."
                            ),
                        ));
                    }
                }
            }
        }
        Some(Value::Array(a)) if shape == Shape::IdentityIds => {
            present = true;
            for v in a {
                match v {
                    Value::String(s) => entries.push((s.clone(), Op::Add)),
                    _ => {
                        return Err(ArmError::invalid_content(format!(
                            "Error converting value to type 'String'. Path '{path}'"
                        )));
                    }
                }
            }
        }
        Some(_) => {
            return Err(ArmError::invalid_content(format!(
                "Error converting value to the type of '{list_member}'. Path '{path}'"
            )));
        }
    }

    // 1. per-request limit
    let adds = entries.iter().filter(|(_, o)| matches!(o, Op::Add)).count();
    if adds > MAX_UAI_PER_REQUEST {
        return Err(ArmError::bad_request(
            "BadRequest",
            format!(
                "User Assigned Identities Number '{adds}' Assign exceed limit '{MAX_UAI_PER_REQUEST}' in one request."
            ),
        ));
    }

    // 2. well-formed ids
    let mut parsed: Vec<(String, ResourceId, &Op)> = Vec::with_capacity(entries.len());
    for (raw, op) in &entries {
        match ResourceId::parse_kind(raw, ResourceKind::UserAssignedIdentity) {
            Ok(id) => parsed.push((raw.clone(), id, op)),
            Err(IdError::NotFullyQualified) => {
                return Err(ArmError::bad_request(
                    "LinkedInvalidPropertyId",
                    format!(
                        "Property id '{raw}' at path '{path}' is invalid. Expect fully qualified resource Id that start with '/subscriptions/{{subscriptionId}}' or '/providers/{{resourceProviderNamespace}}/'."
                    ),
                ));
            }
            Err(IdError::WrongShape) => {
                return Err(ArmError::bad_request(
                    "InvalidParameter",
                    format!(
                        "The identity id '{raw}' is not a valid user assigned identity resource id. Expected '/subscriptions/{{subscriptionId}}/resourceGroups/{{resourceGroupName}}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{{identityName}}'."
                    ),
                )
                .with_target(&path));
            }
        }
    }

    // 3. the same identity twice (in two spellings) in one request
    for (i, (raw, id, _)) in parsed.iter().enumerate() {
        if parsed[..i]
            .iter()
            .any(|(_, other, _)| other.key() == id.key())
        {
            return Err(ArmError::bad_request(
                "InvalidParameter",
                format!(
                    "ResourceIdentity identityId '{raw}' cannot be duplicated in the provided identityIds list."
                ),
            )
            .with_target("resourceIdentity.identityIds"));
        }
    }

    // 4. user-assigned identities with a type that has no UserAssigned
    if !ty.user && !parsed.is_empty() {
        return Err(ArmError::bad_request(
            "InvalidParameter",
            format!(
                "ResourceIdentity identityIds should not be provided if the type is \"{}\".",
                ty.as_str()
            ),
        )
        .with_target("resourceIdentity.identityIds"));
    }

    // 5. every identity added must exist (the whole write is refused otherwise)
    if mode != Mode::OutOfBand {
        for (raw, id, op) in &parsed {
            if matches!(op, Op::Add) && !world.uais.contains_key(&id.key()) {
                return Err(failed_identity_operation(&res.id.to_string(), raw));
            }
        }
    }

    // 6. the resulting set
    let bind = |id: &ResourceId| world.uais.get(&id.key()).map(|u| u.principal_id.clone());
    let existing = |key: &str| current.user.iter().find(|e| e.key == key).cloned();
    let mut user: Vec<UserEntry> = Vec::new();
    if ty.user {
        let merge = match (mode, shape) {
            (Mode::Patch, Shape::Dictionary) => true,
            (Mode::Patch, Shape::IdentityIds) => !present,
            _ => false,
        };
        if merge {
            user = current.user.clone();
        }
        for (raw, id, op) in &parsed {
            let key = id.key();
            match op {
                Op::Remove => user.retain(|e| e.key != key),
                Op::Add => {
                    if user.iter().any(|e| e.key == key) {
                        continue;
                    }
                    // A 2017-12-01 `identityIds` list replaces the set: later GETs show
                    // each ID as the request spelled it (recorded in the Azure CLI's
                    // 2017-12-01 VM identity tests), an entry kept keeps its binding.
                    let respell = shape == Shape::IdentityIds && present;
                    let entry = existing(&key)
                        .map(|mut e| {
                            if respell {
                                e.id = raw.clone();
                            }
                            e
                        })
                        .unwrap_or_else(|| UserEntry {
                            id: raw.clone(),
                            key: key.clone(),
                            bound_principal: bind(id),
                        });
                    user.push(entry);
                }
            }
        }
        if user.is_empty() {
            return Err(ArmError::bad_request(
                "InvalidParameter",
                format!(
                    "The identity ids must not be null or empty for '{}' identity type.",
                    ty.as_str()
                ),
            )
            .with_target(&path));
        }
    }

    // 7. the system identity: kept while enabled, fresh when (re-)enabled
    let system_principal = if ty.system {
        Some(current.system_principal.clone().unwrap_or_else(new_uuid))
    } else {
        None
    };

    Ok(IdentityState {
        system_principal,
        user,
    })
}

fn identity_type_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::VirtualMachineScaleSet => "VirtualMachineScaleSetIdentity",
        _ => "VirtualMachineIdentity",
    }
}

/// ARM's refusal when a referenced user-assigned identity does not exist: the MSI
/// data plane's `BadRequest` ("Resource '…' was not found.") wrapped in
/// `FailedIdentityOperation` (Azure/azure-policy#1311, Azure/azure-libraries-for-net#690).
pub fn failed_identity_operation(resource_id: &str, identity_id: &str) -> ArmError {
    let inner = format!(
        "{{\"error\":{{\"code\":\"BadRequest\",\"message\":\"Resource '{identity_id}' was not found.\"}}}}"
    );
    ArmError::bad_request(
        "FailedIdentityOperation",
        format!(
            "Identity operation for resource '{resource_id}' failed with error 'Failed to perform resource identity operation. Status: 'BadRequest'. Response: '{inner}'.'."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_parsing() {
        assert_eq!(IdType::parse("None"), Some(IdType::NONE));
        assert_eq!(
            IdType::parse("systemassigned,userAssigned").map(|t| t.as_str()),
            Some("SystemAssigned, UserAssigned")
        );
        assert_eq!(
            IdType::parse(" UserAssigned , SystemAssigned ").map(|t| t.as_str()),
            Some("SystemAssigned, UserAssigned")
        );
        assert_eq!(
            IdType::parse("userAssigned").map(|t| t.as_str()),
            Some("UserAssigned")
        );
        assert_eq!(IdType::parse("Both"), None);
        assert_eq!(IdType::parse("SystemAssigned, SystemAssigned"), None);
        assert_eq!(IdType::parse(""), None);
    }
}
