//! The change feed's bookkeeping, pure: which targets a page of Resource Graph
//! `resourcechanges` rows names, the watermark to query from next, deduplication of records
//! seen twice, and when to fall back to a full resync. The runtime (polling, storing the
//! watermark, triggering reconciles) is the controller's `operator::changefeed`.
//!
//! The feed's documented properties ("Get resource changes",
//! <https://learn.microsoft.com/azure/governance/resource-graph/how-to/get-resource-changes>):
//! records "should be available in less than five minutes" (so they arrive late, and not in
//! the order of their timestamps), the last fourteen days are kept, and a record can be seen
//! more than once (by a query window that overlaps the previous one, or delivered twice).
//!
//! - The **watermark** is the high-water mark of the feed: the latest of the record
//!   timestamps seen and the times polls started. Each poll asks for records newer than
//!   `watermark - overlap`, so a record that shows up to `overlap` late is still read.
//!   Later than that, the full resync (kept as the safety net) finds the drift.
//! - **Deduplication** by (target, change id — or correlation id when there is none —,
//!   timestamp): a record read again (overlap, duplicate delivery) triggers nothing twice.
//!   The memory of seen records is pruned below the query window.
//! - No watermark (first start, lost store) or a watermark older than the retention minus
//!   the overlap (the feed may have dropped records in between): a **full resync**, after
//!   which the watermark is the time that resync started.
//!
//! Times are milliseconds since the Unix epoch (the planner has no clock).

use std::collections::{BTreeMap, BTreeSet};

/// The feed's documented retention: fourteen days.
pub const RETENTION_MS: i64 = 14 * 24 * 3600 * 1000;
/// The default overlap: the documented ingestion delay ("less than five minutes") plus a
/// minute of clock skew and slack.
pub const DEFAULT_OVERLAP_MS: i64 = 6 * 60 * 1000;

/// What a change did to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    Create,
    Update,
    Delete,
}

impl ChangeKind {
    /// `Create` / `Update` / `Delete` (case-insensitive); anything else is an update.
    pub fn parse(s: &str) -> ChangeKind {
        if s.eq_ignore_ascii_case("create") {
            ChangeKind::Create
        } else if s.eq_ignore_ascii_case("delete") {
            ChangeKind::Delete
        } else {
            ChangeKind::Update
        }
    }
}

/// One `resourcechanges` record, as the runtime parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// `properties.targetResourceId`.
    pub target: String,
    pub kind: ChangeKind,
    /// `properties.changeAttributes.timestamp`, ms since the epoch.
    pub timestamp_ms: i64,
    /// The change resource's name (its id's last segment); may be empty.
    pub change_id: String,
    /// `properties.changeAttributes.correlationId`; may be empty.
    pub correlation_id: String,
}

impl ChangeRecord {
    fn key(&self) -> (String, String, i64) {
        let id = if self.change_id.is_empty() {
            &self.correlation_id
        } else {
            &self.change_id
        };
        (
            self.target.to_ascii_lowercase(),
            id.to_ascii_lowercase(),
            self.timestamp_ms,
        )
    }
}

/// What to do at the next poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read records newer than this (ms since the epoch).
    Query { since_ms: i64 },
    /// Re-read everything: no watermark, or one older than the feed keeps.
    FullResync { reason: ResyncReason },
}

/// Why the feed cannot be trusted for this poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// No watermark: first start, or the stored one was lost.
    NoWatermark,
    /// The watermark is older than the retention (minus the overlap): records may be gone.
    BeyondRetention,
}

impl ResyncReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::NoWatermark => "no watermark",
            ResyncReason::BeyondRetention => "gap beyond the feed's retention",
        }
    }
}

/// The feed's state between polls. Only the watermark needs to survive a restart or a
/// leader hand-over; the memory of seen records is an optimisation (losing it costs at
/// most one extra reconcile per record in the overlap, which starts with a GET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedState {
    watermark_ms: Option<i64>,
    overlap_ms: i64,
    retention_ms: i64,
    /// Records already acted on: key → timestamp (for pruning).
    seen: BTreeMap<(String, String, i64), i64>,
}

