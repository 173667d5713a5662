//! `GET /v1/stores/{store}/events?subject=…&after=N&follow=true`: a live stream of a store, as
//! Server-Sent Events (`id:` = sequence, resumable with `Last-Event-ID`) or NDJSON.
//!
//! The stream replays what is stored after `after`, sends a `caughtUp` marker, then follows new
//! events. An event that cannot be decoded is reported as a `skipped` entry (with its sequence,
//! so resuming passes it) and the stream goes on; if NATS cannot be asked, the stream ends with
//! an `error` entry, and the client resumes from the last id it saw, missing nothing.
//!
//! A live stream creates no JetStream consumer: a stream holds at most `maxConsumers` (kept for
//! listeners), and a node's credential may not create consumers (docs/security.md). Every store
//! stream announces what it stores, headers only, at `cw.<ns>.live.<x>.<S>`, and a live stream
//!
//! 1. subscribes (core NATS) to `cw.<ns>.live.<x>.<pattern>` first, so that whatever is stored
//!    after its first read is announced to it;
//! 2. catches up from `after` with batched direct gets filtered by the pattern, as a load does
//!    (blobs resolved, undecodable events reported), then sends the marker;
//! 3. follows: an announcement whose `Nats-Sequence` is above the last sequence sent wakes it,
//!    and it reads everything after that sequence with direct gets; announcements that arrived
//!    together make one read. Core NATS delivers at most once, so it also reads every few
//!    seconds and right after a reconnect: a lost announcement delays an event, never loses it.
//!
//! Only sequences above the last one sent are ever sent, so each event comes once, in stream
//! order, whatever announcements say. `CAUSEWAY_MAX_STREAMS` bounds the streams of a sidecar; a
//! client that stalls longer than `CAUSEWAY_STREAM_SEND_TIMEOUT` is dropped rather than buffered;
//! while NATS is away a stream waits for it up to `CAUSEWAY_NATS_WAIT`, as every request does,
//! then ends with an `error` entry.

use std::{convert::Infallible, sync::Arc, time::Duration};

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use causeway_api::{names::validate_subject_pattern, naming};
use futures::{FutureExt, StreamExt};
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    conditional::{Conditions, Support},
    error::{Error, Result},
    event::{Decoded, decode_stored},
    flag::until_true,
    http::{Query, Resp, header_str},
    nats::Batch,
    routes::stores::{PAGE, read_page},
    state::State,
};

