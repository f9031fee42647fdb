//! A reference model of how ARM applies an identity PATCH, per api-version. Pure; used by the
//! property tests ("applying the plan gives the desired state") and the benchmark. The HTTP
//! simulator implements the same rules independently.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::id::ArmId;
use crate::live::{IdentityType, LiveIdentity, LiveUai};
use crate::model::WireFormat;

/// Why ARM would refuse the PATCH (the whole request; nothing is applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Applies `body` (a PATCH body, possibly without `identity`) to `live`. A newly enabled
/// system identity gets `new_principal` as its principalId.
pub fn apply_patch(
    live: &LiveIdentity,
    body: &Value,
    format: WireFormat,
    new_principal: &str,
) -> Result<LiveIdentity, Refusal> {
    let Some(identity) = body.get("identity") else {
        return Ok(live.clone());
    };
    let ty = identity
        .get("type")
        .and_then(Value::as_str)
        .and_then(IdentityType::parse)
        .ok_or_else(|| refuse("InvalidParameter", "identity.type is missing or invalid"))?;
    let (dict_key, other_key) = match format {
        WireFormat::UserAssignedDictionary => ("userAssignedIdentities", "identityIds"),
        WireFormat::IdentityIdsArray => ("identityIds", "userAssignedIdentities"),
    };
    if identity.get(other_key).is_some() {
        return Err(refuse(
            "InvalidParameter",
            format!("identity.{other_key} is not valid at this api-version"),
        ));
    }
    // Collect what the request names, refusing two spellings of one ID.
    let mut named: BTreeMap<String, (ArmId, bool)> = BTreeMap::new();
    let mut name = |raw: &str, keep: bool| -> Result<(), Refusal> {
        let id = ArmId::parse_uai(raw).map_err(|e| refuse("InvalidParameter", e.to_string()))?;
        if named.insert(id.key().to_string(), (id, keep)).is_some() {
            return Err(refuse(
                "BadRequest",
                format!("user assigned identity {raw} cannot be duplicated"),
            ));
        }
        Ok(())
    };
    let present = match (format, identity.get(dict_key)) {
        (_, None | Some(Value::Null)) => false,
        (WireFormat::UserAssignedDictionary, Some(Value::Object(m))) => {
            for (k, v) in m {
                name(k, !v.is_null())?;
            }
            true
        }
        (WireFormat::IdentityIdsArray, Some(Value::Array(a))) => {
            for v in a {
                let s = v
                    .as_str()
                    .ok_or_else(|| refuse("InvalidParameter", "identityIds holds a non-string"))?;
                name(s, true)?;
            }
            true
        }
        _ => {
            return Err(refuse(
                "InvalidParameter",
                format!("identity.{dict_key} has the wrong shape"),
            ));
        }
    };
    if !ty.user() && named.values().any(|(_, keep)| *keep) {
        return Err(refuse(
            "InvalidParameter",
            format!("identity.{dict_key} is only allowed when identity.type includes UserAssigned"),
        ));
    }
    let mut user: BTreeMap<String, LiveUai> = if ty.user() {
        live.user_assigned.clone()
    } else {
        BTreeMap::new()
    };
    if ty.user() && present {
        if format == WireFormat::IdentityIdsArray {
            user.clear();
        }
        for (key, (id, keep)) in named {
            if keep {
                user.entry(key).or_insert(LiveUai {
                    id,
                    principal_id: None,
                    client_id: None,
                    stale: false,
                });
            } else {
                user.remove(&key);
            }
        }
    }
    if ty.user() && user.is_empty() {
        return Err(refuse(
            "InvalidParameter",
            "identity.type UserAssigned needs at least one user-assigned identity",
        ));
    }
    let system = ty.system();
    Ok(LiveIdentity {
        system_assigned: system,
        principal_id: match (system, live.system_assigned) {
            (false, _) => None,
            (true, true) => live.principal_id.clone(),
            (true, false) => Some(new_principal.to_string()),
        },
        tenant_id: live.tenant_id.clone(),
        user_assigned: user,
    })
}
