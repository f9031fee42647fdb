//! The history a seed stands for: every operation, its arguments and the pause after it, drawn
//! from one seeded generator before anything runs, so a seed replays the same history (the
//! timing of the controller's own work is the only thing a replay does not repeat).

use std::collections::BTreeMap;
use std::fmt;

/// Targets of the soak's world: VMs `vm-0..`, then one scale set. The last VM is the one the
/// out-of-band writer may delete (and re-create).
pub const VMS: usize = 3;
pub const TARGETS: usize = VMS + 1;
pub const DELETABLE_TARGET: usize = VMS - 1;
/// User-assigned identities of the world.
pub const UAIS: usize = 6;
/// Namespaces of the objects, and the policy that covers each (two policies).
pub const NAMESPACES: [&str; 3] = ["soak-a", "soak-b", "soak-c"];
/// Most objects alive (created, not being deleted) at once.
const MAX_OBJECTS: usize = 10;

/// SplitMix64: small, seedable, every seed (0 included) good.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1).max(1)
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// What an object declares (the soak's subset of the spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub system: Option<bool>,
    /// Indexes into the UAI pool, sorted, no duplicates.
    pub uais: Vec<usize>,
    pub exact: bool,
    pub retain: bool,
    /// `armApiVersion` (None: the default).
    pub api: Option<&'static str>,
    /// `Reader` at the soak's resource group, for the system identity (None) or a listed UAI.
    pub roles: Vec<Option<usize>>,
    /// Group memberships: (identity as in `roles`, group index).
    pub groups: Vec<(Option<usize>, usize)>,
}

/// Groups objects may name (the out-of-band writer uses the last one, which no object names).
pub const GROUPS: usize = 3;

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uais={:?}", self.uais)?;
        if let Some(s) = self.system {
            write!(f, " system={s}")?;
        }
        if self.exact {
            write!(f, " Exact")?;
        }
        if self.retain {
            write!(f, " Retain")?;
        }
        if let Some(a) = self.api {
            write!(f, " api={a}")?;
        }
        let who = |i: &Option<usize>| i.map_or("system".to_string(), |u| format!("uai-{u}"));
        if !self.roles.is_empty() {
            let r: Vec<String> = self.roles.iter().map(who).collect();
            write!(f, " Reader for [{}]", r.join(", "))?;
        }
        for (i, g) in &self.groups {
            write!(f, " {} in g{g}", who(i))?;
        }
        Ok(())
    }
}

/// An injected fault (cleared when the history quiesces, or after its own duration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After` on every ARM request for `secs`.
    Throttle { retry_after: u64, secs: u64 },
    /// 500 / 503 on identity PATCHes for `secs`.
    ServerError { code: u16, secs: u64 },
    /// Every ARM request answered `ms` late, for `secs`.
    Slow { ms: u64, secs: u64 },
    /// Long-running operations take `ms` and need `polls` polls (until the next quiesce).
    SlowLro { ms: u64, polls: u32 },
    /// The next `times` identity PATCHes answer 412 (PreconditionFailed).
    Precondition { times: u32 },
    /// The next `times` long-running operations end `Failed`.
    FailLro { times: u32 },
    /// The Entra token endpoint answers 503 for `secs`.
    TokenOutage { secs: u64 },
    /// The next `times` role-assignment PUTs answer 400 PrincipalNotFound (replication delay).
    PrincipalNotFound { times: u32 },
    /// Network pause to ARM: every request in the next `secs` waits `secs`.
    Pause { secs: u64 },
}

