//! The simulated Entra ID directory: principals (service principals of managed
//! identities, seeded users / groups / service principals) and group memberships.
//!
//! Every user-assigned identity's `principalId` and every system-assigned principal is
//! the object id of a service principal with `servicePrincipalType: ManagedIdentity`
//! (the Microsoft.ManagedIdentity spec describes `principalId` as "The id of the service
//! principal object associated with the created identity.":
//! `specification/msi/resource-manager/Microsoft.ManagedIdentity/stable/2018-11-30/ManagedIdentity.json`
//! in Azure/azure-rest-api-specs; the `servicePrincipalType` value is documented in the
//! Microsoft Graph servicePrincipal resource type,
//! <https://learn.microsoft.com/graph/api/resources/serviceprincipal?view=graph-rest-1.0>).
//! A principal is created when the identity is created /
//! enabled and deleted (and removed from every group) when the identity is deleted /
//! disabled.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// What kind of directory object a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrincipalKind {
    ServicePrincipal,
    User,
    Group,
}

impl PrincipalKind {
    /// The role-assignment `principalType` spelling.
    pub fn principal_type(self) -> &'static str {
        match self {
            PrincipalKind::ServicePrincipal => "ServicePrincipal",
            PrincipalKind::User => "User",
            PrincipalKind::Group => "Group",
        }
    }

    fn odata_type(self) -> &'static str {
        match self {
            PrincipalKind::ServicePrincipal => "#microsoft.graph.servicePrincipal",
            PrincipalKind::User => "#microsoft.graph.user",
            PrincipalKind::Group => "#microsoft.graph.group",
        }
    }
}

/// A directory object.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// Object id as first given (GUID).
    pub id: String,
    pub kind: PrincipalKind,
    pub display_name: String,
    /// Service principals: `appId` (= `clientId` of a user-assigned identity).
    pub app_id: Option<String>,
    /// `ManagedIdentity` for identities, `Application` for seeded service principals.
    pub service_principal_type: Option<String>,
    pub alternative_names: Vec<String>,
    /// When it was created (simulated clock); `None` = seeded, replicated long ago.
    pub created: Option<Instant>,
    pub created_at: String,
    pub deleted: bool,
}

impl Principal {
    /// True once the principal is visible to ARM's authorization service.
    pub fn replicated(&self, delay: std::time::Duration) -> bool {
        match self.created {
            None => true,
            Some(t) => t.elapsed() >= delay,
        }
    }

    /// The object as Microsoft Graph v1.0 returns it ("List group members",
    /// <https://learn.microsoft.com/graph/api/group-list-members?view=graph-rest-1.0>; "List
    /// servicePrincipal memberOf",
    /// <https://learn.microsoft.com/graph/api/serviceprincipal-list-memberof?view=graph-rest-1.0>).
    pub fn render_graph(&self, group: Option<&EntraGroup>) -> Value {
        let mut m = Map::new();
        m.insert("@odata.type".into(), json!(self.kind.odata_type()));
        m.insert("id".into(), json!(self.id));
        match self.kind {
            PrincipalKind::ServicePrincipal => {
                m.insert("accountEnabled".into(), json!(true));
                m.insert("alternativeNames".into(), json!(self.alternative_names));
                m.insert("appId".into(), json!(self.app_id));
                m.insert("displayName".into(), json!(self.display_name));
                m.insert(
                    "servicePrincipalType".into(),
                    json!(self.service_principal_type),
                );
            }
            PrincipalKind::User => {
                m.insert("displayName".into(), json!(self.display_name));
            }
            PrincipalKind::Group => {
                // Item shape of the response example of "List servicePrincipal memberOf"
                // (https://learn.microsoft.com/graph/api/serviceprincipal-list-memberof).
                m.insert("createdDateTime".into(), Value::Null);
                m.insert(
                    "description".into(),
                    json!(group.and_then(|g| g.description.clone())),
                );
                m.insert("displayName".into(), json!(self.display_name));
                m.insert("groupTypes".into(), json!([]));
                m.insert("mailEnabled".into(), json!(false));
                m.insert("securityEnabled".into(), json!(true));
            }
        }
        Value::Object(m)
    }
}

/// A security group.
#[derive(Debug, Clone)]
pub(crate) struct EntraGroup {
    pub id: String,
    pub description: Option<String>,
    /// Direct members (case-folded object ids), in the order they were added.
    pub members: Vec<String>,
}

