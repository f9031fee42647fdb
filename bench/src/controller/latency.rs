//! Phase 1: apply-to-PATCH latency of single objects on an idle controller.

use super::*;

pub(super) struct Latency {
    pub(super) ms: Vec<f64>,
    pub(super) timed_out: usize,
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
    // VMs 0..samples for the samples, VM `samples` for the warm-up.
    let warm_vm = opt.samples;
    let sim = start_sim(opt.samples + 1, opt).await?;
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
        Ok(Latency { ms, timed_out })
    }
    .await;
    c.stop().await;
    cleanup(client, ns, opt.create_concurrency).await;
    sim.shutdown().await;
    result
}
