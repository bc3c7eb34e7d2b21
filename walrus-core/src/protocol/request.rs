//! Parsing a request body into a [`Request`], with the protocol's exact
//! error texts.

use bytes::Bytes;

use crate::error::Error;
use crate::types::{NodeId, StorageId, TopicName};

/// A parsed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Register(TopicName),
    /// `payload` is every byte after the space that follows the topic.
    Put {
        topic: TopicName,
        payload: Bytes,
    },
    Get(TopicName),
    State(TopicName),
    Metrics,
    Ping,
    Topics,
    /// `REPLACE-STORAGE <node> <storage-id>` (operator): accept that `node`
    /// lost its storage and record its new one.
    ReplaceStorage {
        node: NodeId,
        storage: StorageId,
    },
}

impl Request {
    /// Parses one frame body. Never panics; every failure is the `ERR` text
    /// the client gets.
    pub fn parse(body: Bytes) -> Result<Request, Error> {
        let text =
            std::str::from_utf8(&body).map_err(|_| Error::BadRequest("invalid utf-8".into()))?;
        let (verb, rest) = match text.find(' ') {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        let verb_upper = verb.trim_end_matches(['\r', '\n']).to_ascii_uppercase();
        match verb_upper.as_str() {
            "PUT" => {
                let rest = rest.unwrap_or("");
                let (topic, payload_start) = match rest.find(' ') {
                    Some(i) => (&rest[..i], Some(i + 1)),
                    None => (rest, None),
                };
                if topic.is_empty() {
                    return Err(Error::BadRequest("PUT requires a topic".into()));
                }
                let topic = TopicName::new(topic)?;
                let start = verb.len() + 1 + payload_start.unwrap_or(rest.len());
                if payload_start.is_none() || start >= body.len() {
                    return Err(Error::BadRequest("PUT requires a payload".into()));
                }
                Ok(Request::Put {
                    topic,
                    payload: body.slice(start..),
                })
            }
            "REGISTER" | "GET" | "STATE" => {
                let topic = rest.map(|r| r.trim_end_matches(['\r', '\n'])).unwrap_or("");
                if topic.is_empty() {
                    return Err(Error::BadRequest(format!("{verb_upper} requires a topic")));
                }
                let topic = TopicName::new(topic)?;
                Ok(match verb_upper.as_str() {
                    "REGISTER" => Request::Register(topic),
                    "GET" => Request::Get(topic),
                    _ => Request::State(topic),
                })
            }
            "METRICS" => Ok(Request::Metrics),
            "PING" => Ok(Request::Ping),
            "TOPICS" => Ok(Request::Topics),
            "REPLACE-STORAGE" => {
                const USAGE: &str = "REPLACE-STORAGE requires a node id and a storage id";
                let rest = rest.map(|r| r.trim_end_matches(['\r', '\n'])).unwrap_or("");
                let mut words = rest.split(' ');
                let (Some(node), Some(storage), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(Error::BadRequest(USAGE.into()));
                };
                let node = node
                    .parse::<NodeId>()
                    .map_err(|_| Error::BadRequest(format!("invalid node id {node:?}: {USAGE}")))?;
                Ok(Request::ReplaceStorage {
                    node,
                    storage: storage.parse()?,
                })
            }
            _ => Err(Error::BadRequest(format!("unknown command {verb}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<Request, String> {
        Request::parse(Bytes::copy_from_slice(s)).map_err(|e| e.to_string())
    }

    fn t(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    #[test]
    fn put_keeps_the_payload_byte_exact() {
        assert_eq!(
            parse(b"PUT logs hello world").unwrap(),
            Request::Put {
                topic: t("logs"),
                payload: Bytes::from_static(b"hello world")
            }
        );
        assert_eq!(
            parse(b"put logs  two\nlines \t ").unwrap(),
            Request::Put {
                topic: t("logs"),
                payload: Bytes::from_static(b" two\nlines \t ")
            }
        );
    }

    #[test]
    fn every_error_text_of_the_contract() {
        assert_eq!(parse(b"PUT").unwrap_err(), "PUT requires a topic");
        assert_eq!(parse(b"PUT ").unwrap_err(), "PUT requires a topic");
        assert_eq!(parse(b"PUT logs").unwrap_err(), "PUT requires a payload");
        assert_eq!(parse(b"PUT logs ").unwrap_err(), "PUT requires a payload");
        assert_eq!(parse(b"REGISTER").unwrap_err(), "REGISTER requires a topic");
        assert_eq!(parse(b"GET").unwrap_err(), "GET requires a topic");
        assert_eq!(parse(b"STATE ").unwrap_err(), "STATE requires a topic");
        assert_eq!(parse(b"FROB x").unwrap_err(), "unknown command FROB");
        assert_eq!(parse(b"REGISTER ../etc").unwrap_err(), "invalid topic name");
        assert_eq!(parse(b"PUT a/b x").unwrap_err(), "invalid topic name");
        assert_eq!(parse(b"GET \xff").unwrap_err(), "invalid utf-8");
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse(b"register logs").unwrap(),
            Request::Register(t("logs"))
        );
        assert_eq!(parse(b"Metrics").unwrap(), Request::Metrics);
        assert_eq!(parse(b"ping").unwrap(), Request::Ping);
    }

    #[test]
    fn replace_storage_takes_a_node_and_a_storage_id() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse(format!("replace-storage 2 {id}").as_bytes()).unwrap(),
            Request::ReplaceStorage {
                node: 2,
                storage: id.parse().unwrap()
            }
        );
        let usage = "REPLACE-STORAGE requires a node id and a storage id";
        assert_eq!(parse(b"REPLACE-STORAGE").unwrap_err(), usage);
        assert_eq!(parse(b"REPLACE-STORAGE 2").unwrap_err(), usage);
        assert_eq!(
            parse(format!("REPLACE-STORAGE 2 {id} x").as_bytes()).unwrap_err(),
            usage
        );
        assert!(parse(format!("REPLACE-STORAGE two {id}").as_bytes())
            .unwrap_err()
            .starts_with("invalid node id"));
        assert!(parse(b"REPLACE-STORAGE 2 nothex")
            .unwrap_err()
            .starts_with("invalid storage id"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_random_bytes_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Request::parse(Bytes::from(body));
        }

        #[test]
        fn parsing_random_text_never_panics(body in "(?s)(PUT|GET|REGISTER|STATE|put)?[ a-z./\n]{0,40}") {
            let _ = Request::parse(Bytes::from(body));
        }
    }
}
