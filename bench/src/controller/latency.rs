//! Phase 1: apply-to-PATCH latency of single objects on an idle controller.

use super::*;

pub(super) struct Latency {
    pub(super) ms: Vec<f64>,
    pub(super) timed_out: usize,
    /// Pairs: first create to the VM's first PATCH.
    pub(super) pair_ms: Vec<f64>,
    /// Pairs: PATCHes each pair's VM received.
    pub(super) pair_patches: Vec<u64>,
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(super) async fn latency_phase(b: &Bench, ns: &str) -> Result<Latency> {
    let (opt, client) = (&b.opt, &b.client);
    // VMs 0..samples for the samples, VM `samples` for the warm-up, then one per pair.
    let warm_vm = opt.samples;
    let sim = start_sim(opt.samples + 1 + opt.pairs, opt).await?;
    let mut c = ControllerProc::start(b, ns, &sim, NO_RESYNC_SECS, &[], ns).await?;
    let api: Api<VirtualMachineIdentity> = Api::namespaced(client.clone(), ns);
    let result = async {
        // Warm-up: the watch is established and connections are open.
        let warm = object("warmup", warm_vm, opt)?;
        api.create(&PostParams::default(), &warm)
            .await
            .context("creating the warm-up object")?;
        let per_sample = opt.timeout.min(Duration::from_secs(60));
        if patch_arrival(
            &sim,
            &vm(warm_vm, opt.vms_per_subscription),
            Instant::now() + per_sample,
        )
        .await
        .is_none()
        {
            bail!(
                "the controller did not PATCH the warm-up VM within {per_sample:?} (log: {})",
                c.log.display()
            );
        }
        wait_quiet(
            &mut c,
            Duration::from_millis(300),
            Instant::now() + per_sample,
        )
        .await?;
        let mut ms = Vec::new();
        let mut timed_out = 0;
        for i in 0..opt.samples {
            let o = object(&format!("o-{i}"), i, opt)?;
            api.create(&PostParams::default(), &o)
                .await
                .with_context(|| format!("creating o-{i}"))?;
            let created = SystemTime::now();
            let id = vm(i, opt.vms_per_subscription);
            match patch_arrival(&sim, &id, Instant::now() + per_sample).await {
                Some(t) => ms.push(ms_between(created, t)),
                None => timed_out += 1,
            }
            // Let the reconcile finish (status, event, the follow-up no-op reconcile).
            wait_quiet(
                &mut c,
                Duration::from_millis(150),
                Instant::now() + per_sample,
            )
            .await?;
        }
        // Pairs: two objects on one VM, the second created as soon as the first create
        // returned (what `kubectl apply -f dir/` does). The second object asks for the
        // system-assigned identity, the first for a UAI: one PATCH must carry both.
        let mut pair_ms = Vec::new();
        let mut pair_patches = Vec::new();
        for j in 0..opt.pairs {
            let i = opt.samples + 1 + j;
            let mut a = object(&format!("pair-{j}-a"), i, opt)?;
            a.spec.system_assigned = None;
            let mut b2 = object(&format!("pair-{j}-b"), i, opt)?;
            b2.spec.system_assigned = Some(true);
            b2.spec.user_assigned_identities = vec![];
            api.create(&PostParams::default(), &a)
                .await
                .with_context(|| format!("creating pair-{j}-a"))?;
            let created = SystemTime::now();
            api.create(&PostParams::default(), &b2)
                .await
                .with_context(|| format!("creating pair-{j}-b"))?;
            let id = vm(i, opt.vms_per_subscription);
            if let Some(t) = patch_arrival(&sim, &id, Instant::now() + per_sample).await {
                pair_ms.push(ms_between(created, t));
            }
            wait_quiet(
                &mut c,
                Duration::from_millis(300),
                Instant::now() + per_sample,
            )
            .await?;
            pair_patches.push(sim.writes_for(&id));
        }
        Ok(Latency {
            ms,
            timed_out,
            pair_ms,
            pair_patches,
        })
    }
    .await;
    c.stop().await;
    cleanup(client, ns, opt.create_concurrency).await;
    sim.shutdown().await;
    result
}
