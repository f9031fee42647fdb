//! The live state of a target, read from an ARM GET body (either wire format).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::id::ArmId;

/// `identity.type` of a VM or VMSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityType {
    None,
    SystemAssigned,
    UserAssigned,
    SystemAndUserAssigned,
}

impl IdentityType {
    pub fn from_parts(system: bool, user: bool) -> IdentityType {
        match (system, user) {
            (false, false) => IdentityType::None,
            (true, false) => IdentityType::SystemAssigned,
            (false, true) => IdentityType::UserAssigned,
            (true, true) => IdentityType::SystemAndUserAssigned,
        }
    }

    /// Parses ARM's spelling, case-insensitively and tolerant of spaces around the comma.
    pub fn parse(s: &str) -> Option<IdentityType> {
        let norm: String = s
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        match norm.as_str() {
            "none" | "" => Some(IdentityType::None),
            "systemassigned" => Some(IdentityType::SystemAssigned),
            "userassigned" => Some(IdentityType::UserAssigned),
            "systemassigned,userassigned" | "userassigned,systemassigned" => {
                Some(IdentityType::SystemAndUserAssigned)
            }
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityType::None => "None",
            IdentityType::SystemAssigned => "SystemAssigned",
            IdentityType::UserAssigned => "UserAssigned",
            IdentityType::SystemAndUserAssigned => "SystemAssigned, UserAssigned",
        }
    }

    pub fn system(self) -> bool {
        matches!(
            self,
            IdentityType::SystemAssigned | IdentityType::SystemAndUserAssigned
        )
    }

    pub fn user(self) -> bool {
        matches!(
            self,
            IdentityType::UserAssigned | IdentityType::SystemAndUserAssigned
        )
    }
}

impl fmt::Display for IdentityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user-assigned identity as the target shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveUai {
    pub id: ArmId,
    /// Empty or absent when the identity resource was deleted (and perhaps recreated) under the VM.
    pub principal_id: Option<String>,
    pub client_id: Option<String>,
    /// ARM shows the entry with an empty principalId and clientId: the identity behind it was
    /// deleted (and maybe recreated with the same name). Absent fields are not stale: they
    /// are unknown (a hand-written body, or the 2017-12-01 array).
    pub stale: bool,
}

/// The identity block of a target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveIdentity {
    pub system_assigned: bool,
    pub principal_id: Option<String>,
    pub tenant_id: Option<String>,
    /// Keyed by case-folded resource ID.
    pub user_assigned: BTreeMap<String, LiveUai>,
}

impl LiveIdentity {
    pub fn identity_type(&self) -> IdentityType {
        IdentityType::from_parts(self.system_assigned, !self.user_assigned.is_empty())
    }

    pub fn contains(&self, id: &ArmId) -> bool {
        self.user_assigned.contains_key(id.key())
    }
}

/// A VM or VMSS as read from ARM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveResource {
    pub id: ArmId,
    pub identity: LiveIdentity,
    pub provisioning_state: Option<String>,
    /// The body's `etag` (Compute api-versions 2023-09-01 and later; e.g. `"3"`, quotes
    /// included): the version of the resource this state was read at. None when the
    /// api-version has no entity tags.
    pub etag: Option<String>,
}

