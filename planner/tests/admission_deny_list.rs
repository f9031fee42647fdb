//! The ValidatingAdmissionPolicy (chart template and the generated kustomize base) mirrors the
//! built-in deny list in CEL: every privileged built-in role by GUID in `variables.privileged`,
//! and by name in `variables.builtin` (so a policy and an object may name it either way).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use vmidentity_planner::policy::PRIVILEGED_ROLES;

/// The expression text of the CEL variable `name` (up to the next variable or `validations`).
fn variable<'a>(yaml: &'a str, name: &str) -> &'a str {
    let start = yaml
        .find(&format!("- name: {name}\n"))
        .unwrap_or_else(|| panic!("variable {name} not found"));
    let rest = &yaml[start + 1..];
    let end = [rest.find("- name: "), rest.find("validations:")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Single-quoted CEL string literals, in order.
fn literals(expr: &str) -> Vec<String> {
    expr.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn check(path: &Path) {
    let yaml = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let privileged: BTreeSet<String> = literals(variable(&yaml, "privileged"))
        .into_iter()
        .collect();
    let want: BTreeSet<String> = PRIVILEGED_ROLES
        .iter()
        .map(|r| r.guid.to_string())
        .collect();
    assert_eq!(
        privileged,
        want,
        "{}: variables.privileged differs from PRIVILEGED_ROLES",
        path.display()
    );
    let lits = literals(variable(&yaml, "builtin"));
    assert_eq!(lits.len() % 2, 0, "{}", path.display());
    let builtin: BTreeMap<&str, &str> = lits
        .chunks(2)
        .map(|kv| (kv[0].as_str(), kv[1].as_str()))
        .collect();
    for r in PRIVILEGED_ROLES {
        assert_eq!(
            builtin.get(r.name.to_ascii_lowercase().as_str()).copied(),
            Some(r.guid),
            "{}: variables.builtin lacks {:?}",
            path.display(),
            r.name
        );
    }
    for (name, guid) in &builtin {
        assert_eq!(name, &name.to_ascii_lowercase(), "{}", path.display());
        assert_eq!(guid.len(), 36, "{}: {name}", path.display());
    }
}

#[test]
fn the_admission_policy_mirrors_the_built_in_deny_list() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    check(&root.join("charts/vmidentity/templates/admission.yaml"));
    check(&root.join("manifests/admission.yaml"));
}
