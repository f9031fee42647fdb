//! Input no one planned for, fed to the parsers of `plan` / `apply` (objects, `--live` bodies,
//! `--policy` files) and on to the planner: arbitrary YAML and JSON text, documents whose
//! fields have the wrong types, YAML alias bombs, deep nesting, 10 MiB documents. Each is
//! read or refused with an error that names its source; nothing panics, and nothing the
//! parsers refuse reaches the planner.

use proptest::prelude::*;
use serde_json::{Value, json};
use vmidentity::input::{InputError, parse_live, parse_objects, parse_policies};
use vmidentity_planner::{LiveResource, plan_target};

const VM: &str =
    "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
const U1: &str = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1";

/// Any JSON value, a few levels deep, with the strings the parsers look at among others.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "",
            VM,
            U1,
            "SystemAssigned",
            "UserAssigned",
            "SystemAssigned, UserAssigned",
            "None",
            "Both",
            "Merge",
            "Exact",
            "Retain",
            "Detach",
            "2018-06-01",
            "2017-12-01",
            "2025-04-01",
            "latest",
            "Reader",
            "\u{0}",
            "../..",
            "é",
            "*",
            "**",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "id",
                    "type",
                    "identity",
                    "userAssignedIdentities",
                    "identityIds",
                    "principalId",
                    "clientId",
                    "etag",
                    "properties",
                    "name",
                    "x",
                ])
                .prop_map(str::to_string),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A VirtualMachineIdentity document whose spec fields are each either sensible or arbitrary.
fn object_doc() -> impl Strategy<Value = Value> {
    let field = |good: Value| prop_oneof![3 => Just(Some(good)), 1 => Just(None), 2 => any_json().prop_map(Some)];
    (
        field(json!(VM)),
        field(json!("2025-04-01")),
        field(json!("Merge")),
        field(json!(true)),
        field(json!([U1])),
        field(json!([{"identity": U1, "role": "Reader", "scope": "/subscriptions/s1/resourceGroups/rg"}])),
        field(json!([{"identity": "SystemAssigned", "groupObjectId": "00000000-0000-0000-0000-0000000000aa"}])),
        field(json!("Detach")),
        field(json!({"applied": {"userAssignedIdentities": [U1]}})),
        prop_oneof![Just(json!("web")), any_json()],
    )
        .prop_map(|(target, version, mode, system, uais, roles, groups, deletion, status, name)| {
            let mut spec = serde_json::Map::new();
            for (k, v) in [
                ("target", target),
                ("armApiVersion", version),
                ("mode", mode),
                ("systemAssigned", system),
                ("userAssignedIdentities", uais),
                ("roleAssignments", roles),
                ("groupMemberships", groups),
                ("deletionPolicy", deletion),
            ] {
                if let Some(v) = v {
                    spec.insert(k.to_string(), v);
                }
            }
            let mut doc = json!({
                "apiVersion": "vmidentity.dev/v1alpha1",
                "kind": "VirtualMachineIdentity",
                "metadata": {"name": name, "namespace": "team-a"},
                "spec": spec,
            });
            if let Some(s) = status {
                doc["status"] = s;
            }
            doc
        })
}

/// Text made of YAML fragments (indentation, flow collections, anchors, aliases, tags,
/// document markers) and of the words the parsers look for.
fn yamlish_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                "apiVersion: vmidentity.dev/v1alpha1\n",
                "kind: VirtualMachineIdentity\n",
                "kind: VirtualMachineIdentityPolicy\n",
                "kind: List\n",
                "kind: Namespace\n",
                "items:\n",
                "- ",
                "metadata:\n",
                "  name: a\n",
                "  namespace: b\n",
                "spec:\n",
                "  target: ",
                VM,
                "\n",
                "  userAssignedIdentities: [",
                U1,
                "]\n",
                "---\n",
                "...\n",
                "&a ",
                "*a",
                "[*a, *a, *a]",
                "{",
                "}",
                "[",
                "]",
                ": ",
                ", ",
                "!!binary ",
                "!!str ",
                "!custom ",
                "~",
                "null",
                "\t",
                "  ",
                "'",
                "\"",
                "\\u0000",
                "#",
                "|\n",
                ">-\n",
                "? ",
                "1e999",
                "-.inf",
                "0x1F",
                "0o17",
                "true",
                "yes",
                "<<: *a\n",
                "%YAML 1.2\n",
                "%TAG ! tag:x,2000:\n",
                "\u{feff}",
            ])
            .prop_map(str::to_string),
            ".{0,12}",
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// The error names the source it came from (a file, `#n` the document).
fn names_source(e: &InputError, source: &str) {
    let text = e.to_string();
    assert!(!text.is_empty());
    assert!(text.starts_with(source), "{text}");
}

