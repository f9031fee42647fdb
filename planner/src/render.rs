//! Human-readable plans, in the spirit of `terraform plan`.

use std::fmt::Write as _;

use crate::plan::{Change, PlanError, TargetPlan};

/// Renders one target's plan: a header line, then one line per change.
pub fn render_target(plan: &TargetPlan) -> String {
    let mut out = String::new();
    if plan.is_converged() {
        let _ = writeln!(out, "  {}  (no changes)", plan.target);
        return out;
    }
    let _ = writeln!(
        out,
        "~ {}  (PATCH, api-version {})",
        plan.target, plan.api_version
    );
    let (b, a) = (plan.before.identity_type(), plan.after.identity_type());
    if b != a {
        let _ = writeln!(
            out,
            "    identity.type: {:?} -> {:?}",
            b.as_str(),
            a.as_str()
        );
    }
    for c in &plan.changes {
        let line = match c {
            Change::EnableSystemAssigned => "  + systemAssigned".to_string(),
            Change::DisableSystemAssigned => {
                "  - systemAssigned   (destroys its principal)".to_string()
            }
            Change::AddUserAssigned(id) => format!("  + {id}"),
            Change::RemoveUserAssigned(id) => format!("  - {id}"),
            Change::RepairUserAssigned(id) => format!("-/+ {id}   (stale entry: re-attached)"),
        };
        let _ = writeln!(out, "  {line}");
    }
    if !plan.objects.is_empty() {
        let names: Vec<String> = plan.objects.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "      (from {})", names.join(", "));
    }
    out
}

/// Renders a whole plan with a closing summary line.
pub fn render(plans: &[Result<TargetPlan, PlanError>]) -> String {
    let mut out = String::new();
    let (mut change, mut same, mut failed) = (0, 0, 0);
    for p in plans {
        match p {
            Ok(p) => {
                if p.is_converged() {
                    same += 1;
                } else {
                    change += 1;
                }
                out.push_str(&render_target(p));
            }
            Err(e) => {
                failed += 1;
                let _ = writeln!(out, "! {e}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\nPlan: {change} to change, {same} unchanged, {failed} refused."
    );
    out
}
