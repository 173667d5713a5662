//! `causeway tail [store/NAME | node/NAME]`: follow a store, a node's inbox or a whole
//! namespace live in the terminal, with the causal fields of every event.
//!
//! It reads with one ordered consumer per stream: ephemeral, in memory, without acks, and
//! removed by the server as soon as `tail` goes away (a few seconds at most after a crash). So it
//! leaves no durable state and never moves a Listener. It first reads what it should show from
//! the past (`--since`, or the last `-n` events that match), then follows.

use std::{collections::VecDeque, process::ExitCode, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
};
use causeway_api::{
    DnsLabel,
    envelope::{Envelope, HEADER_TYPE},
    naming,
};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{EXIT_INVALID, EXIT_NOT_READY, nats::NatsArgs, say};

/// Flags of `causeway tail`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  causeway tail                                every store and inbox of namespace default
  causeway tail store/orders --namespace shop  one store
  causeway tail node/inventory -n 50           a node's inbox: the last 50 events, then live
  causeway tail --type order-placed --since 10m --no-follow
  causeway tail store/orders --subject 'order-*' -o json | jq .correlationId")]
pub struct TailArgs {
    /// What to follow: store/NAME (an EventStore), node/NAME (a Node's inbox), or nothing for
    /// every store and inbox of the namespace.
    #[arg(value_name = "store/NAME|node/NAME")]
    pub target: Option<String>,
    /// The namespace.
    #[arg(long, env = "CAUSEWAY_NAMESPACE", default_value = "default", value_name = "NS")]
    pub namespace: String,
    /// Only events on these subjects (NATS patterns relative to the store: `order-*`, `*`, a
    /// final `>`; for an inbox the subject is the type). Repeatable.
    #[arg(long = "subject", short = 's', value_name = "PATTERN")]
    pub subjects: Vec<String>,
    /// Only events of these types: exact, or `prefix.*`. Repeatable.
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    pub types: Vec<String>,
    /// Show the last N matching events first (`all` for every stored one; 0 for none).
    /// Default 10, or all with --since.
    #[arg(short = 'n', long = "last", value_name = "N|all")]
    pub last: Option<Count>,
    /// Show events stored since then: a duration back from now (`10m`, `2h`, `7d`) or an
    /// RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Keep following new events (the default); -f is accepted for habit's sake.
    #[arg(short = 'f', long, overrides_with = "no_follow")]
    pub follow: bool,
    /// Stop once what was stored is shown.
    #[arg(long, overrides_with = "follow")]
    pub no_follow: bool,
    /// Output: text (one line per event) or json (one JSON object per line, the event as apps
    /// see it, with stream and sequence).
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// How many past events to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// The last N.
    Last(usize),
    /// Everything stored (or since `--since`).
    All,
}

impl std::str::FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Count::All);
        }
        s.parse().map(Count::Last).map_err(|_| format!("{s:?} is not a number of events or `all`"))
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// One stream to read, with its filters.
#[derive(Debug, Clone)]
struct Source {
    stream: String,
    filters: Vec<String>,
    /// Strip this from the NATS subject to show the subject relative to the store.
    prefix: String,
}

