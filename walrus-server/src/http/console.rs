//! The web console: one static page (`console.html`, compiled in, inline
//! script and style, nothing fetched from elsewhere) and the JSON it polls.
//!
//! - `/api/cluster`: this node's view of the cluster: the nodes (role,
//!   addresses, health by an inter-node PING), the Raft leader and term,
//!   every topic with its segments, their leaders and counts, and this
//!   node's request counters (the page turns successive polls into rates).
//! - `/api/topic/<name>/tail?n=<N>`: the newest `N` entries (1 to 100) of
//!   a topic, through the node's READ path, like any client's READ.
//!
//! Read-only: nothing here changes the cluster. Entries are sent as JSON
//! strings (`text` when the payload is UTF-8, else `hex`) and the page puts
//! them in the document with `textContent` only, so an entry is never
//! markup.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use walrus_core::metadata::SegmentStatus;
use walrus_core::protocol::{Request, Response};
use walrus_core::transport::NodeRequest;
use walrus_core::{ConsensusRole, NodeId, TopicName};

use super::{prometheus, Reply, Sources};

const PAGE: &str = include_str!("console.html");

/// Only the page's own inline script and style run, and it talks to this
/// server only.
pub(super) const CSP_HEADER: &str = "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'\r\n";

/// How long a node has to answer the console's PING.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Entries a tail returns at most, and bytes of each entry shown.
const MAX_TAIL: u64 = 100;
const SHOWN_BYTES: usize = 1024;
/// Bytes one READ of a tail asks for.
const READ_BYTES: u32 = 256 * 1024;

pub(super) fn page() -> Reply {
    Reply::new("200 OK", "text/html; charset=utf-8", PAGE.to_string())
}

fn role_name(role: ConsensusRole) -> &'static str {
    match role {
        ConsensusRole::Learner => "learner",
        ConsensusRole::Follower => "follower",
        ConsensusRole::Candidate => "candidate",
        ConsensusRole::Leader => "leader",
        ConsensusRole::Shutdown => "shutdown",
    }
}