impl FeedState {
    /// A state starting from a stored watermark (None: none found).
    pub fn new(watermark_ms: Option<i64>, overlap_ms: i64, retention_ms: i64) -> FeedState {
        FeedState {
            watermark_ms,
            overlap_ms: overlap_ms.max(0),
            retention_ms,
            seen: BTreeMap::new(),
        }
    }

    /// The watermark to store (None until the first poll or resync).
    pub fn watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
    }

    /// Records remembered for deduplication.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// What the poll at `now_ms` should do.
    pub fn next(&self, now_ms: i64) -> Next {
        match self.watermark_ms {
            None => Next::FullResync {
                reason: ResyncReason::NoWatermark,
            },
            Some(w) if now_ms.saturating_sub(w) > self.retention_ms - self.overlap_ms => {
                Next::FullResync {
                    reason: ResyncReason::BeyondRetention,
                }
            }
            Some(w) => Next::Query {
                since_ms: w.saturating_sub(self.overlap_ms),
            },
        }
    }

    /// Takes the records of a poll that started at `polled_at_ms`: returns the targets
    /// (case-folded) of records not seen before, for which `managed` says yes, and moves the
    /// watermark to the latest of itself, the poll's start and the records' timestamps.
    /// Records may come in any order and more than once.
    pub fn absorb(
        &mut self,
        polled_at_ms: i64,
        records: &[ChangeRecord],
        managed: impl Fn(&str) -> bool,
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut high = self.watermark_ms.unwrap_or(i64::MIN).max(polled_at_ms);
        for r in records {
            high = high.max(r.timestamp_ms);
            let key = r.key();
            if self.seen.contains_key(&key) {
                continue;
            }
            self.seen.insert(key.clone(), r.timestamp_ms);
            if managed(&key.0) {
                out.insert(key.0);
            }
        }
        self.watermark_ms = Some(high);
        // Records older than the next query window cannot be returned again.
        let floor = high.saturating_sub(self.overlap_ms);
        self.seen.retain(|_, ts| *ts > floor);
        out
    }

    /// A full resync that started at `started_ms` has read every target: the feed goes on
    /// from there.
    pub fn resynced(&mut self, started_ms: i64) {
        self.watermark_ms = Some(self.watermark_ms.unwrap_or(i64::MIN).max(started_ms));
        self.seen.clear();
    }

    /// Merges a watermark another replica stored (a leader hand-over): the later one wins.
    pub fn merge_stored(&mut self, stored_ms: Option<i64>) {
        if let Some(s) = stored_ms {
            self.watermark_ms = Some(self.watermark_ms.map_or(s, |w| w.max(s)));
        }
    }
}

/// RFC 3339 (`2024-04-09T13:26:17.347+00:00`, `…Z`, with or without fractions) → ms since
/// the epoch; None when it is not one.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    if d.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    let tz_at = rest
        .char_indices()
        .skip(1)
        .find(|(_, c)| matches!(c, 'Z' | 'z' | '+' | '-'))
        .map(|(i, _)| i)?;
    let (time, tz) = rest.split_at(tz_at);
    let mut t = time.split(':');
    let (h, mi): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec_s = t.next()?;
    let (sec, frac) = sec_s.split_once('.').unwrap_or((sec_s, ""));
    let sec: i64 = sec.parse().ok()?;
    let ms: i64 = if frac.is_empty() {
        0
    } else {
        let f: String = frac.chars().chain("000".chars()).take(3).collect();
        f.parse().ok()?
    };
    let offset_min: i64 = match tz {
        "Z" | "z" => 0,
        _ => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let (oh, om) = tz[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000) + ms)
}

