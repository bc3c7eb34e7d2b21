//! Rule 7 of `MetadataStore`: a proposal that failed may still commit, and
//! its retry commits too. The retry need not follow the original directly:
//! other proposers' commands may commit in between. Every command must
//! then be harmless when repeated late — except the two that are
//! last-writer-wins by nature (`CommitOffset`: a late repeat moves a
//! group back, which only re-delivers; `UpsertNode`: only the node itself
//! proposes its own address, so its repeats never straddle its own later
//! change).

use proptest::prelude::*;
use walrus_core::metadata::{ClusterState, CmdResult, MetadataCmd, NodeInfo, ProducerEntry};
use walrus_core::{ClusterId, ProducerId, StorageId, TopicName};

fn topic(i: u8) -> TopicName {
    TopicName::new(format!("t{i}")).expect("valid topic name")
}

/// Commands over a small universe (2 topics, 3 nodes, 4 segments), so
/// that random sequences hit each other's topics and segments.
fn command() -> impl Strategy<Value = MetadataCmd> {
    let t = 0u8..2;
    let node = 1u64..=3;
    prop_oneof![
        (t.clone(), node.clone()).prop_map(|(t, leader)| MetadataCmd::CreateTopic {
            topic: topic(t),
            leader
        }),
        (t.clone(), 1u64..=4, prop::option::of(0u64..6), node.clone()).prop_map(
            |(t, segment, count, next_leader)| MetadataCmd::Roll {
                topic: topic(t),
                segment,
                count,
                next_leader
            }
        ),
        (t.clone(), 1u64..=4, 0u64..6, prop::option::of(1u128..=2)).prop_map(
            |(t, segment, count, s)| MetadataCmd::ReportCount {
                topic: topic(t),
                segment,
                count,
                storage: s.map(StorageId::from_u128),
            }
        ),
        (t.clone(), 0u64..10).prop_map(|(t, offset)| MetadataCmd::AdvanceCursor {
            topic: topic(t),
            offset
        }),
        (node.clone(), 1u128..=2).prop_map(|(node, s)| MetadataCmd::RegisterStorage {
            node,
            storage: StorageId::from_u128(s)
        }),
        (node.clone(), 1u128..=3, t.clone(), 0u64..6).prop_map(|(node, s, t, offset)| {
            MetadataCmd::ReplaceStorage {
                node,
                storage: StorageId::from_u128(s),
                delivered: vec![(topic(t), offset)],
            }
        }),
        (1u128..=2).prop_map(|id| MetadataCmd::InitCluster {
            id: ClusterId::from_u128(id)
        }),
        (
            t.clone(),
            1u64..=4,
            0u8..2,
            0u64..4,
            1u64..3,
            prop::option::of(0u64..4)
        )
            .prop_map(|(t, segment, p, seq, n, first_index)| {
                MetadataCmd::RecordProducers {
                    topic: topic(t),
                    segment,
                    producers: vec![(
                        ProducerId::new(format!("p{p}")).expect("valid producer id"),
                        ProducerEntry {
                            seq,
                            n,
                            segment,
                            first_index,
                        },
                    )],
                }
            }),
        (
            t.clone(),
            1u32..=3,
            prop::collection::vec(node.clone(), 0..4)
        )
            .prop_map(|(t, rf, replicas)| MetadataCmd::CreateReplicatedTopic {
                topic: topic(t),
                rf,
                replicas
            }),
        (
            t.clone(),
            1u64..=4,
            prop::option::of(0u64..6),
            prop::collection::vec(node.clone(), 0..4)
        )
            .prop_map(
                |(t, segment, count, replicas)| MetadataCmd::RollReplicated {
                    topic: topic(t),
                    segment,
                    count,
                    replicas
                }
            ),
        (0u8..2, 1u64..=4, 0u64..3).prop_map(|(t, segment, bytes)| {
            MetadataCmd::RecordSegmentBytes {
                topic: topic(t),
                segment,
                bytes,
            }
        }),
        node.clone()
            .prop_map(|node| MetadataCmd::RemoveNode { node }),
        (node.clone(), 1u128..=3, 1u128..=3).prop_map(|(node, s, r)| {
            MetadataCmd::RefillStorage {
                node,
                storage: StorageId::from_u128(s),
                replaces: StorageId::from_u128(r),
            }
        }),
        (
            t.clone(),
            1u64..=4,
            prop::collection::vec(node.clone(), 0..4),
            0u32..3,
            prop::collection::vec(node.clone(), 0..4)
        )
            .prop_map(|(t, segment, expected, moves, replicas)| {
                MetadataCmd::SetReplicas {
                    topic: topic(t),
                    segment,
                    expected,
                    moves,
                    replicas,
                }
            }),
        Just(MetadataCmd::Noop),
    ]
}

/// Both topics and the three nodes exist from the start, so that fewer
/// commands are rejected.
fn state_of(cmds: &[MetadataCmd]) -> ClusterState {
    let mut s = ClusterState::default();
    for node in 1..=3 {
        s.apply(&MetadataCmd::UpsertNode {
            node,
            info: NodeInfo {
                raft_addr: format!("n{node}"),
                client_addr: format!("c{node}"),
            },
        });
    }
    for t in 0..2 {
        s.apply(&MetadataCmd::CreateTopic {
            topic: topic(t),
            leader: 1,
        });
    }
    for c in cmds {
        s.apply(c);
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn given_a_command_repeated_after_others_when_applied_should_change_nothing(
        cmds in prop::collection::vec(command(), 1..24),
        pick in any::<prop::sample::Index>(),
        later in any::<prop::sample::Index>(),
    ) {
        let i = pick.index(cmds.len());
        let j = i + 1 + later.index(cmds.len() - i);
        // The original must have committed as a change or a no-op: a
        // rejected command's retry answers "rejected" to its proposer,
        // who does not retry it.
        let mut before = state_of(&cmds[..i]);
        if matches!(before.apply(&cmds[i]), CmdResult::Rejected(_)) {
            return Ok(());
        }

        let mut repeated = cmds.clone();
        repeated.insert(j, cmds[i].clone());
        let mut expected = state_of(&cmds);
        let mut got = state_of(&repeated);
        // Only the version counts the repeat.
        expected.version = 0;
        got.version = 0;
        prop_assert_eq!(
            got,
            expected,
            "{:?} repeated after {:?}",
            &cmds[i],
            &cmds[i + 1..j]
        );
    }
}
