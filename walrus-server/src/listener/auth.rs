//! Client authentication (`--auth-token-file`): which tokens exist, what
//! each may do, and one connection's state (before and after `AUTH`).
//!
//! The token file has one token per line:
//!
//! ```text
//! # comment
//! <token> read|write [<topic-prefix>]
//! ```
//!
//! `read` may only read (STATE, READ, OFFSETS, FETCH, COMMIT, CONFIG
//! without RETAIN, TOPICS, METRICS, PING); `write` may also write (PUT,
//! PUTB, REGISTER, CONFIG … RETAIN, GET, which moves the topic's shared
//! cursor for every reader). A prefix limits the token to topics whose
//! name starts with it, and TOPICS lists only those. REPLACE-STORAGE needs
//! a `write` token without a prefix (an operator's). docs/protocol.md has
//! the same rules for clients.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use walrus_core::protocol::{Request, Response};
use walrus_core::{Secret, TopicName};

/// Tokens shorter than this are refused when the file is read: a short
/// token can be guessed over the network.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Read and write.
    Write,
}

/// One token's rights.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access: Access,
    /// Topics the token may touch start with this (`None`: every topic).
    pub prefix: Option<Arc<str>>,
}

/// The tokens of `--auth-token-file`. Its `Debug` shows how many there
/// are, never the tokens.
pub struct Tokens {
    entries: Vec<(Secret, Grant)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} redacted)", self.entries.len())
    }
}

impl Tokens {
    /// Reads the token file at `path`. Errors name the file and the line,
    /// never a token.
    pub fn read_file(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|why| format!("token file {}: {why}", path.display()))
    }

    /// Parses a token file's text (see the module's doc for the format).
    pub fn parse(text: &str) -> Result<Tokens, String> {
        const FORMAT: &str = "each line is `<token> read|write [<topic-prefix>]`";
        let mut entries: Vec<(Secret, Grant)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (token, access, prefix) = match words.as_slice() {
                [t, a] => (*t, *a, None),
                [t, a, p] => (*t, *a, Some(*p)),
                _ => return Err(format!("line {n}: {FORMAT}")),
            };
            let access = if access.eq_ignore_ascii_case("read") {
                Access::Read
            } else if access.eq_ignore_ascii_case("write") {
                Access::Write
            } else {
                return Err(format!(
                    "line {n}: the scope must be `read` or `write`; {FORMAT}"
                ));
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {n}: the token is shorter than {MIN_TOKEN_LEN} characters, too easy \
                     to guess; generate one with `openssl rand -hex 32`"
                ));
            }
            if entries.iter().any(|(s, _)| s.matches(token.as_bytes())) {
                return Err(format!(
                    "line {n}: the same token is listed twice; give each token one line"
                ));
            }
            entries.push((
                Secret::new(token),
                Grant {
                    access,
                    prefix: prefix.map(Arc::from),
                },
            ));
        }
        if entries.is_empty() {
            return Err(format!("it lists no token; {FORMAT}"));
        }
        Ok(Tokens { entries })
    }

    /// The grant of `candidate`, comparing it with every token in
    /// constant time (no early exit), so timing tells nothing about which
    /// token or how much of it matched.
    fn find(&self, candidate: &[u8]) -> Option<Grant> {
        let mut found = None;
        for (token, grant) in &self.entries {
            if token.matches(candidate) {
                found = Some(grant.clone());
            }
        }
        found
    }
}

/// One connection's authentication state.
pub(super) enum Session {
    /// The server runs without tokens: everything is allowed, and AUTH is
    /// answered OK so that clients can be given tokens before the servers
    /// require them.
    Open,
    /// No valid AUTH yet (or the last one failed).
    Locked(Arc<Tokens>),
    Granted(Arc<Tokens>, Grant),
}

/// What the reader does with a request once the session has seen it.
pub(super) enum Verdict {
    /// Run it as usual.
    Run(Request),
    /// Run it, then keep only the topics the token may see in its answer.
    RunFiltered(Request, Arc<str>),
    /// Answer this instead; the request does nothing.
    Answer(Response),
}

impl Session {
    pub(super) fn new(tokens: Option<Arc<Tokens>>) -> Session {
        match tokens {
            None => Session::Open,
            Some(t) => Session::Locked(t),
        }
    }

