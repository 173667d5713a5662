//! A listener's dead letters: list, show and replay them (the `deadletters` routes, the
//! `causeway deadletters` command and `deadLetter.autoReplay` all use this module).
//!
//! - A dead letter is a Causeway event on the listener's `deadLetter` subject whose
//!   `deadLetter.listener` names the listener (several listeners may share one subject). Its id
//!   here is its sequence in the dead-letter store's stream.
//! - A replay publishes the event again, unchanged but for `replayOf`, into the listener's own
//!   part of its source stream (`cw.<ns>.replay.{es|in}.<source>.<listener>.<subject or type>`).
//!   Only this listener's consumer filters on it, so it is delivered again under this listener's
//!   rules (filters, ordering, maxInFlight, backoff, maxDeliver, dead letter) and reaches no
//!   other listener, no load and no live stream of the store.
//! - Idempotent: the publish carries `Nats-Msg-Id: cw-replay:<dead-letter stream>:<sequence>`,
//!   so two replays within the source's duplicate window store one event; after it, a mark in
//!   the listener's node's state bucket (`_cw.replayed.<listener>.<store>.<sequence>`) says the
//!   dead letter was replayed, and a replay of a marked dead letter publishes nothing.
//!
//! Everything here but the [`auto_replay`] task needs only a NATS client, so the CLI (with its
//! own connection) and the sidecar (with the node's credential) do exactly the same thing.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::HeaderMap;
use bytes::Bytes;
use causeway_api::{
    causal::now_rfc3339,
    envelope::{Envelope, HEADER_MSG_ID, HEADER_TYPE, ReplayOf},
    naming,
    registry::{ListenerRecord, ResolvedDeadLetter},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    nats::{direct_batch, direct_seq, kv_value, request_ack},
    routes::kv::RESERVED_KEY_PREFIX,
    state::State,
};

/// The type given to a dead letter whose bytes were not a Causeway event: nothing to replay.
pub const UNDECODABLE_TYPE: &str = "causeway.undecodable";
/// Dead letters read per direct get.
const PAGE: usize = 256;
/// Bytes per direct get.
const PAGE_BYTES: usize = 4 << 20;

/// Which dead letters to select. Every field left out selects everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// Event types: exact, or `prefix.*`.
    pub types: Vec<String>,
    /// A substring of the error (case-insensitive).
    pub error: Option<String>,
    /// The app's HTTP status.
    pub status: Option<u16>,
    /// `Some(false)`: only those not replayed yet; `Some(true)`: only replayed ones.
    pub replayed: Option<bool>,
}

impl Filter {
    /// True when the dead letter is selected (its mark already looked up).
    pub fn matches(&self, e: &Entry) -> bool {
        let Some(dl) = &e.envelope.dead_letter else { return false };
        let time = DateTime::parse_from_rfc3339(&dl.time).ok().map(|t| t.with_timezone(&Utc));
        if let Some(s) = self.since
            && time.is_none_or(|t| t < s)
        {
            return false;
        }
        if let Some(u) = self.until
            && time.is_none_or(|t| t >= u)
        {
            return false;
        }
        if !self.types.is_empty()
            && !self.types.iter().any(|f| causeway_api::names::type_matches(f, &e.envelope.event_type))
        {
            return false;
        }
        if let Some(needle) = &self.error
            && !dl.error.to_lowercase().contains(&needle.to_lowercase())
        {
            return false;
        }
        if self.status.is_some() && dl.status != self.status {
            return false;
        }
        if let Some(r) = self.replayed
            && r != e.replayed.is_some()
        {
            return false;
        }
        true
    }
}

/// A replay recorded in the node's state bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// The source stream it was replayed into.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
    /// When.
    pub time: String,
    /// Who replayed it: `causeway CLI`, `<ns>/<node> API` or `<ns>/<node> autoReplay`.
    pub by: String,
    /// The event's replay count after this replay.
    pub count: u32,
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its sequence in the dead-letter store's stream (its id in the API and the CLI).
    pub sequence: u64,
    /// The event as dead-lettered, with `deadLetter` (and `replayOf` if it had been replayed
    /// before it failed again).
    pub envelope: Envelope,
    /// Set when it was replayed.
    pub replayed: Option<Mark>,
}