const CHANNEL_FRAMES: usize = 32;
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often a following stream reads without being woken. Announcements are core NATS (at most
/// once: a subscriber that falls behind or a reconnect loses some), so this bounds how late a
/// lost one makes an event.
const POLL: Duration = Duration::from_secs(5);
/// The first wait before reading again when an announced event was not read: the replica that
/// answered may not hold it yet. It doubles on every try.
const LAG_RETRY: Duration = Duration::from_millis(50);
/// Tries for an announced event before it is left to [`POLL`] (limits or a delete may have
/// removed it, and then no read finds it).
const LAG_TRIES: u32 = 6;
/// Announcements already received that one read answers at most.
const COALESCE: usize = 4096;
const PARAMS: &[&str] = &["subject", "after", "follow"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

impl Format {
    fn event(self, seq: u64, json: &[u8]) -> Bytes {
        let mut b = Vec::with_capacity(json.len() + 32);
        match self {
            Format::Sse => {
                b.extend_from_slice(format!("id: {seq}\ndata: ").as_bytes());
                b.extend_from_slice(json);
                b.extend_from_slice(b"\n\n");
            }
            Format::Ndjson => {
                b.extend_from_slice(json);
                b.push(b'\n');
            }
        }
        b.into()
    }
    fn caught_up(self, last: u64) -> Bytes {
        self.marker("caughtUp", None, &json!({"caughtUp": true, "lastSequence": last}))
    }
    fn skipped(self, seq: u64, error: &str) -> Bytes {
        self.marker("skipped", Some(seq), &json!({"skipped": true, "sequence": seq, "error": error}))
    }
    fn error(self, e: &Error) -> Bytes {
        self.marker("error", None, &e.body())
    }
    fn marker(self, name: &str, id: Option<u64>, v: &serde_json::Value) -> Bytes {
        match self {
            Format::Sse => {
                let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
                format!("{id}event: {name}\ndata: {v}\n\n").into()
            }
            Format::Ndjson => format!("{v}\n").into(),
        }
    }
}

/// Opens a live stream.
pub async fn live(state: &Arc<State>, store: &str, req: Request<Incoming>) -> Result<Resp> {
    let q = Query::parse(req.uri().query(), PARAMS)?;
    Conditions::parse(req.headers(), Support::None, "a live stream resumes with Last-Event-ID, not conditions")?;
    let pattern = q.get("subject").unwrap_or(">").to_owned();
    validate_subject_pattern(&pattern)?;
    let after = match header_str(req.headers(), "last-event-id")? {
        Some(id) if !id.is_empty() => id.parse::<u64>().map_err(|_| {
            Error::InvalidHeader(format!("Last-Event-ID {id:?} is not a sequence number from this stream"))
        })?,
        _ => q.u64("after")?.unwrap_or(0),
    };
    let follow = q.bool("follow")?.unwrap_or(true);
    let accept = header_str(req.headers(), "accept")?.unwrap_or("").to_ascii_lowercase();
    let format = if accept.contains("ndjson") || accept.contains("jsonl") || accept.contains("json-seq") {
        Format::Ndjson
    } else {
        Format::Sse
    };
    let record = crate::access::store(state, causeway_api::crd::AccessAction::Read, store).await?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        Error::TooBusy(format!(
            "{} live streams are open, the most allowed (CAUSEWAY_MAX_STREAMS)",
            state.config.max_streams
        ))
    })?;
    let epoch = state.link.connected(state.config.nats_wait).await?;
    // Subscribed before the first read, so an event stored after that read is announced to us.
    let announced_on =
        naming::join_subject(&naming::store_live_prefix(&record.meta.namespace, &record.meta.name), &pattern);
    let announcements =
        state.client.subscribe(announced_on).await.map_err(|e| Error::Unavailable(format!("NATS: {e}")))?;
    let filter = naming::join_subject(&record.subject_prefix, &pattern);
    // The first page is read before answering, so a store whose stream is missing or unreachable
    // answers 503 (to retry) rather than a stream that ends at once.
    let first = match after.checked_add(1) {
        Some(next) => {
            Some(read_page(state, &record.stream, &filter, next, PAGE as usize, state.config.max_load_bytes).await?)
        }
        // after=u64::MAX: nothing can come after it.
        None => None,
    };

    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_FRAMES);
    let mut reader = Reader {
        st: state.clone(),
        stream: record.stream.clone(),
        filter,
        format,
        tx,
        last: after,
        epoch,
        shutdown: state.shutdown.clone(),
    };
    tokio::spawn(async move {
        let _permit = permit;
        let st = reader.st.clone();
        st.metrics.streams.inc();
        if let Stop::Stalled = reader.run(first, follow, announcements).await {
            st.metrics.streams_dropped.inc();
            tracing::info!(stream = %reader.stream, "dropped a live-stream client that stopped reading");
        }
        st.metrics.streams.dec();
    });

    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut r = Resp::new(BodyExt::boxed(body));
    *r.status_mut() = StatusCode::OK;
    let ct = if format == Format::Sse { "text/event-stream" } else { "application/x-ndjson" };
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(r)
}

/// Why a live stream stopped.
enum Stop {
    /// It is over: `follow=false` after the marker, an `error` entry, or the sidecar stopping.
    Ended,
    /// The client went away.
    Left,
    /// The client stopped reading for longer than `CAUSEWAY_STREAM_SEND_TIMEOUT`.
    Stalled,
}

/// The sequence an announcement names; 0 (ignored) for anything else published there.
fn announced(m: &Message) -> u64 {
    m.headers.as_ref().and_then(|h| h.get("Nats-Sequence")).and_then(|v| v.as_str().parse().ok()).unwrap_or(0)
}

/// Reads one live stream in order.
struct Reader {
    st: Arc<State>,
    stream: String,
    /// `<store prefix>.<pattern>`.
    filter: String,
    format: Format,
    tx: mpsc::Sender<Bytes>,
    /// The last sequence sent (at first `after`): nothing at or below it is sent again.
    last: u64,
    /// The connection the subscription was made on: a newer one may have missed announcements.
    epoch: u64,
    shutdown: watch::Receiver<bool>,
}

impl Reader {
    async fn run(&mut self, first: Option<Batch>, follow: bool, mut announcements: Subscriber) -> Stop {
        let r = async {
            self.catch_up(first).await?;
            self.send(self.format.caught_up(self.last)).await?;
            if !follow {
                return Err(Stop::Ended);
            }
            self.follow(&mut announcements).await
        };
        match r.await {
            Ok(never) => match never {},
            Err(stop) => stop,
        }
    }

