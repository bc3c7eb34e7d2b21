//! Consumer groups: COMMIT (and SEEK) stores a group's offset in the
//! replicated metadata; FETCH is a READ from it. Nothing here commits on
//! its own: a group moves only when its consumer says it is done with the
//! entries, so an entry fetched and not committed is fetched again
//! (at-least-once; docs/architecture.md, "Consumer groups").

use std::time::Duration;

use crate::error::{Error, Result};
use crate::metadata::MetadataCmd;
use crate::protocol::Response;
use crate::types::{GroupName, Offset, TopicName};
use crate::CmdResult;

impl super::Node {
    /// COMMIT: `group` reads `topic` from `offset` next. Any offset from
    /// the first to the end moves it, backwards too (a seek).
    pub(crate) async fn commit_offset(
        &self,
        group: &GroupName,
        topic: &TopicName,
        offset: Offset,
    ) -> Result<()> {
        let (mut first, mut end) = self.topic_offsets(topic).await?;
        if offset < first || offset > end {
            // Our metadata may lag (a segment another node already rolled
            // still looks open here, so the end looks short): refuse only
            // what is outside the topic as the quorum knows it.
            self.catch_up().await?;
            (first, end) = self.topic_offsets(topic).await?;
        }
        if offset < first || offset > end {
            return Err(Error::BadRequest(format!(
                "offset {offset} is outside {topic} ({first} to {end}): commit an offset from \
                 {first} to {end} (the end: every entry read)"
            )));
        }
        let cmd = MetadataCmd::CommitOffset {
            group: group.clone(),
            topic: topic.clone(),
            offset,
        };
        match self.metadata.propose(cmd).await {
            Ok(CmdResult::Rejected(why)) => Err(Error::BadRequest(why)),
            Ok(_) => Ok(()),
            // Setting an offset twice is setting it once: a client may
            // simply send the COMMIT again, so say so.
            Err(e) if e.is_outcome_unknown() => Err(Error::Unavailable(format!(
                "the commit of {group} on {topic} may or may not be stored ({e}); sending the \
                 same COMMIT again is safe"
            ))),
            Err(e) => Err(e),
        }
    }

    /// FETCH: a READ from the offset `group` committed for `topic` (0 when
    /// none; the first retained offset when retention deleted it). The
    /// metadata catches up with the quorum first, so a commit acknowledged
    /// by any node is seen here.
    pub(crate) async fn fetch(
        &self,
        group: &GroupName,
        topic: &TopicName,
        max_entries: u32,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<Response> {
        self.known_topic(topic).await?;
        self.catch_up().await?;
        let state = self.metadata.state();
        // A committed offset that retention has deleted since reads from
        // the first retained entry: the answer's first offset shows the
        // jump. The commit stays as it was until the consumer commits.
        let first = state.topic(topic).map_or(0, |t| t.first_offset());
        let offset = state.committed_offset(group, topic).unwrap_or(0).max(first);
        drop(state);
        self.read_by_offset(topic, offset, max_entries, max_bytes, wait)
            .await
    }
}
