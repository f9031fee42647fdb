//! ARM resource ids: parsing (case-insensitive literals), canonical spelling, keys.

use std::fmt;

/// The resource types the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    VirtualMachine,
    VirtualMachineScaleSet,
    UserAssignedIdentity,
}

impl ResourceKind {
    /// The ARM `type` (`Microsoft.Compute/virtualMachines`, …).
    pub fn arm_type(self) -> &'static str {
        match self {
            ResourceKind::VirtualMachine => "Microsoft.Compute/virtualMachines",
            ResourceKind::VirtualMachineScaleSet => "Microsoft.Compute/virtualMachineScaleSets",
            ResourceKind::UserAssignedIdentity => {
                "Microsoft.ManagedIdentity/userAssignedIdentities"
            }
        }
    }

    pub fn is_compute(self) -> bool {
        !matches!(self, ResourceKind::UserAssignedIdentity)
    }

    fn from_parts(namespace: &str, type_name: &str) -> Option<Self> {
        let ns = namespace.to_ascii_lowercase();
        let ty = type_name.to_ascii_lowercase();
        match (ns.as_str(), ty.as_str()) {
            ("microsoft.compute", "virtualmachines") => Some(ResourceKind::VirtualMachine),
            ("microsoft.compute", "virtualmachinescalesets") => {
                Some(ResourceKind::VirtualMachineScaleSet)
            }
            ("microsoft.managedidentity", "userassignedidentities") => {
                Some(ResourceKind::UserAssignedIdentity)
            }
            _ => None,
        }
    }
}

/// A parsed resource id `/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{type}/{name}`.
/// The subscription, group and name keep the spelling they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceId {
    pub subscription: String,
    pub resource_group: String,
    pub kind: ResourceKind,
    pub name: String,
}

/// Why a string is not a resource id of a served type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// Does not start with `/subscriptions/` or `/providers/`.
    NotFullyQualified,
    /// Starts right but is not `/subscriptions/{s}/resourceGroups/{g}/providers/{ns}/{t}/{n}`
    /// for one of the served types.
    WrongShape,
}

impl ResourceId {
    /// Parses a resource id; literals (`subscriptions`, `resourceGroups`, `providers`,
    /// namespace, type) compare case-insensitively as in ARM. A trailing `/` is tolerated.
    pub fn parse(s: &str) -> Result<ResourceId, IdError> {
        let lower = s.to_ascii_lowercase();
        if !(lower.starts_with("/subscriptions/") || lower.starts_with("/providers/")) {
            return Err(IdError::NotFullyQualified);
        }
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        let segs: Vec<&str> = trimmed.split('/').collect();
        // ["", "subscriptions", sub, "resourceGroups", rg, "providers", ns, type, name]
        if segs.len() != 9 {
            return Err(IdError::WrongShape);
        }
        if !segs[1].eq_ignore_ascii_case("subscriptions")
            || !segs[3].eq_ignore_ascii_case("resourcegroups")
            || !segs[5].eq_ignore_ascii_case("providers")
        {
            return Err(IdError::WrongShape);
        }
        if [segs[2], segs[4], segs[8]]
            .iter()
            .any(|p| p.trim().is_empty())
        {
            return Err(IdError::WrongShape);
        }
        let kind = ResourceKind::from_parts(segs[6], segs[7]).ok_or(IdError::WrongShape)?;
        Ok(ResourceId {
            subscription: segs[2].to_string(),
            resource_group: segs[4].to_string(),
            kind,
            name: segs[8].to_string(),
        })
    }

    /// Parses and requires the given kind.
    pub fn parse_kind(s: &str, kind: ResourceKind) -> Result<ResourceId, IdError> {
        let id = Self::parse(s)?;
        if id.kind == kind {
            Ok(id)
        } else {
            Err(IdError::WrongShape)
        }
    }

    /// The case-folded key used for storage, counters and comparisons.
    pub fn key(&self) -> String {
        self.to_string().to_ascii_lowercase()
    }

    /// Case-folded key of the resource group `/subscriptions/{sub}/resourcegroups/{rg}`.
    pub fn group_key(&self) -> String {
        group_key(&self.subscription, &self.resource_group)
    }

    /// The id spelled with `resourcegroups` in lower case, as the MSI RP returns it
    /// (`msi/2018-11-30/examples/IdentityGet.json`).
    pub fn msi_spelling(&self) -> String {
        format!(
            "/subscriptions/{}/resourcegroups/{}/providers/{}/{}",
            self.subscription,
            self.resource_group,
            self.kind.arm_type(),
            self.name
        )
    }
}

impl fmt::Display for ResourceId {
    /// Canonical spelling: `/subscriptions/{sub}/resourceGroups/{rg}/providers/{Namespace}/{type}/{name}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/{}/{}",
            self.subscription,
            self.resource_group,
            self.kind.arm_type(),
            self.name
        )
    }
}

pub fn group_key(subscription: &str, resource_group: &str) -> String {
    format!("/subscriptions/{subscription}/resourcegroups/{resource_group}").to_ascii_lowercase()
}

/// The storage key for any id string: the canonical key when it parses, otherwise the
/// case-folded string without a trailing `/`.
pub fn key_of(s: &str) -> String {
    match ResourceId::parse(s) {
        Ok(id) => id.key(),
        Err(_) => s.strip_suffix('/').unwrap_or(s).to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case_insensitively() {
        let id = ResourceId::parse(
            "/SUBSCRIPTIONS/s1/resourcegroups/RG/providers/microsoft.compute/VIRTUALMACHINES/vm1",
        )
        .unwrap();
        assert_eq!(id.kind, ResourceKind::VirtualMachine);
        assert_eq!(
            id.to_string(),
            "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm1"
        );
        assert_eq!(
            id.key(),
            "/subscriptions/s1/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1"
        );
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(
            ResourceId::parse("uai-web"),
            Err(IdError::NotFullyQualified)
        );
        assert_eq!(
            ResourceId::parse(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities"
            ),
            Err(IdError::WrongShape)
        );
        assert_eq!(
            ResourceId::parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Foo/bars/x"),
            Err(IdError::WrongShape)
        );
    }
}
