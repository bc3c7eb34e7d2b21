//! Parsing a request body into a [`Request`], with the protocol's exact
//! error texts.

use bytes::Bytes;

use crate::error::Error;
use crate::metadata::Retention;
use crate::types::{GroupName, NodeId, Offset, ProducerId, ProducerSeq, StorageId, TopicName};

/// Entries a READ returns when it names no `max_entries`.
pub const READ_DEFAULT_MAX_ENTRIES: u32 = 100;
/// The largest `max_entries` of a READ.
pub const READ_MAX_ENTRIES: u32 = 10_000;
/// Payload bytes a READ returns at most (and when it names no `max_bytes`);
/// one entry is returned even when it alone is larger.
pub const READ_MAX_BYTES: u32 = 1 << 20;
/// The longest `WAIT` of a READ, in ms.
pub const READ_MAX_WAIT_MS: u64 = 60_000;

/// The most entries one PUTB carries (its bytes are bounded by the frame).
pub const PUTB_MAX_ENTRIES: usize = 10_000;

const PUTB_USAGE: &str =
    "PUTB <topic> <n> [PRODUCER <id> <seq>]\\n then n times <length>\\n<payload>\\n";
const READ_USAGE: &str = "READ <topic> <offset> [max_entries] [max_bytes] [WAIT <ms>]";
const FETCH_USAGE: &str = "FETCH <group> <topic> [max_entries] [max_bytes] [WAIT <ms>]";
const COMMIT_USAGE: &str = "COMMIT <group> <topic> <offset>";
const REGISTER_USAGE: &str = "REGISTER <topic> [RETAIN <limits>] [RF <n>]";
const RETAIN_USAGE: &str = "RETAIN entries=<n> bytes=<n>[KiB|MiB|GiB|TiB] age=<n>ms|s|m|h|d \
     (any of them), RETAIN none or RETAIN default";

/// A topic's retention as `RETAIN …` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainSetting {
    /// `RETAIN default`: the server's default retention.
    Default,
    /// The topic's own limits; a limit left out is no limit
    /// (`RETAIN none`: keep everything).
    Limits(Retention),
}

impl RetainSetting {
    /// The topic's setting in the metadata (`None`: the default).
    pub fn as_topic_retention(self) -> Option<Retention> {
        match self {
            RetainSetting::Default => None,
            RetainSetting::Limits(r) => Some(r),
        }
    }

    /// Parses the limits after `RETAIN` as the server does (`default`,
    /// `none`, or the limits); the error is the text the server answers.
    pub fn parse(limits: &str) -> Result<RetainSetting, String> {
        parse_retain(limits).map_err(|e| e.to_string())
    }

    /// The words after `RETAIN` that give this setting:
    /// `RetainSetting::parse(&s.to_words()) == Ok(s)`.
    pub fn to_words(&self) -> String {
        let r = match self {
            RetainSetting::Default => return "default".into(),
            RetainSetting::Limits(r) if r.keeps_everything() => return "none".into(),
            RetainSetting::Limits(r) => r,
        };
        let mut words = Vec::new();
        if let Some(n) = r.max_entries {
            words.push(format!("entries={n}"));
        }
        if let Some(ms) = r.max_age_ms {
            words.push(format!("age={ms}ms"));
        }
        if let Some(n) = r.max_bytes {
            words.push(format!("bytes={n}"));
        }
        words.join(" ")
    }
}

