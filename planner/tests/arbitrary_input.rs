//! ARM GET bodies and Resource Graph rows no one planned for: missing, null and wrongly typed
//! fields, unknown identity types, thousands of identities. The live parser reads them or
//! names the field it refuses; the planner and the fleet scan never panic; a body that does
//! not parse never makes a target look converged, and a body that parses leads at most to
//! identity PATCHes of that same target.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use vmidentity_planner::fleet::{Verdict, judge, scan};
use vmidentity_planner::*;

/// Any JSON value with the keys and strings an identity block has, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            String::new(),
            vm("vm1"),
            vmss("ss1"),
            uai("ID1"),
            uai("ID2"),
            uai("ID1").to_uppercase(),
            "SystemAssigned".into(),
            "UserAssigned".into(),
            "SystemAssigned, UserAssigned".into(),
            "userassigned ,systemassigned".into(),
            "None".into(),
            "Both".into(),
            "SystemAssigned,UserAssigned,Extra".into(),
            "\"1\"".into(),
            "p-1".into(),
        ])
        .prop_map(Value::String),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "id".to_string(),
                        "type".into(),
                        "identity".into(),
                        "userAssignedIdentities".into(),
                        "identityIds".into(),
                        "principalId".into(),
                        "clientId".into(),
                        "tenantId".into(),
                        "etag".into(),
                        "properties".into(),
                        "provisioningState".into(),
                        uai("ID1"),
                        uai("ID2"),
                    ]),
                    ".{0,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An identity block: each field sensible, missing, null or arbitrary.
fn identity_block() -> impl Strategy<Value = Value> {
    let ty = prop_oneof![
        prop::sample::select(vec![
            "None",
            "SystemAssigned",
            "UserAssigned",
            "SystemAssigned, UserAssigned",
            "systemassigned,userassigned",
            "Both",
            "",
        ])
        .prop_map(|s| json!(s)),
        any_json(),
    ];
    let entry = prop_oneof![
        Just(json!({})),
        Just(json!({"principalId": "p", "clientId": "c"})),
        Just(json!({"principalId": "", "clientId": ""})),
        Just(json!({"principalId": null})),
        any_json(),
    ];
    let dict = prop::collection::btree_map(
        prop_oneof![
            prop::sample::select(vec![uai("ID1"), uai("ID2"), uai("id3")]),
            ".{0,12}",
        ],
        entry,
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()));
    let ids = prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![uai("ID1"), uai("ID2")]).prop_map(Value::String),
            any_json(),
        ],
        0..4,
    )
    .prop_map(Value::Array);
    (
        prop::option::of(ty),
        prop::option::of(prop_oneof![3 => dict, 1 => any_json()]),
        prop::option::of(prop_oneof![3 => ids, 1 => any_json()]),
        prop::option::of(any_json()),
    )
        .prop_map(|(ty, dict, ids, principal)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("type", ty),
                ("userAssignedIdentities", dict),
                ("identityIds", ids),
                ("principalId", principal),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            Value::Object(m)
        })
}

/// A GET body of vm1: each top-level field sensible, missing, null or arbitrary.
fn get_body() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![4 => Just(json!(vm("vm1"))), 1 => any_json()]),
        prop::option::of(prop_oneof![4 => identity_block(), 1 => any_json()]),
        prop::option::of(prop_oneof![Just(json!("\"4\"")), any_json()]),
        prop::option::of(any_json()),
    )
        .prop_map(|(id, identity, etag, properties)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("id", id),
                ("identity", identity),
                ("etag", etag),
                ("properties", properties),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            Value::Object(m)
        })
}