/// One step of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create {
        ns: usize,
        name: String,
        target: usize,
        spec: Spec,
    },
    Edit {
        ns: usize,
        name: String,
        spec: Spec,
    },
    Delete {
        ns: usize,
        name: String,
    },
    OobAddUai {
        target: usize,
        uai: usize,
    },
    OobRemoveUai {
        target: usize,
        uai: usize,
    },
    OobSystem {
        target: usize,
        on: bool,
    },
    /// A PUT of the resource without its identity block (`{"type":"None"}`).
    OobDropIdentity {
        target: usize,
    },
    /// A role assignment no object asks for (Monitoring Metrics Publisher for the UAI's
    /// principal at the resource group), created by someone else.
    OobGrant {
        uai: usize,
    },
    /// The UAI's principal added to the group no object names.
    OobGroupMember {
        uai: usize,
    },
    /// Delete the UAI and create it again under the same name (new principal).
    RecreateUai {
        uai: usize,
    },
    DeleteVm {
        target: usize,
    },
    RecreateVm {
        target: usize,
    },
    Fault(Fault),
    /// SIGKILL the leader; it restarts after `restart_ms`.
    KillLeader {
        restart_ms: u64,
    },
    /// Stop and start kube-apiserver and etcd (tests/apiserver/kube-down.sh, kube-up.sh).
    RestartApiserver,
    /// Clear faults, wait for convergence, check the model.
    Quiesce,
}

impl Op {
    /// The kind, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Edit { .. } => "edit",
            Op::Delete { .. } => "delete",
            Op::OobAddUai { .. } => "oob-add-uai",
            Op::OobRemoveUai { .. } => "oob-remove-uai",
            Op::OobSystem { on: true, .. } => "oob-enable-system",
            Op::OobSystem { on: false, .. } => "oob-disable-system",
            Op::OobDropIdentity { .. } => "oob-put-without-identity",
            Op::RecreateUai { .. } => "oob-recreate-uai",
            Op::OobGrant { .. } => "oob-role-assignment",
            Op::OobGroupMember { .. } => "oob-group-member",
            Op::Fault(Fault::PrincipalNotFound { .. }) => "fault-principal-not-found",
            Op::DeleteVm { .. } => "oob-delete-vm",
            Op::RecreateVm { .. } => "oob-recreate-vm",
            Op::Fault(Fault::Throttle { .. }) => "fault-429-storm",
            Op::Fault(Fault::ServerError { .. }) => "fault-5xx",
            Op::Fault(Fault::Slow { .. }) => "fault-slow-arm",
            Op::Fault(Fault::SlowLro { .. }) => "fault-slow-lro",
            Op::Fault(Fault::Precondition { .. }) => "fault-412",
            Op::Fault(Fault::FailLro { .. }) => "fault-failed-lro",
            Op::Fault(Fault::TokenOutage { .. }) => "fault-token-endpoint",
            Op::Fault(Fault::Pause { .. }) => "fault-network-pause",
            Op::KillLeader { .. } => "kill-leader",
            Op::RestartApiserver => "restart-apiserver-etcd",
            Op::Quiesce => "quiesce",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create {
                ns,
                name,
                target,
                spec,
            } => write!(f, "create {}/{name} on t{target}: {spec}", NAMESPACES[*ns]),
            Op::Edit { ns, name, spec } => write!(f, "edit {}/{name}: {spec}", NAMESPACES[*ns]),
            Op::Delete { ns, name } => write!(f, "delete {}/{name}", NAMESPACES[*ns]),
            Op::OobAddUai { target, uai } => write!(f, "out-of-band: add uai-{uai} to t{target}"),
            Op::OobRemoveUai { target, uai } => {
                write!(f, "out-of-band: remove uai-{uai} from t{target}")
            }
            Op::OobSystem { target, on } => write!(f, "out-of-band: system={on} on t{target}"),
            Op::OobDropIdentity { target } => {
                write!(f, "out-of-band: PUT t{target} without identity")
            }
            Op::RecreateUai { uai } => write!(f, "out-of-band: delete and re-create uai-{uai}"),
            Op::OobGrant { uai } => write!(f, "out-of-band: a role assignment for uai-{uai}"),
            Op::OobGroupMember { uai } => {
                write!(f, "out-of-band: uai-{uai} into g{}", GROUPS - 1)
            }
            Op::DeleteVm { target } => write!(f, "out-of-band: delete t{target}"),
            Op::RecreateVm { target } => write!(f, "out-of-band: re-create t{target}"),
            Op::Fault(x) => write!(f, "fault: {x:?}"),
            Op::KillLeader { restart_ms } => {
                write!(f, "SIGKILL the leader (restart after {restart_ms} ms)")
            }
            Op::RestartApiserver => write!(f, "restart kube-apiserver and etcd"),
            Op::Quiesce => write!(f, "quiesce and check"),
        }
    }
}

