//! Command-line interface: `plan`, `apply`, `demo`, `crd`, `controller`, `import`,
//! `audit`.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use vmidentity_azure::Executor;
use vmidentity_planner::{DesiredObject, render};

pub use crate::connect::AzureArgs;
use crate::connect::connect;
#[cfg(not(feature = "simulator"))]
use crate::connect::no_simulator;
use crate::engine::{self, State, TargetResult};
use crate::input::{self, LoadedObject};
pub use crate::out::{describe_grant, render_apply};

#[derive(Debug, Parser)]
#[command(
    name = "vmidentity",
    version,
    about = "Keeps the managed identities of Azure VMs and VM scale sets exactly as declared"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the exact writes that would make the targets right (like `terraform plan`).
    Plan(PlanArgs),
    /// Reconcile the objects in files against ARM once, print each write and its result, exit.
    Apply(ApplyArgs),
    /// Run the whole thing on the built-in ARM simulator with bundled examples.
    Demo(DemoArgs),
    /// Print the CustomResourceDefinition YAML.
    Crd(CrdArgs),
    /// Run the Kubernetes controller.
    Controller(crate::operator::ControllerArgs),
    /// Write a VirtualMachineIdentity per existing VM / VM scale set, read in bulk (Resource
    /// Graph, Microsoft Graph), such that `plan` of them prints nothing to do.
    Import(crate::import::ImportArgs),
    /// Read-only security review: unmanaged identities and grants, drift, privileged role
    /// assignments and policy violations of the VMs / VM scale sets of some subscriptions.
    Audit(crate::audit::AuditArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// VirtualMachineIdentity YAML files or directories (multi-document; `status` allowed).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// ARM GET body of the target (with its `id`), or an object mapping resource ID to GET
    /// body: plan offline. Without it, `plan` reads every target (and, for objects with grants,
    /// their role assignments and group memberships) from --endpoint with the same credentials
    /// as `apply`, or from --simulator; it writes nothing.
    #[arg(long, conflicts_with = "simulator")]
    pub live: Option<PathBuf>,
    #[command(flatten)]
    pub azure: AzureArgs,
    /// Targets read at once (with --endpoint or --simulator).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
    /// Exit 2 when there are changes (0 when converged, 1 on errors).
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// VirtualMachineIdentityPolicy YAML (files or directories; `Namespace` documents in them
    /// give namespace labels for the policies' selectors): every object is checked as the
    /// controller would check it, and nothing is planned or written when one is denied.
    #[arg(long = "policy", value_name = "FILE")]
    pub policy: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// VirtualMachineIdentity YAML files or directories.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub azure: AzureArgs,
    /// Keep ownership records in this JSON file between runs (read before, written after).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Targets worked on at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// VirtualMachineIdentityPolicy YAML (files or directories; `Namespace` documents in them
    /// give namespace labels for the policies' selectors): every object is checked as the
    /// controller would check it, and nothing is planned or written when one is denied.
    #[arg(long = "policy", value_name = "FILE")]
    pub policy: Vec<PathBuf>,

    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

#[derive(Debug, clap::Args)]
pub struct CrdArgs {
    /// Print the VirtualMachineIdentityPolicy CRD instead of the VirtualMachineIdentity one.
    #[arg(long)]
    pub policy: bool,
}

pub use crate::error::CliError;

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Plan(a) => plan(a).await,
        Command::Apply(a) => apply(a).await,
        #[cfg(feature = "simulator")]
        Command::Demo(_) => crate::demo::run().await,
        #[cfg(not(feature = "simulator"))]
        Command::Demo(_) => Err(no_simulator("`vmidentity demo`")),
        Command::Controller(a) => crate::operator::run(a).await,
        Command::Import(a) => crate::import::run(a).await,
        Command::Audit(a) => crate::audit::run(a).await,
        Command::Crd(a) => {
            let y = if a.policy {
                crate::crd::policy_crd_yaml()
            } else {
                crate::crd::crd_yaml()
            }
            .map_err(|e| CliError::Other(e.to_string()))?;
            crate::out!("{y}");
            Ok(0)
        }
    }
}

fn desired(loaded: &[LoadedObject]) -> Result<Vec<DesiredObject>, CliError> {
    loaded
        .iter()
        .map(|o| o.to_desired().map_err(CliError::from))
        .collect()
}

/// The `-o json` elements of every planned write: each write's request as
/// [`Write::request`] renders it for `graph_endpoint` (what `apply` sends).
pub fn writes_json(results: &[TargetResult], graph_endpoint: &str) -> Value {
    Value::Array(
        results
            .iter()
            .filter(|r| r.plan.is_some())
            .flat_map(|r| r.all_writes())
            .map(|w| json!(w.request(graph_endpoint)))
            .collect(),
    )
}

