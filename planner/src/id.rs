//! ARM resource IDs: parsed, classified and compared case-insensitively.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// What kind of ARM resource an ID names (only the kinds vmidentity cares about).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    VirtualMachine,
    VirtualMachineScaleSet,
    UserAssignedIdentity,
    /// Any other well-formed ARM ID (a scope such as a resource group or storage account).
    Other,
}

impl ResourceKind {
    pub fn describe(self) -> &'static str {
        match self {
            ResourceKind::VirtualMachine => "Microsoft.Compute/virtualMachines",
            ResourceKind::VirtualMachineScaleSet => "Microsoft.Compute/virtualMachineScaleSets",
            ResourceKind::UserAssignedIdentity => {
                "Microsoft.ManagedIdentity/userAssignedIdentities"
            }
            ResourceKind::Other => "other",
        }
    }
}

/// Why a string is not the ARM ID that was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "{0:?} is not an ARM resource ID (expected /subscriptions/<sub>/resourceGroups/<rg>/providers/<namespace>/<type>/<name>)"
    )]
    Malformed(String),
    #[error("{id:?} is a {found} ID, expected a {expected} ID")]
    WrongKind {
        id: String,
        found: &'static str,
        expected: &'static str,
    },
}

/// An ARM resource ID. Keeps the spelling it was given (`raw`) for display and for the
/// wire, and compares, hashes and orders by its case-folded form, as ARM does.
#[derive(Debug, Clone)]
pub struct ArmId {
    raw: String,
    key: String,
    kind: ResourceKind,
}

impl ArmId {
    /// Parses a resource ID of the form
    /// `/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{type}/{name}[/{type}/{name}...]`.
    pub fn parse(s: &str) -> Result<ArmId, IdError> {
        let malformed = || IdError::Malformed(s.to_string());
        let raw = s.trim();
        if raw != s || !raw.starts_with('/') || raw.ends_with('/') {
            return Err(malformed());
        }
        let segs: Vec<&str> = raw[1..].split('/').collect();
        if segs
            .iter()
            .any(|p| p.is_empty() || p.chars().any(|c| c.is_whitespace() || c == '?' || c == '#'))
        {
            return Err(malformed());
        }
        if segs.len() < 2 || !segs[0].eq_ignore_ascii_case("subscriptions") {
            return Err(malformed());
        }
        let kind = if segs.len() == 2 {
            ResourceKind::Other
        } else {
            if !segs[2].eq_ignore_ascii_case("resourceGroups") || segs.len() < 4 {
                return Err(malformed());
            }
            if segs.len() == 4 {
                ResourceKind::Other
            } else {
                // providers/{ns}/{type}/{name} and optionally more {type}/{name} pairs
                if !segs[4].eq_ignore_ascii_case("providers") {
                    return Err(malformed());
                }
                let rest = &segs[5..];
                if rest.len() < 3 || !(rest.len() - 1).is_multiple_of(2) {
                    return Err(malformed());
                }
                if rest.len() == 3 {
                    let ns = rest[0].to_ascii_lowercase();
                    let ty = rest[1].to_ascii_lowercase();
                    match (ns.as_str(), ty.as_str()) {
                        ("microsoft.compute", "virtualmachines") => ResourceKind::VirtualMachine,
                        ("microsoft.compute", "virtualmachinescalesets") => {
                            ResourceKind::VirtualMachineScaleSet
                        }
                        ("microsoft.managedidentity", "userassignedidentities") => {
                            ResourceKind::UserAssignedIdentity
                        }
                        _ => ResourceKind::Other,
                    }
                } else {
                    ResourceKind::Other
                }
            }
        };
        Ok(ArmId {
            raw: raw.to_string(),
            key: raw.to_ascii_lowercase(),
            kind,
        })
    }

