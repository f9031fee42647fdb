//! Properties of the grant planner: converged means no writes (a second plan on the result is
//! empty); nothing that no object recorded is ever removed; nothing wanted is removed; a grant
//! someone else made before (listed or not) is recorded only by an adopting object (or shared
//! from one), so it is never removed unless an object adopted it.

mod common;

use std::collections::BTreeSet;

use common::*;
use proptest::prelude::*;
use vmidentity_planner::grants::*;
use vmidentity_planner::model::{IdentityRef, RawGroupMembership, RawRoleAssignment};
use vmidentity_planner::*;

const SCOPES: [&str; 2] = [
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg1",
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg2",
];
const ROLES: [&str; 2] = ["Reader", "Contributor"];
const GUIDS: [&str; 2] = [
    "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    "b24988ac-6180-42a0-ab88-20f7382dd24c",
];
const GROUPS: [&str; 2] = [
    "11111111-0000-0000-0000-000000000001",
    "11111111-0000-0000-0000-000000000002",
];

fn resolved() -> Resolved {
    let mut r = Resolved::default();
    r.principals.insert("systemassigned".into(), "sys".into());
    r.principals
        .insert(uai("ID1").to_ascii_lowercase(), "u1".into());
    for s in SCOPES {
        for (role, guid) in ROLES.iter().zip(GUIDS) {
            r.roles.insert(
                (role.to_ascii_lowercase(), s.to_ascii_lowercase()),
                guid.into(),
            );
        }
    }
    r
}

#[derive(Debug, Clone)]
struct G {
    roles: Vec<(usize, usize, bool)>,
    groups: Vec<(usize, bool)>,
    deleting: bool,
    adopt: bool,
}

fn g() -> impl Strategy<Value = G> {
    (
        prop::collection::vec((0..2usize, 0..2usize, any::<bool>()), 0..4),
        prop::collection::vec((0..2usize, any::<bool>()), 0..3),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(roles, groups, deleting, adopt)| G {
            roles,
            groups,
            deleting,
            adopt,
        })
}

fn build(i: usize, g: &G) -> DesiredObject {
    let mut o = obj(&format!("o{i}"), &vm("vm"), |r| {
        r.system_assigned = Some(true);
        r.user_assigned_identities = vec![uai("ID1")];
        for (s, role, system) in &g.roles {
            let ra = RawRoleAssignment {
                identity: if *system {
                    "SystemAssigned".into()
                } else {
                    uai("ID1")
                },
                role: ROLES[*role].into(),
                scope: SCOPES[*s].into(),
            };
            if !r.role_assignments.contains(&ra) {
                r.role_assignments.push(ra);
            }
        }
        for (gr, system) in &g.groups {
            let gm = RawGroupMembership {
                identity: if *system {
                    "SystemAssigned".into()
                } else {
                    uai("ID1")
                },
                group_object_id: GROUPS[*gr].into(),
            };
            if !r.group_memberships.contains(&gm) {
                r.group_memberships.push(gm);
            }
        }
    });
    o.deleting = g.deleting;
    o.adopt = g.adopt;
    o
}

const FOREIGN_ROLE: &str = "/foreign/1";
/// A membership someone else made, in a group the objects may list (u1 in GROUPS[0]).
fn foreign_member(rec: &AppliedGroupMembership) -> bool {
    rec.principal_id == "u1" && rec.group_object_id == GROUPS[0]
}

