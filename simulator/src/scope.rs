//! ARM scopes for Microsoft.Authorization: root `/`, management group, subscription,
//! resource group, resource (authorization/2022-04-01/common-types.json `ScopeParameter`).

/// A parsed scope. `raw` keeps the spelling first given (without a trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub raw: String,
    pub level: ScopeLevel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeLevel {
    Root,
    ManagementGroup(String),
    Subscription(String),
    ResourceGroup {
        subscription: String,
        resource_group: String,
    },
    Resource {
        subscription: String,
        resource_group: String,
    },
}

impl Scope {
    /// Parses a scope; literal segments compare case-insensitively.
    pub fn parse(s: &str) -> Option<Scope> {
        let trimmed = s.trim_end_matches('/');
        if trimmed.is_empty() {
            return Some(Scope {
                raw: "/".into(),
                level: ScopeLevel::Root,
            });
        }
        let with_slash = if trimmed.starts_with('/') {
            trimmed.to_string()
        } else {
            format!("/{trimmed}")
        };
        let segs: Vec<&str> = with_slash.split('/').skip(1).collect();
        if segs.iter().any(|p| p.trim().is_empty()) {
            return None;
        }
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let level = match segs.as_slice() {
            [p, ns, mgs, name]
                if eq(p, "providers")
                    && eq(ns, "Microsoft.Management")
                    && eq(mgs, "managementGroups") =>
            {
                ScopeLevel::ManagementGroup(name.to_string())
            }
            [s, sub] if eq(s, "subscriptions") => ScopeLevel::Subscription(sub.to_string()),
            [s, sub, g, rg] if eq(s, "subscriptions") && eq(g, "resourceGroups") => {
                ScopeLevel::ResourceGroup {
                    subscription: sub.to_string(),
                    resource_group: rg.to_string(),
                }
            }
            [s, sub, g, rg, p, rest @ ..]
                if eq(s, "subscriptions")
                    && eq(g, "resourceGroups")
                    && eq(p, "providers")
                    && rest.len() >= 3
                    && rest.len() % 2 == 1 =>
            {
                ScopeLevel::Resource {
                    subscription: sub.to_string(),
                    resource_group: rg.to_string(),
                }
            }
            _ => return None,
        };
        Some(Scope {
            raw: with_slash,
            level,
        })
    }

    /// Case-folded key (`/` for the root).
    pub fn key(&self) -> String {
        self.raw.to_ascii_lowercase()
    }

    pub fn subscription(&self) -> Option<&str> {
        match &self.level {
            ScopeLevel::Subscription(s)
            | ScopeLevel::ResourceGroup {
                subscription: s, ..
            }
            | ScopeLevel::Resource {
                subscription: s, ..
            } => Some(s),
            _ => None,
        }
    }

    /// The scope as the prefix of a child id (`""` for the root).
    pub fn prefix(&self) -> &str {
        if self.level == ScopeLevel::Root {
            ""
        } else {
            &self.raw
        }
    }
}

/// True when scope key `a` is `b` or an ancestor of `b` (the root is everyone's
/// ancestor; management groups have no modelled children — CHOSEN).
pub fn at_or_above(a: &str, b: &str) -> bool {
    a == "/" || a == b || (b.starts_with(a) && b.as_bytes().get(a.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scopes() {
        assert_eq!(Scope::parse("").map(|s| s.level), Some(ScopeLevel::Root));
        assert_eq!(
            Scope::parse("/subscriptions/s1/").map(|s| s.raw),
            Some("/subscriptions/s1".into())
        );
        assert!(matches!(
            Scope::parse("subscriptions/s/resourcegroups/rg").map(|s| s.level),
            Some(ScopeLevel::ResourceGroup { .. })
        ));
        assert!(matches!(
            Scope::parse(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv"
            )
            .map(|s| s.level),
            Some(ScopeLevel::Resource { .. })
        ));
        assert!(matches!(
            Scope::parse(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Sql/servers/a/databases/b"
            )
            .map(|s| s.level),
            Some(ScopeLevel::Resource { .. })
        ));
        assert!(matches!(
            Scope::parse("/providers/Microsoft.Management/managementGroups/mg1").map(|s| s.level),
            Some(ScopeLevel::ManagementGroup(_))
        ));
        assert_eq!(Scope::parse("/subscriptions/s/resourceGroups"), None);
        assert_eq!(
            Scope::parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.X/t"),
            None
        );
        assert_eq!(Scope::parse("/foo/bar"), None);
    }

    #[test]
    fn ancestry() {
        assert!(at_or_above(
            "/subscriptions/s",
            "/subscriptions/s/resourcegroups/rg"
        ));
        assert!(at_or_above("/subscriptions/s", "/subscriptions/s"));
        assert!(!at_or_above("/subscriptions/s", "/subscriptions/s2"));
        assert!(!at_or_above(
            "/subscriptions/s/resourcegroups/rg",
            "/subscriptions/s"
        ));
        assert!(at_or_above("/", "/subscriptions/s"));
    }
}