/// A parsed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Register(TopicName),
    /// `REGISTER <topic>` with options: `RETAIN …` creates the topic if
    /// need be and sets its retention; `RF <n>` gives a new topic `n`
    /// copies of each segment (an existing topic keeps its own). At least
    /// one of them is given.
    RegisterRetaining {
        topic: TopicName,
        retain: Option<RetainSetting>,
        rf: Option<u32>,
    },
    /// `CONFIG <topic>` (`retain: None`: answers the topic's settings) or
    /// `CONFIG <topic> RETAIN …` (sets its retention).
    Config {
        topic: TopicName,
        retain: Option<RetainSetting>,
    },
    /// `payload` is every byte after the space that follows the topic.
    Put {
        topic: TopicName,
        payload: Bytes,
    },
    /// `PUTB <topic> <n> [PRODUCER <id> <seq>]\n` and `n` records
    /// `<length>\n<payload>\n`: all entries stored together, in order, or
    /// none. With `producer`, a write stored before under the same
    /// producer and sequence is not stored again.
    PutBatch {
        topic: TopicName,
        entries: Vec<Bytes>,
        producer: Option<ProducerSeq>,
    },
    Get(TopicName),
    State(TopicName),
    Metrics,
    Ping,
    Topics,
    /// `TOPICS COUNTS`: every topic with its entry count.
    TopicCounts,
    /// `READ <topic> <offset> [max_entries] [max_bytes] [WAIT <ms>]`:
    /// entries from `offset` on, moving no cursor. `wait_ms > 0`: wait up
    /// to that long for one to exist.
    Read {
        topic: TopicName,
        offset: Offset,
        max_entries: u32,
        max_bytes: u32,
        wait_ms: u64,
    },
    /// `OFFSETS <topic>`: the first offset and the end (one past the last
    /// readable entry).
    Offsets(TopicName),
    /// `FETCH <group> <topic> [max_entries] [max_bytes] [WAIT <ms>]`: a
    /// READ from the group's committed offset (0 when none). Commits
    /// nothing.
    Fetch {
        group: GroupName,
        topic: TopicName,
        max_entries: u32,
        max_bytes: u32,
        wait_ms: u64,
    },
    /// `COMMIT <group> <topic> <offset>` (or `SEEK`, the same): the offset
    /// the group's next FETCH starts at.
    Commit {
        group: GroupName,
        topic: TopicName,
        offset: Offset,
    },
    /// `REPLACE-STORAGE <node> <storage-id>` (operator): accept that `node`
    /// lost its storage and record its new one.
    ReplaceStorage {
        node: NodeId,
        storage: StorageId,
    },
    /// `REMOVE-NODE <node>` (operator): remove `node` from the cluster for
    /// good; its segments get copies elsewhere.
    RemoveNode {
        node: NodeId,
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
            "PUTB" => parse_putb(&body),
            "REGISTER" | "GET" | "STATE" | "OFFSETS" => {
                let topic = rest.map(|r| r.trim_end_matches(['\r', '\n'])).unwrap_or("");
                if topic.is_empty() {
                    return Err(Error::BadRequest(format!("{verb_upper} requires a topic")));
                }
                if verb_upper == "REGISTER" {
                    if let Some((name, options)) = topic.split_once(' ') {
                        return parse_register_options(name, options);
                    }
                }
                let topic = TopicName::new(topic)?;
                Ok(match verb_upper.as_str() {
                    "REGISTER" => Request::Register(topic),
                    "GET" => Request::Get(topic),
                    "OFFSETS" => Request::Offsets(topic),
                    _ => Request::State(topic),
                })
            }
            "CONFIG" => parse_config(rest.unwrap_or("")),
            "METRICS" => Ok(Request::Metrics),
            "PING" => Ok(Request::Ping),
            "TOPICS" => match rest.map(|r| r.trim_end_matches(['\r', '\n'])) {
                None | Some("") => Ok(Request::Topics),
                Some(arg) if arg.eq_ignore_ascii_case("COUNTS") => Ok(Request::TopicCounts),
                Some(arg) => Err(Error::BadRequest(format!(
                    "TOPICS takes no argument, or COUNTS; got {arg:?}"
                ))),
            },
            "READ" => parse_read(rest.unwrap_or("")),
            "FETCH" => parse_fetch(rest.unwrap_or("")),
            "COMMIT" | "SEEK" => parse_commit(&verb_upper, rest.unwrap_or("")),
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
            "REMOVE-NODE" => {
                const USAGE: &str = "REMOVE-NODE requires a node id";
                let rest = rest.map(|r| r.trim_end_matches(['\r', '\n'])).unwrap_or("");
                let mut words = rest.split(' ');
                let (Some(node), None) = (words.next().filter(|w| !w.is_empty()), words.next())
                else {
                    return Err(Error::BadRequest(USAGE.into()));
                };
                let node = node
                    .parse::<NodeId>()
                    .map_err(|_| Error::BadRequest(format!("invalid node id {node:?}: {USAGE}")))?;
                Ok(Request::RemoveNode { node })
            }
            _ => Err(Error::BadRequest(format!("unknown command {verb}"))),
        }
    }
}

/// The arguments of a CONFIG after the verb.
fn parse_config(rest: &str) -> Result<Request, Error> {
    let rest = rest.trim_end_matches(['\r', '\n']);
    let (topic, options) = match rest.split_once(' ') {
        Some((t, o)) => (t, Some(o)),
        None => (rest, None),
    };
    if topic.is_empty() {
        return Err(Error::BadRequest(format!(
            "CONFIG requires a topic: CONFIG <topic> [{RETAIN_USAGE}]"
        )));
    }
    let topic = TopicName::new(topic)?;
    let retain = match options {
        None => None,
        Some(options) => {
            let (keyword, limits) = options.split_once(' ').unwrap_or((options, ""));
            if !keyword.eq_ignore_ascii_case("RETAIN") {
                return Err(Error::BadRequest(format!(
                    "unexpected {keyword:?}: CONFIG <topic> [{RETAIN_USAGE}]"
                )));
            }
            Some(parse_retain(limits)?)
        }
    };
    Ok(Request::Config { topic, retain })
}