/// A step and the pause before the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    pub pause_ms: u64,
}

/// What the generator knows of the objects it has made.
#[derive(Debug, Clone)]
struct GenObject {
    ns: usize,
}

fn gen_spec(rng: &mut Rng) -> Spec {
    let n = rng.below(4); // 0..=3 identities
    let mut uais: Vec<usize> = (0..n).map(|_| rng.below(UAIS)).collect();
    uais.sort_unstable();
    uais.dedup();
    let system = match rng.below(10) {
        0..=5 => None,
        6..=8 => Some(true),
        _ => Some(false),
    };
    // Grants only for identities the object lists (the CRD's rule), the system identity
    // only when it asks for it.
    let mut who: Vec<Option<usize>> = uais.iter().map(|u| Some(*u)).collect();
    if system == Some(true) {
        who.push(None);
    }
    let mut roles = Vec::new();
    let mut groups = Vec::new();
    if !who.is_empty() && rng.chance(35) {
        roles.push(who[rng.below(who.len())]);
    }
    if !who.is_empty() && rng.chance(25) {
        groups.push((who[rng.below(who.len())], rng.below(GROUPS - 1)));
    }
    Spec {
        system,
        uais,
        exact: rng.chance(6),
        retain: rng.chance(25),
        api: rng.chance(30).then_some("2024-11-01"),
        roles,
        groups,
    }
}