fn print_errors(results: &[TargetResult]) -> bool {
    let mut any = false;
    for r in results {
        for refused in &r.refused {
            any = true;
            eprintln!(
                "error: {} ({}): {}: {refused}",
                r.target,
                refused.object,
                vmidentity_planner::Refused::REASON
            );
        }
        if let Some(e) = &r.error {
            any = true;
            let objs: Vec<String> = r.objects.iter().map(ToString::to_string).collect();
            eprintln!(
                "error: {} ({}): {}: {e}",
                r.target,
                objs.join(", "),
                e.reason()
            );
        }
    }
    any
}

/// Checks every object against `--policy` (if given); prints each denial. True when one was
/// denied. With `exec`, roles are also checked against their definitions in Azure.
async fn policy_denies(
    paths: &[PathBuf],
    objects: &[DesiredObject],
    exec: Option<&Executor>,
) -> Result<bool, CliError> {
    if paths.is_empty() {
        return Ok(false);
    }
    let set = input::load_policies(paths)?;
    let mut denied = false;
    for o in objects.iter().filter(|o| !o.deleting) {
        let ns = &o.object.namespace;
        let verdict = crate::operator::policy::check_with_azure(
            &set.policies,
            vmidentity_planner::policy::Namespace {
                name: ns,
                labels: set.namespace_labels.get(ns),
            },
            &o.spec,
            exec,
        )
        .await
        .map_err(|e| CliError::Other(format!("checking {} against --policy: {e}", o.object)))?;
        if let Err(d) = verdict {
            denied = true;
            eprintln!("error: {}: PolicyDenied: {d}", o.object);
        }
    }
    Ok(denied)
}

/// What `plan` says about where the existing role assignments and group memberships came
/// from, when any object has grants; `None` otherwise.
pub fn grants_source_note(results: &[TargetResult], read_from_azure: bool) -> Option<&'static str> {
    if !results.iter().any(|r| r.grants.is_some()) {
        return None;
    }
    Some(if read_from_azure {
        "Existing role assignments and group memberships were read from Azure."
    } else {
        "Existing role assignments and group memberships were NOT read from Azure: with --live they are taken from the objects' status.applied, so a grant made or removed outside vmidentity is not seen (plan with --endpoint or --simulator instead of --live to read them)."
    })
}

async fn plan(a: PlanArgs) -> Result<i32, CliError> {
    let loaded = input::load_objects(&a.files)?;
    let objects = desired(&loaded)?;
    // Read every input before a connection: bad input is refused without a request.
    let lives = a.live.as_ref().map(|p| input::load_live(p)).transpose()?;
    let azure = match &lives {
        Some(_) => None,
        None if a.azure.simulator.is_none() && a.azure.token.is_none() => {
            return Err(CliError::Other(
                "plan needs live state: no ARM credentials for --endpoint (set AZURE_ACCESS_TOKEN or --token, for example `az account get-access-token --query accessToken -o tsv`), or give --simulator WORLD.yaml, or --live FILE to plan offline".into(),
            ));
        }
        None => Some(connect(&a.azure).await?),
    };
    let exec = azure.as_ref().map(|z| &z.exec);
    if policy_denies(&a.policy, &objects, exec).await? {
        return Ok(1);
    }
    let (results, graph_endpoint) = match (&lives, exec) {
        (Some(lives), _) => (
            engine::plan_offline(objects, lives),
            a.azure.graph_endpoint.clone(),
        ),
        (None, Some(exec)) => (
            engine::plan_online(exec, objects, a.concurrency).await,
            exec.graph_endpoint().to_string(),
        ),
        (None, None) => {
            return Err(CliError::Other(
                "give --live FILE, --simulator WORLD.yaml or ARM credentials".into(),
            ));
        }
    };
    let note = grants_source_note(&results, lives.is_none());
    match a.output {
        Output::Json => {
            crate::outln!(
                "{}",
                serde_json::to_string_pretty(&writes_json(&results, &graph_endpoint))
                    .unwrap_or_default()
            );
            // The JSON on stdout is an array of writes (a contract): the note goes to stderr.
            if let Some(n) = note {
                eprintln!("note: {n}");
            }
        }
        Output::Text => {
            let plans: Vec<_> = results
                .iter()
                .filter_map(|r| r.plan.clone().map(Ok))
                .collect();
            let mut text = render::render(&plans);
            let grants: Vec<String> = results
                .iter()
                .flat_map(|r| r.grant_writes.iter().map(move |w| describe_grant(w, r)))
                .collect();
            if !grants.is_empty() {
                text.push_str("\nRole assignments and group memberships:\n");
                for g in grants {
                    text.push_str(&format!("  {g}\n"));
                }
            }
            if let Some(n) = note {
                text.push_str(&format!("\nNote: {n}\n"));
            }
            crate::out!("{text}");
        }
    }
    print_held(&results);
    if print_errors(&results) {
        return Ok(1);
    }
    let changes = results.iter().any(|r| r.writes() > 0);
    Ok(if a.detailed_exitcode && changes { 2 } else { 0 })
}

fn read_state(path: &PathBuf) -> Result<State, CliError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| {
            CliError::Other(format!(
                "{}: state file does not parse: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::new()),
        Err(e) => Err(CliError::Other(format!("{}: {e}", path.display()))),
    }
}

fn write_state(path: &PathBuf, state: &State) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(state).map_err(|e| CliError::Other(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text + "\n")
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))
}