/// `REGISTER <topic> [RETAIN <limits>] [RF <n>]`, in either order, once
/// each, after the topic name.
fn parse_register_options(name: &str, options: &str) -> Result<Request, Error> {
    let words: Vec<&str> = options.split(' ').collect();
    let is = |w: &str, keyword: &str| w.eq_ignore_ascii_case(keyword);
    // Only `RETAIN` and `RF` open options: anything else is a topic name
    // with a space, refused as it always was.
    if !is(words[0], "RETAIN") && !is(words[0], "RF") {
        return Err(Error::InvalidTopicName);
    }
    let bad = |what: String| Error::BadRequest(format!("{what}: {REGISTER_USAGE}"));
    let (mut retain, mut rf) = (None, None);
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        if is(word, "RF") && rf.is_none() {
            let n = words.get(i + 1).copied().unwrap_or("");
            rf = match n.parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(bad(format!(
                        "invalid RF {n:?} (a count of copies, 1 or more)"
                    )))
                }
            };
            i += 2;
        } else if is(word, "RETAIN") && retain.is_none() {
            let end = (i + 1..words.len())
                .find(|j| is(words[*j], "RF") || is(words[*j], "RETAIN"))
                .unwrap_or(words.len());
            retain = Some(parse_retain(&words[i + 1..end].join(" "))?);
            i = end;
        } else if word.is_empty() {
            i += 1;
        } else {
            return Err(bad(format!("unexpected {word:?}")));
        }
    }
    Ok(Request::RegisterRetaining {
        topic: TopicName::new(name)?,
        retain,
        rf,
    })
}

/// The limits after `RETAIN`: `default`, `none`, or `entries=<n>` and/or
/// `age=<duration>`.
fn parse_retain(limits: &str) -> Result<RetainSetting, Error> {
    let bad = |what: String| Error::BadRequest(format!("{what}: {RETAIN_USAGE}"));
    let words: Vec<&str> = limits.split(' ').filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        [] => return Err(bad("RETAIN requires limits".into())),
        [w] if w.eq_ignore_ascii_case("default") => return Ok(RetainSetting::Default),
        [w] if w.eq_ignore_ascii_case("none") => {
            return Ok(RetainSetting::Limits(Retention::default()))
        }
        _ => {}
    }
    let mut retention = Retention::default();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(bad(format!("unexpected {word:?}")));
        };
        if key.eq_ignore_ascii_case("entries") && retention.max_entries.is_none() {
            retention.max_entries = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("invalid entries {value:?}")))?,
            );
        } else if key.eq_ignore_ascii_case("age") && retention.max_age_ms.is_none() {
            retention.max_age_ms = Some(parse_duration_ms(value).map_err(bad)?);
        } else if key.eq_ignore_ascii_case("bytes") && retention.max_bytes.is_none() {
            retention.max_bytes = Some(parse_bytes(value).map_err(bad)?);
        } else {
            return Err(bad(format!("unexpected {word:?}")));
        }
    }
    Ok(RetainSetting::Limits(retention))
}

/// `<n>`, `<n>KiB`, `<n>MiB`, `<n>GiB` or `<n>TiB`, in bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let scale: u64 = match &text[digits.len()..] {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid bytes {text:?}: give a number, or one with KiB, MiB, GiB or TiB"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| {
            format!("invalid bytes {text:?}: give a number, or one with KiB, MiB, GiB or TiB")
        })
}

/// `<n>ms`, `<n>s`, `<n>m`, `<n>h` or `<n>d`, in ms.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "invalid age {text:?}: give a number and ms, s, m, h or d"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("invalid age {text:?}: give a number and ms, s, m, h or d"))
}

