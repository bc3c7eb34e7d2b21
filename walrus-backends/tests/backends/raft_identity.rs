//! Storage identity on the Raft store: every member's storage is recorded,
//! and a member restarting from its consensus data with another storage
//! identity (its data directory was swapped) is refused.

use crate::raft_common;

use std::time::Duration;

use raft_common::TestNode;
use walrus_core::{MetadataStore, NodeId, StorageId};

fn disk(id: NodeId) -> StorageId {
    StorageId::from_u128(0x5000 + id as u128)
}

async fn start(
    id: NodeId,
    dir: &std::path::Path,
    addr: &str,
    join: Option<String>,
    storage: StorageId,
) -> TestNode {
    TestNode::start(id, dir.join(format!("node_{id}")), addr, join, move |c| {
        c.storage = Some(storage);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_member_restarting_with_another_storage_identity_should_be_refused() {
    let base = tempfile::tempdir().unwrap();
    let n1 = start(1, base.path(), "127.0.0.1:0", None, disk(1)).await;
    let join = Some(n1.addr.clone());
    let n2 = start(2, base.path(), "127.0.0.1:0", join.clone(), disk(2)).await;
    let n3 = start(3, base.path(), "127.0.0.1:0", join, disk(3)).await;
    let mut rx = n1.store.watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.storage.len() == 3),
    )
    .await
    .expect("every member's storage is recorded")
    .unwrap();
    assert_eq!(n1.store.state().storage[&2], disk(2));

    // Node 2 comes back on its Raft data, under another storage identity.
    let (_, addr2) = n2.stop().await;
    let replaced = StorageId::from_u128(0xdead);
    let n2 = start(2, base.path(), &addr2, None, replaced).await;
    let mut refusals = n2.store.refusals();
    let why = tokio::time::timeout(Duration::from_secs(20), refusals.wait_for(|r| r.is_some()))
        .await
        .expect("the cluster refuses the swapped storage")
        .unwrap()
        .clone()
        .unwrap();
    assert!(
        why.contains(&format!("node 2 came back with storage {replaced}"))
            && why.contains(&disk(2).to_string()),
        "{why}"
    );
    assert_eq!(n1.store.state().storage[&2], disk(2), "the record stays");
    for n in [n1, n2, n3] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_consensus_message_from_another_cluster_or_for_another_node_should_refuse_it() {
    use walrus_backends::raft::network::{encode_request, ConsensusRequest, Header};

    let base = tempfile::tempdir().unwrap();
    let node = start(1, base.path(), "127.0.0.1:0", None, disk(1)).await;
    let mut rx = node.store.watch();
    let ours = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.cluster.is_some()),
    )
    .await
    .expect("the bootstrapped cluster names itself")
    .unwrap()
    .cluster;
    let term = node.store.status().term;
    // A candidate of another cluster, far ahead in terms: obeyed, it would
    // depose this cluster's leader.
    let vote = || {
        ConsensusRequest::Vote(openraft::raft::VoteRequest::new(
            openraft::Vote::new(term + 1000, 2),
            None,
        ))
    };
    let send = |header: Header| {
        let store = node.store.clone();
        let bytes = encode_request(header, &vote()).unwrap();
        async move { store.handle_message(bytes).await }
    };

    let other = Some(walrus_core::ClusterId::random());
    match send(Header {
        to: 1,
        cluster: other,
    })
    .await
    {
        Err(walrus_core::Error::Refused(why)) => assert!(why.contains("another cluster"), "{why}"),
        other => panic!("a foreign cluster's vote request was taken: {other:?}"),
    }
    match send(Header {
        to: 7,
        cluster: ours,
    })
    .await
    {
        Err(walrus_core::Error::Refused(why)) => assert!(why.contains("for node 7"), "{why}"),
        other => panic!("a vote request meant for node 7 was taken: {other:?}"),
    }
    assert_eq!(
        node.store.status().term,
        term,
        "no foreign term was adopted"
    );
    assert_eq!(node.store.status().leader, Some(1));

    // The same request from this cluster reaches Raft, which answers it
    // (its leader lease decides whether it grants it).
    assert!(send(Header {
        to: 1,
        cluster: ours
    })
    .await
    .is_ok());
    node.stop().await;
}