    /// Looks at a frame before it is parsed: answers an AUTH, and anything
    /// else sent before a valid AUTH. `None`: parse and [`Session::check`]
    /// it.
    pub(super) fn intercept(&mut self, frame: &Bytes) -> Option<Response> {
        let token = auth_token(frame);
        match (&*self, token) {
            (Session::Open, None) => None,
            (Session::Open, Some(_)) => Some(Response::Ok),
            (Session::Locked(_) | Session::Granted(..), Some(token)) => {
                let tokens = match std::mem::replace(self, Session::Open) {
                    Session::Locked(t) | Session::Granted(t, _) => t,
                    Session::Open => unreachable!("matched as Locked or Granted above"),
                };
                match tokens.find(token) {
                    Some(grant) => {
                        *self = Session::Granted(tokens, grant);
                        Some(Response::Ok)
                    }
                    None => {
                        // A failed AUTH drops what an earlier one granted:
                        // a connection is never left with rights its last
                        // AUTH did not prove.
                        *self = Session::Locked(tokens);
                        tracing::info!("a client sent an unknown token; refused");
                        Some(Response::Err(
                            "authentication failed: the token is not one this server accepts; \
                             check the client's token against the server's --auth-token-file"
                                .into(),
                        ))
                    }
                }
            }
            (Session::Locked(_), None) => Some(Response::Err(
                "authentication required: send AUTH <token> first (this server runs with \
                 --auth-token-file)"
                    .into(),
            )),
            (Session::Granted(..), None) => None,
        }
    }

    /// Whether the session's token may run `req`.
    pub(super) fn check(&self, req: Request) -> Verdict {
        let Session::Granted(_, grant) = self else {
            // `intercept` answered every request of a locked session.
            return Verdict::Run(req);
        };
        let (write, topic) = needs(&req);
        if write && grant.access == Access::Read {
            return Verdict::Answer(denied(format!(
                "this token is read-only and {} writes; use a token with write scope",
                verb(&req)
            )));
        }
        let Some(prefix) = &grant.prefix else {
            return Verdict::Run(req);
        };
        match (&req, topic) {
            (Request::ReplaceStorage { .. } | Request::RemoveNode { .. }, _) => {
                Verdict::Answer(denied(format!(
                    "this token is limited to topics starting with {prefix:?}; {} needs an \
                     operator's token (write scope, no prefix)",
                    verb(&req)
                )))
            }
            (Request::Topics | Request::TopicCounts, _) => {
                Verdict::RunFiltered(req, prefix.clone())
            }
            (_, Some(topic)) if !topic.as_str().starts_with(&**prefix) => {
                Verdict::Answer(denied(format!(
                    "this token is limited to topics starting with {prefix:?}, and {:?} is not \
                     one of them",
                    topic.as_str()
                )))
            }
            _ => Verdict::Run(req),
        }
    }
}

fn denied(why: String) -> Response {
    Response::Err(format!("permission denied: {why}"))
}

/// The token of an `AUTH <token>` frame (the verb in any case), or `None`
/// for any other request.
fn auth_token(frame: &[u8]) -> Option<&[u8]> {
    let verb = frame.get(..4)?;
    if !verb.eq_ignore_ascii_case(b"AUTH") {
        return None;
    }
    match frame.get(4) {
        None => Some(&[]),
        Some(b' ') => Some(frame[5..].trim_ascii()),
        Some(b'\r' | b'\n') => Some(&[]),
        Some(_) => None, // AUTHX…: some other verb, for the parser to refuse
    }
}

/// Whether `req` writes, and the topic it names.
fn needs(req: &Request) -> (bool, Option<&TopicName>) {
    match req {
        Request::Register(t)
        | Request::RegisterRetaining { topic: t, .. }
        | Request::Put { topic: t, .. }
        | Request::PutBatch { topic: t, .. }
        | Request::Get(t) => (true, Some(t)),
        Request::Config { topic, retain } => (retain.is_some(), Some(topic)),
        Request::State(t) | Request::Offsets(t) => (false, Some(t)),
        Request::Read { topic, .. }
        | Request::Fetch { topic, .. }
        | Request::Commit { topic, .. } => (false, Some(topic)),
        Request::ReplaceStorage { .. } | Request::RemoveNode { .. } => (true, None),
        Request::Metrics | Request::Ping | Request::Topics | Request::TopicCounts => (false, None),
    }
}