/// A PUTB body: the header line, then `n` records `<length>\n<payload>\n`
/// and nothing after the last one. Payloads are sliced out of `body`, not
/// copied.
fn parse_putb(body: &Bytes) -> Result<Request, Error> {
    let bad = |what: String| Error::BadRequest(format!("{what}: {PUTB_USAGE}"));
    let header_end = body.iter().position(|&b| b == b'\n');
    let header = &body[..header_end.unwrap_or(body.len())];
    let header = std::str::from_utf8(header.strip_suffix(b"\r").unwrap_or(header))
        .map_err(|_| Error::BadRequest("invalid utf-8".into()))?;
    let mut words = header.split(' ').skip(1);
    let topic = match words.next() {
        None | Some("") => return Err(Error::BadRequest("PUTB requires a topic".into())),
        Some(t) => TopicName::new(t)?,
    };
    let n = match words.next() {
        None | Some("") => return Err(bad("PUTB requires an entry count".into())),
        Some(w) => match w.parse::<usize>() {
            Ok(n) if (1..=PUTB_MAX_ENTRIES).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "the entry count must be 1 to {PUTB_MAX_ENTRIES}, got {w:?}"
                )))
            }
        },
    };
    let producer = match words.next() {
        None => None,
        Some(w) if w.eq_ignore_ascii_case("PRODUCER") => {
            let (Some(id), Some(seq)) = (words.next(), words.next()) else {
                return Err(bad("PRODUCER requires an id and a sequence number".into()));
            };
            let producer = ProducerId::new(id)?;
            let seq = seq
                .parse::<u64>()
                .map_err(|_| bad(format!("invalid sequence number {seq:?}")))?;
            Some(ProducerSeq { producer, seq })
        }
        Some(w) => return Err(bad(format!("unexpected {w:?}"))),
    };
    if let Some(w) = words.next() {
        return Err(bad(format!("unexpected {w:?}")));
    }
    let Some(header_end) = header_end else {
        return Err(bad(format!("PUTB announced {n} entries and has none")));
    };
    let mut at = header_end + 1;
    let mut entries = Vec::with_capacity(n.min(body.len() / 4 + 1));
    for i in 1..=n {
        let record = |what: &str| bad(format!("entry {i} of {n}: {what}"));
        let rest = &body[at..];
        if rest.is_empty() {
            return Err(bad(format!("PUTB announced {n} entries and has {}", i - 1)));
        }
        let Some(line_end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(record("its length line does not end with \\n"));
        };
        let digits = &rest[..line_end];
        let len = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<usize>().ok())
            .ok_or_else(|| {
                record(&format!(
                    "invalid length {:?}",
                    String::from_utf8_lossy(&digits[..digits.len().min(20)])
                ))
            })?;
        if len == 0 {
            return Err(record("an entry is 1 byte or more, like a PUT's payload"));
        }
        let start = at + line_end + 1;
        let end = start
            .checked_add(len)
            .filter(|&end| end < body.len())
            .ok_or_else(|| record(&format!("the body ends before its {len} bytes and \\n")))?;
        if body[end] != b'\n' {
            return Err(record(&format!("its {len} bytes are not followed by \\n")));
        }
        entries.push(body.slice(start..end));
        at = end + 1;
    }
    if at != body.len() {
        return Err(bad(format!(
            "{} bytes follow the last of the {n} entries",
            body.len() - at
        )));
    }
    Ok(Request::PutBatch {
        topic,
        entries,
        producer,
    })
}

/// The arguments of a READ after the verb.
fn parse_read(rest: &str) -> Result<Request, Error> {
    let bad = |what: String| Error::BadRequest(format!("{what}: {READ_USAGE}"));
    let rest = rest.trim_end_matches(['\r', '\n']);
    let mut words = rest.split(' ');
    let topic = words.next().unwrap_or("");
    if topic.is_empty() {
        return Err(Error::BadRequest("READ requires a topic".into()));
    }
    let topic = TopicName::new(topic)?;
    let offset = match words.next() {
        None => return Err(bad("READ requires an offset".into())),
        Some(o) => o
            .parse::<Offset>()
            .map_err(|_| bad(format!("invalid offset {o:?}")))?,
    };
    let (max_entries, max_bytes, wait_ms) = parse_read_limits(words, &bad)?;
    Ok(Request::Read {
        topic,
        offset,
        max_entries,
        max_bytes,
        wait_ms,
    })
}

/// The arguments of a FETCH after the verb.
fn parse_fetch(rest: &str) -> Result<Request, Error> {
    let bad = |what: String| Error::BadRequest(format!("{what}: {FETCH_USAGE}"));
    let rest = rest.trim_end_matches(['\r', '\n']);
    let mut words = rest.split(' ');
    let (group, topic) = group_and_topic("FETCH", &mut words, &bad)?;
    let (max_entries, max_bytes, wait_ms) = parse_read_limits(words, &bad)?;
    Ok(Request::Fetch {
        group,
        topic,
        max_entries,
        max_bytes,
        wait_ms,
    })
}

