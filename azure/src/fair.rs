//! A fair token bucket: a subscription's request budget shared between tenants (the
//! namespaces the controller works for), so one tenant with many grant-heavy targets cannot
//! use up the budget of everyone else.
//!
//! Uncontended, a request takes a token and goes at once, and one tenant alone gets the whole
//! rate. When the bucket is empty, requests wait in a queue per tenant and the tokens, as
//! they refill, are handed out round-robin across the tenants that wait: each gets an equal
//! share, whatever the number of requests it queued. Nothing is reserved ahead, so a tenant
//! that arrives late is served within one round, not behind everything queued before it.
//!
//! The tenant of a request is the task-local [`TENANT`], set by the caller around the work it
//! does for a tenant ([`with_tenant`]); requests without one share the tenant `""`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

tokio::task_local! {
    /// The tenant (namespace) the current task works for.
    pub static TENANT: String;
}

/// Runs `fut` on behalf of `tenant`: its requests share the budget fairly with other tenants'.
pub async fn with_tenant<F: Future>(tenant: impl Into<String>, fut: F) -> F::Output {
    TENANT.scope(tenant.into(), fut).await
}

/// The tenant of the current task (`""` outside [`with_tenant`]).
pub fn current_tenant() -> String {
    TENANT.try_with(Clone::clone).unwrap_or_default()
}

/// A token bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub size: f64,
    pub per_sec: f64,
}

struct Lane {
    rate: Rate,
    tokens: f64,
    at: Instant,
    /// Waiting requests per tenant, first come first served within a tenant.
    queues: HashMap<String, VecDeque<oneshot::Sender<()>>>,
    /// Tenants with waiting requests, in the order they are served next.
    ring: VecDeque<String>,
    dispatching: bool,
}

impl Lane {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_sec).min(self.rate.size);
        self.at = now;
    }
}

/// Per-key (subscription and request kind) fair buckets.
pub struct FairLimiter<K> {
    lanes: Mutex<HashMap<K, Arc<Mutex<Lane>>>>,
}

impl<K> Default for FairLimiter<K> {
    fn default() -> Self {
        FairLimiter {
            lanes: Mutex::default(),
        }
    }
}

impl<K> std::fmt::Debug for FairLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairLimiter").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> FairLimiter<K> {
    fn lane(&self, key: &K, rate: Rate) -> Option<Arc<Mutex<Lane>>> {
        let mut lanes = self.lanes.lock().ok()?;
        Some(
            lanes
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(Lane {
                        rate,
                        tokens: rate.size,
                        at: Instant::now(),
                        queues: HashMap::new(),
                        ring: VecDeque::new(),
                        dispatching: false,
                    }))
                })
                .clone(),
        )
    }

    /// Takes a token for `tenant`, waiting for its fair turn when the bucket is empty.
    /// Returns whether it had to wait.
    pub async fn acquire(&self, key: &K, rate: Rate, tenant: &str) -> bool {
        if rate.per_sec <= 0.0 {
            return false;
        }
        let Some(lane) = self.lane(key, rate) else {
            return false;
        };
        let rx = {
            let Ok(mut guard) = lane.lock() else {
                return false;
            };
            let l = &mut *guard;
            l.refill(Instant::now());
            if l.ring.is_empty() && l.tokens >= 1.0 {
                l.tokens -= 1.0;
                return false;
            }
            let (tx, rx) = oneshot::channel();
            let q = l.queues.entry(tenant.to_string()).or_default();
            if q.is_empty() {
                l.ring.push_back(tenant.to_string());
            }
            q.push_back(tx);
            if !l.dispatching {
                l.dispatching = true;
                tokio::spawn(dispatch(lane.clone()));
            }
            rx
        };
        // A dropped sender (the runtime shutting down) lets the request go.
        let _ = rx.await;
        true
    }

    /// Lowers a bucket to what the server says is left (never raises it).
    pub fn observe(&self, key: &K, remaining: f64) {
        let lane = match self.lanes.lock() {
            Ok(lanes) => lanes.get(key).cloned(),
            Err(_) => None,
        };
        if let Some(lane) = lane
            && let Ok(mut l) = lane.lock()
        {
            l.refill(Instant::now());
            if remaining < l.tokens {
                l.tokens = remaining;
            }
        }
    }
}

