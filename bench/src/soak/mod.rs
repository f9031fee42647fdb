//! `bench soak --seed S --minutes M`: a seeded chaos soak. Two real `vmidentity controller`
//! replicas (leader election on a Lease) against the real kube-apiserver of tests/apiserver
//! and the ARM simulator in this process; a random history (from the seed) of object
//! creates, edits and deletes, out-of-band writers, faults, leader kills and API server
//! restarts; checked against a model whenever the history quiesces, and continuously on the
//! simulator's request log. On a violation: the seed, the shortest failing history prefix
//! found (delta debugging, a bounded number of re-runs) and the request log around it; exit 1.

mod history;
mod model;
mod run;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use history::{Step, generate};
use run::{Env, Outcome, execute};

/// What `bench soak` was asked to do.
pub struct Options {
    pub seed: u64,
    pub minutes: f64,
    pub kubeconfig: Option<PathBuf>,
    pub vmidentity: Option<PathBuf>,
    /// Re-runs the shrinker may spend on a failure.
    pub shrink_runs: usize,
    /// Allow restarts of kube-apiserver + etcd (only when the API server is
    /// tests/apiserver's own, which the soak can stop and start).
    pub apiserver_restarts: bool,
}

pub async fn run(opt: Options) -> Result<()> {
    let started = Instant::now();
    let env = Env::new(&opt).await?;
    let restart = opt.apiserver_restarts && env.apiserver_is_ours();
    let steps = generate(opt.seed, 100_000, restart);
    println!(
        "soak: seed {} for {:.1} min; two controller replicas; API server restarts {}",
        opt.seed,
        opt.minutes,
        if restart {
            "on"
        } else {
            "off (not tests/apiserver's own server, or --no-apiserver-restarts)"
        }
    );
    let deadline = started + Duration::from_secs_f64(opt.minutes.max(0.05) * 60.0);
    let outcome = execute(&env, &steps, Some(deadline)).await?;
    outcome.print_summary(started.elapsed());
    let Some(failure) = &outcome.failure else {
        println!(
            "soak: PASSED, seed {}, {} steps, {:.1} min",
            opt.seed,
            outcome.executed,
            started.elapsed().as_secs_f64() / 60.0
        );
        return Ok(());
    };
    println!("\nsoak: FAILED, seed {}", opt.seed);
    failure.print();
    let prefix: Vec<Step> = steps[..outcome.executed].to_vec();
    let shortest = shrink(&env, prefix, opt.shrink_runs).await?;
    println!(
        "\nshortest failing history found ({} steps; replay: bench soak --seed {}):",
        shortest.len(),
        opt.seed
    );
    for (i, s) in shortest.iter().enumerate() {
        println!("  {i:>4}. {} (then {} ms)", s.op, s.pause_ms);
    }
    bail!("soak found {} violation(s)", failure.violations.len())
}

/// Delta debugging over the failing prefix: drops chunks of operations (never the quiesce
/// steps) while a re-run still fails, at most `max_runs` re-runs (each replays from an empty
/// world, so each costs about as long as the history it replays).
async fn shrink(env: &Env, prefix: Vec<Step>, max_runs: usize) -> Result<Vec<Step>> {
    if max_runs == 0 {
        println!("shrinking: off (--shrink-runs 0); the failing prefix is the whole history run");
        return Ok(prefix);
    }
    let (shortest, runs) = delta_debug(prefix, max_runs, |candidate: Vec<Step>| async move {
        let o: Outcome = execute(env, &candidate, None)
            .await
            .context("re-running a shorter history")?;
        Ok(o.failure
            .is_some()
            .then(|| candidate[..o.executed].to_vec()))
    })
    .await?;
    println!("shrinking: {runs} re-run(s) spent (bound {max_runs})");
    Ok(shortest)
}

/// ddmin over the non-quiesce steps of `current`: `fails(candidate)` re-runs a candidate and
/// returns the prefix that failed (None: it passed). Returns the shortest failing history
/// found and the re-runs spent (at most `max_runs`).
async fn delta_debug<F, Fut>(
    mut current: Vec<Step>,
    max_runs: usize,
    mut fails: F,
) -> Result<(Vec<Step>, usize)>
where
    F: FnMut(Vec<Step>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Vec<Step>>>>,
{
    let mut n = 2usize;
    let mut runs = 0usize;
    'outer: while runs < max_runs {
        let removable: Vec<usize> = current
            .iter()
            .enumerate()
            .filter(|(_, s)| s.op != history::Op::Quiesce)
            .map(|(i, _)| i)
            .collect();
        if removable.len() < 2 {
            break;
        }
        let n_chunks = n.min(removable.len());
        let size = removable.len().div_ceil(n_chunks);
        for chunk in removable.chunks(size) {
            if runs >= max_runs {
                break 'outer;
            }
            let candidate: Vec<Step> = current
                .iter()
                .enumerate()
                .filter(|(i, _)| !chunk.contains(i))
                .map(|(_, s)| s.clone())
                .collect();
            let candidate = drop_double_quiesce(candidate);
            runs += 1;
            println!(
                "shrinking: re-run {runs}/{max_runs} with {} of {} steps",
                candidate.len(),
                current.len()
            );
            if let Some(failed) = fails(candidate).await? {
                println!("shrinking: still fails");
                current = failed;
                n = n.saturating_sub(1).max(2);
                continue 'outer;
            }
        }
        if n_chunks >= removable.len() {
            break;
        }
        n = (n * 2).min(removable.len());
    }
    Ok((current, runs))
}

fn drop_double_quiesce(steps: Vec<Step>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    for s in steps {
        if s.op == history::Op::Quiesce && out.last().is_some_and(|l| l.op == history::Op::Quiesce)
        {
            continue;
        }
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use history::{Op, Step};

    fn step(op: Op) -> Step {
        Step { op, pause_ms: 0 }
    }

    fn add(uai: usize) -> Op {
        Op::OobAddUai { target: 0, uai }
    }

    /// A history that "fails" when uai-2 and uai-5 were both added before a quiesce shrinks
    /// to those two operations and the quiesce, within the bound.
    #[tokio::test]
    async fn delta_debugging_finds_the_two_operations_that_matter() {
        let mut h: Vec<Step> = (0..12).map(|u| step(add(u))).collect();
        h.insert(6, step(Op::Quiesce));
        h.push(step(Op::Quiesce));
        let culprit = |c: &[Step]| {
            let has = |u| c.iter().any(|s| s.op == add(u));
            has(2) && has(5)
        };
        assert!(culprit(&h));
        let (shortest, runs) =
            delta_debug(
                h,
                40,
                |c: Vec<Step>| async move { Ok(culprit(&c).then_some(c)) },
            )
            .await
            .expect("shrinks");
        let ops: Vec<Op> = shortest
            .iter()
            .map(|s| s.op.clone())
            .filter(|o| *o != Op::Quiesce)
            .collect();
        assert_eq!(ops, vec![add(2), add(5)]);
        assert!(runs <= 40);
        // Bounded: with 1 re-run it stops after one, however far it got.
        let mut h: Vec<Step> = (0..12).map(|u| step(add(u))).collect();
        h.push(step(Op::Quiesce));
        let (_, runs) = delta_debug(
            h,
            1,
            |c: Vec<Step>| async move { Ok(culprit(&c).then_some(c)) },
        )
        .await
        .expect("shrinks");
        assert_eq!(runs, 1);
    }
}
