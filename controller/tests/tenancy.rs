//! The tenancy boundary across namespaces, end to end: a controller that watches every
//! namespace (the chart's default), the real API server, the ARM simulator. An object that
//! policy denies (or that is invalid) and owns nothing must take no part in credential choice
//! or planning: it can never stall, freeze or block the deletion of another tenant's objects
//! on the same VM, whatever it asks for.
//!
//! The controller here reconciles every object of the cluster, so these tests run one at a
//! time (a lock), in a binary of their own.

#[path = "e2e/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::*;
use serde_json::{Value, json};
use vmidentity::crd::VirtualMachineIdentity;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// VM names of this run: the controller here sees every object of the cluster, and objects
/// left by an earlier, interrupted run (with their policies) must not share its targets.
fn own(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const TEAM_CLIENT: &str = "bbbbbbbb-0000-0000-0000-0000000000b1";
const OTHER_CLIENT: &str = "bbbbbbbb-0000-0000-0000-0000000000b2";

fn denied(o: &VirtualMachineIdentity) -> bool {
    stalled_with(o, "PolicyDenied")
}

fn stalled_reason(o: &VirtualMachineIdentity) -> Option<String> {
    condition(o, "Stalled")
        .filter(|(s, _)| s == "True")
        .map(|(_, r)| r)
}

/// Holds for `secs`: every named object of `ns` stays Ready (never Stalled) at its current
/// generation.
async fn stay_ready(env: &Env, ns: &str, names: &[&str], secs: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        for n in names {
            let o = env.get_in(ns, n).await.expect("object");
            assert!(
                is_ready(&o) && stalled_reason(&o).is_none(),
                "{ns}/{n} lost Ready because of another namespace's object: {:#?}",
                o.status
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every conflict kind a denied newcomer could cause (Exact beside it, api-versions with
/// different wire formats, systemAssigned true vs false), with namespace credentials off.
#[tokio::test]
async fn a_denied_newcomer_in_another_namespace_cannot_freeze_a_tenants_vm() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::new(
        "e2e-tenancy",
        &world(&[&own("vm1"), &own("vm2"), &own("vm3")], ""),
    )
    .await;
    let intruder = env.namespace("intruder").await;
    let _c = ControllerProc::start_cluster_wide(
        &env.ns,
        &env.sim,
        "a",
        &[],
        &[
            ("AZURE_ACCESS_TOKEN", TOKEN),
            ("AZURE_GRAPH_ACCESS_TOKEN", vmidentity_testkit::GRAPH_TOKEN),
        ],
    );
    let team = env.ns.clone();
    // The team's objects, Ready before anyone else shows up.
    let team_objects: Vec<(&str, Value)> = vec![
        (
            "exact",
            json!({"target": vm(&own("vm1")), "mode": "Exact", "userAssignedIdentities": [uai("u1")]}),
        ),
        (
            "legacy",
            json!({"target": vm(&own("vm2")), "armApiVersion": "2017-12-01", "userAssignedIdentities": [uai("u1")]}),
        ),
        (
            "system",
            json!({"target": vm(&own("vm3")), "systemAssigned": true, "userAssignedIdentities": [uai("u2")]}),
        ),
    ];
    for (name, spec) in &team_objects {
        env.create_in(&team, name, spec.clone()).await.expect(name);
    }
    for (name, _) in &team_objects {
        env.wait_for_in(&team, name, 30, "Ready", is_ready).await;
    }
    // A namespace no policy covers aims at the same VMs with every kind of conflict.
    let intruders: Vec<(&str, Value)> = vec![
        (
            "beside-exact",
            json!({"target": vm(&own("vm1")), "userAssignedIdentities": [uai("u3")]}),
        ),
        (
            "other-format",
            json!({"target": vm(&own("vm2")), "userAssignedIdentities": [uai("u3")]}),
        ),
        (
            "system-off",
            json!({"target": vm(&own("vm3")), "systemAssigned": false}),
        ),
        (
            "exact-too",
            json!({"target": vm(&own("vm3")), "mode": "Exact", "userAssignedIdentities": [uai("u4")]}),
        ),
    ];
    for (name, spec) in &intruders {
        env.create_in(&intruder, name, spec.clone())
            .await
            .expect(name);
    }
    for (name, _) in &intruders {
        env.wait_for_in(&intruder, name, 30, "PolicyDenied", denied)
            .await;
    }
    // Several resync periods (3 s): the team's objects stay Ready, their VMs untouched.
    let names: Vec<&str> = team_objects.iter().map(|(n, _)| *n).collect();
    stay_ready(&env, &team, &names, 8).await;
    assert_eq!(
        env.identity(&vm(&own("vm1"))),
        ("UserAssigned".into(), vec!["u1".into()])
    );
    assert_eq!(
        env.identity(&vm(&own("vm3"))),
        ("SystemAssigned, UserAssigned".into(), vec!["u2".into()])
    );
    // The team can still change its VMs...
    env.api
        .patch(
            "exact",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"spec": {"userAssignedIdentities": [uai("u1"), uai("u4")]}}),
            ),
        )
        .await
        .expect("edit");
    env.wait_for_in(&team, "exact", 30, "Ready with u4", |o| {
        is_ready(o) && env.identity(&vm(&own("vm1"))).1 == vec!["u1".to_string(), "u4".to_string()]
    })
    .await;
    // ... and delete its objects: the deletion does not hang behind the intruders.
    env.api
        .delete("legacy", &Default::default())
        .await
        .expect("delete");
    env.wait_gone("legacy", 30).await;
    assert_eq!(env.identity(&vm(&own("vm2"))), ("None".into(), vec![]));
    // Nothing was ever written for the intruders, nor claimed: no finalizer.
    for (name, _) in &intruders {
        let o = env.get_in(&intruder, name).await.expect("intruder");
        assert!(
            o.metadata.finalizers.unwrap_or_default().is_empty(),
            "{name}"
        );
    }
    env.cleanup_in(&intruder).await;
    env.cleanup().await;
    env.delete_policy().await;
}

/// A newcomer that policy *allows*, in another namespace under another policy, asks for the
/// opposite of a Ready object on the same VM (`systemAssigned: false`): the object that held
/// the VM first keeps it and stays Ready; the newcomer is Stalled with reason Conflict naming
/// it, and nothing is written. Once the senior object is deleted, the newcomer is applied.
#[tokio::test]
async fn an_allowed_newcomer_in_another_namespace_cannot_break_a_working_object() {
    use kube::api::{Api, Patch, PatchParams};
    use vmidentity::crd::VirtualMachineIdentityPolicy;
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::new("e2e-tenancy-seniority", &world(&[&own("vm1")], "")).await;
    let sandbox = env.namespace("sandbox").await;
    // The sandbox's own policy: it may disable system-assigned identities.
    let policies: Api<VirtualMachineIdentityPolicy> = Api::all(env.client.clone());
    let sandbox_policy = format!("e2e-{sandbox}");
    policies
        .patch(
            &sandbox_policy,
            &PatchParams::apply("vmidentity-e2e").force(),
            &Patch::Apply(&json!({
                "apiVersion": "vmidentity.dev/v1alpha1",
                "kind": "VirtualMachineIdentityPolicy",
                "metadata": {"name": sandbox_policy},
                "spec": allow_all_policy(&sandbox),
            })),
        )
        .await
        .expect("sandbox policy");
    let _c = ControllerProc::start_cluster_wide(
        &env.ns,
        &env.sim,
        "a",
        &[],
        &[
            ("AZURE_ACCESS_TOKEN", TOKEN),
            ("AZURE_GRAPH_ACCESS_TOKEN", "sim-graph-token"),
        ],
    );
    let team = env.ns.clone();
    env.create_in(
        &team,
        "ops-agent",
        json!({"target": vm(&own("vm1")), "systemAssigned": true, "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("ops-agent");
    env.wait_for_in(&team, "ops-agent", 30, "Ready", is_ready)
        .await;
    let writes = env.sim.counters().writes;

    env.create_in(
        &sandbox,
        "newcomer",
        json!({"target": vm(&own("vm1")), "systemAssigned": false}),
    )
    .await
    .expect("newcomer");
    let refused = env
        .wait_for_in(&sandbox, "newcomer", 30, "Stalled Conflict", |o| {
            stalled_with(o, "Conflict")
        })
        .await;
    let message = refused
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Stalled"))
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(
        message.contains(&format!(
            "{team}/ops-agent held the target first and keeps it"
        )),
        "{message}"
    );
    // Several resync periods (3 s): ops-agent stays Ready, its VM untouched.
    stay_ready(&env, &team, &["ops-agent"], 8).await;
    assert_eq!(
        env.identity(&vm(&own("vm1"))),
        ("SystemAssigned, UserAssigned".into(), vec!["u1".into()])
    );
    assert_eq!(env.sim.counters().writes, writes, "nothing written");
    let o = env.get_in(&sandbox, "newcomer").await.expect("newcomer");
    assert!(
        o.metadata.finalizers.unwrap_or_default().is_empty(),
        "a refused newcomer is not claimed"
    );

    // The senior object goes (Detach; the system identity is never disabled by a deletion):
    // the newcomer no longer conflicts and is applied.
    env.api
        .delete("ops-agent", &Default::default())
        .await
        .expect("delete");
    env.wait_gone("ops-agent", 30).await;
    env.wait_for_in(&sandbox, "newcomer", 30, "Ready", is_ready)
        .await;
    assert_eq!(env.identity(&vm(&own("vm1"))), ("None".into(), vec![]));
    env.cleanup_in(&sandbox).await;
    env.cleanup().await;
    let _ = policies.delete(&sandbox_policy, &Default::default()).await;
    env.delete_policy().await;
}

/// With namespace credentials required, a newcomer without a Secret (NoCredential) or with
/// another identity's Secret (CredentialConflict) in a namespace no policy covers does not
/// stall the team's object: its credential is never even looked up.
#[tokio::test]
async fn a_denied_newcomer_without_or_with_another_credential_cannot_stall_a_tenant() {
    use vmidentity_simulator::AppConfig;
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::with_config("e2e-tenancy-cred", &world(&[&own("vm1")], ""), |c| {
        c.apps = vec![
            AppConfig::with_secret(TEAM_CLIENT, TENANT, "team-secret"),
            AppConfig::with_secret(OTHER_CLIENT, TENANT, "other-secret"),
        ];
    })
    .await;
    env.set_policy(allow_all_binding(&env.ns, &[TEAM_CLIENT]))
        .await;
    let team = env.ns.clone();
    env.put_secret_in(
        &team,
        "vmidentity-credential",
        json!({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": TEAM_CLIENT, "AZURE_CLIENT_SECRET": "team-secret"}),
    )
    .await;
    let no_secret = env.namespace("nosecret").await;
    let other_secret = env.namespace("othersecret").await;
    env.put_secret_in(
        &other_secret,
        "vmidentity-credential",
        json!({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": OTHER_CLIENT, "AZURE_CLIENT_SECRET": "other-secret"}),
    )
    .await;
    let _c = env.controller_requiring_credentials("a", true);
    env.create_in(
        &team,
        "web",
        json!({"target": vm(&own("vm1")), "userAssignedIdentities": [uai("u1")]}),
    )
    .await
    .expect("web");
    env.wait_for_in(
        &team,
        "web",
        30,
        "Ready with the team's credential",
        is_ready,
    )
    .await;
    for ns in [&no_secret, &other_secret] {
        env.create_in(
            ns,
            "squat",
            json!({"target": vm(&own("vm1")), "userAssignedIdentities": [uai("u2")]}),
        )
        .await
        .expect("squat");
        env.wait_for_in(ns, "squat", 30, "PolicyDenied", denied)
            .await;
    }
    stay_ready(&env, &team, &["web"], 8).await;
    assert_eq!(
        env.identity(&vm(&own("vm1"))),
        ("UserAssigned".into(), vec!["u1".into()])
    );
    // The other identity was never used: no token was asked for it.
    let other_logins = env.logins_for(OTHER_CLIENT);
    assert_eq!(other_logins, 0);
    env.api
        .delete("web", &Default::default())
        .await
        .expect("delete");
    env.wait_gone("web", 30).await;
    assert_eq!(env.identity(&vm(&own("vm1"))), ("None".into(), vec![]));
    env.cleanup_in(&no_secret).await;
    env.cleanup_in(&other_secret).await;
    env.cleanup().await;
    env.delete_policy().await;
}