/// `GET /api/cluster`.
pub(super) async fn cluster(sources: &Sources) -> Reply {
    let node = &sources.node;
    let metrics = node.metrics();
    let c = &metrics.consensus;
    let state = node.metadata().state();
    let voters: BTreeSet<NodeId> = c
        .membership
        .configs
        .last()
        .map(|v| v.iter().copied().collect())
        .unwrap_or_default();
    let ids: BTreeSet<NodeId> = c
        .membership
        .addresses
        .keys()
        .chain(state.nodes.keys())
        .chain(voters.iter())
        .copied()
        .collect();
    let pings = futures::future::join_all(ids.iter().map(|id| ping(sources, *id))).await;
    let nodes: Vec<Value> = ids
        .iter()
        .zip(pings)
        .map(|(id, health)| {
            let role = if *id == c.node {
                role_name(c.role)
            } else if Some(*id) == c.leader {
                "leader"
            } else if voters.contains(id) {
                "follower"
            } else {
                "learner"
            };
            let info = state.nodes.get(id);
            let matched = c
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .map(|m| m.as_ref().map(|p| p.index));
            json!({
                "id": id,
                "role": role,
                "voter": voters.contains(id),
                "raft_addr": info.map(|i| i.raft_addr.clone())
                    .or_else(|| c.membership.addresses.get(id).cloned()),
                "client_addr": info.map(|i| i.client_addr.clone()),
                "up": health.is_ok(),
                "ping_ms": health.as_ref().ok(),
                "error": health.err(),
                "matched_index": matched,
                "this": *id == c.node,
            })
        })
        .collect();

    let ends: BTreeMap<String, (u64, Option<u64>)> = prometheus::topic_counts(node)
        .await
        .into_iter()
        .map(|(t, first, end)| (t, (first, end)))
        .collect();
    let topics: Vec<Value> = state
        .topics
        .iter()
        .map(|(name, t)| {
            let (first, end) = ends.get(name.as_str()).copied().unwrap_or((0, None));
            // The open segment holds what the closed ones before it do not.
            let closed: Option<u64> = t
                .segments
                .iter()
                .filter(|s| s.status != SegmentStatus::Open)
                .map(|s| s.status.final_count())
                .sum();
            let segments: Vec<Value> = t
                .segments
                .iter()
                .map(|s| {
                    let (status, count) = match s.status {
                        SegmentStatus::Open => ("open", end.zip(closed).map(|(e, c)| e - c.min(e))),
                        SegmentStatus::Sealed { count } => ("sealed", Some(count)),
                        SegmentStatus::Pending => ("pending", None),
                        SegmentStatus::Lost { count } => ("lost", Some(count)),
                    };
                    json!({
                        "id": s.id,
                        "leader": s.leader,
                        "followers": s.followers,
                        "status": status,
                        "count": count,
                    })
                })
                .collect();
            json!({
                "name": name.as_str(),
                "first": first,
                "end": end,
                "deleted_through": t.deleted_through,
                "segments": segments,
            })
        })
        .collect();

    let requests: serde_json::Map<String, Value> = sources
        .requests
        .requests_by_command()
        .into_iter()
        .map(|(c, n, e)| (c.to_string(), json!({"requests": n, "errors": e})))
        .collect();
    Reply::json(
        "200 OK",
        &json!({
            "node": c.node,
            "role": role_name(c.role),
            "term": c.term,
            "leader": c.leader,
            "commit_index": c.last_applied.as_ref().map(|p| p.index),
            "metadata_version": metrics.metadata_version,
            "write_lease_valid": metrics.write_lease_valid,
            "failure": c.failure,
            "storage": {
                "failed_syncs": metrics.storage.failed_syncs,
                "failed_segments": metrics.storage.failed_segments,
                "quarantined_segments": metrics.storage.quarantined_segments,
            },
            "nodes": nodes,
            "topics": topics,
            "requests": requests,
            "client_bytes_in": sources.listener.bytes_in(),
            "client_bytes_out": sources.listener.bytes_out(),
            "client_connections": sources.listener.connections_open(),
        }),
    )
}

/// Round trip of an inter-node PING in ms, or why it failed.
async fn ping(sources: &Sources, id: NodeId) -> Result<f64, String> {
    if id == sources.node.id() {
        return Ok(0.0);
    }
    let start = Instant::now();
    match tokio::time::timeout(PING_TIMEOUT, sources.transport.call(id, NodeRequest::Ping)).await {
        Ok(Ok(_)) => Ok(start.elapsed().as_secs_f64() * 1e3),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", PING_TIMEOUT.as_millis())),
    }
}

/// The topic named by `/api/topic/<name>/tail`, if `path` is one.
pub(super) fn tail_topic(path: &str) -> Option<&str> {
    path.strip_prefix("/api/topic/")?.strip_suffix("/tail")
}

/// `n=<N>` of a query string; `default` when absent.
fn query_n(query: &str, default: u64) -> Result<u64, String> {
    match query.split('&').find_map(|kv| kv.strip_prefix("n=")) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=MAX_TAIL).contains(&n) => Ok(n),
            _ => Err(format!("n must be 1 to {MAX_TAIL}, got {v:?}")),
        },
    }
}

fn error(status: &'static str, why: impl Into<String>) -> Reply {
    Reply::json(status, &json!({ "error": why.into() }))
}