    /// Parses and requires the given kind.
    pub fn parse_kind(s: &str, expected: &[ResourceKind]) -> Result<ArmId, IdError> {
        let id = ArmId::parse(s)?;
        if expected.contains(&id.kind) {
            Ok(id)
        } else {
            Err(IdError::WrongKind {
                id: s.to_string(),
                found: id.kind.describe(),
                expected: expected
                    .first()
                    .map(|k| k.describe())
                    .unwrap_or("known resource"),
            })
        }
    }

    /// A VM or VMSS ID.
    pub fn parse_target(s: &str) -> Result<ArmId, IdError> {
        let id = ArmId::parse(s)?;
        match id.kind {
            ResourceKind::VirtualMachine | ResourceKind::VirtualMachineScaleSet => Ok(id),
            other => Err(IdError::WrongKind {
                id: s.to_string(),
                found: other.describe(),
                expected: "Microsoft.Compute/virtualMachines or Microsoft.Compute/virtualMachineScaleSets",
            }),
        }
    }

    /// A user-assigned identity ID.
    pub fn parse_uai(s: &str) -> Result<ArmId, IdError> {
        ArmId::parse_kind(s, &[ResourceKind::UserAssignedIdentity])
    }

    /// The ID as it was spelled.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The case-folded ID: the identity of the resource.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn kind(&self) -> ResourceKind {
        self.kind
    }

    /// The subscription ID (second segment).
    pub fn subscription(&self) -> &str {
        self.raw[1..].split('/').nth(1).unwrap_or_default()
    }

    /// The resource group name, if the ID is inside one.
    pub fn resource_group(&self) -> Option<&str> {
        self.raw[1..].split('/').nth(3)
    }

    /// The last segment: the resource's name.
    pub fn name(&self) -> &str {
        self.raw.rsplit('/').next().unwrap_or_default()
    }

    /// `resourceGroups/<rg>/.../<name>` shortened for humans: `<type>/<name>` in `<rg>`.
    pub fn short(&self) -> String {
        match self.kind {
            ResourceKind::VirtualMachine => format!("vm/{}", self.name()),
            ResourceKind::VirtualMachineScaleSet => format!("vmss/{}", self.name()),
            ResourceKind::UserAssignedIdentity => format!("uai/{}", self.name()),
            ResourceKind::Other => self.raw.clone(),
        }
    }
}

impl PartialEq for ArmId {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for ArmId {}
impl Hash for ArmId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}
impl PartialOrd for ArmId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ArmId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}
impl fmt::Display for ArmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str =
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";

    #[test]
    fn classifies_targets_and_identities() {
        assert_eq!(
            ArmId::parse(VM).unwrap().kind(),
            ResourceKind::VirtualMachine
        );
        let ss = "/subscriptions/s1/resourcegroups/rg/providers/microsoft.compute/VIRTUALMACHINESCALESETS/ss";
        assert_eq!(
            ArmId::parse(ss).unwrap().kind(),
            ResourceKind::VirtualMachineScaleSet
        );
        let uai = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u";
        assert_eq!(
            ArmId::parse(uai).unwrap().kind(),
            ResourceKind::UserAssignedIdentity
        );
        assert_eq!(
            ArmId::parse("/subscriptions/s1/resourceGroups/rg")
                .unwrap()
                .kind(),
            ResourceKind::Other
        );
    }

    #[test]
    fn compares_case_insensitively_and_keeps_spelling() {
        let a = ArmId::parse(VM).unwrap();
        let b = ArmId::parse(&VM.to_uppercase()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), VM);
        assert_eq!(a.subscription(), "s1");
        assert_eq!(a.resource_group(), Some("rg"));
        assert_eq!(a.name(), "vm1");
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in [
            "",
            "vm1",
            "/subscriptions",
            "/subscriptions/s1/resourceGroups",
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines",
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1/",
            "/subscriptions/s1//rg",
            " /subscriptions/s1/resourceGroups/rg",
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm 1",
        ] {
            assert!(ArmId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let err = ArmId::parse_target(
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a Microsoft.Compute/virtualMachines")
        );
        assert!(ArmId::parse_uai(VM).is_err());
    }
}