/// The objects `apply` must not write for, one line each: those whose own
/// `vmidentity.dev/reconcile-policy` annotation says `observe` (the controller never writes for
/// them either), or says something that is neither `manage` nor `observe`. A file has no
/// Namespace, so only the object's own annotation counts.
pub fn not_to_apply(loaded: &[LoadedObject]) -> Vec<String> {
    use crate::crd::RECONCILE_POLICY_ANNOTATION;
    use crate::operator::observe::{ReconcilePolicy, reconcile_policy};
    loaded
        .iter()
        .filter_map(|l| {
            let value = l.object.annotation(RECONCILE_POLICY_ANNOTATION);
            let why = match reconcile_policy(value, None, "", ReconcilePolicy::Manage) {
                Ok(ReconcilePolicy::Manage) => return None,
                Ok(ReconcilePolicy::Observe) => "is \"observe\": apply never writes for an observed object (see what it would write with `vmidentity plan`, or set it to \"manage\")".to_string(),
                Err(_) => format!(
                    "is {:?}; it must be \"manage\" or \"observe\"",
                    value.unwrap_or_default()
                ),
            };
            Some(format!(
                "{}: {}: metadata.annotations[{RECONCILE_POLICY_ANNOTATION}] {why}",
                l.source,
                l.object_ref()
            ))
        })
        .collect()
}

async fn apply(a: ApplyArgs) -> Result<i32, CliError> {
    let loaded = input::load_objects(&a.files)?;
    let refused = not_to_apply(&loaded);
    if !refused.is_empty() {
        for line in &refused {
            eprintln!("error: {line}");
        }
        eprintln!("error: nothing was written");
        return Ok(1);
    }
    let mut objects = desired(&loaded)?;
    let state = match &a.state {
        Some(p) => read_state(p)?,
        None => State::new(),
    };
    objects = engine::with_state(objects, &state);
    let azure = connect(&a.azure).await?;
    let exec = &azure.exec;
    if policy_denies(&a.policy, &objects, Some(exec)).await? {
        eprintln!("error: nothing was written (objects denied by --policy)");
        return Ok(1);
    }
    let results = engine::apply(exec, objects.clone(), a.concurrency).await;
    match a.output {
        Output::Text => crate::out!("{}", render_apply(&results, exec.graph_endpoint())),
        Output::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&apply_json(&results, exec.graph_endpoint()))
                .unwrap_or_default()
        ),
    }
    if let Some(p) = &a.state {
        write_state(p, &engine::next_state(state, &objects, &results))?;
    }
    print_held(&results);
    let failed = print_errors(&results);
    let _ = std::io::stdout().flush();
    Ok(if failed { 1 } else { 0 })
}

/// One `note:` line on stderr (`plan` and `apply`) per object that lists grants its
/// identities held before and that it does not own (made by someone else): they are left
/// alone, not recorded in the state, and so never removed by it; `vmidentity.dev/adopt:
/// "true"` takes them over.
fn print_held(results: &[TargetResult]) {
    for r in results.iter().filter(|r| r.error.is_none()) {
        let Some(g) = &r.grants else { continue };
        for (object, h) in &g.held {
            let what: Vec<String> =
                h.role_assignments
                    .iter()
                    .map(|a| {
                        format!(
                            "role {} at {} (role assignment {})",
                            r.role(&a.role_definition_id),
                            a.scope,
                            a.id
                        )
                    })
                    .chain(h.group_memberships.iter().map(|m| {
                        format!("membership of group {} ({})", m.group_object_id, m.identity)
                    }))
                    .collect();
            eprintln!(
                "note: {} ({object}): held, not adopted (made before by someone else; left alone, never removed by this object; annotate {}=true to manage): {}",
                r.target,
                crate::crd::ADOPT_ANNOTATION,
                what.join("; ")
            );
        }
    }
}

/// `apply -o json`: one element per write (as sent: rendered for `graph_endpoint`) with its
/// result, plus refused targets.
pub fn apply_json(results: &[TargetResult], graph_endpoint: &str) -> Value {
    let mut out = Vec::new();
    for r in results {
        for refused in &r.refused {
            out.push(json!({
                "id": r.target,
                "objects": [refused.object.to_string()],
                "result": {"status": "Refused", "reason": vmidentity_planner::Refused::REASON, "message": refused.to_string()},
            }));
        }
        match (&r.plan, &r.error) {
            (Some(_), err) => {
                for w in r.all_writes() {
                    let mut v = json!(w.request(graph_endpoint));
                    v["result"] = match err {
                        None => json!({"status": "Succeeded"}),
                        Some(e) => {
                            json!({"status": "Failed", "reason": e.reason(), "message": e.to_string()})
                        }
                    };
                    out.push(v);
                }
            }
            (None, Some(e)) => out.push(json!({
                "id": r.target,
                "objects": r.objects.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "result": {"status": "Refused", "reason": e.reason(), "message": e.to_string()},
            })),
            (None, None) => {}
        }
    }
    Value::Array(out)
}