/// `GET /api/topic/<name>/tail?n=<N>`: the newest `N` entries, oldest
/// first, each `{"offset", "len", "text" or "hex", "truncated"}`.
pub(super) async fn tail(sources: &Sources, topic: &str, query: &str) -> Reply {
    let Ok(topic) = TopicName::new(topic) else {
        return error(
            "400 Bad Request",
            "invalid topic name: 1 to 255 of A-Z a-z 0-9 . _ -",
        );
    };
    let n = match query_n(query, 20) {
        Ok(n) => n,
        Err(why) => return error("400 Bad Request", why),
    };
    let node = &sources.node;
    let (first, end) = match node.handle(Request::Offsets(topic.clone())).await {
        Response::Json(text) => {
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            (
                v["first"].as_u64().unwrap_or(0),
                v["end"].as_u64().unwrap_or(0),
            )
        }
        Response::Err(e) if e == "topic not found" => return error("404 Not Found", e),
        Response::Err(e) => return error("503 Service Unavailable", e),
        other => return error("502 Bad Gateway", format!("unexpected answer {other:?}")),
    };
    let mut entries = Vec::new();
    let mut offset = end.saturating_sub(n).max(first);
    // A READ stops at a segment's end: go on until the end seen above.
    while offset < end {
        let read = Request::Read {
            topic: topic.clone(),
            offset,
            max_entries: (end - offset) as u32,
            max_bytes: READ_BYTES,
            wait_ms: 0,
        };
        match node.handle(read).await {
            Response::Entries { entries: got, next } => {
                if got.is_empty() || next <= offset {
                    break;
                }
                entries.extend(got.into_iter().map(|(o, p)| entry(o, &p)));
                offset = next;
            }
            Response::Err(e) => return error("503 Service Unavailable", e),
            other => return error("502 Bad Gateway", format!("unexpected answer {other:?}")),
        }
    }
    Reply::json(
        "200 OK",
        &json!({"topic": topic.as_str(), "first": first, "end": end, "entries": entries}),
    )
}

/// An entry as JSON: its first [`SHOWN_BYTES`] as text when they are UTF-8
/// (a character cut at the limit is dropped), else as hex.
fn entry(offset: u64, payload: &[u8]) -> Value {
    let shown = &payload[..payload.len().min(SHOWN_BYTES)];
    let text = match std::str::from_utf8(shown) {
        Ok(t) => Some(t),
        // Cut inside a character by the limit, valid before it.
        Err(e) if e.error_len().is_none() && shown.len() < payload.len() => {
            std::str::from_utf8(&shown[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    let mut v = json!({
        "offset": offset,
        "len": payload.len(),
        "truncated": shown.len() < payload.len(),
    });
    match text {
        Some(t) => v["text"] = t.into(),
        None => {
            v["hex"] = shown
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into()
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_entries_when_rendered_should_keep_utf8_as_text_and_show_other_bytes_as_hex() {
        let e = entry(3, "<b>héllo</b>".as_bytes());
        assert_eq!(e["text"], "<b>héllo</b>");
        assert_eq!(
            (e["offset"].as_u64(), e["len"].as_u64()),
            (Some(3), Some(13))
        );
        let e = entry(4, &[0xff, 0x00, b'a']);
        assert_eq!(e["hex"], "ff0061");
        assert!(e.get("text").is_none());
        // A character cut by the limit is dropped, not turned into hex.
        let mut long = vec![b'a'; SHOWN_BYTES - 1];
        long.extend_from_slice("é".as_bytes());
        let e = entry(5, &long);
        assert_eq!(e["text"].as_str().map(str::len), Some(SHOWN_BYTES - 1));
        assert_eq!(e["truncated"], true);
    }

    #[test]
    fn given_tail_paths_and_queries_when_parsed_should_accept_only_the_tail_route() {
        assert_eq!(tail_topic("/api/topic/logs/tail"), Some("logs"));
        assert_eq!(tail_topic("/api/topic/logs"), None);
        assert_eq!(tail_topic("/api/topics/logs/tail"), None);
        assert_eq!(query_n("", 20), Ok(20));
        assert_eq!(query_n("x=1&n=7", 20), Ok(7));
        assert!(query_n("n=0", 20).is_err());
        assert!(query_n("n=101", 20).is_err());
        assert!(query_n("n=-1", 20).is_err());
    }
}
