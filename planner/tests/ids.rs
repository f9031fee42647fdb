//! ARM IDs and scopes the planner accepts are the paths requests go to: no URL parser can
//! resolve or decode them into another path (the "dot segments escape scope rules" review).
//!
//! A reference resolver applies what URL parsers and servers do to a path (WHATWG URL
//! path parsing: `\` is a separator, `.`/`..` and their percent-encoded spellings are
//! resolved; a server then percent-decodes `%2F`), and every ID `ArmId::parse` (or the
//! spec's scope check) accepts must come out of it unchanged.

use proptest::prelude::*;
use vmidentity_planner::id::path_problem;
use vmidentity_planner::model::{RawRoleAssignment, RawSpec};
use vmidentity_planner::{ArmId, IdError};

/// The path as a WHATWG URL parser followed by a decoding server would see it.
fn resolve(path: &str) -> String {
    let decoded = path.replace("%2F", "/").replace("%2f", "/");
    let mut out: Vec<String> = Vec::new();
    let segs: Vec<&str> = decoded.split(['/', '\\']).skip(1).collect();
    for (i, seg) in segs.iter().enumerate() {
        let lower = seg.to_ascii_lowercase();
        let last = i + 1 == segs.len();
        match lower.as_str() {
            "." | "%2e" => {
                if last {
                    out.push(String::new());
                }
            }
            ".." | ".%2e" | "%2e." | "%2e%2e" => {
                out.pop();
                if last {
                    out.push(String::new());
                }
            }
            _ => out.push(
                seg.chars()
                    .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                    .collect(),
            ),
        }
    }
    format!("/{}", out.join("/"))
}

const ATTACK: &str =
    "/subscriptions/S/resourceGroups/rg-a/providers/../../../resourceGroups/rg-prod";

#[test]
fn the_reference_resolver_resolves_the_attack() {
    assert_eq!(resolve(ATTACK), "/subscriptions/S/resourceGroups/rg-prod");
    assert_eq!(
        resolve(
            "/subscriptions/S/resourceGroups/rg-a/providers\\..\\..\\..\\resourceGroups\\rg-prod"
        ),
        "/subscriptions/S/resourceGroups/rg-prod"
    );
    assert_eq!(
        resolve(
            "/subscriptions/S/resourceGroups/rg-a/providers/%2e%2e/%2E%2E/%2e./resourceGroups/rg-prod"
        ),
        "/subscriptions/S/resourceGroups/rg-prod"
    );
    assert_eq!(
        resolve("/subscriptions/S/resourceGroups/rg-a/x%2F..%2F..%2F..%2FresourceGroups%2Frg-prod"),
        "/subscriptions/S/resourceGroups/rg-prod"
    );
}

#[test]
fn the_attack_and_its_spellings_are_refused_everywhere() {
    for bad in [
        ATTACK.to_string(),
        ATTACK.replace('/', "\\").replacen('\\', "/", 1),
        ATTACK.replace("..", "%2e%2e"),
        ATTACK.replace("..", ".%2E"),
        ATTACK.replace("/..", "%2F.."),
        ATTACK.replace("..", ".\t."),
        format!("{ATTACK}/providers/Microsoft.Compute/virtualMachines/vm1"),
        format!(
            "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u1",
            ATTACK.replace("..", "%2e%2e")
        ),
    ] {
        assert!(
            matches!(ArmId::parse(&bad), Err(IdError::Unsafe { .. })),
            "{bad:?}: {:?}",
            ArmId::parse(&bad)
        );
        assert!(ArmId::parse_target(&bad).is_err(), "{bad:?}");
        assert!(ArmId::parse_uai(&bad).is_err(), "{bad:?}");
        assert!(path_problem(&bad).is_some(), "{bad:?}");
        let spec = RawSpec {
            target: "/subscriptions/S/resourceGroups/rg-a/providers/Microsoft.Compute/virtualMachines/vm1".into(),
            system_assigned: Some(true),
            role_assignments: vec![RawRoleAssignment {
                identity: "SystemAssigned".into(),
                role: "Reader".into(),
                scope: bad.clone(),
            }],
            ..Default::default()
        };
        let errs = spec.validate().unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.roleAssignments[0].scope");
        assert!(
            errs[0].message.contains("not allowed in ARM IDs"),
            "{errs:?}"
        );
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        Just("%2E".to_string()),
        Just(".%2e".to_string()),
        Just("a%2Fb".to_string()),
        Just("a\\..".to_string()),
        Just("\\".to_string()),
        Just(".\t.".to_string()),
        Just("rg\n".to_string()),
        Just("".to_string()),
        Just("$ref".to_string()),
        Just("rg.a".to_string()),
        Just("...".to_string()),
        Just(".rg".to_string()),
        Just("rg..".to_string()),
        "[A-Za-z0-9._()-]{1,8}",
    ]
}

fn id_like() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(segment(), 0..3),
        segment(),
        segment(),
        prop::collection::vec(segment(), 0..3),
        any::<u8>(),
    )
        .prop_map(|(a, sub, rg, tail, shape)| {
            let mut segs: Vec<String> = Vec::new();
            if shape % 4 == 0 {
                segs.extend(a);
            }
            segs.push("subscriptions".into());
            segs.push(sub);
            segs.push("resourceGroups".into());
            segs.push(rg);
            if shape % 2 == 0 {
                segs.extend([
                    "providers".to_string(),
                    "Microsoft.Compute".to_string(),
                    "virtualMachines".to_string(),
                ]);
            }
            segs.extend(tail);
            format!("/{}", segs.join("/"))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever `ArmId::parse` accepts, no URL parser or server turns into another path.
    #[test]
    fn accepted_ids_resolve_to_themselves(s in id_like()) {
        if let Ok(id) = ArmId::parse(&s) {
            prop_assert_eq!(resolve(&s), s.clone());
            prop_assert_eq!(path_problem(&s), None);
            prop_assert_eq!(id.as_str(), s.as_str());
        } else if path_problem(&s).is_none() && !s.chars().any(char::is_whitespace) {
            // Refused for its shape only: then it is not an unsafe path either.
            let shape_only = matches!(
                ArmId::parse(&s),
                Err(IdError::Malformed(_) | IdError::WrongKind { .. })
            );
            prop_assert!(shape_only, "{:?}", ArmId::parse(&s));
        }
    }

    /// The same for the role-assignment scopes a spec accepts.
    #[test]
    fn accepted_scopes_resolve_to_themselves(s in id_like()) {
        let spec = RawSpec {
            target: "/subscriptions/S/resourceGroups/rg-a/providers/Microsoft.Compute/virtualMachines/vm1".into(),
            system_assigned: Some(true),
            role_assignments: vec![RawRoleAssignment {
                identity: "SystemAssigned".into(),
                role: "Reader".into(),
                scope: s.clone(),
            }],
            ..Default::default()
        };
        if spec.validate().is_ok() {
            prop_assert_eq!(resolve(&s), s.clone());
            prop_assert_eq!(path_problem(&s), None);
        }
    }
}
