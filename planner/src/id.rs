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
    /// The ID has a segment or character that a URL parser could resolve or decode into
    /// another path (`.`, `..`, `%`, `\`, control characters, ...): refused outright, so a
    /// policy can never approve one path while a request goes to another.
    #[error(
        "{id:?} {problem}; '.' and '..' segments, empty segments, '%', '\\', '?', '#', whitespace and control characters are not allowed in ARM IDs"
    )]
    Unsafe { id: String, problem: &'static str },
}

/// Why `path` (an ARM ID, scope or request path: `/seg/seg/...`) cannot be used as is in a
/// URL, or None. Refused: no leading `/`, empty segments (`//`, a trailing `/`), `.` and
/// `..` segments, `%` (percent-encoded dots and slashes), `\` (a separator to URL
/// parsers), `?`, `#` and control characters. Everything else (`$`, `(`, non-ASCII
/// letters, ...) is left to the URL encoder. Shared with the Azure client, which checks
/// every path it builds a URL from.
pub fn path_problem(path: &str) -> Option<&'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Some("does not start with '/'");
    };
    for seg in rest.split('/') {
        let problem = match seg {
            "" => Some("contains an empty segment ('//' or a trailing '/')"),
            "." => Some("contains a '.' segment"),
            ".." => Some("contains a '..' segment"),
            _ => seg.chars().find_map(|c| match c {
                '%' => Some("contains '%' (percent-encoding)"),
                '\\' => Some("contains '\\'"),
                '?' => Some("contains '?'"),
                '#' => Some("contains '#'"),
                c if c.is_control() => Some("contains a control character"),
                _ => None,
            }),
        };
        if problem.is_some() {
            return problem;
        }
    }
    None
}