impl Entry {
    /// Times the event had been replayed before it landed here.
    pub fn replays(&self) -> u32 {
        self.envelope.replay_of.as_ref().map_or(0, |r| r.count)
    }

    /// Why it cannot be replayed, if so: undecodable bytes and forged senders cannot be fixed by
    /// the app, and replaying a forgery would deliver what the listener refused to trust.
    pub fn not_replayable(&self) -> Option<String> {
        let dl = self.envelope.dead_letter.as_ref()?;
        if self.envelope.event_type == UNDECODABLE_TYPE {
            return Some(format!("dead letter {} holds bytes that were not a Causeway event", self.sequence));
        }
        if dl.error.starts_with("forged_sender") {
            return Some(format!(
                "dead letter {} was refused because its sender was forged; replaying it would deliver it as if it were genuine",
                self.sequence
            ));
        }
        None
    }

    /// The JSON shown by the API and `causeway deadletters show -o json`: the event as an app
    /// sees it, `stream` and `sequence` naming the dead letter, and `replayed`.
    pub fn view(&self, dl_stream: &str) -> serde_json::Value {
        let mut v = crate::event::view_value(&self.envelope, dl_stream, self.sequence);
        if let serde_json::Value::Object(o) = &mut v {
            o.remove("blob");
            o.insert("replayed".into(), serde_json::to_value(&self.replayed).unwrap_or_default());
        }
        v
    }
}

/// A page of dead letters.
#[derive(Debug, Default)]
pub struct Page {
    /// The selected dead letters, oldest first.
    pub entries: Vec<Entry>,
    /// The last sequence read; ask again with `after` = this for more.
    pub last_sequence: u64,
    /// True when the page stopped at its limit with more left.
    pub more: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    /// The dead letter's sequence.
    pub dead_letter: u64,
    /// The event id (unchanged).
    pub id: String,
    /// The source stream it was replayed into.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
    /// True when it had been replayed before: nothing new was published.
    pub already_replayed: bool,
    /// True when the dead letter was deleted (`delete` asked for).
    pub deleted: bool,
}

/// The listener's dead letter, or 409 `no_dead_letter`.
pub fn dead_letter_of(l: &ListenerRecord) -> Result<&ResolvedDeadLetter> {
    l.dead_letter.as_ref().ok_or_else(|| Error::NoDeadLetter(l.meta.name.to_string()))
}

fn owner(l: &ListenerRecord) -> String {
    format!("{}/{}", l.meta.namespace, l.meta.name)
}

fn mark_key(l: &ListenerRecord, dl: &ResolvedDeadLetter, seq: u64) -> String {
    format!("{}.{seq}", mark_prefix(l, dl))
}

fn mark_prefix(l: &ListenerRecord, dl: &ResolvedDeadLetter) -> String {
    format!("{RESERVED_KEY_PREFIX}.replayed.{}.{}", l.meta.name, dl.store)
}

fn state_bucket(l: &ListenerRecord) -> String {
    naming::state_bucket(&l.meta.namespace, &l.node)
}

/// The `Nats-Msg-Id` of a replay: one per dead letter.
pub fn replay_msg_id(dl_stream: &str, seq: u64) -> String {
    format!("cw-replay:{dl_stream}:{seq}")
}

/// Decodes a stored dead letter; `None` when it is not one of this listener's.
fn entry_of(l: &ListenerRecord, seq: u64, payload: &[u8]) -> Option<Entry> {
    let envelope = Envelope::decode(payload).ok()?;
    let owner = owner(l);
    envelope.dead_letter.as_ref().filter(|d| d.listener == owner)?;
    Some(Entry { sequence: seq, envelope, replayed: None })
}

/// Every replay mark of the listener, by dead-letter sequence (one batched read).
pub async fn marks(client: &async_nats::Client, l: &ListenerRecord) -> Result<HashMap<u64, Mark>> {
    let dl = dead_letter_of(l)?;
    let bucket = state_bucket(l);
    let stream = naming::kv_stream(&bucket);
    let prefix = naming::join_subject(&naming::kv_subject_prefix(&bucket), &mark_prefix(l, dl));
    let filter = naming::join_subject(&prefix, "*");
    let mut out = HashMap::new();
    let mut next = 1;
    loop {
        let b = direct_batch(client, &stream, &filter, next, PAGE, PAGE_BYTES).await?;
        let Some(last) = b.messages.last().map(|m| m.sequence) else { break };
        for m in b.messages {
            let Some(seq) = m.subject.rsplit('.').next().and_then(|s| s.parse::<u64>().ok()) else { continue };
            let removed = m.headers.get("KV-Operation").is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            match serde_json::from_slice::<Mark>(&m.payload) {
                Ok(mark) if !removed => {
                    out.insert(seq, mark);
                }
                _ => {
                    out.remove(&seq);
                }
            }
        }
        if b.pending == 0 {
            break;
        }
        next = last + 1;
    }
    Ok(out)
}

