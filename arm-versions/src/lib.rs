//! The published api-versions of the resource providers vmidentity talks to, kept in one
//! place: the simulator (`armsim`) serves exactly these, the planner (`vmidentity plan` /
//! `apply`, the controller) refuses an `armApiVersion` Compute does not publish, and the
//! CRD's admission rule on `spec.armApiVersion` is generated from [`COMPUTE`] (same list,
//! same message).
//!
//! No dependencies, no I/O: a list of facts, each with its public source.

/// Microsoft.Compute api-versions that serve `virtualMachines` / `virtualMachineScaleSets`
/// with an identity block, oldest first: 2017-12-01 (the first with user-assigned
/// identities, `identityIds` array) and later. Sources, in Azure/azure-rest-api-specs:
///
/// - `specification/compute/resource-manager/Microsoft.Compute/stable/{version}/compute.json`
///   (2017-12-01 up to 2020-12-01) and
///   `specification/compute/resource-manager/Microsoft.Compute/ComputeRP/stable/{version}/virtualMachine.json`,
///   `…/virtualMachineScaleSet.json` (2021-03-01 and later; 2025-04-01 is the version
///   current Azure CLIs use for every VM GET);
/// - 2025-11-01 and 2026-04-01: accepted by ARM for scale-set GETs in the Azure CLI's
///   recording `src/azure-cli/azure/cli/command_modules/vm/tests/latest/recordings/test_vmss_explicit_msi.yaml`
///   (Azure/azure-cli commit 0151a1baa6e087378dbbbc374a9806098d6314c8, recorded
///   2026-05-07); their spec folders were not checked.
pub const COMPUTE: &[&str] = &[
    "2017-12-01",
    "2018-04-01",
    "2018-06-01",
    "2018-10-01",
    "2019-03-01",
    "2019-07-01",
    "2019-12-01",
    "2020-06-01",
    "2020-12-01",
    "2021-03-01",
    "2021-04-01",
    "2021-07-01",
    "2021-11-01",
    "2022-03-01",
    "2022-08-01",
    "2022-11-01",
    "2023-03-01",
    "2023-07-01",
    "2023-09-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
    "2025-04-01",
    "2025-11-01",
    "2026-04-01",
];

/// Microsoft.ManagedIdentity api-versions of `userAssignedIdentities`, oldest first.
/// Sources, in Azure/azure-rest-api-specs:
/// `specification/msi/resource-manager/Microsoft.ManagedIdentity/ManagedIdentity/preview/{version}/ManagedIdentity.json`
/// (the `-preview` ones) and `…/ManagedIdentity/stable/{version}/ManagedIdentity.json`
/// (2018-11-30, 2023-01-31, 2024-11-30, 2026-04-30). 2015-08-31-preview was accepted by ARM
/// in 2018 (the Azure CLI's VM identity recordings); whether it still is is not recorded.
pub const MANAGED_IDENTITY: &[&str] = &[
    "2015-08-31-preview",
    "2018-11-30",
    "2021-09-30-preview",
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
    "2025-01-31-preview",
    "2025-05-31-preview",
    "2026-04-30",
];

/// True when `version` is in `list` (ARM compares api-versions case-insensitively).
pub fn is_published(list: &[&str], version: &str) -> bool {
    list.iter().any(|v| v.eq_ignore_ascii_case(version))
}

/// True when Microsoft.Compute publishes `version` (see [`COMPUTE`]).
pub fn is_compute(version: &str) -> bool {
    is_published(COMPUTE, version)
}

/// The CEL rule of the CRD's `spec.armApiVersion`: `self in ['2017-12-01', …]`.
pub fn compute_cel_rule() -> String {
    let quoted: Vec<String> = COMPUTE.iter().map(|v| format!("'{v}'")).collect();
    format!("self in [{}]", quoted.join(", "))
}

/// The message of that rule (and of the planner's refusal): the supported versions, as
/// ARM's `InvalidApiVersionParameter` lists them.
pub fn compute_message() -> String {
    format!(
        "spec.armApiVersion must be an api-version Microsoft.Compute publishes for virtual machines and scale sets: {}",
        COMPUTE.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_and_unique() {
        for list in [COMPUTE, MANAGED_IDENTITY] {
            for w in list.windows(2) {
                assert!(w[0] < w[1], "{} before {}", w[0], w[1]);
            }
        }
    }

    #[test]
    fn the_rule_names_every_compute_version() {
        let rule = compute_cel_rule();
        assert!(rule.starts_with("self in ['2017-12-01', "));
        for v in COMPUTE {
            assert!(rule.contains(&format!("'{v}'")));
            assert!(compute_message().contains(v));
        }
        assert!(is_compute("2025-04-01"));
        assert!(!is_compute("2025-04-02"));
        assert!(is_published(MANAGED_IDENTITY, "2024-11-30"));
    }
}