/// [`path_problem`], plus whitespace (never part of an ARM ID): Ok, or
/// [`IdError::Unsafe`] naming the problem ([`IdError::Malformed`] without a leading `/`).
pub fn check_id_path(s: &str) -> Result<(), IdError> {
    if !s.starts_with('/') {
        return Err(IdError::Malformed(s.to_string()));
    }
    let problem = path_problem(s).or_else(|| {
        s.chars()
            .any(char::is_whitespace)
            .then_some("contains whitespace")
    });
    match problem {
        Some(problem) => Err(IdError::Unsafe {
            id: s.to_string(),
            problem,
        }),
        None => Ok(()),
    }
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
        check_id_path(s)?;
        let raw = s;
        let segs: Vec<&str> = raw[1..].split('/').collect();
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

    /// The review's attack: a scope under rg-a that URL parsers resolve to rg-prod.
    const ATTACK: &str =
        "/subscriptions/S/resourceGroups/rg-a/providers/../../../resourceGroups/rg-prod";

    fn unsafe_problem(s: &str) -> &'static str {
        match ArmId::parse(s) {
            Err(IdError::Unsafe { problem, .. }) => problem,
            other => panic!("{s:?}: expected IdError::Unsafe, got {other:?}"),
        }
    }

    #[test]
    fn refuses_the_dot_segment_attack_scope() {
        let err = ArmId::parse(ATTACK).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("contains a '..' segment"), "{msg}");
        assert!(msg.contains("'%', '\\'"), "{msg}");
        assert!(msg.contains("not allowed in ARM IDs"), "{msg}");
        assert!(ArmId::parse_target(ATTACK).is_err());
        assert!(ArmId::parse_uai(ATTACK).is_err());
    }

    #[test]
    fn refuses_dot_segments() {
        for bad in [
            "/subscriptions/s1/resourceGroups/..",
            "/subscriptions/../resourceGroups/rg",
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/..",
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1/..",
        ] {
            assert_eq!(unsafe_problem(bad), "contains a '..' segment", "{bad}");
        }
        for bad in [
            "/subscriptions/s1/resourceGroups/.",
            "/subscriptions/s1/resourceGroups/rg/providers/./virtualMachines/vm1",
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/.",
        ] {
            assert_eq!(unsafe_problem(bad), "contains a '.' segment", "{bad}");
        }
        // Dots inside a name are fine.
        for good in [
            "/subscriptions/s1/resourceGroups/rg..x",
            "/subscriptions/s1/resourceGroups/.rg",
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm...",
        ] {
            assert!(ArmId::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_percent_encoding() {
        for bad in [
            "/subscriptions/s1/resourceGroups/rg-a/providers/%2e%2e/%2E%2E/%2e%2e/resourceGroups/rg-prod",
            "/subscriptions/s1/resourceGroups/%2e%2e",
            "/subscriptions/s1/resourceGroups/rg-a%2F..%2F..%2FresourceGroups%2Frg-prod",
            "/subscriptions/s1/resourceGroups/rg-a%2f",
            "/subscriptions/s1/resourceGroups/rg%20a",
            "/subscriptions/s1/resourceGroups/rg%",
        ] {
            assert_eq!(
                unsafe_problem(bad),
                "contains '%' (percent-encoding)",
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_backslashes() {
        for bad in [
            "/subscriptions/s1/resourceGroups/rg-a/providers\\..\\..\\..\\resourceGroups\\rg-prod",
            "/subscriptions/s1/resourceGroups/rg-a\\..",
            "/subscriptions/s1/resourceGroups/rg\\x",
        ] {
            assert_eq!(unsafe_problem(bad), "contains '\\'", "{bad}");
        }
        // A backslash-separated `..` after a slash-separated one: the first problem wins.
        assert_eq!(
            unsafe_problem("/subscriptions/s1/resourceGroups/../x\\.."),
            "contains a '..' segment"
        );
    }

    #[test]
    fn refuses_control_characters_whitespace_queries_fragments_and_empty_segments() {
        for (bad, problem) in [
            (
                "/subscriptions/s1/resourceGroups/rg\u{0}",
                "contains a control character",
            ),
            (
                "/subscriptions/s1/resourceGroups/.\t.",
                "contains a control character",
            ),
            (
                "/subscriptions/s1/resourceGroups/rg\n",
                "contains a control character",
            ),
            (
                "/subscriptions/s1/resourceGroups/rg\u{7f}",
                "contains a control character",
            ),
            (
                "/subscriptions/s1/resourceGroups/rg\u{85}",
                "contains a control character",
            ),
            (
                "/subscriptions/s1/resourceGroups/rg a",
                "contains whitespace",
            ),
            (
                "/subscriptions/s1/resourceGroups/rg\u{a0}",
                "contains whitespace",
            ),
            ("/subscriptions/s1/resourceGroups/rg?x=1", "contains '?'"),
            ("/subscriptions/s1/resourceGroups/rg#x", "contains '#'"),
            (
                "/subscriptions/s1//rg",
                "contains an empty segment ('//' or a trailing '/')",
            ),
            (
                "/subscriptions/s1/resourceGroups/rg/",
                "contains an empty segment ('//' or a trailing '/')",
            ),
        ] {
            assert_eq!(unsafe_problem(bad), problem, "{bad:?}");
        }
        assert!(matches!(
            ArmId::parse("subscriptions/s1"),
            Err(IdError::Malformed(_))
        ));
        assert!(matches!(
            ArmId::parse(" /subscriptions/s1"),
            Err(IdError::Malformed(_))
        ));
    }

    #[test]
    fn path_problem_accepts_request_paths() {
        for good in [
            "/subscriptions/S1/resourceGroups/RG/providers/Microsoft.Authorization/roleAssignments",
            "/v1.0/groups/33333333-3333-4333-8333-333333333333/members/$ref",
            "/providers/Microsoft.Management/managementGroups/mg(1)",
            "/subscriptions/s1/resourceGroups/r\u{e9}sum\u{e9}",
            "/a",
        ] {
            assert_eq!(path_problem(good), None, "{good}");
        }
        for bad in [
            "", "a/b", "/", "//", "/a/", "/./a", "/a/..", "/a%2e", "/a\\b",
        ] {
            assert!(path_problem(bad).is_some(), "{bad:?}");
        }
    }
}