fn verb(req: &Request) -> &'static str {
    match req {
        Request::Register(_) | Request::RegisterRetaining { .. } => "REGISTER",
        Request::Put { .. } => "PUT",
        Request::PutBatch { .. } => "PUTB",
        Request::Get(_) => "GET (it moves the topic's shared cursor)",
        Request::Config { .. } => "CONFIG … RETAIN",
        Request::ReplaceStorage { .. } => "REPLACE-STORAGE",
        Request::RemoveNode { .. } => "REMOVE-NODE",
        _ => "this request",
    }
}

/// A TOPICS or TOPICS COUNTS answer with only the topics under `prefix`.
pub(super) fn filter_topics(answer: Response, prefix: &str) -> Response {
    let Response::Json(text) = answer else {
        return answer;
    };
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return Response::Json(text);
    };
    let visible = |item: &serde_json::Value| {
        let name = match item {
            serde_json::Value::String(s) => Some(s.as_str()),
            other => other.get("topic").and_then(|t| t.as_str()),
        };
        name.is_some_and(|n| n.starts_with(prefix))
    };
    let kept: Vec<serde_json::Value> = items.into_iter().filter(visible).collect();
    Response::Json(serde_json::Value::Array(kept).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef";

    #[test]
    fn given_a_token_file_should_parse_scopes_prefixes_and_comments() {
        let tokens = Tokens::parse(&format!(
            "# ops\n{T}-a write\n\n  {T}-b read tenant-a.  # not a comment: a 4th word\n"
        ));
        assert!(tokens.is_err(), "four words on a line are refused");
        let tokens = Tokens::parse(&format!("# ops\n{T}-a write\n\n  {T}-b READ tenant-a.\n"))
            .expect("a valid file");
        let a = tokens.find(format!("{T}-a").as_bytes()).unwrap();
        assert_eq!((a.access, a.prefix.as_deref()), (Access::Write, None));
        let b = tokens.find(format!("{T}-b").as_bytes()).unwrap();
        assert_eq!(
            (b.access, b.prefix.as_deref()),
            (Access::Read, Some("tenant-a."))
        );
        assert!(tokens.find(T.as_bytes()).is_none());
        assert!(!format!("{tokens:?}").contains(T), "{tokens:?}");
    }

    #[test]
    fn given_a_bad_token_file_should_say_which_line_without_quoting_the_token() {
        for (text, want) in [
            (format!("{T} admin\n"), "line 1: the scope must be"),
            ("tiny7 write\n".to_string(), "line 1: the token is shorter"),
            (
                format!("# x\n{T} read\n{T} write\n"),
                "line 3: the same token",
            ),
            (format!("{T}\n"), "line 1: each line is"),
            ("# only a comment\n".to_string(), "lists no token"),
        ] {
            let err = Tokens::parse(&text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains(T) && !err.contains("tiny7"), "{err}");
        }
    }

    #[test]
    fn given_frames_should_recognise_only_the_auth_verb() {
        assert_eq!(auth_token(b"AUTH abc"), Some(&b"abc"[..]));
        assert_eq!(auth_token(b"auth abc\r\n"), Some(&b"abc"[..]));
        assert_eq!(auth_token(b"AUTH"), Some(&b""[..]));
        assert_eq!(auth_token(b"AUTHOR x"), None);
        assert_eq!(auth_token(b"PUT t x"), None);
    }

    #[test]
    fn given_a_prefix_should_filter_topics_and_topic_counts() {
        let list = Response::Json(r#"["a.x","b.y","a.z"]"#.into());
        assert_eq!(
            filter_topics(list, "a."),
            Response::Json(r#"["a.x","a.z"]"#.into())
        );
        let counts = Response::Json(
            r#"[{"topic":"a.x","first":0,"end":3},{"topic":"b.y","first":0,"end":1}]"#.into(),
        );
        let Response::Json(kept) = filter_topics(counts, "a.") else {
            panic!("a JSON answer");
        };
        assert!(kept.contains("a.x") && !kept.contains("b.y"), "{kept}");
        let err = Response::Err("x".into());
        assert_eq!(filter_topics(err.clone(), "a."), err);
    }
}