async fn mark_of(client: &async_nats::Client, l: &ListenerRecord, seq: u64) -> Result<Option<Mark>> {
    let dl = dead_letter_of(l)?;
    let v = kv_value(client, &state_bucket(l), &mark_key(l, dl, seq)).await?;
    Ok(v.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// The listener's dead letters after sequence `after` that `filter` selects, at most `limit`.
pub async fn scan(
    client: &async_nats::Client,
    l: &ListenerRecord,
    filter: &Filter,
    after: u64,
    limit: usize,
) -> Result<Page> {
    let dl = dead_letter_of(l)?;
    let marks = marks(client, l).await?;
    let mut page = Page { last_sequence: after, ..Default::default() };
    let mut next = after + 1;
    loop {
        let b = direct_batch(client, &dl.stream, &dl.nats_subject, next, PAGE, PAGE_BYTES).await?;
        let Some(last) = b.messages.last().map(|m| m.sequence) else { break };
        let count = b.messages.len();
        for (i, m) in b.messages.into_iter().enumerate() {
            page.last_sequence = m.sequence;
            let Some(mut e) = entry_of(l, m.sequence, &m.payload) else { continue };
            e.replayed = marks.get(&m.sequence).cloned();
            if filter.matches(&e) {
                page.entries.push(e);
                if page.entries.len() >= limit {
                    page.more = i + 1 < count || b.pending > 0;
                    return Ok(page);
                }
            }
        }
        if b.pending == 0 {
            break;
        }
        next = last + 1;
    }
    Ok(page)
}

/// One dead letter of the listener: `id` is its sequence, or an event id (the latest dead
/// letter of that event). 404 `unknown_dead_letter` when the listener has none such.
pub async fn get(client: &async_nats::Client, l: &ListenerRecord, id: &str) -> Result<Entry> {
    let dl = dead_letter_of(l)?;
    let unknown = || Error::UnknownDeadLetter { listener: l.meta.name.to_string(), id: id.to_owned() };
    let mut entry = match id.parse::<u64>() {
        Ok(seq) => {
            let m = direct_seq(client, &dl.stream, seq).await?.ok_or_else(unknown)?;
            if m.subject != dl.nats_subject {
                return Err(unknown());
            }
            entry_of(l, seq, &m.payload).ok_or_else(unknown)?
        }
        Err(_) => {
            let all = scan(client, l, &Filter::default(), 0, usize::MAX).await?;
            all.entries.into_iter().rev().find(|e| e.envelope.id == id).ok_or_else(unknown)?
        }
    };
    entry.replayed = mark_of(client, l, entry.sequence).await?;
    Ok(entry)
}

/// Replays one dead letter (see the module documentation). `by` is recorded in the mark.
/// `delete` deletes the dead letter once the replay is stored (also when it was replayed
/// before). A marked dead letter is not published again.
pub async fn replay(
    client: &async_nats::Client,
    l: &ListenerRecord,
    entry: &Entry,
    by: &str,
    delete: bool,
) -> Result<Replayed> {
    let dl = dead_letter_of(l)?;
    let filter = naming::join_subject(&l.replay_prefix(), ">");
    if !l.filter_subjects.contains(&filter) {
        return Err(Error::NotReplayable(format!(
            "listener {}'s record predates dead-letter replay: apply it again (causeway apply, or let the operator reconcile) so its consumer takes replays",
            l.meta.name
        )));
    }
    let mut done = match &entry.replayed {
        Some(m) => Replayed {
            dead_letter: entry.sequence,
            id: entry.envelope.id.clone(),
            stream: m.stream.clone(),
            sequence: m.sequence,
            already_replayed: true,
            deleted: false,
        },
        None => {
            if let Some(why) = entry.not_replayable() {
                return Err(Error::NotReplayable(why));
            }
            let mut env = entry.envelope.clone();
            env.dead_letter = None;
            let count = entry.replays() + 1;
            env.replay_of =
                Some(ReplayOf { stream: dl.stream.clone(), sequence: entry.sequence, count, time: now_rfc3339() });
            let subject = l.replay_subject(&env);
            let mut h = HeaderMap::new();
            h.insert(HEADER_MSG_ID, replay_msg_id(&dl.stream, entry.sequence).as_str());
            h.insert(HEADER_TYPE, env.event_type.as_str());
            h.insert("Nats-Expected-Stream", l.stream.as_str());
            let ack = request_ack(client, &subject, h, Bytes::from(env.encode())).await?;
            if let Some(e) = ack.error {
                return Err(crate::publish::api_error(e));
            }
            let mark =
                Mark { stream: l.stream.clone(), sequence: ack.seq, time: now_rfc3339(), by: by.to_owned(), count };
            let bucket = state_bucket(l);
            let key = naming::join_subject(&naming::kv_subject_prefix(&bucket), &mark_key(l, dl, entry.sequence));
            let body = serde_json::to_vec(&mark).map_err(|e| Error::Internal(e.to_string()))?;
            let put = request_ack(client, &key, HeaderMap::new(), body.into()).await?;
            if let Some(e) = put.error {
                // Stored but unmarked: a second replay within the duplicate window is still
                // deduplicated; say so rather than pretend.
                return Err(Error::Unavailable(format!(
                    "dead letter {} was replayed (sequence {} of {}) but could not be marked: {} (code {}); replay it again to mark it",
                    entry.sequence, ack.seq, l.stream, e.description, e.err_code
                )));
            }
            Replayed {
                dead_letter: entry.sequence,
                id: entry.envelope.id.clone(),
                stream: l.stream.clone(),
                sequence: ack.seq,
                already_replayed: false,
                deleted: false,
            }
        }
    };
    if delete {
        delete_message(client, &dl.stream, entry.sequence).await?;
        done.deleted = true;
    }
    Ok(done)
}

/// Deletes one message of a stream (gone already counts as deleted).
async fn delete_message(client: &async_nats::Client, stream: &str, seq: u64) -> Result<()> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        success: bool,
        error: Option<crate::nats::ApiError>,
    }
    let req = async_nats::Request::new()
        .payload(serde_json::json!({"seq": seq, "no_erase": true}).to_string().into())
        .timeout(Some(crate::nats::ACK_TIMEOUT));
    let m = client
        .send_request(naming::js_stream_msg_delete(stream), req)
        .await
        .map_err(|e| Error::Unavailable(format!("deleting dead letter {seq} of {stream}: {e}")))?;
    let a: Answer = serde_json::from_slice(&m.payload)
        .map_err(|e| Error::Unavailable(format!("unexpected JetStream answer to a delete: {e}")))?;
    match a.error {
        // 10057: no message found — deleted already.
        Some(e) if e.err_code != 10057 => Err(Error::Unavailable(format!(
            "JetStream refused to delete dead letter {seq} of {stream}: {} (code {})",
            e.description, e.err_code
        ))),
        _ if a.success || a.error.is_some() => Ok(()),
        _ => Err(Error::Unavailable(format!("JetStream did not delete dead letter {seq} of {stream}"))),
    }
}