/// The arguments of a COMMIT (or SEEK) after the verb.
fn parse_commit(verb: &str, rest: &str) -> Result<Request, Error> {
    let bad = |what: String| Error::BadRequest(format!("{what}: {COMMIT_USAGE}"));
    let rest = rest.trim_end_matches(['\r', '\n']);
    let mut words = rest.split(' ');
    let (group, topic) = group_and_topic(verb, &mut words, &bad)?;
    let offset = match words.next() {
        None => return Err(bad(format!("{verb} requires an offset"))),
        Some(o) => o
            .parse::<Offset>()
            .map_err(|_| bad(format!("invalid offset {o:?}")))?,
    };
    if let Some(extra) = words.next() {
        return Err(bad(format!("unexpected {extra:?}")));
    }
    Ok(Request::Commit {
        group,
        topic,
        offset,
    })
}

/// The `<group> <topic>` that FETCH and COMMIT start with.
fn group_and_topic<'a>(
    verb: &str,
    words: &mut impl Iterator<Item = &'a str>,
    bad: &impl Fn(String) -> Error,
) -> Result<(GroupName, TopicName), Error> {
    let group = words.next().unwrap_or("");
    if group.is_empty() {
        return Err(bad(format!("{verb} requires a group")));
    }
    let group = GroupName::new(group)?;
    let topic = match words.next() {
        None | Some("") => return Err(bad(format!("{verb} requires a topic"))),
        Some(t) => TopicName::new(t)?,
    };
    Ok((group, topic))
}

