//! Recorded ARM traffic, replayed against the simulator.
//!
//! `tests/fixtures/recorded/*.json` hold facts extracted from the Azure CLI's recorded VM /
//! VMSS identity tests (each file names its source: repository, path, commit, date): per
//! request the method, api-version and identity block sent, and per answer the status, the
//! LRO headers, the identity block, `provisioningState`, the etag and the operation's
//! statuses. Two tests:
//!
//! - [`replays_recorded_traffic`] sends every recorded request to `armsim` in order and
//!   compares its answers with the recording; it prints how many steps and sequences
//!   match (`cargo test -p vmidentity-tests --test replay -- --nocapture`) and fails on any
//!   mismatch.
//! - [`plan_reaches_the_recorded_end_state`] starts from each sequence's first recorded
//!   state, applies an object expressing what the CLI command meant through the engine
//!   (planner + executor), and checks the target ends as the recording does, with a PATCH
//!   body no larger than the CLI's.
//!
//! What is compared for a step, and what is not:
//! - identity blocks exactly (the fixture seeds the world with the recorded principal,
//!   client and tenant IDs, so they can be equal);
//! - etags as steps within a sequence (`"1"` → `"2"` is +1), not as absolute values (the
//!   world is seeded, not created by the recorded commands);
//! - operation polls by their final status only: how many polls answer `InProgress`
//!   depends on timing; the recorded ones are listed in the fixture.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use vmidentity_azure::Method;
use vmidentity_azure::client::RequestKind;
use vmidentity_planner::{Mode, RawSpec};
use vmidentity_tests::*;

fn fixtures() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/recorded");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("fixture reads");
            let v: Value = serde_json::from_str(&text).expect("fixture is JSON");
            for k in ["repo", "path", "commit"] {
                assert!(
                    v["source"][k].as_str().is_some_and(|s| !s.is_empty()),
                    "{} names no source {k}",
                    p.display()
                );
            }
            (
                p.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
                v,
            )
        })
        .collect()
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// The world a fixture starts from: its identities, and its target with the identity the
/// first step of sequence `from` shows (a GET).
fn seed(fx: &Value, from: usize) -> String {
    let location = str_of(fx, "location");
    let uais: Vec<Value> = fx["userAssignedIdentities"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|u| {
            json!({"id": u["id"], "location": location, "principalId": u["principalId"], "clientId": u["clientId"]})
        })
        .collect();
    let mut world = json!({
        "tenantId": fx["tenantId"],
        "defaultLocation": location,
        "userAssignedIdentities": uais,
    });
    if let Some(groups) = fx["resourceGroups"].as_array() {
        world["resourceGroups"] = Value::Array(
            groups
                .iter()
                .map(|g| json!({"id": g, "location": location}))
                .collect(),
        );
    }
    if let Some(target) = fx["target"].as_str() {
        let first = &fx["sequences"][from]["steps"][0];
        assert_eq!(
            str_of(first, "method"),
            "GET",
            "a sequence starts with a GET"
        );
        let ident = &first["identity"];
        let mut seed_ident = json!({"type": ident["type"]});
        if let Some(p) = ident.get("principalId") {
            seed_ident["principalId"] = p.clone();
        }
        if let Some(m) = ident["userAssignedIdentities"].as_object() {
            seed_ident["userAssignedIdentities"] =
                Value::Array(m.keys().map(|k| Value::String(k.clone())).collect());
        } else if let Some(ids) = ident["identityIds"].as_array() {
            // 2017-12-01 answers list the identities as the `identityIds` array.
            seed_ident["userAssignedIdentities"] = Value::Array(ids.clone());
        }
        let key = if target
            .to_ascii_lowercase()
            .contains("/virtualmachinescalesets/")
        {
            "virtualMachineScaleSets"
        } else {
            "virtualMachines"
        };
        world[key] = json!([{"id": target, "location": location, "identity": seed_ident}]);
    }
    world.to_string()
}