fn apply(live: &LiveGrants, plan: &GrantPlan) -> LiveGrants {
    let mut out = live.clone();
    for w in plan.removals.iter().chain(&plan.additions) {
        match w {
            Write::RoleAssignmentDelete { id } => out
                .role_assignments
                .retain(|r| !r.id.eq_ignore_ascii_case(id)),
            Write::RoleAssignmentPut {
                scope,
                role_definition_id,
                principal_id,
                ..
            } => {
                out.role_assignments.push(LiveRoleAssignment {
                    id: w.role_assignment_id().unwrap(),
                    scope: scope.clone(),
                    role_guid: role_definition_id.rsplit('/').next().unwrap().to_string(),
                    principal_id: principal_id.clone(),
                });
            }
            Write::GroupMemberAdd {
                group_id,
                principal_id,
            } => {
                out.memberships
                    .entry(principal_id.clone())
                    .or_default()
                    .insert(group_id.clone());
            }
            Write::GroupMemberRemove {
                group_id,
                principal_id,
            } => {
                if let Some(set) = out.memberships.get_mut(principal_id) {
                    set.remove(group_id);
                }
            }
            other => panic!("unexpected write {other:?}"),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    #[test]
    fn grants_converge_and_never_remove_unowned(before in prop::collection::vec(g(), 1..3), after in prop::collection::vec(g(), 1..3), foreign in any::<bool>()) {
        let r = resolved();
        // Round 1: the "before" objects converge from nothing (plus someone else's grants).
        let objs0: Vec<DesiredObject> = before.iter().enumerate().map(|(i, g)| build(i, &G { deleting: false, ..g.clone() })).collect();
        let mut live = LiveGrants::default();
        if foreign {
            live.role_assignments.push(LiveRoleAssignment { id: FOREIGN_ROLE.into(), scope: SCOPES[1].into(), role_guid: GUIDS[1].into(), principal_id: "u1".into() });
            live.memberships.entry("sys".into()).or_default().insert("22222222-0000-0000-0000-000000000009".into());
            live.memberships.entry("u1".into()).or_default().insert(GROUPS[0].into());
        }
        let p0 = plan_grants(&objs0, &r, &live);
        // Listed but held before: recorded only by an adopting object (nobody records
        // anything yet, so there is nobody to share with), else reported as held.
        for o in &objs0 {
            let roles = &p0.role_assignments[&o.object];
            let groups = &p0.group_memberships[&o.object];
            let has_foreign = foreign && (roles.iter().any(|x| x.id == FOREIGN_ROLE) || groups.iter().any(foreign_member));
            prop_assert!(o.adopt || !has_foreign, "{} records a grant it does not own: {:?} {:?}", o.object, roles, groups);
            let held = p0.held.get(&o.object).cloned().unwrap_or_default();
            prop_assert!(!o.adopt || held.is_empty(), "an adopter holds nothing unowned: {:?}", held);
            if foreign && !o.adopt {
                let lists_role = o.spec.role_assignments.iter().any(|x| x.scope == SCOPES[1] && x.role.to_string() == ROLES[1] && x.identity != IdentityRef::SystemAssigned);
                prop_assert_eq!(lists_role, held.role_assignments.iter().any(|x| x.id == FOREIGN_ROLE));
            }
        }
        let live1 = apply(&live, &p0);
        let recorded: Vec<DesiredObject> = objs0.iter().map(|o| o.clone().with_applied(Applied {
            role_assignments: p0.role_assignments[&o.object].clone(),
            group_memberships: p0.group_memberships[&o.object].clone(),
            ..Applied::default()
        })).collect();
        prop_assert!(plan_grants(&recorded, &r, &live1).is_empty());

        // Round 2: the objects change (or are deleted).
        let objs1: Vec<DesiredObject> = after.iter().enumerate().map(|(i, g)| {
            let applied = recorded.get(i).map(|o| o.applied.clone()).unwrap_or_default();
            build(i, g).with_applied(applied)
        }).collect();
        let p1 = plan_grants(&objs1, &r, &live1);
        let owned: BTreeSet<String> = objs1.iter().flat_map(|o| o.applied.role_assignments.iter().map(|x| x.id.to_ascii_lowercase())).collect();
        for w in &p1.removals {
            if let Some(id) = w.role_assignment_id() {
                prop_assert!(owned.contains(&id.to_ascii_lowercase()), "removed unowned {}", id);
                // Someone else's assignment goes only if an adopting object recorded it.
                if id == FOREIGN_ROLE {
                    prop_assert!(recorded.iter().any(|o| o.adopt && o.applied.role_assignments.iter().any(|x| x.id == FOREIGN_ROLE)), "removed {} that no object adopted", id);
                }
            }
            if let Write::GroupMemberRemove { group_id, principal_id } = w
                && foreign
                && principal_id == "u1"
                && group_id == GROUPS[0]
            {
                // Held before round 1: removed only if an adopting object recorded it.
                prop_assert!(recorded.iter().any(|o| o.adopt && o.applied.group_memberships.iter().any(foreign_member)), "removed a membership no object adopted");
            }
            let id = w.request(PUBLIC_GRAPH_ENDPOINT).path;
            prop_assert!(!id.contains("22222222-0000-0000-0000-000000000009"));
        }
        // In round 2 a grant held before is recorded only by an adopter, or shared from an
        // object that recorded it.
        let had_role = recorded.iter().any(|o| o.applied.role_assignments.iter().any(|x| x.id == FOREIGN_ROLE));
        let had_group = recorded.iter().any(|o| o.applied.group_memberships.iter().any(foreign_member));
        for o in objs1.iter().filter(|o| foreign && !o.adopt) {
            prop_assert!(had_role || !p1.role_assignments[&o.object].iter().any(|x| x.id == FOREIGN_ROLE));
            prop_assert!(had_group || !p1.group_memberships[&o.object].iter().any(foreign_member));
        }
        let live2 = apply(&live1, &p1);
        // Everything an active object wants is held afterwards.
        for o in objs1.iter().filter(|o| !o.deleting) {
            for rec in &p1.role_assignments[&o.object] {
                prop_assert!(live2.role_assignments.iter().any(|l| l.scope.eq_ignore_ascii_case(&rec.scope) && l.role_guid.eq_ignore_ascii_case(&rec.role_definition_id) && l.principal_id.eq_ignore_ascii_case(&rec.principal_id)));
            }
        }
        // And a second plan is empty.
        let next: Vec<DesiredObject> = objs1.iter().filter(|o| !o.deleting).map(|o| o.clone().with_applied(Applied {
            role_assignments: p1.role_assignments[&o.object].clone(),
            group_memberships: p1.group_memberships[&o.object].clone(),
            ..Applied::default()
        })).collect();
        let p2 = plan_grants(&next, &r, &live2);
        prop_assert!(p2.is_empty(), "second plan writes {:?}", p2);
    }
}