/// Objects on vm1 (valid specs), each wanting some of ID1 / ID2 / the system identity.
fn objects() -> impl Strategy<Value = Vec<DesiredObject>> {
    prop::collection::vec(
        (
            prop::sample::subsequence(vec!["ID1", "ID2"], 0..=2),
            prop::option::of(any::<bool>()),
            any::<bool>(),
            prop::sample::select(vec!["2017-12-01", "2018-06-01", "2025-04-01"]),
            any::<bool>(),
        ),
        0..3,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (ids, system, exact, version, deleting))| {
                let mut o = obj(&format!("o{i}"), &vm("vm1"), |r| {
                    r.user_assigned_identities = ids.iter().map(|n| uai(n)).collect();
                    r.system_assigned = system;
                    r.mode = Some(if exact { Mode::Exact } else { Mode::Merge });
                    r.arm_api_version = Some(version.into());
                });
                o.deleting = deleting;
                o
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The live parser reads a body or names a field; what it reads is the body's target.
    #[test]
    fn get_bodies_are_read_or_refused_naming_a_field(body in prop_oneof![get_body(), any_json()]) {
        match LiveResource::from_arm_json(&body) {
            Ok(live) => {
                let id = body["id"].as_str().expect("a read body has a string id");
                prop_assert_eq!(live.id.key(), id.to_ascii_lowercase());
                // Type and entries agree: no UAI without a type that has them.
                prop_assert_eq!(live.identity.identity_type().user(), !live.identity.user_assigned.is_empty());
            }
            Err(e) => {
                prop_assert!(!e.field.is_empty() && !e.message.is_empty());
                prop_assert!(e.to_string().starts_with("live body "));
            }
        }
    }

    /// Whatever the body, planning never panics; the writes are identity PATCHes of vm1 only.
    #[test]
    fn planning_against_any_body_writes_only_the_target(body in get_body(), objs in objects()) {
        if let Ok(live) = LiveResource::from_arm_json(&body) {
            match plan_target(&objs, &live) {
                Ok(plan) => {
                    for w in &plan.writes {
                        match w {
                            Write::IdentityPatch { target, .. } => {
                                prop_assert_eq!(target.key(), vm("vm1").to_ascii_lowercase());
                            }
                            other => prop_assert!(false, "identity plan wrote {:?}", other),
                        }
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    /// A Resource Graph row: judged without panicking; a row whose identity block does not
    /// parse is never Converged (its target is read with a GET, never written from the row).
    #[test]
    fn resource_graph_rows_are_judged_never_converged_when_unreadable(
        identity in prop_oneof![identity_block(), any_json()],
        id in prop_oneof![Just(vm("vm1")), Just(vm("vm1").to_uppercase()), ".{0,40}".prop_map(|s| s)],
        objs in objects(),
    ) {
        let verdict = judge(&objs, &id, &identity);
        let readable = LiveResource::from_arm_json(&json!({"id": id, "identity": identity})).is_ok();
        if !readable {
            prop_assert_eq!(verdict, Verdict::Drifted);
        }
        // The scan names every target it was given, once.
        let mut groups = BTreeMap::new();
        groups.insert(vm("vm1").to_ascii_lowercase(), objs.clone());
        let s = scan(&groups, &[(id.clone(), identity.clone())]);
        let key = vm("vm1").to_ascii_lowercase();
        let named = s.drifted.contains(&key) as usize + s.missing.contains(&key) as usize;
        prop_assert!(named + s.converged <= 1 || objs.is_empty());
        if !objs.is_empty() && !readable && id.eq_ignore_ascii_case(&vm("vm1")) {
            prop_assert!(s.drifted.contains(&key));
        }
    }
}

#[test]
fn thousands_of_identities_on_the_target_are_read_and_planned() {
    let ids: serde_json::Map<String, Value> = (0..4000)
        .map(|i| {
            (
                uai(&format!("u{i}")),
                json!({"principalId": format!("p{i}"), "clientId": "c"}),
            )
        })
        .collect();
    let body = json!({"id": vm("vm1"), "identity": {"type": "SystemAssigned, UserAssigned",
                       "principalId": "sp", "userAssignedIdentities": ids}});
    let l = LiveResource::from_arm_json(&body).expect("read");
    assert_eq!(l.identity.user_assigned.len(), 4000);
    // Adding one more with the dictionary: one entry in the PATCH, the 4,000 untouched.
    let o = obj("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("new")]
    });
    let p = plan_target(std::slice::from_ref(&o), &l).expect("plan");
    let body = p.patch_body().expect("PATCH");
    assert_eq!(
        body["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|m| m.len()),
        Some(1)
    );
    assert_eq!(body["identity"]["type"], "SystemAssigned, UserAssigned");
    // With the 2017-12-01 array the PATCH would have to list all 4,001: refused, no write.
    let o = obj("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("new")];
        r.arm_api_version = Some("2017-12-01".into());
    });
    let e = plan_target(&[o], &l).expect_err("too many for one request");
    assert_eq!(e.reason(), "TooManyIdentities", "{e}");
    // The fleet scan of that row: drifted (uai "new" missing), no panic.
    let o = obj("a", &vm("vm1"), |r| {
        r.user_assigned_identities = vec![uai("new")]
    });
    assert_eq!(
        judge(&[o], &vm("vm1"), &body_identity(&l)),
        Verdict::Drifted
    );
}

fn body_identity(l: &LiveResource) -> Value {
    let ids: serde_json::Map<String, Value> = l
        .identity
        .user_assigned
        .values()
        .map(|u| {
            (
                u.id.to_string(),
                json!({"principalId": u.principal_id, "clientId": u.client_id}),
            )
        })
        .collect();
    json!({"type": l.identity.identity_type().as_str(), "principalId": l.identity.principal_id,
           "userAssignedIdentities": ids})
}