/// Hands out tokens as they refill, one tenant after another, until nobody waits.
async fn dispatch(lane: Arc<Mutex<Lane>>) {
    loop {
        let wait = {
            let Ok(mut guard) = lane.lock() else { return };
            let l = &mut *guard;
            l.refill(Instant::now());
            let Some(tenant) = l.ring.pop_front() else {
                l.dispatching = false;
                return;
            };
            if l.tokens >= 1.0 {
                let mut sent = false;
                let mut more = false;
                if let Some(q) = l.queues.get_mut(&tenant) {
                    while let Some(tx) = q.pop_front() {
                        // A receiver gone (its request was cancelled) costs no token.
                        if tx.send(()).is_ok() {
                            sent = true;
                            break;
                        }
                    }
                    more = !q.is_empty();
                }
                if sent {
                    l.tokens -= 1.0;
                }
                if more {
                    l.ring.push_back(tenant);
                } else {
                    l.queues.remove(&tenant);
                }
                None
            } else {
                l.ring.push_front(tenant);
                let per_sec = l.rate.per_sec.max(f64::MIN_POSITIVE);
                Some(Duration::from_secs_f64(
                    ((1.0 - l.tokens) / per_sec).max(0.0005),
                ))
            }
        };
        if let Some(d) = wait {
            tokio::time::sleep(d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completion times (seconds from start) of `n` requests of `tenant`, started at `at`.
    async fn run(
        lim: Arc<FairLimiter<&'static str>>,
        rate: Rate,
        tenant: &'static str,
        n: usize,
        start: tokio::time::Instant,
        out: Arc<Mutex<Vec<(String, f64)>>>,
    ) {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let lim = lim.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                lim.acquire(&"sub", rate, tenant).await;
                out.lock()
                    .unwrap()
                    .push((tenant.to_string(), start.elapsed().as_secs_f64()));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_tenant_gets_its_share_instead_of_waiting_behind_a_greedy_one() {
        let rate = Rate {
            size: 5.0,
            per_sec: 10.0,
        };
        let lim = Arc::new(FairLimiter::default());
        let out = Arc::new(Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        // The greedy tenant queues 100 reads: 10 s of budget.
        let greedy = tokio::spawn(run(lim.clone(), rate, "greedy", 100, start, out.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Half a second later another tenant needs 5.
        run(lim.clone(), rate, "modest", 5, start, out.clone()).await;
        let modest_done = start.elapsed().as_secs_f64();
        greedy.await.unwrap();
        let all_done = start.elapsed().as_secs_f64();
        // Round-robin: the modest tenant's 5 take about 10 tokens (1 s), not the 9+ s it would
        // wait behind the greedy queue first come, first served.
        assert!(
            modest_done < 2.0,
            "modest tenant done after {modest_done:.2} s"
        );
        // Nobody gets more than the rate: 105 tokens, 5 at once, then 10/s.
        assert!(all_done >= 9.9, "all done after {all_done:.2} s");
        assert!(all_done < 10.6, "all done after {all_done:.2} s");
        assert_eq!(out.lock().unwrap().len(), 105);
    }

    #[tokio::test(start_paused = true)]
    async fn alone_a_tenant_gets_the_whole_rate_and_bursts_go_at_once() {
        let rate = Rate {
            size: 20.0,
            per_sec: 10.0,
        };
        let lim = Arc::new(FairLimiter::default());
        let out = Arc::new(Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        run(lim.clone(), rate, "only", 20, start, out.clone()).await;
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "the burst waits for nothing"
        );
        run(lim.clone(), rate, "only", 30, start, out.clone()).await;
        let t = start.elapsed().as_secs_f64();
        assert!((2.9..3.2).contains(&t), "30 more at 10/s took {t:.2} s");
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_server_says_is_left_lowers_the_bucket() {
        let rate = Rate {
            size: 100.0,
            per_sec: 10.0,
        };
        let lim: FairLimiter<&str> = FairLimiter::default();
        assert!(!lim.acquire(&"sub", rate, "a").await);
        lim.observe(&"sub", 0.0);
        let start = tokio::time::Instant::now();
        assert!(lim.acquire(&"sub", rate, "a").await);
        assert!(start.elapsed() >= Duration::from_millis(99));
    }

    #[tokio::test]
    async fn the_tenant_is_task_local() {
        assert_eq!(current_tenant(), "");
        let t = with_tenant("team-a", async { current_tenant() }).await;
        assert_eq!(t, "team-a");
    }
}
