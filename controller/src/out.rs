//! Writing to stdout without panicking when the reader goes away (`vmidentity plan | head`).

use std::io::Write;

use vmidentity_planner::Change;

use crate::engine::TargetResult;

/// Writes `s` to stdout. A closed pipe ends the process quietly, as Unix tools do.
pub fn emit(s: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        tracing::warn!(error = %e, "cannot write to stdout");
    }
}

/// `println!` through [`emit`].
#[macro_export]
macro_rules! outln {
    () => { $crate::out::emit("\n") };
    ($($arg:tt)*) => { $crate::out::emit(&format!("{}\n", format!($($arg)*))) };
}

/// `print!` through [`emit`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::emit(&format!($($arg)*)) };
}

fn short(id: &str) -> String {
    vmidentity_planner::ArmId::parse(id)
        .map(|i| i.short())
        .unwrap_or_else(|_| id.to_string())
}

/// Human-readable report of an apply: per target, the writes sent (rendered for
/// `graph_endpoint`) and what changed.
pub fn render_apply(results: &[TargetResult], graph_endpoint: &str) -> String {
    let mut out = String::new();
    let (mut changed, mut same, mut failed) = (0, 0, 0);
    for r in results {
        let objs: Vec<String> = r.objects.iter().map(ToString::to_string).collect();
        let Some(plan) = &r.plan else {
            failed += 1;
            if let Some(e) = &r.error {
                out.push_str(&format!(
                    "! {}  ({})\n    {}: {e}\n",
                    short(&r.target),
                    objs.join(", "),
                    e.reason()
                ));
            }
            continue;
        };
        if plan.is_converged() && r.grant_writes.is_empty() {
            same += 1;
            out.push_str(&format!(
                "  {}  up to date ({})\n",
                plan.target.short(),
                objs.join(", ")
            ));
            continue;
        }
        out.push_str(&format!(
            "~ {}  ({})\n",
            plan.target.short(),
            objs.join(", ")
        ));
        for w in r.all_writes() {
            let req = w.request(graph_endpoint);
            let body = match &req.body {
                None => String::new(),
                Some(b) => format!(" {}", serde_json::to_string(b).unwrap_or_default()),
            };
            out.push_str(&format!(
                "    {} {}?api-version={}{body}\n",
                req.method,
                req.id(),
                req.version()
            ));
        }
        match &r.error {
            Some(e) => {
                failed += 1;
                out.push_str(&format!("    -> failed: {}: {e}\n", e.reason()));
            }
            None => {
                changed += 1;
                for c in &plan.changes {
                    let extra = match (c, &r.live_after) {
                        (Change::EnableSystemAssigned, Some(l)) => l
                            .identity
                            .principal_id
                            .as_ref()
                            .map(|p| format!(" (principalId {p})"))
                            .unwrap_or_default(),
                        _ => String::new(),
                    };
                    let what = match c {
                        Change::EnableSystemAssigned => "+ system-assigned identity".to_string(),
                        Change::DisableSystemAssigned => "- system-assigned identity".to_string(),
                        Change::AddUserAssigned(id) => format!("+ {}", id.short()),
                        Change::RemoveUserAssigned(id) => format!("- {}", id.short()),
                        Change::RepairUserAssigned(id) => {
                            format!("-/+ {} (stale entry re-attached)", id.short())
                        }
                    };
                    out.push_str(&format!("    {what}{extra}\n"));
                }
                for w in r.all_writes().iter().filter(|w| {
                    w.role_assignment_id().is_some()
                        || matches!(
                            w,
                            vmidentity_planner::Write::GroupMemberAdd { .. }
                                | vmidentity_planner::Write::GroupMemberRemove { .. }
                        )
                }) {
                    out.push_str(&format!("    {}\n", describe_grant(w, r)));
                }
            }
        }
    }
    out.push_str(&format!(
        "Apply: {changed} changed, {same} up to date, {failed} failed.\n"
    ));
    out
}

/// A grant write for people (`plan` and `apply` text output): roles by name and GUID.
pub fn describe_grant(w: &vmidentity_planner::Write, result: &TargetResult) -> String {
    match w {
        vmidentity_planner::Write::RoleAssignmentPut {
            scope,
            role_definition_id,
            principal_id,
            ..
        } => format!(
            "+ role {} for principal {principal_id} at {}",
            result.role(role_definition_id),
            scope.trim_end_matches('/')
        ),
        vmidentity_planner::Write::GroupMemberAdd {
            group_id,
            principal_id,
        } => format!("+ member {principal_id} of group {group_id}"),
        vmidentity_planner::Write::RoleAssignmentDelete { id } => format!("- DELETE {id}"),
        vmidentity_planner::Write::GroupMemberRemove {
            group_id,
            principal_id,
        } => format!("- DELETE /groups/{group_id}/members/{principal_id}/$ref"),
        vmidentity_planner::Write::IdentityPatch { target, .. } => format!("~ PATCH {target}"),
    }
}