/// Replays every dead letter `filter` selects after `after` that was not replayed yet, at most
/// `limit`. Those that cannot be replayed are listed with why; they do not stop the others.
pub async fn replay_matching(
    client: &async_nats::Client,
    l: &ListenerRecord,
    filter: &Filter,
    after: u64,
    limit: usize,
    by: &str,
    delete: bool,
) -> Result<(Vec<Replayed>, Vec<(u64, String)>, bool)> {
    let f = Filter { replayed: Some(false), ..filter.clone() };
    let page = scan(client, l, &f, after, limit).await?;
    let mut done = Vec::new();
    let mut refused = Vec::new();
    for e in &page.entries {
        match replay(client, l, e, by, delete).await {
            Ok(r) => done.push(r),
            Err(Error::NotReplayable(why)) => refused.push((e.sequence, why)),
            Err(e) => return Err(e),
        }
    }
    Ok((done, refused, page.more))
}

/// Parses `--since`/`--until` and `since`/`until`: RFC 3339, or a duration before `now`
/// (`10m`, `2h`, `7d`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> std::result::Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    match s.parse::<causeway_api::quantity::Duration>() {
        Ok(d) => chrono::Duration::from_std(d.get())
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| format!("{s:?} is too long ago")),
        Err(_) => {
            Err(format!("{s:?} is neither an RFC 3339 time (2026-11-25T12:00:00Z) nor a duration ago (10m, 2h, 7d)"))
        }
    }
}