/// `[max_entries] [max_bytes] [WAIT <ms>]`, the end of a READ or FETCH,
/// with the defaults for what is left out.
fn parse_read_limits<'a>(
    mut words: impl Iterator<Item = &'a str>,
    bad: &impl Fn(String) -> Error,
) -> Result<(u32, u32, u64), Error> {
    let number = |word: &str, what: &str, max: u64| -> Result<u64, Error> {
        match word.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(format!("{what} must be 1 to {max}, got {word:?}"))),
        }
    };
    let mut sizes = Vec::with_capacity(2);
    let mut wait_ms = 0;
    while let Some(word) = words.next() {
        if word.eq_ignore_ascii_case("WAIT") {
            let ms = words
                .next()
                .ok_or_else(|| bad("WAIT requires a time in ms".into()))?;
            wait_ms = match ms.parse::<u64>() {
                Ok(n) if n <= READ_MAX_WAIT_MS => n,
                _ => {
                    return Err(bad(format!(
                        "WAIT must be 0 to {READ_MAX_WAIT_MS} ms, got {ms:?}"
                    )))
                }
            };
            if let Some(extra) = words.next() {
                return Err(bad(format!("unexpected {extra:?} after WAIT <ms>")));
            }
            break;
        }
        let (what, max) = match sizes.len() {
            0 => ("max_entries", u64::from(READ_MAX_ENTRIES)),
            1 => ("max_bytes", u64::from(READ_MAX_BYTES)),
            _ => return Err(bad(format!("unexpected {word:?}"))),
        };
        sizes.push(number(word, what, max)? as u32);
    }
    Ok((
        sizes.first().copied().unwrap_or(READ_DEFAULT_MAX_ENTRIES),
        sizes.get(1).copied().unwrap_or(READ_MAX_BYTES),
        wait_ms,
    ))
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
    fn given_remove_node_when_parsed_should_take_exactly_one_node_id() {
        assert_eq!(
            parse(b"REMOVE-NODE 3").unwrap(),
            Request::RemoveNode { node: 3 }
        );
        assert_eq!(
            parse(b"remove-node 3\r\n").unwrap(),
            Request::RemoveNode { node: 3 }
        );
        let usage = "REMOVE-NODE requires a node id";
        assert_eq!(parse(b"REMOVE-NODE").unwrap_err(), usage);
        assert_eq!(parse(b"REMOVE-NODE ").unwrap_err(), usage);
        assert_eq!(parse(b"REMOVE-NODE 1 2").unwrap_err(), usage);
        assert!(parse(b"REMOVE-NODE x")
            .unwrap_err()
            .contains("invalid node id \"x\""));
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

    fn read(offset: Offset, max_entries: u32, max_bytes: u32, wait_ms: u64) -> Request {
        Request::Read {
            topic: t("logs"),
            offset,
            max_entries,
            max_bytes,
            wait_ms,
        }
    }

    #[test]
    fn given_read_arguments_should_take_the_optional_ones_in_order_and_wait_last() {
        let (n, b) = (READ_DEFAULT_MAX_ENTRIES, READ_MAX_BYTES);
        assert_eq!(parse(b"READ logs 0").unwrap(), read(0, n, b, 0));
        assert_eq!(parse(b"read logs 7 10\r\n").unwrap(), read(7, 10, b, 0));
        assert_eq!(parse(b"READ logs 7 10 4096").unwrap(), read(7, 10, 4096, 0));
        assert_eq!(parse(b"READ logs 7 WAIT 500").unwrap(), read(7, n, b, 500));
        assert_eq!(
            parse(b"READ logs 7 10 4096 wait 500").unwrap(),
            read(7, 10, 4096, 500)
        );
        assert_eq!(
            parse(b"OFFSETS logs\n").unwrap(),
            Request::Offsets(t("logs"))
        );
        assert_eq!(parse(b"TOPICS").unwrap(), Request::Topics);
        assert_eq!(parse(b"topics counts").unwrap(), Request::TopicCounts);
    }

    #[test]
    fn given_a_bad_read_should_say_what_is_wrong_and_show_the_usage() {
        assert_eq!(parse(b"READ").unwrap_err(), "READ requires a topic");
        assert_eq!(parse(b"READ ").unwrap_err(), "READ requires a topic");
        assert_eq!(parse(b"OFFSETS").unwrap_err(), "OFFSETS requires a topic");
        for (body, start) in [
            (&b"READ logs"[..], "READ requires an offset"),
            (b"READ logs -1", "invalid offset \"-1\""),
            (b"READ logs 0 0", "max_entries must be 1 to 10000"),
            (b"READ logs 0 10001", "max_entries must be 1 to 10000"),
            (b"READ logs 0 1 0", "max_bytes must be 1 to 1048576"),
            (b"READ logs 0 1 2 3", "unexpected \"3\""),
            (b"READ logs 0 WAIT", "WAIT requires a time in ms"),
            (b"READ logs 0 WAIT 60001", "WAIT must be 0 to 60000 ms"),
            (b"READ logs 0 WAIT 5 6", "unexpected \"6\" after WAIT <ms>"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.starts_with(start), "{e}");
            assert!(e.ends_with(READ_USAGE), "{e}");
        }
        assert_eq!(parse(b"READ a/b 0").unwrap_err(), "invalid topic name");
        assert!(parse(b"TOPICS all")
            .unwrap_err()
            .starts_with("TOPICS takes"));
    }

    #[test]
    fn given_fetch_and_commit_should_parse_group_topic_and_the_rest_like_read() {
        let g = GroupName::new("billing").unwrap();
        assert_eq!(
            parse(b"fetch billing logs 10 WAIT 500\r\n").unwrap(),
            Request::Fetch {
                group: g.clone(),
                topic: t("logs"),
                max_entries: 10,
                max_bytes: READ_MAX_BYTES,
                wait_ms: 500,
            }
        );
        let commit = Request::Commit {
            group: g,
            topic: t("logs"),
            offset: 42,
        };
        assert_eq!(parse(b"COMMIT billing logs 42").unwrap(), commit);
        assert_eq!(parse(b"seek billing logs 42\n").unwrap(), commit);
        for (body, start, usage) in [
            (&b"FETCH"[..], "FETCH requires a group", FETCH_USAGE),
            (b"FETCH billing", "FETCH requires a topic", FETCH_USAGE),
            (
                b"FETCH billing logs 0",
                "max_entries must be 1",
                FETCH_USAGE,
            ),
            (b"FETCH billing logs 1 2 3", "unexpected \"3\"", FETCH_USAGE),
            (b"COMMIT", "COMMIT requires a group", COMMIT_USAGE),
            (
                b"COMMIT billing logs",
                "COMMIT requires an offset",
                COMMIT_USAGE,
            ),
            (
                b"SEEK billing logs",
                "SEEK requires an offset",
                COMMIT_USAGE,
            ),
            (
                b"COMMIT billing logs -1",
                "invalid offset \"-1\"",
                COMMIT_USAGE,
            ),
            (b"COMMIT billing logs 1 2", "unexpected \"2\"", COMMIT_USAGE),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.starts_with(start), "{e}");
            assert!(e.ends_with(usage), "{e}");
        }
        assert!(parse(b"FETCH ../x logs")
            .unwrap_err()
            .starts_with("invalid group name"));
        assert_eq!(
            parse(b"COMMIT billing a/b 1").unwrap_err(),
            "invalid topic name"
        );
    }

    #[test]
    fn given_register_with_rf_should_parse_it_alone_or_with_retain_in_either_order() {
        let with = |retain, rf| Request::RegisterRetaining {
            topic: t("logs"),
            retain,
            rf,
        };
        let none = RetainSetting::Limits(Retention::default());
        assert_eq!(
            parse(b"REGISTER logs RF 3\r\n").unwrap(),
            with(None, Some(3))
        );
        assert_eq!(
            parse(b"register logs rf 2 retain none").unwrap(),
            with(Some(none), Some(2))
        );
        assert_eq!(
            parse(b"REGISTER logs RETAIN none RF 1").unwrap(),
            with(Some(none), Some(1))
        );
        for (body, start) in [
            (&b"REGISTER logs RF"[..], "invalid RF \"\""),
            (b"REGISTER logs RF 0", "invalid RF \"0\""),
            (b"REGISTER logs RF x", "invalid RF \"x\""),
            (b"REGISTER logs RF 2 RF 3", "unexpected \"RF\""),
            (b"REGISTER logs RF 2 x", "unexpected \"x\""),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.starts_with(start), "{e}");
            assert!(e.ends_with(REGISTER_USAGE), "{e}");
        }
        assert_eq!(
            parse(b"REGISTER logs x RF 2").unwrap_err(),
            "invalid topic name"
        );
    }

    #[test]
    fn given_register_with_retain_should_parse_limits_and_keep_plain_register_as_it_was() {
        assert_eq!(
            parse(b"REGISTER logs\r\n").unwrap(),
            Request::Register(t("logs"))
        );
        assert_eq!(parse(b"REGISTER logs x").unwrap_err(), "invalid topic name");
        let limits = |e, a| {
            RetainSetting::Limits(Retention {
                max_entries: e,
                max_age_ms: a,
                max_bytes: None,
            })
        };
        assert_eq!(
            parse(b"register logs retain entries=1000 age=7d\n").unwrap(),
            Request::RegisterRetaining {
                topic: t("logs"),
                retain: Some(limits(Some(1000), Some(7 * 86_400_000))),
                rf: None,
            }
        );
        assert_eq!(
            parse(b"CONFIG logs RETAIN age=90s").unwrap(),
            Request::Config {
                topic: t("logs"),
                retain: Some(limits(None, Some(90_000))),
            }
        );
        assert_eq!(
            parse(b"CONFIG logs RETAIN none").unwrap(),
            Request::Config {
                topic: t("logs"),
                retain: Some(limits(None, None)),
            }
        );
        assert_eq!(
            parse(b"CONFIG logs RETAIN default").unwrap(),
            Request::Config {
                topic: t("logs"),
                retain: Some(RetainSetting::Default),
            }
        );
        assert_eq!(
            parse(b"CONFIG logs").unwrap(),
            Request::Config {
                topic: t("logs"),
                retain: None,
            }
        );
        for (body, start) in [
            (&b"REGISTER logs RETAIN"[..], "RETAIN requires limits"),
            (b"REGISTER logs RETAIN entries=x", "invalid entries \"x\""),
            (b"CONFIG logs RETAIN age=5", "invalid age \"5\""),
            (b"CONFIG logs RETAIN age=5y", "invalid age \"5y\""),
            (
                b"CONFIG logs RETAIN entries=1 entries=2",
                "unexpected \"entries=2\"",
            ),
            (b"CONFIG logs RETAIN size=1", "unexpected \"size=1\""),
            (b"CONFIG logs RETAIN bytes=1KB", "invalid bytes \"1KB\""),
            (b"CONFIG logs RETAIN bytes=", "invalid bytes \"\""),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.starts_with(start), "{e}");
            assert!(e.ends_with(RETAIN_USAGE), "{e}");
        }
        assert!(parse(b"CONFIG")
            .unwrap_err()
            .starts_with("CONFIG requires a topic"));
        assert_eq!(
            parse(b"CONFIG logs RETAIN bytes=10GiB entries=5").unwrap(),
            Request::Config {
                topic: t("logs"),
                retain: Some(RetainSetting::Limits(Retention {
                    max_entries: Some(5),
                    max_age_ms: None,
                    max_bytes: Some(10 << 30),
                })),
            }
        );
        assert_eq!(
            parse(b"CONFIG logs RETAIN bytes=100").unwrap(),
            Request::Config {
                topic: t("logs"),
                retain: Some(RetainSetting::Limits(Retention {
                    max_bytes: Some(100),
                    ..Retention::default()
                })),
            }
        );
        for setting in [
            RetainSetting::Limits(Retention {
                max_bytes: Some(1 << 20),
                ..Retention::default()
            }),
            RetainSetting::Default,
            limits(None, None),
            limits(Some(5), None),
            limits(None, Some(90_000)),
            limits(Some(1000), Some(7 * 86_400_000)),
        ] {
            assert_eq!(RetainSetting::parse(&setting.to_words()), Ok(setting));
        }
        assert!(RetainSetting::parse("entries=x")
            .unwrap_err()
            .starts_with("invalid entries"));
        assert!(parse(b"CONFIG logs SET x")
            .unwrap_err()
            .starts_with("unexpected \"SET\""));
    }

    #[test]
    fn given_a_putb_should_take_each_payload_byte_for_byte() {
        let body = b"PUTB logs 3\n9\ntwo words\n3\na\nb\n2\n\xc3\xa9\n";
        assert_eq!(
            parse(body).unwrap(),
            Request::PutBatch {
                topic: t("logs"),
                entries: vec![
                    Bytes::from_static(b"two words"),
                    Bytes::from_static(b"a\nb"),
                    Bytes::from("\u{e9}"),
                ],
                producer: None,
            }
        );
        assert_eq!(
            parse(b"putb logs 1 producer app-1 42\r\n4\n4 \n\n\n").unwrap(),
            Request::PutBatch {
                topic: t("logs"),
                entries: vec![Bytes::from_static(b"4 \n\n")],
                producer: Some(ProducerSeq {
                    producer: ProducerId::new("app-1").unwrap(),
                    seq: 42
                }),
            }
        );
    }

    #[test]
    fn given_a_bad_putb_should_say_what_is_wrong_and_show_the_usage() {
        assert_eq!(parse(b"PUTB").unwrap_err(), "PUTB requires a topic");
        assert_eq!(
            parse(b"PUTB a/b 1\n1\nx\n").unwrap_err(),
            "invalid topic name"
        );
        for (body, start) in [
            (&b"PUTB logs"[..], "PUTB requires an entry count"),
            (
                b"PUTB logs 0\n",
                "the entry count must be 1 to 10000, got \"0\"",
            ),
            (b"PUTB logs 10001\n", "the entry count must be 1 to 10000"),
            (
                b"PUTB logs x\n",
                "the entry count must be 1 to 10000, got \"x\"",
            ),
            (b"PUTB logs 1", "PUTB announced 1 entries and has none"),
            (b"PUTB logs 2\n1\nx\n", "PUTB announced 2 entries and has 1"),
            (
                b"PUTB logs 1\n1x\nx\n",
                "entry 1 of 1: invalid length \"1x\"",
            ),
            (b"PUTB logs 1\n-1\nx\n", "entry 1 of 1: invalid length"),
            (b"PUTB logs 1\n\nx\n", "entry 1 of 1: invalid length \"\""),
            (
                b"PUTB logs 1\n0\n\n",
                "entry 1 of 1: an entry is 1 byte or more",
            ),
            (
                b"PUTB logs 1\n5\nx\n",
                "entry 1 of 1: the body ends before its 5 bytes",
            ),
            (
                b"PUTB logs 1\n1\nx",
                "entry 1 of 1: the body ends before its 1 bytes",
            ),
            (
                b"PUTB logs 1\n1\nxy\n",
                "entry 1 of 1: its 1 bytes are not followed by \\n",
            ),
            (
                b"PUTB logs 1\n1",
                "entry 1 of 1: its length line does not end",
            ),
            (
                b"PUTB logs 1\n1\nx\nmore",
                "4 bytes follow the last of the 1 entries",
            ),
            (
                b"PUTB logs 1\n99999999999999999999999\nx\n",
                "entry 1 of 1: invalid length",
            ),
            (
                b"PUTB logs 1 PRODUCER p\n1\nx\n",
                "PRODUCER requires an id and a sequence",
            ),
            (
                b"PUTB logs 1 PRODUCER p -1\n1\nx\n",
                "invalid sequence number \"-1\"",
            ),
            (b"PUTB logs 1 PRODUCER p 1 x\n1\nx\n", "unexpected \"x\""),
            (b"PUTB logs 1 FROM p 1\n1\nx\n", "unexpected \"FROM\""),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.starts_with(start), "{e}");
            assert!(e.ends_with(PUTB_USAGE), "{e}");
        }
        assert!(parse(b"PUTB logs 1 PRODUCER a/b 1\n1\nx\n")
            .unwrap_err()
            .starts_with("invalid producer id"));
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

        #[test]
        fn parsing_random_putb_bodies_never_panics(body in "(?s)PUTB logs [0-9]{0,3}( PRODUCER [a-z]{0,3} [0-9-]{0,3})?[\n\r0-9a-z ]{0,60}") {
            let _ = Request::parse(Bytes::from(body));
        }
    }
}