/// Runs `causeway tail`.
pub async fn run(a: TailArgs) -> ExitCode {
    let plan = match Plan::of(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let client = match a.nats.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    let js = jetstream::new(client.clone());
    let sources = match sources(&js, &plan).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    if sources.is_empty() {
        eprintln!("error: namespace {} has no EventStore or Node in NATS yet", plan.ns);
        return ExitCode::from(EXIT_NOT_READY);
    }
    let code = follow_all(&js, sources, &plan).await;
    let _ = client.flush().await;
    code
}

/// The checked flags.
#[derive(Debug, Clone)]
struct Plan {
    ns: DnsLabel,
    target: Option<(Target, DnsLabel)>,
    subjects: Vec<String>,
    types: Vec<String>,
    last: Count,
    since: Option<chrono::DateTime<chrono::Utc>>,
    follow: bool,
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Store,
    Inbox,
}

impl Plan {
    fn of(a: &TailArgs) -> Result<Self, String> {
        let ns = DnsLabel::new(&a.namespace).map_err(|e| format!("--namespace {:?}: {e}", a.namespace))?;
        let target = match &a.target {
            None => None,
            Some(t) => {
                let (kind, name) = t
                    .split_once('/')
                    .ok_or_else(|| format!("{t:?}: say store/NAME or node/NAME (or nothing for the namespace)"))?;
                let kind = match kind.to_ascii_lowercase().as_str() {
                    "store" | "eventstore" | "cwes" | "es" => Target::Store,
                    "node" | "cwnode" | "inbox" => Target::Inbox,
                    _ => return Err(format!("{t:?}: the kind must be store or node, not {kind:?}")),
                };
                let name = DnsLabel::new(name).map_err(|e| format!("{t:?}: {e}"))?;
                Some((kind, name))
            }
        };
        for s in &a.subjects {
            causeway_api::names::validate_subject_pattern(s).map_err(|e| format!("--subject {s:?}: {e}"))?;
        }
        for t in &a.types {
            let bare = t.strip_suffix(".*").unwrap_or(t);
            causeway_api::names::validate_subject_pattern(bare)
                .ok()
                .filter(|_| !bare.contains(['*', '>']))
                .ok_or_else(|| format!("--type {t:?}: a type is tokens of [A-Za-z0-9_-] joined by '.', or prefix.*"))?;
        }
        let since = match &a.since {
            None => None,
            Some(s) => Some(since(s)?),
        };
        let last = a.last.unwrap_or(if since.is_some() { Count::All } else { Count::Last(10) });
        Ok(Self {
            ns,
            target,
            subjects: a.subjects.clone(),
            types: a.types.clone(),
            last,
            since,
            follow: !a.no_follow,
            output: a.output,
        })
    }

    fn wants_type(&self, t: &str) -> bool {
        self.types.is_empty()
            || self.types.iter().any(|p| match p.strip_suffix(".*") {
                Some(prefix) => t.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.')),
                None => p == t,
            })
    }
}

/// `10m` back from now, or an RFC 3339 time.
fn since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d: causeway_api::quantity::Duration =
        s.parse().map_err(|_| format!("--since {s:?}: give a duration such as 10m or 2h, or an RFC 3339 time"))?;
    let d = chrono::Duration::from_std(d.get()).map_err(|_| format!("--since {s:?} is too far back"))?;
    Ok(chrono::Utc::now() - d)
}

/// The streams to read: the target's, or every store and inbox stream of the namespace.
async fn sources(js: &jetstream::Context, plan: &Plan) -> Result<Vec<Source>, String> {
    let ns = &plan.ns;
    let store = |name: &DnsLabel| {
        let prefix = naming::store_subject_prefix(ns, name);
        let rel = if plan.subjects.is_empty() { vec![">".to_owned()] } else { plan.subjects.clone() };
        Source {
            stream: naming::store_stream(ns, name),
            filters: rel.iter().map(|r| naming::join_subject(&prefix, r)).collect(),
            prefix,
        }
    };
    let inbox = |name: &DnsLabel| {
        // In an inbox the subject is the type (after the sender, in the newer layout).
        let rel = if plan.subjects.is_empty() { vec![">".to_owned()] } else { plan.subjects.clone() };
        Source {
            stream: naming::inbox_stream(ns, name),
            filters: rel.iter().flat_map(|r| naming::inbox_filters(ns, name, r)).collect(),
            prefix: String::new(),
        }
    };
    let wanted = match &plan.target {
        Some((Target::Store, name)) => vec![store(name)],
        Some((Target::Inbox, name)) => vec![inbox(name)],
        None => {
            let mut names = js.stream_names();
            let (es, inb) = (format!("CW_ES_{ns}_"), format!("CW_IN_{ns}_"));
            let mut out = Vec::new();
            while let Some(n) = names.next().await {
                let n = n.map_err(|e| format!("cannot list streams: {e}"))?;
                let label = |p: &str| n.strip_prefix(p).and_then(|x| DnsLabel::new(x).ok());
                if let Some(name) = label(&es) {
                    out.push(store(&name));
                } else if let Some(name) = label(&inb) {
                    out.push(inbox(&name));
                }
            }
            out.sort_by(|a, b| a.stream.cmp(&b.stream));
            return Ok(out);
        }
    };
    for s in &wanted {
        if let Err(e) = js.get_stream(&s.stream).await {
            let (kind, name) = plan.target.as_ref().map(|(k, n)| (*k, n.as_str())).unwrap_or((Target::Store, ""));
            let what = if kind == Target::Store { "EventStore" } else { "Node" };
            return Err(format!("{what} {ns}/{name} has no stream {} in NATS ({e})", s.stream));
        }
    }
    Ok(wanted)
}