    /// Sends one frame, waiting at most `CAUSEWAY_STREAM_SEND_TIMEOUT` for the client to read.
    async fn send(&self, b: Bytes) -> Result<(), Stop> {
        match tokio::time::timeout(self.st.config.stream_send_timeout, self.tx.send(b)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Left),
            Err(_) => Err(Stop::Stalled),
        }
    }

    /// Ends the stream with an `error` entry: the client resumes from the last id it saw.
    async fn fail(&self, e: &Error) -> Stop {
        match self.send(self.format.error(e)).await {
            Ok(()) => Stop::Ended,
            Err(stop) => stop,
        }
    }

    /// One page of what matches from `next` on (while the client is there and the sidecar runs).
    async fn read(&mut self, next: u64) -> Result<Batch, Stop> {
        let page = read_page(&self.st, &self.stream, &self.filter, next, PAGE as usize, self.st.config.max_load_bytes);
        let read = tokio::select! {
            r = page => r,
            _ = until_true(&mut self.shutdown) => return Err(Stop::Ended),
            _ = self.tx.closed() => return Err(Stop::Left),
        };
        match read {
            Ok(b) => Ok(b),
            Err(e) => Err(self.fail(&e).await),
        }
    }

    /// Sends everything stored after `last` that matches, page by page; `first` is a page
    /// already read from `last + 1`.
    async fn catch_up(&mut self, mut first: Option<Batch>) -> Result<(), Stop> {
        loop {
            let Some(next) = self.last.checked_add(1) else { return Ok(()) };
            let page = match first.take() {
                Some(p) => p,
                None => self.read(next).await?,
            };
            let more = page.pending > 0 && !page.messages.is_empty();
            for m in page.messages {
                if *self.shutdown.borrow() {
                    return Err(Stop::Ended);
                }
                let seq = m.sequence;
                if seq <= self.last {
                    continue;
                }
                match decode_stored(&self.st, &m.payload, &self.stream, seq, None).await {
                    Ok(Decoded::Event(_, json)) => self.send(self.format.event(seq, &json)).await?,
                    Ok(Decoded::Skipped(error)) => {
                        self.st.metrics.undecodable("stream");
                        self.send(self.format.skipped(seq, &error)).await?;
                    }
                    Ok(Decoded::TooLarge) => unreachable!("no room limit is given"),
                    // Never skip silently: end the stream, the client resumes from `last`.
                    Err(e) => return Err(self.fail(&e).await),
                }
                self.last = seq;
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Follows the store until the client goes, the sidecar stops or NATS stays away.
    async fn follow(&mut self, announcements: &mut Subscriber) -> Result<Infallible, Stop> {
        let mut link = self.st.link.subscribe();
        let now = *link.borrow_and_update();
        let mut epoch = now.epoch;
        let mut away_since = (!now.connected).then(Instant::now);
        let mut poll = tokio::time::interval_at(Instant::now() + POLL, POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
        let mut shutdown = self.shutdown.clone();
        // The highest sequence announced above what was sent, and the reads that did not find it.
        let mut target = 0u64;
        let mut lag_tries = 0u32;
        // The connection changed since the subscription was made: what it missed is read now.
        let mut wake = now.connected && now.epoch != self.epoch;
        loop {
            if wake {
                self.catch_up(None).await?;
                poll.reset();
                if self.last >= target {
                    lag_tries = 0;
                }
            }
            let behind = target > self.last && lag_tries < LAG_TRIES;
            let away_until = away_since.unwrap_or_else(Instant::now) + self.st.config.nats_wait;
            wake = tokio::select! {
                m = announcements.next() => {
                    let Some(m) = m else {
                        return Err(self.fail(&Error::Unavailable("the NATS connection closed".into())).await);
                    };
                    // Everything announced by now makes one read (bounded, should they never stop).
                    let mut top = announced(&m);
                    for _ in 0..COALESCE {
                        let Some(Some(m)) = announcements.next().now_or_never() else { break };
                        top = top.max(announced(&m));
                    }
                    if top > target {
                        // A new event to wait for: it gets its own tries.
                        target = top;
                        lag_tries = 0;
                    }
                    top > self.last
                }
                _ = poll.tick() => link.borrow().connected,
                Ok(()) = link.changed() => {
                    let s = *link.borrow_and_update();
                    if s.connected {
                        away_since = None;
                        // A new connection: announcements sent while away are lost.
                        std::mem::replace(&mut epoch, s.epoch) != s.epoch
                    } else {
                        away_since.get_or_insert_with(Instant::now);
                        false
                    }
                }
                _ = tokio::time::sleep_until(away_until), if away_since.is_some() => {
                    let e = Error::Unavailable(format!(
                        "NATS is not reachable (waited {}); resume from the last id once it is back",
                        causeway_api::quantity::Duration::from(self.st.config.nats_wait)
                    ));
                    return Err(self.fail(&e).await);
                }
                _ = tokio::time::sleep(LAG_RETRY * 2u32.pow(lag_tries)), if behind => {
                    lag_tries += 1;
                    true
                }
                _ = keepalive.tick(), if self.format == Format::Sse => {
                    self.send(Bytes::from_static(b": keepalive\n\n")).await?;
                    false
                }
                _ = until_true(&mut shutdown) => return Err(Stop::Ended),
                _ = self.tx.closed() => return Err(Stop::Left),
            };
        }
    }
}
