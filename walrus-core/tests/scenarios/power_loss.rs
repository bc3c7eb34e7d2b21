//! The node under a store that acknowledges before syncing (the WAL's
//! `fsync=interval/never`), with a power cut that drops everything not
//! synced: no entry a reader was given is lost, and entries acknowledged
//! after the restart are delivered, never hidden behind the saved cursor.

use std::time::Duration;

use bytes::Bytes;
use walrus_core::protocol::Response;
use walrus_core::testing::TestCluster;

fn entries(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}{i}")))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn given_relaxed_syncs_when_power_is_cut_after_reads_should_deliver_every_later_entry() {
    let mut c = TestCluster::start(1, |id| TestCluster::config(id, 1000)).await;
    c.logs[&1].relax_syncs(true);
    assert_eq!(c.send(1, "REGISTER logs").await, Response::Ok);
    for e in entries("a", 10) {
        let line = format!("PUT logs {}", String::from_utf8_lossy(&e));
        assert_eq!(c.send(1, &line).await, Response::Ok);
    }
    // Read everything: the cursor (saved through consensus) moves to 10.
    assert_eq!(
        c.drain(1, "logs", Duration::from_secs(10)).await,
        entries("a", 10)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    c.logs[&1].power_cut();
    c.crash(1).await;
    c.restart(1);
    c.wait_for_leases(Duration::from_secs(10)).await;

    for e in entries("c", 3) {
        let line = format!("PUT logs {}", String::from_utf8_lossy(&e));
        assert_eq!(c.send(1, &line).await, Response::Ok);
    }
    assert_eq!(
        c.drain(1, "logs", Duration::from_secs(10)).await,
        entries("c", 3),
        "entries acknowledged after the power cut must reach the saved cursor"
    );
}