/// Reads every source, prints what matches, and follows when asked.
async fn follow_all(js: &jetstream::Context, sources: Vec<Source>, plan: &Plan) -> ExitCode {
    // This run's consumers are named after it (a recreated ordered consumer appends `_<n>`), so
    // they can be removed on the way out rather than left for the server's inactivity timer.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let prefix = format!("cw_tail_{}_{}", std::process::id(), nanos % 1_000_000_000);
    let streams: Vec<String> = sources.iter().map(|s| s.stream.clone()).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Line, String>>(256);
    let mut tasks = tokio::task::JoinSet::new();
    for s in sources {
        let (js, plan, tx, name) = (js.clone(), plan.clone(), tx.clone(), format!("{prefix}_{}", tasks.len()));
        tasks.spawn(async move {
            if let Err(e) = read(&js, &s, &plan, &name, &tx).await {
                let _ = tx.send(Err(format!("{}: {e}", s.stream))).await;
            }
        });
    }
    drop(tx);
    let mut failed = false;
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(Ok(line)) => say(&line.render(plan.output)),
                Some(Err(e)) => {
                    eprintln!("error: {e}");
                    failed = true;
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    remove_consumers(js, &streams, &prefix).await;
    if failed { ExitCode::from(EXIT_NOT_READY) } else { ExitCode::SUCCESS }
}

/// Deletes this run's consumers (best effort: the server removes what is left after 30 s idle).
async fn remove_consumers(js: &jetstream::Context, streams: &[String], prefix: &str) {
    for name in streams {
        let Ok(stream) = js.get_stream(name).await else { continue };
        let mut names = stream.consumer_names();
        let mut ours = Vec::new();
        while let Some(Ok(c)) = names.next().await {
            if c.starts_with(prefix) {
                ours.push(c);
            }
        }
        for c in ours {
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.delete_consumer(&c)).await;
        }
    }
}

/// One event to print.
struct Line {
    stream: String,
    sequence: u64,
    subject: String,
    event: Result<Envelope, String>,
}

impl Line {
    fn render(&self, output: Output) -> String {
        match (&self.event, output) {
            (Ok(e), Output::Json) => {
                let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
                if let Some(m) = v.as_object_mut() {
                    m.entry("subject").or_insert_with(|| Value::String(self.subject.clone()));
                    m.insert("stream".into(), json!(self.stream));
                    m.insert("sequence".into(), json!(self.sequence));
                }
                v.to_string()
            }
            (Err(err), Output::Json) => json!({"stream": self.stream, "sequence": self.sequence,
                "subject": self.subject, "skipped": true, "error": err})
            .to_string(),
            (Ok(e), Output::Text) => {
                let mut s = format!(
                    "{} {}#{} {} id={} sender={} subject={} lamport={} correlationId={}",
                    e.time,
                    self.stream,
                    self.sequence,
                    e.event_type,
                    e.id,
                    e.sender,
                    e.subject.as_deref().unwrap_or(&self.subject),
                    e.lamport,
                    e.correlation_id
                );
                if let Some(c) = &e.causation_id {
                    s.push_str(&format!(" causationId={c}"));
                }
                if let Some(b) = &e.blob {
                    s.push_str(&format!(" payload=<blob {} bytes>", b.size));
                } else {
                    let p = e.payload.to_string();
                    let p: String = if p.chars().count() > 200 {
                        p.chars().take(199).chain(std::iter::once('…')).collect()
                    } else {
                        p
                    };
                    s.push_str(&format!(" payload={p}"));
                }
                s
            }
            (Err(err), Output::Text) => {
                format!("{}#{} subject={} (not a Causeway event: {err})", self.stream, self.sequence, self.subject)
            }
        }
    }
}