fn etag_number(v: &Value) -> Option<i64> {
    v.as_str()?.trim_matches('"').parse().ok()
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Replays one step; `Err` says what differs.
async fn replay_step(
    h: &Harness,
    fx: &Value,
    step: &Value,
    last_etag: &mut Option<(i64, i64)>,
    op_url: &mut Option<String>,
) -> Result<(), String> {
    let client = h.exec.client();
    let method = str_of(step, "method");
    if method == "POLL" {
        let url = op_url.take().ok_or("no operation to poll")?;
        let recorded: Vec<&str> = step["pollStatuses"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut seen = Vec::new();
        for _ in 0..50 {
            let r = client
                .send(Method::GET, &url, None, RequestKind::Poll)
                .await
                .map_err(|e| format!("poll: {e}"))?;
            let s = str_of(&r.body, "status").to_string();
            seen.push(s.clone());
            if s != "InProgress" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let terminal = |s: &&str| ["Succeeded", "Failed", "Canceled"].contains(s);
        let want = recorded.iter().rev().find(|s| terminal(s)).copied();
        let got = seen.last().map(String::as_str).unwrap_or_default();
        return match want {
            Some(w) if w != got => Err(format!("operation ended {got}, recorded {w}")),
            None if !["InProgress", "Succeeded"].contains(&seen[0].as_str()) => {
                Err(format!("first poll {}, recorded {recorded:?}", seen[0]))
            }
            _ => Ok(()),
        };
    }
    let path = step
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or_else(|| str_of(fx, "target"));
    let url = client
        .url(path, str_of(step, "apiVersion"))
        .map_err(|e| e.to_string())?;
    let (m, kind) = match method {
        "GET" => (Method::GET, RequestKind::Read),
        "PATCH" => (Method::PATCH, RequestKind::Write),
        "PUT" => (Method::PUT, RequestKind::Write),
        other => return Err(format!("unknown method {other}")),
    };
    let resp = client
        .send(m, &url, step.get("body"), kind)
        .await
        .map_err(|e| format!("{method} at {}: {e}", str_of(step, "apiVersion")))?;
    let mut diffs = Vec::new();
    if let Some(want) = step["status"].as_u64()
        && u64::from(resp.status) != want
    {
        diffs.push(format!("status {} (recorded {want})", resp.status));
    }
    if let Some(hs) = step["headers"].as_object() {
        for (name, want) in hs {
            let got = resp.headers.get(name).and_then(|v| v.to_str().ok());
            match (want, got) {
                (Value::Bool(true), None) => diffs.push(format!("no {name} header")),
                (Value::Bool(false), Some(g)) => diffs.push(format!("{name}: {g} (recorded none)")),
                (Value::String(w), g) if g != Some(w.as_str()) => {
                    diffs.push(format!("{name}: {g:?} (recorded {w})"))
                }
                _ => {}
            }
        }
    }
    if let Some(u) = resp
        .headers
        .get("azure-asyncoperation")
        .and_then(|v| v.to_str().ok())
    {
        *op_url = Some(u.to_string());
    }
    if let Some(want) = step.get("identity") {
        let got = resp.body.get("identity").cloned().unwrap_or(Value::Null);
        if &got != want {
            diffs.push(format!("identity {got} (recorded {want})"));
        }
    }
    if let Some(want) = step.get("provisioningState") {
        let got = &resp.body["properties"]["provisioningState"];
        if got != want {
            diffs.push(format!("provisioningState {got} (recorded {want})"));
        }
    }
    if let Some(want) = step.get("etag").and_then(etag_number) {
        match etag_number(&resp.body["etag"]) {
            None => diffs.push("no etag".into()),
            Some(got) => {
                if let Some((prev_want, prev_got)) = *last_etag
                    && want - prev_want != got - prev_got
                {
                    diffs.push(format!(
                        "etag moved by {} (recorded {})",
                        got - prev_got,
                        want - prev_want
                    ));
                }
                *last_etag = Some((want, got));
            }
        }
    }
    for k in ["id", "tags"] {
        if let Some(want) = step.get(k) {
            let got = resp.body.get(k).cloned().unwrap_or(Value::Null);
            if &got != want {
                diffs.push(format!("{k} {got} (recorded {want})"));
            }
        }
    }
    if let Some(want) = step["properties"].as_object() {
        let got = resp.body["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut wk: Vec<&String> = want.keys().collect();
        let mut gk: Vec<&String> = got.keys().collect();
        wk.sort();
        gk.sort();
        if wk != gk {
            diffs.push(format!("properties {gk:?} (recorded {wk:?})"));
        }
        for (k, w) in want {
            let g = got.get(k).cloned().unwrap_or(Value::Null);
            let ok = match w.as_str() {
                Some("<guid>") => g.as_str().is_some_and(is_guid),
                _ => &g == w,
            };
            if !ok {
                diffs.push(format!("properties.{k} {g} (recorded {w})"));
            }
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}

#[tokio::test]
async fn replays_recorded_traffic() {
    let (mut steps, mut steps_ok, mut seqs, mut seqs_ok) = (0, 0, 0, 0);
    let mut report = Vec::new();
    for (file, fx) in fixtures() {
        let h = Harness::new(&seed(&fx, 0)).await;
        for seq in fx["sequences"].as_array().cloned().unwrap_or_default() {
            seqs += 1;
            let mut all = true;
            let mut last_etag = None;
            let mut op_url = None;
            for (i, step) in seq["steps"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                steps += 1;
                match replay_step(&h, &fx, step, &mut last_etag, &mut op_url).await {
                    Ok(()) => steps_ok += 1,
                    Err(e) => {
                        all = false;
                        report.push(format!(
                            "{file} / {} / step {} {}: {e}",
                            str_of(&seq, "name"),
                            i + 1,
                            str_of(step, "method")
                        ));
                    }
                }
            }
            if all {
                seqs_ok += 1;
            }
        }
    }
    println!(
        "replay: {steps_ok}/{steps} steps and {seqs_ok}/{seqs} sequences match the recordings"
    );
    for r in &report {
        println!("  mismatch: {r}");
    }
    assert!(steps > 0);
    assert!(report.is_empty(), "{} mismatches (see above)", report.len());
}

#[tokio::test]
async fn plan_reaches_the_recorded_end_state() {
    let mut checked = 0;
    for (file, fx) in fixtures() {
        let Some(target) = fx["target"].as_str() else {
            continue;
        };
        for (n, seq) in fx["sequences"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let Some(intent) = seq.get("intent") else {
                continue;
            };
            let steps = seq["steps"].as_array().cloned().unwrap_or_default();
            let end = steps
                .iter()
                .rev()
                .find_map(|s| s.get("identity"))
                .cloned()
                .expect("a recorded end state");
            let cli_body = steps
                .iter()
                .find(|s| str_of(s, "method") == "PATCH")
                .map(|s| s["body"].to_string())
                .expect("a recorded PATCH");
            let h = Harness::new(&seed(&fx, n)).await;
            let obj = object("replayed", target, |r: &mut RawSpec| {
                r.arm_api_version = Some("2024-11-01".into());
                r.system_assigned = intent["systemAssigned"].as_bool();
                if str_of(intent, "mode") == "Exact" {
                    r.mode = Some(Mode::Exact);
                }
                r.user_assigned_identities = intent["userAssignedIdentities"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
            });
            let results = h.apply(&[obj]).await;
            assert!(
                results.iter().all(|r| r.error.is_none()),
                "{file} / {}: {results:?}",
                str_of(seq, "name")
            );
            let got = h
                .exec
                .client()
                .get(target, "2024-11-01")
                .await
                .expect("GET after apply");
            assert_eq!(
                got["identity"],
                end,
                "{file} / {}: the planner's end state differs from the recording",
                str_of(seq, "name")
            );
            let ours = h.patch_bodies();
            assert_eq!(ours.len(), 1, "{file} / {}: one PATCH", str_of(seq, "name"));
            // Sizes without blanks: the CLI spells the type "SystemAssigned,UserAssigned",
            // the planner "SystemAssigned, UserAssigned" (as GET shows it); ARM takes both.
            let size = |s: &str| s.chars().filter(|c| !c.is_whitespace()).count();
            assert!(
                size(&ours[0].to_string()) <= size(&cli_body),
                "{file} / {}: our body {} is larger than the CLI's {cli_body}",
                str_of(seq, "name"),
                ours[0]
            );
            checked += 1;
        }
    }
    println!("plan: {checked} recorded end states reached");
    assert!(checked >= 3);
}