/// Who a replay is by, for its mark: `<ns>/<node> <how>` (`API`, `autoReplay`).
pub fn replayed_by(state: &State, how: &str) -> String {
    format!("{} {how}", state.sender())
}

/// Replays the dead letters of this node's listeners that have `deadLetter.autoReplay`, once
/// they are `after` old, while the event has been replayed fewer than `max` times. Every
/// replica of the node runs it; a dead letter two replicas replay at once is stored once (the
/// replay's message id) and marked by both.
pub async fn auto_replay(state: Arc<State>) {
    let mut shutdown = state.shutdown.clone();
    // Per listener: the record it was started with, and the first sequence not settled yet
    // (everything before is replayed, capped or not replayable).
    let mut cursors: HashMap<String, (Arc<ListenerRecord>, u64)> = HashMap::new();
    loop {
        let mut tick = Duration::from_secs(5);
        if state.registry.is_synced() && state.nats_connected() {
            for l in state.registry.own_listeners() {
                let Some(auto) = l.spec.dead_letter.as_ref().and_then(|d| d.auto_replay.clone()) else { continue };
                let after = auto.after.get();
                tick = tick.min((after / 4).max(Duration::from_millis(250)));
                let name = l.meta.name.to_string();
                let from = match cursors.get(&name) {
                    Some((rec, from)) if *rec == l => *from,
                    _ => 0,
                };
                match settle(&state, &l, from, after, auto.max).await {
                    Ok(next) => {
                        cursors.insert(name, (l, next));
                    }
                    Err(e) => tracing::warn!(listener = %name, error = %e, "auto-replay failed; trying again"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = crate::flag::until_true(&mut shutdown) => return,
        }
    }
}

/// One auto-replay pass from sequence `from`; returns the new cursor.
async fn settle(state: &State, l: &ListenerRecord, from: u64, after: Duration, max: u32) -> Result<u64> {
    let page = scan(&state.client, l, &Filter::default(), from.saturating_sub(1), usize::MAX).await?;
    let mut cursor = page.last_sequence + 1;
    let now = Utc::now();
    let mut waiting = false;
    for e in page.entries {
        let settled = e.replayed.is_some() || e.not_replayable().is_some() || e.replays() >= max;
        if settled {
            continue;
        }
        let at = e.envelope.dead_letter.as_ref().and_then(|d| chrono::DateTime::parse_from_rfc3339(&d.time).ok());
        let due =
            at.is_none_or(|t| now.signed_duration_since(t.with_timezone(&Utc)).to_std().is_ok_and(|age| age >= after));
        if !due {
            if !waiting {
                cursor = e.sequence;
                waiting = true;
            }
            continue;
        }
        match replay(&state.client, l, &e, &replayed_by(state, "autoReplay"), false).await {
            Ok(r) => {
                tracing::info!(listener = %l.meta.name, dead_letter = r.dead_letter, id = %r.id, sequence = r.sequence, "auto-replayed a dead letter")
            }
            Err(err) => {
                if !waiting {
                    cursor = e.sequence;
                    waiting = true;
                }
                tracing::warn!(listener = %l.meta.name, dead_letter = e.sequence, error = %err, "auto-replay of a dead letter failed");
            }
        }
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ago() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_time("10m", now).unwrap().to_rfc3339(), "2026-11-25T11:50:00+00:00");
        assert_eq!(parse_time("2026-11-25T10:00:00Z", now).unwrap().to_rfc3339(), "2026-11-25T10:00:00+00:00");
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn replay_ids_name_the_dead_letter() {
        assert_eq!(replay_msg_id("CW_ES_shop_dead", 7), "cw-replay:CW_ES_shop_dead:7");
    }
}