/// Principals and groups, keyed by case-folded object id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Directory {
    pub principals: BTreeMap<String, Principal>,
    pub groups: BTreeMap<String, EntraGroup>,
}

/// Options of a new principal.
#[derive(Debug, Clone)]
pub(crate) struct NewPrincipal {
    pub id: String,
    pub kind: PrincipalKind,
    pub display_name: String,
    pub app_id: Option<String>,
    pub service_principal_type: Option<String>,
    pub alternative_names: Vec<String>,
    /// Seeded principals count as replicated long ago.
    pub seeded: bool,
}

impl Directory {
    /// Creates a principal (or revives a deleted one with the same id, as a new object).
    /// A live principal with the same id is left alone.
    pub fn register(&mut self, p: NewPrincipal) {
        let key = p.id.to_ascii_lowercase();
        if self.principals.get(&key).is_some_and(|e| !e.deleted) {
            return;
        }
        self.principals.insert(
            key,
            Principal {
                id: p.id,
                kind: p.kind,
                display_name: p.display_name,
                app_id: p.app_id,
                service_principal_type: p.service_principal_type,
                alternative_names: p.alternative_names,
                created: if p.seeded { None } else { Some(Instant::now()) },
                created_at: crate::state::now_rfc3339(),
                deleted: false,
            },
        );
    }

    /// Deletes a principal: it disappears from Graph and from every group.
    pub fn delete(&mut self, id: &str) {
        let key = id.to_ascii_lowercase();
        if let Some(p) = self.principals.get_mut(&key) {
            p.deleted = true;
        }
        for g in self.groups.values_mut() {
            g.members.retain(|m| *m != key);
        }
    }

    /// A live (not deleted) principal.
    pub fn live(&self, id: &str) -> Option<&Principal> {
        self.principals
            .get(&id.to_ascii_lowercase())
            .filter(|p| !p.deleted)
    }

    /// The principal with this `appId`.
    pub fn by_app_id(&self, app_id: &str) -> Option<&Principal> {
        self.principals.values().find(|p| {
            !p.deleted
                && p.app_id
                    .as_deref()
                    .is_some_and(|a| a.eq_ignore_ascii_case(app_id))
        })
    }

    /// Groups the principal is a direct member of, by group id (case-folded), sorted.
    pub fn member_of(&self, id: &str) -> Vec<String> {
        let key = id.to_ascii_lowercase();
        self.groups
            .iter()
            .filter(|(_, g)| g.members.contains(&key))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The principal and every group it is a direct or nested member of (case-folded).
    pub fn transitive_ids(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_ascii_lowercase()];
        let mut i = 0;
        while i < out.len() {
            for g in self.member_of(&out[i]) {
                if !out.contains(&g) {
                    out.push(g);
                }
            }
            i += 1;
        }
        out
    }

    /// Renders a live principal for Graph.
    pub fn render(&self, p: &Principal) -> Value {
        p.render_graph(self.groups.get(&p.id.to_ascii_lowercase()))
    }
}

/// True when `s` is a GUID (8-4-4-4-12 hex digits).
pub(crate) fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(id: &str, kind: PrincipalKind) -> NewPrincipal {
        NewPrincipal {
            id: id.into(),
            kind,
            display_name: id.into(),
            app_id: None,
            service_principal_type: None,
            alternative_names: vec![],
            seeded: true,
        }
    }

    #[test]
    fn transitive_membership_and_delete() {
        let mut d = Directory::default();
        d.register(np("A", PrincipalKind::ServicePrincipal));
        d.register(np("G1", PrincipalKind::Group));
        d.register(np("G2", PrincipalKind::Group));
        d.groups.insert(
            "g1".into(),
            EntraGroup {
                id: "G1".into(),
                description: None,
                members: vec!["a".into()],
            },
        );
        d.groups.insert(
            "g2".into(),
            EntraGroup {
                id: "G2".into(),
                description: None,
                members: vec!["g1".into()],
            },
        );
        assert_eq!(d.transitive_ids("A"), vec!["a", "g1", "g2"]);
        d.delete("a");
        assert!(d.live("A").is_none());
        assert!(d.groups["g1"].members.is_empty());
        assert!(is_guid("8e3af657-a8ff-443c-a75c-2fe8c4bcb635"));
        assert!(!is_guid("8e3af657a8ff443ca75c2fe8c4bcb635"));
    }
}