/// The history of `seed`: `steps` steps (a quiesce every 8-16 steps, and one at the end).
pub fn generate(seed: u64, steps: usize, allow_apiserver_restart: bool) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut objects: BTreeMap<String, GenObject> = BTreeMap::new();
    let mut next_name = 0usize;
    let mut vm_deleted = false;
    let mut out = Vec::new();
    let mut until_quiesce = rng.range(8, 16);
    while out.len() < steps {
        if until_quiesce == 0 {
            out.push(Step {
                op: Op::Quiesce,
                pause_ms: 0,
            });
            until_quiesce = rng.range(8, 16);
            continue;
        }
        until_quiesce -= 1;
        let pick = rng.below(100);
        let op = match pick {
            0..=17 if objects.len() < MAX_OBJECTS => {
                let name = format!("o{next_name}");
                next_name += 1;
                // Few targets, many objects: half of them on t0.
                let target = if rng.chance(40) {
                    0
                } else {
                    rng.below(TARGETS)
                };
                let ns = rng.below(NAMESPACES.len());
                objects.insert(name.clone(), GenObject { ns });
                Op::Create {
                    ns,
                    name,
                    target,
                    spec: gen_spec(&mut rng),
                }
            }
            0..=35 if !objects.is_empty() => {
                let (name, o) = nth(&objects, rng.below(objects.len()));
                Op::Edit {
                    ns: o.ns,
                    name,
                    spec: gen_spec(&mut rng),
                }
            }
            36..=42 if objects.len() > 2 => {
                let (name, o) = nth(&objects, rng.below(objects.len()));
                objects.remove(&name);
                Op::Delete { ns: o.ns, name }
            }
            46..=51 => Op::OobAddUai {
                target: rng.below(TARGETS),
                uai: rng.below(UAIS),
            },
            52..=56 => Op::OobRemoveUai {
                target: rng.below(TARGETS),
                uai: rng.below(UAIS),
            },
            57..=61 => Op::OobSystem {
                target: rng.below(TARGETS),
                on: rng.chance(50),
            },
            62..=63 => Op::OobDropIdentity {
                target: rng.below(TARGETS),
            },
            64..=65 => Op::RecreateUai {
                uai: rng.below(UAIS),
            },
            66 if !vm_deleted => {
                vm_deleted = true;
                Op::DeleteVm {
                    target: DELETABLE_TARGET,
                }
            }
            66..=67 if vm_deleted => {
                vm_deleted = false;
                Op::RecreateVm {
                    target: DELETABLE_TARGET,
                }
            }
            68..=71 => Op::Fault(Fault::Throttle {
                retry_after: rng.range(1, 5),
                secs: rng.range(3, 15),
            }),
            72..=74 => Op::Fault(Fault::ServerError {
                code: if rng.chance(50) { 500 } else { 503 },
                secs: rng.range(2, 10),
            }),
            75..=76 => Op::Fault(Fault::Slow {
                ms: rng.range(200, 1500),
                secs: rng.range(3, 10),
            }),
            77 => Op::Fault(Fault::FailLro {
                times: rng.range(1, 2) as u32,
            }),
            78 => Op::Fault(Fault::SlowLro {
                ms: rng.range(500, 4000),
                polls: rng.range(1, 4) as u32,
            }),
            79..=81 => Op::Fault(Fault::Precondition {
                times: rng.range(1, 3) as u32,
            }),
            82 => Op::Fault(Fault::Pause {
                secs: rng.range(2, 8),
            }),
            83..=86 => Op::KillLeader {
                restart_ms: rng.range(0, 3000),
            },
            87 if allow_apiserver_restart && rng.chance(50) => Op::RestartApiserver,
            88..=89 => Op::Fault(Fault::TokenOutage {
                secs: rng.range(5, 40),
            }),
            90..=91 => Op::OobGrant {
                uai: rng.below(UAIS),
            },
            92 => Op::OobGroupMember {
                uai: rng.below(UAIS),
            },
            93..=94 => Op::Fault(Fault::PrincipalNotFound {
                times: rng.range(1, 3) as u32,
            }),
            _ => {
                // Re-draw as an edit or create (the most common operations).
                if let Some((name, o)) =
                    (!objects.is_empty()).then(|| nth(&objects, rng.below(objects.len())))
                {
                    Op::Edit {
                        ns: o.ns,
                        name,
                        spec: gen_spec(&mut rng),
                    }
                } else {
                    let name = format!("o{next_name}");
                    next_name += 1;
                    let ns = rng.below(NAMESPACES.len());
                    let target = rng.below(TARGETS);
                    objects.insert(name.clone(), GenObject { ns });
                    Op::Create {
                        ns,
                        name,
                        target,
                        spec: gen_spec(&mut rng),
                    }
                }
            }
        };
        let pause_ms = rng.range(100, 2500);
        out.push(Step { op, pause_ms });
    }
    if out.last().is_none_or(|s| s.op != Op::Quiesce) {
        out.push(Step {
            op: Op::Quiesce,
            pause_ms: 0,
        });
    }
    out
}

fn nth(objects: &BTreeMap<String, GenObject>, i: usize) -> (String, GenObject) {
    objects
        .iter()
        .nth(i)
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap_or_else(|| (String::new(), GenObject { ns: 0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_is_one_history() {
        assert_eq!(generate(7, 200, true), generate(7, 200, true));
        assert_ne!(generate(7, 200, true), generate(8, 200, true));
    }

    #[test]
    fn histories_end_quiet_and_quiesce_regularly() {
        for seed in 0..50 {
            let h = generate(seed, 120, false);
            assert_eq!(h.last().map(|s| &s.op), Some(&Op::Quiesce));
            let mut since = 0;
            for s in &h {
                since = if s.op == Op::Quiesce { 0 } else { since + 1 };
                assert!(since <= 16, "seed {seed}: {since} steps without a quiesce");
                assert_ne!(
                    s.op,
                    Op::RestartApiserver,
                    "seed {seed}: restart not allowed"
                );
            }
        }
    }
}