/// Why a GET body cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("live body {field}: {message}")]
pub struct LiveError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> LiveError {
    LiveError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn opt_str(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl LiveResource {
    /// Reads a VM / VMSS GET body of any api-version (dictionary or `identityIds` array).
    pub fn from_arm_json(body: &Value) -> Result<LiveResource, LiveError> {
        let obj = body
            .as_object()
            .ok_or_else(|| err("(root)", "is not a JSON object"))?;
        let id_str = obj
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| err("id", "is missing: a live body must carry the resource's id"))?;
        let id = ArmId::parse_target(id_str).map_err(|e| err("id", e.to_string()))?;
        let provisioning_state = obj
            .get("properties")
            .and_then(|p| p.get("provisioningState"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let identity = match obj.get("identity") {
            None | Some(Value::Null) => LiveIdentity::default(),
            Some(v) => parse_identity(v)?,
        };
        let etag = match obj.get("etag") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(err("etag", "is not a string")),
        };
        Ok(LiveResource {
            id,
            identity,
            provisioning_state,
            etag,
        })
    }

    /// A resource with no identity at all (for tests and the benchmark).
    pub fn bare(id: ArmId) -> LiveResource {
        LiveResource {
            id,
            identity: LiveIdentity::default(),
            provisioning_state: None,
            etag: None,
        }
    }
}

/// Parses an `identity` block.
pub fn parse_identity(v: &Value) -> Result<LiveIdentity, LiveError> {
    let ident = v
        .as_object()
        .ok_or_else(|| err("identity", "is not a JSON object"))?;
    let ty = match ident.get("type") {
        None | Some(Value::Null) => IdentityType::None,
        Some(Value::String(s)) => IdentityType::parse(s).ok_or_else(|| {
            err(
                "identity.type",
                format!(
                    "{s:?} is not one of SystemAssigned, UserAssigned, \"SystemAssigned, UserAssigned\", None"
                ),
            )
        })?,
        Some(_) => return Err(err("identity.type", "is not a string")),
    };
    let mut user_assigned = BTreeMap::new();
    let mut add = |field: String, raw: &str, p: Option<String>, c: Option<String>, stale: bool| {
        let id = ArmId::parse_uai(raw).map_err(|e| err(&field, e.to_string()))?;
        user_assigned.insert(
            id.key().to_string(),
            LiveUai {
                id,
                principal_id: p,
                client_id: c,
                stale,
            },
        );
        Ok::<(), LiveError>(())
    };
    match ident.get("userAssignedIdentities") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, val) in map {
                let empty = |f: &str| {
                    val.get(f)
                        .is_some_and(|v| v.is_null() || v.as_str() == Some(""))
                };
                add(
                    format!("identity.userAssignedIdentities[{k:?}]"),
                    k,
                    opt_str(val.get("principalId")),
                    opt_str(val.get("clientId")),
                    empty("principalId") && empty("clientId"),
                )?;
            }
        }
        Some(_) => {
            return Err(err(
                "identity.userAssignedIdentities",
                "is not a JSON object (resource ID -> {principalId, clientId})",
            ));
        }
    }
    match ident.get("identityIds") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ids)) => {
            for (i, v) in ids.iter().enumerate() {
                let s = v
                    .as_str()
                    .ok_or_else(|| err(&format!("identity.identityIds[{i}]"), "is not a string"))?;
                add(format!("identity.identityIds[{i}]"), s, None, None, false)?;
            }
        }
        Some(_) => return Err(err("identity.identityIds", "is not an array")),
    }
    if !ty.user() {
        // ARM drops user-assigned identities with the type; a body that still lists them
        // is inconsistent, and what counts is the type.
        user_assigned.clear();
    }
    Ok(LiveIdentity {
        system_assigned: ty.system(),
        principal_id: if ty.system() {
            opt_str(ident.get("principalId"))
        } else {
            None
        },
        tenant_id: opt_str(ident.get("tenantId")),
        user_assigned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VM: &str =
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
    const U1: &str = "/subscriptions/s1/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1";

    #[test]
    fn reads_dictionary_bodies() {
        let live = LiveResource::from_arm_json(&json!({
            "id": VM,
            "identity": {"type": "SystemAssigned,UserAssigned", "principalId": "p", "tenantId": "t",
                         "userAssignedIdentities": {U1: {"principalId": "up", "clientId": "uc"}}},
            "properties": {"provisioningState": "Succeeded"}
        }))
        .unwrap();
        assert!(live.identity.system_assigned);
        assert_eq!(live.identity.principal_id.as_deref(), Some("p"));
        assert_eq!(
            live.identity.identity_type(),
            IdentityType::SystemAndUserAssigned
        );
        let u = live.identity.user_assigned.values().next().unwrap();
        assert_eq!(u.id.as_str(), U1);
        assert_eq!(u.principal_id.as_deref(), Some("up"));
    }

    #[test]
    fn reads_array_bodies_and_missing_identity() {
        let live = LiveResource::from_arm_json(
            &json!({"id": VM, "identity": {"type": "UserAssigned", "identityIds": [U1]}}),
        )
        .unwrap();
        assert_eq!(live.identity.user_assigned.len(), 1);
        let bare = LiveResource::from_arm_json(&json!({"id": VM})).unwrap();
        assert_eq!(bare.identity, LiveIdentity::default());
        assert_eq!(bare.etag, None);
    }

    #[test]
    fn reads_the_etag() {
        let live = LiveResource::from_arm_json(&json!({"id": VM, "etag": "\"3\""})).unwrap();
        assert_eq!(live.etag.as_deref(), Some("\"3\""));
        let empty = LiveResource::from_arm_json(&json!({"id": VM, "etag": ""})).unwrap();
        assert_eq!(empty.etag, None);
        assert_eq!(
            LiveResource::from_arm_json(&json!({"id": VM, "etag": 3}))
                .unwrap_err()
                .field,
            "etag"
        );
    }

    #[test]
    fn refuses_bad_bodies() {
        assert_eq!(
            LiveResource::from_arm_json(&json!({"name": "vm1"}))
                .unwrap_err()
                .field,
            "id"
        );
        assert_eq!(
            LiveResource::from_arm_json(&json!({"id": VM, "identity": {"type": "Both"}}))
                .unwrap_err()
                .field,
            "identity.type"
        );
        assert!(LiveResource::from_arm_json(&json!({"id": U1})).is_err());
    }
}