/// Every object that parses and validates is planned against a target that has nothing,
/// and against one with arbitrary live content: no panic; each plan is for its own target.
fn plan_what_parses(text: &str) {
    let Ok(objects) = parse_objects("f.yaml", text) else {
        return;
    };
    for o in objects {
        let Ok(desired) = o.to_desired() else {
            continue;
        };
        let live = LiveResource::bare(desired.spec.target.clone());
        if let Ok(plan) = plan_target(std::slice::from_ref(&desired), &live) {
            assert_eq!(plan.target.key(), desired.spec.target.key());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_is_read_or_refused_by_every_parser(text in yamlish_text()) {
        if let Err(e) = parse_objects("f.yaml", &text) { names_source(&e, "f.yaml"); }
        if let Err(e) = parse_policies("p.yaml", &text) { names_source(&e, "p.yaml"); }
        if let Err(e) = parse_live("l.json", &text) { names_source(&e, "l.json"); }
        plan_what_parses(&text);
    }

    #[test]
    fn documents_with_wrongly_typed_fields_are_refused_naming_the_field(doc in object_doc()) {
        let text = serde_yaml_ng::to_string(&doc).expect("yaml");
        match parse_objects("f.yaml", &text) {
            Ok(objects) => {
                prop_assert_eq!(objects.len(), 1);
                if let Err(e) = objects[0].to_desired() {
                    names_source(&e, "f.yaml#1");
                }
            }
            Err(e) => names_source(&e, "f.yaml#1"),
        }
        plan_what_parses(&text);
        // The same document as JSON (a JSON file is read by the same parser).
        let json_text = doc.to_string();
        if let Err(e) = parse_objects("f.json", &json_text) { names_source(&e, "f.json"); }
    }

    #[test]
    fn arbitrary_live_bodies_are_read_or_refused(body in any_json(), keyed in any::<bool>()) {
        let text = if keyed { json!({VM: body}).to_string() } else { body.to_string() };
        match parse_live("l.json", &text) {
            Ok(set) => {
                for live in set.values() {
                    // What was read is a target, and the planner takes it.
                    prop_assert!(live.id.as_str().to_ascii_lowercase().contains("/providers/microsoft.compute/"));
                    let _ = plan_target(&[], live);
                }
            }
            Err(e) => names_source(&e, "l.json"),
        }
    }

    #[test]
    fn arbitrary_policy_documents_are_read_or_refused(spec in any_json(), name in any_json()) {
        let doc = json!({
            "apiVersion": "vmidentity.dev/v1alpha1",
            "kind": "VirtualMachineIdentityPolicy",
            "metadata": {"name": name},
            "spec": spec,
        });
        let text = serde_yaml_ng::to_string(&doc).expect("yaml");
        if let Err(e) = parse_policies("p.yaml", &text) { names_source(&e, "p.yaml#1"); }
    }
}

#[test]
fn a_yaml_alias_bomb_is_refused() {
    // "Billion laughs": nine levels of nine aliases each.
    let mut text = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 9].join(", ")));
    }
    for r in [
        parse_objects("bomb.yaml", &text).map(|_| ()),
        parse_policies("bomb.yaml", &text).map(|_| ()),
    ] {
        let e = r.expect_err("refused");
        names_source(&e, "bomb.yaml#1");
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let depth = 100_000;
    let yaml = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let e = parse_objects("deep.yaml", &yaml).expect_err("refused");
    names_source(&e, "deep.yaml#1");
    let e = parse_policies("deep.yaml", &yaml).expect_err("refused");
    names_source(&e, "deep.yaml#1");
    let e = parse_live("deep.json", &yaml).expect_err("refused");
    names_source(&e, "deep.json");
}

#[test]
fn a_10_mib_document_is_read_or_refused() {
    // A valid object with a 10 MiB annotation: read.
    let big = "x".repeat(10 * 1024 * 1024);
    let text = format!(
        "apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentity\nmetadata:\n  name: web\n  namespace: team-a\n  annotations:\n    note: {big}\nspec:\n  target: {VM}\n"
    );
    let objects = parse_objects("big.yaml", &text).expect("read");
    assert_eq!(objects.len(), 1);
    objects[0].to_desired().expect("valid");
    // 10 MiB of identity IDs (100,000 of them; admission would cap the list at 150, a file
    // given to `plan -f` does not): read and validated in linear time, then refused by the
    // planner before any write.
    let many: Vec<String> = (0..100_000).map(|i| format!("{U1}-{i}")).collect();
    let text = format!(
        "apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentity\nmetadata: {{name: web, namespace: team-a}}\nspec:\n  target: {VM}\n  userAssignedIdentities: [{}]\n",
        many.join(", ")
    );
    assert!(text.len() > 10 * 1024 * 1024);
    let objects = parse_objects("many.yaml", &text).expect("parses");
    let desired = objects[0].to_desired().expect("valid");
    assert_eq!(desired.spec.user_assigned.len(), 100_000);
    let live = LiveResource::bare(desired.spec.target.clone());
    let e = plan_target(&[desired], &live).expect_err("too many for one request");
    assert_eq!(e.reason(), "TooManyIdentities", "{e}");
    // (The duplicate check was a linear search, quadratic in the list: this took over ten
    // minutes; `RawSpec::validate` now indexes the list.)
}

#[test]
fn a_live_body_with_thousands_of_identities_is_read_and_planned() {
    let ids: serde_json::Map<String, Value> = (0..5000)
        .map(|i| {
            (
                format!("{U1}-{i}"),
                json!({"principalId": format!("p{i}"), "clientId": "c"}),
            )
        })
        .collect();
    let text =
        json!({"id": VM, "identity": {"type": "UserAssigned", "userAssignedIdentities": ids}})
            .to_string();
    let set = parse_live("l.json", &text).expect("read");
    let live = set.values().next().expect("one body");
    assert_eq!(live.identity.user_assigned.len(), 5000);
    // An object that wants one of them: already converged, nothing to write.
    let objects = parse_objects(
        "f.yaml",
        &format!(
            "apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentity\nmetadata: {{name: web, namespace: team-a}}\nspec:\n  target: {VM}\n  userAssignedIdentities: [{U1}-7]\n"
        ),
    )
    .expect("object");
    let desired = objects[0].to_desired().expect("valid");
    let plan = plan_target(&[desired], live).expect("plan");
    assert!(plan.is_converged(), "{:?}", plan.changes);
    assert!(plan.writes.is_empty());
}