/// Reads one stream with an ordered consumer: the past it should show, then (when following)
/// everything new.
async fn read(
    js: &jetstream::Context,
    s: &Source,
    plan: &Plan,
    name: &str,
    tx: &tokio::sync::mpsc::Sender<Result<Line, String>>,
) -> Result<(), String> {
    let stream = js.get_stream(&s.stream).await.map_err(|e| e.to_string())?;
    let last_seq = stream.cached_info().state.last_sequence;
    // Where to start: `--since`; or for the last N of an unfiltered stream, N before its end
    // (with filters, from the start, keeping the last N that match).
    let unfiltered = plan.subjects.is_empty() && plan.types.is_empty() && s.prefix.starts_with("cw.");
    let deliver_policy = match (plan.since, plan.last) {
        (Some(t), _) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(t.timestamp_nanos_opt().unwrap_or(0) as i128)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
        (None, Count::Last(0)) => DeliverPolicy::New,
        (None, Count::Last(n)) if unfiltered => {
            DeliverPolicy::ByStartSequence { start_sequence: last_seq.saturating_sub(n as u64 - 1).max(1) }
        }
        (None, _) => DeliverPolicy::All,
    };
    let (filter_subject, filter_subjects) = match s.filters.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            name: Some(name.to_owned()),
            description: Some("causeway tail".into()),
            filter_subject,
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(|e| format!("cannot read: {e}"))?;
    let keep = match plan.last {
        Count::Last(n) => n,
        Count::All => usize::MAX,
    };
    // The past: keep the last `keep` that match, then print them in order.
    let mut past: VecDeque<Line> = VecDeque::new();
    while pending > 0 {
        let Some(m) = messages.next().await else { return Ok(()) };
        let m = m.map_err(|e| e.to_string())?;
        let info = m.info().map_err(|e| e.to_string())?;
        pending = info.pending;
        let sequence = info.stream_sequence;
        if let Some(line) = line_of(s, plan, &m, sequence) {
            if keep == 0 {
                continue;
            }
            if past.len() == keep {
                past.pop_front();
            }
            past.push_back(line);
        }
    }
    for l in past {
        if tx.send(Ok(l)).await.is_err() {
            return Ok(());
        }
    }
    if !plan.follow {
        return Ok(());
    }
    while let Some(m) = messages.next().await {
        let m = match m {
            Ok(m) => m,
            // The ordered consumer recreates itself after a gap or a reconnect; a failure it
            // reports is worth a word, not the end.
            Err(e) => {
                eprintln!("warning: {}: {e}; going on", s.stream);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Ok(info) = m.info() else { continue };
        let sequence = info.stream_sequence;
        if let Some(line) = line_of(s, plan, &m, sequence)
            && tx.send(Ok(line)).await.is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// The line for a message, or `None` when its type is filtered out.
fn line_of(s: &Source, plan: &Plan, m: &jetstream::Message, sequence: u64) -> Option<Line> {
    let header_type = m.headers.as_ref().and_then(|h| h.get(HEADER_TYPE)).map(|v| v.as_str().to_owned());
    let event = Envelope::decode(&m.payload).map_err(|e| e.to_string());
    let event_type = header_type.or_else(|| event.as_ref().ok().map(|e| e.event_type.clone())).unwrap_or_default();
    if !plan.wants_type(&event_type) {
        return None;
    }
    let subject = if s.prefix.is_empty() {
        m.subject.to_string()
    } else {
        m.subject.strip_prefix(&format!("{}.", s.prefix)).unwrap_or(&m.subject).to_owned()
    };
    Some(Line { stream: s.stream.clone(), sequence, subject, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(types: &[&str]) -> Plan {
        Plan {
            ns: DnsLabel::new("shop").unwrap(),
            target: None,
            subjects: vec![],
            types: types.iter().map(|s| s.to_string()).collect(),
            last: Count::Last(10),
            since: None,
            follow: false,
            output: Output::Text,
        }
    }

    #[test]
    fn type_patterns_match_exactly_or_by_prefix() {
        let p = plan(&["order-placed", "stock.*"]);
        assert!(p.wants_type("order-placed"));
        assert!(!p.wants_type("order-placed2"));
        assert!(p.wants_type("stock.reserved"));
        assert!(!p.wants_type("stock"));
        assert!(!p.wants_type("stockx.reserved"));
        assert!(plan(&[]).wants_type("anything"));
    }

    #[test]
    fn counts_and_since_parse() {
        assert_eq!("all".parse::<Count>(), Ok(Count::All));
        assert_eq!("5".parse::<Count>(), Ok(Count::Last(5)));
        assert!("five".parse::<Count>().is_err());
        let t = since("10m").unwrap();
        let back = chrono::Utc::now() - t;
        assert!(back >= chrono::Duration::minutes(10) && back < chrono::Duration::minutes(11));
        assert_eq!(since("2026-01-02T03:04:05Z").unwrap().to_rfc3339(), "2026-01-02T03:04:05+00:00");
        assert!(since("yesterday").is_err());
    }
}
