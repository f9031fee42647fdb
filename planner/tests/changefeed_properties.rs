//! Properties of the change feed's bookkeeping: whatever the order, lateness (within the
//! overlap) and duplication of delivery, every record triggers its target exactly once, and
//! the watermark never goes backwards.

use std::collections::BTreeMap;

use proptest::prelude::*;
use vmidentity_planner::changefeed::{ChangeKind, ChangeRecord, FeedState, Next, RETENTION_MS};

const OVERLAP: i64 = 300_000;

proptest! {
    #[test]
    fn each_record_triggers_once_whatever_the_delivery(
        // (target, timestamp offset, delivery lateness ≤ overlap, copies)
        recs in proptest::collection::vec((0u8..20, 0i64..600_000, 0i64..OVERLAP, 1usize..3), 1..60),
        poll_every in 10_000i64..120_000,
    ) {
        let start = 1_700_000_000_000i64;
        let mut state = FeedState::new(Some(start), OVERLAP, RETENTION_MS);
        // Each copy of each record becomes visible at ts + lateness.
        let records: Vec<(ChangeRecord, i64, usize)> = recs.iter().enumerate().map(|(i, (t, off, late, copies))| {
            (ChangeRecord {
                target: format!("/vm/{t}"),
                kind: ChangeKind::Update,
                timestamp_ms: start + off,
                change_id: format!("c{i}"),
                correlation_id: String::new(),
            }, start + off + late, *copies)
        }).collect();
        let mut triggered: BTreeMap<String, usize> = BTreeMap::new();
        let mut now = start;
        let mut last_w = state.watermark_ms();
        while now < start + 600_000 + 3 * OVERLAP {
            now += poll_every;
            let Next::Query { since_ms } = state.next(now) else { panic!("no resync expected") };
            // What the feed returns: visible, newer than `since`, each copy, shuffled by index parity.
            let mut page: Vec<ChangeRecord> = Vec::new();
            for (r, visible, copies) in &records {
                if *visible <= now && r.timestamp_ms > since_ms {
                    for _ in 0..*copies { page.push(r.clone()); }
                }
            }
            page.reverse();
            for t in state.absorb(now, &page, |_| true) {
                *triggered.entry(t).or_default() += 1;
            }
            prop_assert!(state.watermark_ms() >= last_w);
            last_w = state.watermark_ms();
        }
        // Every target with a record was triggered, at least once and at most once per record.
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        for (r, _, _) in &records {
            *expected.entry(r.target.clone()).or_default() += 1;
        }
        for (t, n) in &expected {
            let got = triggered.get(t).copied().unwrap_or(0);
            prop_assert!(got >= 1 && got <= *n, "{t}: {got} triggers for {n} records");
        }
        prop_assert_eq!(triggered.len(), expected.len());
    }
}
