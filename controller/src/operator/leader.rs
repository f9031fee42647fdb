//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder reconciles.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub retry_period: Duration,
}

/// Holds (or tries to take) the lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaderConfig,
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl Elector {
    pub fn new(client: Client, cfg: LeaderConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    pub fn config(&self) -> &LeaderConfig {
        &self.cfg
    }

    /// One attempt to acquire or renew. Ok(true) when we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = &self.cfg.identity;
        match self.api.get_opt(&self.cfg.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me.clone()),
                        lease_duration_seconds: Some(secs(self.cfg.lease_duration)),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let duration = spec
                    .lease_duration_seconds
                    .map(|s| SignedDuration::from_secs(i64::from(s)))
                    .unwrap_or(SignedDuration::from_secs(15));
                let expired = spec
                    .renew_time
                    .as_ref()
                    .is_none_or(|t| t.0 + duration < now);
                if holder != *me && !holder.is_empty() && !expired {
                    return Ok(false);
                }
                let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != *me);
                lease.spec = Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(secs(self.cfg.lease_duration)),
                    acquire_time: if holder == *me {
                        spec.acquire_time
                    } else {
                        Some(MicroTime(now))
                    },
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(transitions),
                    ..spec
                });
                // replace carries resourceVersion: a concurrent writer makes this a 409.
                match self
                    .api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %format!("{}/{}", self.cfg.namespace, self.cfg.name), identity = %self.cfg.identity, "acquired the leader lease");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(
                    lease = %format!("{}/{}", self.cfg.namespace, self.cfg.name),
                    error = %e,
                    "leader election: cannot read or write the lease (does namespace {} exist? --lease-namespace chooses another)",
                    self.cfg.namespace
                ),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews until renewals fail for longer than the lease lasts; then returns (leadership
    /// lost: the caller must stop writing).
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!("leader lease taken by another replica");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot renew the leader lease");
                    if last_ok.elapsed() > self.cfg.lease_duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up (on graceful shutdown) so another replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = self
                .api
                .replace(&self.cfg.name, &PostParams::default(), &lease)
                .await;
        }
    }
}
