//! Properties of the planner, under proptest:
//! - applying the plan with ARM's semantics gives the planned (desired) state;
//! - planning again on the result is empty, and the ownership records are stable;
//! - nothing unowned is ever removed (Merge);
//! - the system identity is never disabled without an explicit `false`;
//! - every asked-for identity is there afterwards;
//! - no key is sent that does not change anything.

mod common;

use std::collections::BTreeSet;

use common::*;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use vmidentity_planner::arm::apply_patch;
use vmidentity_planner::*;

const POOL: usize = 6;

/// One of the pool's UAIs, in one of several spellings.
fn spelled(i: usize, variant: u8) -> String {
    let id = uai(&format!("id{i}"));
    match variant % 3 {
        0 => id,
        1 => id.replace("resourceGroups", "resourcegroups"),
        _ => id
            .to_uppercase()
            .replace("/SUBSCRIPTIONS/", "/subscriptions/"),
    }
}

fn ids() -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_map(0..POOL, any::<u8>(), 0..=POOL)
        .prop_map(|m| m.into_iter().map(|(i, v)| spelled(i, v)).collect())
}

#[derive(Debug, Clone)]
struct ObjGen {
    exact: bool,
    system: Option<bool>,
    uais: Vec<String>,
    applied: Vec<String>,
    deleting: bool,
    retain: bool,
}

fn obj_gen() -> impl Strategy<Value = ObjGen> {
    (
        prop::bool::weighted(0.15),
        prop::option::of(any::<bool>()),
        ids(),
        ids(),
        prop::bool::weighted(0.2),
        any::<bool>(),
    )
        .prop_map(|(exact, system, uais, applied, deleting, retain)| ObjGen {
            exact,
            system,
            uais,
            applied,
            deleting,
            retain,
        })
}

#[derive(Debug, Clone)]
struct World {
    version: &'static str,
    live_system: bool,
    live_uais: Vec<String>,
    objects: Vec<ObjGen>,
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::sample::select(vec!["2017-12-01", "2018-06-01", "2024-11-01"]),
        any::<bool>(),
        ids(),
        prop::collection::vec(obj_gen(), 1..4),
    )
        .prop_map(|(version, live_system, live_uais, objects)| World {
            version,
            live_system,
            live_uais,
            objects,
        })
}

fn build(w: &World) -> (Vec<DesiredObject>, LiveResource) {
    let target = vm("vm1");
    let objects = w
        .objects
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let raw = RawSpec {
                target: target.clone(),
                arm_api_version: Some(w.version.to_string()),
                mode: Some(if g.exact { Mode::Exact } else { Mode::Merge }),
                system_assigned: g.system,
                user_assigned_identities: g.uais.clone(),
                deletion_policy: Some(if g.retain {
                    DeletionPolicy::Retain
                } else {
                    DeletionPolicy::Detach
                }),
                ..Default::default()
            };
            let mut o = DesiredObject::new(
                ObjectRef::new("ns", format!("o{i}")),
                raw.validate().expect("generated specs are valid"),
            )
            .with_applied(applied(&g.applied));
            o.deleting = g.deleting;
            o
        })
        .collect();
    let ty = IdentityType::from_parts(w.live_system, !w.live_uais.is_empty());
    let mut ident = Map::new();
    ident.insert("type".into(), json!(ty.as_str()));
    if w.live_system {
        ident.insert("principalId".into(), json!("principal-0"));
    }
    if !w.live_uais.is_empty() {
        let dict: Map<String, Value> = w
            .live_uais
            .iter()
            .map(|id| (id.clone(), json!({"principalId": "p", "clientId": "c"})))
            .collect();
        ident.insert("userAssignedIdentities".into(), Value::Object(dict));
    }
    (objects, live(&target, Value::Object(ident)))
}

