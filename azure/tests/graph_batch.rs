//! Graph `$batch` for memberOf reads: 20 requests per batch, each answered on its own; a
//! failing member fails alone, a throttled member is re-sent after its `Retry-After`.

use std::sync::Arc;

use vmidentity_azure::{ArmClient, ClientConfig, Executor, StaticToken};
use vmidentity_simulator::{FaultRule, SimConfig, WorldSeed};

fn sp(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn group(i: usize) -> String {
    format!("99999999-0000-4000-8000-{i:012}")
}

#[tokio::test]
async fn a_batch_with_one_failing_and_one_throttled_member() {
    let mut yaml = String::from("principals:\n");
    for i in 0..45 {
        yaml.push_str(&format!(
            "  - {{ id: {}, type: ServicePrincipal }}\n",
            sp(i)
        ));
    }
    yaml.push_str("groups:\n");
    for g in 0..2 {
        let members: Vec<String> = (0..45).filter(|i| i % 2 == g).map(sp).collect();
        yaml.push_str(&format!(
            "  - {{ id: {}, displayName: g{g}, members: [{}] }}\n",
            group(g),
            members.join(", ")
        ));
    }
    let sim = vmidentity_simulator::start(SimConfig {
        seed: WorldSeed::from_yaml_str(&yaml).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    // sp(3): 403 for good; sp(7): throttled once, 1 s.
    sim.add_fault(FaultRule::status(403).path_contains(&format!("{}/memberOf", sp(3))));
    sim.add_fault(
        FaultRule::throttle(1)
            .path_contains(&format!("{}/memberOf", sp(7)))
            .times(1),
    );
    let token = Arc::new(StaticToken::new("sim-token"));
    let arm = ArmClient::new(
        ClientConfig {
            endpoint: sim.base_url(),
            ..ClientConfig::default()
        },
        token,
    )
    .unwrap();
    let graph = ArmClient::new(
        ClientConfig::graph(&sim.base_url()),
        Arc::new(StaticToken::new("sim-graph-token")),
    )
    .unwrap();
    let exec = Executor::new(arm).with_graph(graph);
    let mut ids: Vec<String> = (0..45).map(sp).collect();
    ids.push(sp(0).to_uppercase()); // the same principal twice
    let started = std::time::Instant::now();
    let (out, requests) = exec.member_of_many(&ids).await.unwrap();
    assert_eq!(out.len(), 45);
    // 45 principals: 3 batches, and one more for the throttled member after 1 s.
    assert_eq!(requests, 4);
    assert!(
        started.elapsed().as_secs_f64() >= 0.9,
        "Retry-After honoured"
    );
    let c = sim.counters();
    assert_eq!(c.graph_batches, 4);
    assert_eq!(c.graph_reads, 46, "each request in a batch counts");
    let failed = out[&sp(3)].as_ref().unwrap_err();
    assert_eq!(failed.status(), Some(403));
    assert_eq!(out[&sp(7)].as_ref().unwrap(), &vec![group(1)]);
    for i in [0usize, 1, 44] {
        assert_eq!(out[&sp(i)].as_ref().unwrap(), &vec![group(i % 2)], "{i}");
    }
    // The same as one memberOf read each.
    for i in [0usize, 7, 20] {
        assert_eq!(
            &exec.member_of(&sp(i)).await.unwrap(),
            out[&sp(i)].as_ref().unwrap()
        );
    }
}