/// ms since the epoch → `YYYY-MM-DDThh:mm:ss.mmmZ`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn rec(target: &str, ts: i64, id: &str) -> ChangeRecord {
        ChangeRecord {
            target: target.into(),
            kind: ChangeKind::Update,
            timestamp_ms: ts,
            change_id: id.into(),
            correlation_id: String::new(),
        }
    }

    #[test]
    fn parses_and_formats_the_documented_timestamps() {
        assert_eq!(
            parse_rfc3339_ms("2024-04-09T13:26:17.347+00:00"),
            Some(1_712_669_177_347)
        );
        assert_eq!(
            parse_rfc3339_ms("2021-12-07T09:25:41.756Z"),
            Some(1_638_869_141_756)
        );
        assert_eq!(
            parse_rfc3339_ms("2021-12-07T10:25:41.756+01:00"),
            Some(1_638_869_141_756)
        );
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(
            format_rfc3339_ms(1_712_669_177_347),
            "2024-04-09T13:26:17.347Z"
        );
        for ms in [0, 1_638_869_141_756, 951_782_400_000, 4_102_444_800_001] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
    }

    #[test]
    fn no_watermark_means_a_full_resync_then_the_feed_goes_on() {
        let mut s = FeedState::new(None, 5 * MIN, RETENTION_MS);
        assert_eq!(
            s.next(100 * MIN),
            Next::FullResync {
                reason: ResyncReason::NoWatermark
            }
        );
        s.resynced(100 * MIN);
        assert_eq!(s.next(101 * MIN), Next::Query { since_ms: 95 * MIN });
    }

    #[test]
    fn late_duplicated_and_out_of_order_records_trigger_once() {
        let mut s = FeedState::new(Some(100 * MIN), 5 * MIN, RETENTION_MS);
        let all = |_: &str| true;
        // Poll 1 at 101: b (ts 100.5) arrives before a (ts 100.2): out of order.
        let got = s.absorb(
            101 * MIN,
            &[
                rec("/VM/b", 100 * MIN + 30_000, "2"),
                rec("/vm/a", 100 * MIN + 12_000, "1"),
            ],
            all,
        );
        assert_eq!(got.len(), 2);
        assert_eq!(s.next(102 * MIN), Next::Query { since_ms: 96 * MIN });
        // Poll 2: the overlap reads b again, its duplicate delivery too, and a late record c
        // (ts 99, four minutes late but inside the overlap).
        let got = s.absorb(
            102 * MIN,
            &[
                rec("/vm/b", 100 * MIN + 30_000, "2"),
                rec("/vm/b", 100 * MIN + 30_000, "2"),
                rec("/vm/c", 99 * MIN, "3"),
            ],
            all,
        );
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec!["/vm/c".to_string()]
        );
        // A record without a change id is deduplicated by its correlation id.
        let mut r = rec("/vm/d", 101 * MIN, "");
        r.correlation_id = "corr".into();
        assert_eq!(s.absorb(103 * MIN, std::slice::from_ref(&r), all).len(), 1);
        assert_eq!(s.absorb(103 * MIN, std::slice::from_ref(&r), all).len(), 0);
    }

    #[test]
    fn only_managed_targets_are_named() {
        let mut s = FeedState::new(Some(0), MIN, RETENTION_MS);
        let got = s.absorb(
            MIN,
            &[rec("/vm/a", 10, "1"), rec("/vm/other", 11, "2")],
            |t| t == "/vm/a",
        );
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn a_gap_beyond_retention_means_a_full_resync() {
        let s = FeedState::new(Some(0), 5 * MIN, RETENTION_MS);
        assert!(matches!(s.next(RETENTION_MS - 6 * MIN), Next::Query { .. }));
        assert_eq!(
            s.next(RETENTION_MS),
            Next::FullResync {
                reason: ResyncReason::BeyondRetention
            }
        );
    }

    #[test]
    fn a_quiet_feed_advances_with_the_polls() {
        let mut s = FeedState::new(Some(0), 5 * MIN, RETENTION_MS);
        s.absorb(RETENTION_MS / 2, &[], |_| true);
        assert_eq!(s.watermark_ms(), Some(RETENTION_MS / 2));
        assert!(matches!(s.next(RETENTION_MS), Next::Query { .. }));
    }

    #[test]
    fn a_stored_watermark_never_goes_backwards() {
        let mut s = FeedState::new(Some(10 * MIN), MIN, RETENTION_MS);
        s.merge_stored(Some(5 * MIN));
        assert_eq!(s.watermark_ms(), Some(10 * MIN));
        s.merge_stored(Some(20 * MIN));
        assert_eq!(s.watermark_ms(), Some(20 * MIN));
        s.resynced(15 * MIN);
        assert_eq!(s.watermark_ms(), Some(20 * MIN));
    }
}