fn keys(ids: &[String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_ascii_lowercase()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn plan_is_correct_minimal_and_idempotent(w in world()) {
        let (objects, live0) = build(&w);
        let format = ApiVersion::parse(w.version).unwrap().wire_format();
        let plan = match plan_target(&objects, &live0) {
            Ok(p) => p,
            Err(PlanError::Conflict { .. }) => {
                // A conflict is refused whole; check it was a real one.
                let active: Vec<&ObjGen> = w.objects.iter().filter(|o| !o.deleting).collect();
                let sys: BTreeSet<bool> = active.iter().filter_map(|o| o.system).collect();
                prop_assert!(sys.len() == 2 || (active.iter().any(|o| o.exact) && active.len() > 1));
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
        };
        prop_assert!(plan.writes.len() <= 1);
        let active: Vec<&ObjGen> = w.objects.iter().filter(|o| !o.deleting).collect();
        let exact = active.iter().any(|o| o.exact);

        // Applying the plan with ARM's semantics gives the planned state.
        let after_live = match plan.patch_body() {
            None => live0.identity.clone(),
            Some(body) => apply_patch(&live0.identity, body, format, "principal-new")
                .map_err(|r| TestCaseError::fail(format!("ARM would refuse {body}: {r}")))?,
        };
        let got: BTreeSet<&String> = after_live.user_assigned.keys().collect();
        let want: BTreeSet<&String> = plan.after.user_assigned.keys().collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(after_live.system_assigned, plan.after.system_assigned);

        // Every asked-for identity is there; an explicit system word is obeyed.
        for o in &active {
            for k in keys(&o.uais) {
                prop_assert!(after_live.user_assigned.contains_key(&k), "missing {}", k);
            }
            if let Some(s) = o.system {
                prop_assert_eq!(after_live.system_assigned, s);
            }
        }
        // The system identity is never disabled without an explicit false.
        if live0.identity.system_assigned && !after_live.system_assigned {
            prop_assert!(active.iter().any(|o| o.system == Some(false)));
        }
        // A system identity that stays keeps its principal.
        if live0.identity.system_assigned && after_live.system_assigned {
            prop_assert_eq!(&after_live.principal_id, &live0.identity.principal_id);
        }
        // Nothing unowned is ever removed (Merge).
        if !exact {
            let managed: BTreeSet<String> =
                w.objects.iter().flat_map(|o| keys(&o.applied)).collect();
            for k in live0.identity.user_assigned.keys() {
                if !after_live.user_assigned.contains_key(k) {
                    prop_assert!(managed.contains(k), "removed unowned {}", k);
                }
            }
        }
        // No key is sent that does not change anything.
        match plan.patch_body() {
            None => prop_assert!(plan.before.same_as(&plan.after)),
            Some(body) => {
                prop_assert!(!plan.before.same_as(&plan.after));
                let ident = body["identity"].as_object().unwrap();
                prop_assert!(ident.keys().all(|k| k == "type" || k == "userAssignedIdentities" || k == "identityIds"));
                if let Some(dict) = ident.get("userAssignedIdentities").and_then(Value::as_object) {
                    for (k, v) in dict {
                        let lk = k.to_ascii_lowercase();
                        let was = live0.identity.user_assigned.contains_key(&lk);
                        if v.is_null() { prop_assert!(was, "null for absent {}", k) }
                        else { prop_assert!(!was, "{{}} for present {}", k) }
                    }
                    prop_assert!(!dict.is_empty());
                }
            }
        }

        // Planning again on the result (objects carry their new records; deleted ones are gone)
        // is empty, and the records do not move.
        let next: Vec<DesiredObject> = objects
            .iter()
            .filter(|o| !o.deleting)
            .map(|o| o.clone().with_applied(plan.applied[&o.object].clone()))
            .collect();
        if !next.is_empty() {
            let live1 = LiveResource { id: live0.id.clone(), identity: after_live, provisioning_state: None, etag: None };
            let again = plan_target(&next, &live1).unwrap();
            prop_assert!(again.is_converged(), "second plan writes {:?}", again.writes);
            for o in &next {
                prop_assert_eq!(keys(&again.applied[&o.object].user_assigned_identities),
                                keys(&o.applied.user_assigned_identities));
            }
        }
    }

    /// Whatever the objects, a PATCH never names one identity twice (in two spellings).
    #[test]
    fn never_two_spellings(w in world()) {
        let (objects, live0) = build(&w);
        let plan = plan_target(&objects, &live0).ok();
        if let Some(body) = plan.as_ref().and_then(|p| p.patch_body()) {
                let ident = &body["identity"];
                let names: Vec<String> = match (ident.get("userAssignedIdentities"), ident.get("identityIds")) {
                    (Some(Value::Object(m)), _) => m.keys().cloned().collect(),
                    (_, Some(Value::Array(a))) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                    _ => vec![],
                };
                prop_assert_eq!(keys(&names).len(), names.len());
        }
    }
}
