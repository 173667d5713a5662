//! `causeway deadletters list|show|replay`: a listener's dead letters, from NATS directly. The
//! work is the sidecar's own ([`causeway_sidecar::deadletters`]), so the CLI and the routes
//! select, show and replay exactly alike.

use std::process::ExitCode;

use causeway_api::{
    DnsLabel, Kind, naming,
    registry::{ListenerRecord, Record},
};
use causeway_sidecar::{
    deadletters::{self as dl, Entry, Filter},
    error::Error,
};
use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::{EXIT_INVALID, EXIT_NOT_READY, nats::NatsArgs, say};

/// Exit code when the listener or the dead letter does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code when the listener has no deadLetter, or a dead letter cannot be replayed.
pub const EXIT_REFUSED: u8 = 4;

const HELP: &str = "\
A dead letter is an event a Listener gave up on: the app answered 400, 404 or 422, maxDeliver
ran out, or the sender was forged. It is kept in the Listener's deadLetter {store, subject} with
the error. Its ID is its sequence in that store (an event id works too: its latest dead letter).

Replay sends the event back to the Listener's source, with its id, its causal context and a
replayOf marker, on a subject only this Listener's consumer reads
(cw.<ns>.replay.{es|in}.<source>.<listener>.…): it is delivered again under this Listener's
rules, and no other Listener of the same store or inbox sees it twice. Replaying is idempotent:
a dead letter replayed before is marked (in the Node's state bucket) and not sent again. It stays
in the dead-letter store, marked, unless --delete is given.

Examples:
  causeway deadletters list -n shop reserve-stock
  causeway deadletters list -n shop reserve-stock --since 1h --status 422 --error 'no items'
  causeway deadletters show -n shop reserve-stock 7
  causeway deadletters replay -n shop reserve-stock 7 9
  causeway deadletters replay -n shop reserve-stock --all --type order-placed

Exit codes: 0 done; 1 NATS cannot be reached or failed; 2 bad flags; 3 unknown listener or dead
letter; 4 the listener has no deadLetter, or a dead letter cannot be replayed.";

/// `causeway deadletters`.
#[derive(Debug, Args)]
#[command(after_long_help = HELP)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// List a listener's dead letters, oldest first: ID, time, type, event id, status, error,
    /// replayed.
    List {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filters: Filters,
        /// Only dead letters not replayed yet.
        #[arg(long, conflicts_with = "replayed")]
        pending: bool,
        /// Only dead letters replayed already.
        #[arg(long)]
        replayed: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// table (default) or json.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one dead letter whole: the event, its error, its causal context and whether it was
    /// replayed.
    Show {
        #[command(flatten)]
        target: Target,
        /// The dead letter's sequence in the dead-letter store, or an event id.
        id: String,
        /// text (default) or json.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Replay dead letters: the given IDs, or (with --all or a filter) every one not replayed yet.
    Replay {
        #[command(flatten)]
        target: Target,
        /// Dead letter IDs (sequences or event ids).
        ids: Vec<String>,
        #[command(flatten)]
        filters: Filters,
        /// Replay every dead letter not replayed yet (the filters narrow it).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Delete each dead letter once replayed, instead of keeping it marked.
        #[arg(long)]
        delete: bool,
        /// table (default) or json.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Args)]
struct Target {
    /// The listener's namespace.
    #[arg(long, short, default_value = "default")]
    namespace: String,
    /// The Listener.
    listener: String,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Debug, Args, Default)]
struct Filters {
    /// Dead-lettered at or after: RFC 3339, or a duration ago (10m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered before: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Event type: exact, or prefix.* (repeat for more).
    #[arg(long = "type")]
    types: Vec<String>,
    /// A substring of the error (case-insensitive).
    #[arg(long)]
    error: Option<String>,
    /// The app's HTTP status (e.g. 422).
    #[arg(long)]
    status: Option<u16>,
}

impl Filters {
    fn given(&self) -> bool {
        self.since.is_some()
            || self.until.is_some()
            || !self.types.is_empty()
            || self.error.is_some()
            || self.status.is_some()
    }

    fn parse(&self) -> Result<Filter, String> {
        let now = Utc::now();
        let time = |k: &str, v: &Option<String>| {
            v.as_deref().map(|v| dl::parse_time(v, now).map_err(|e| format!("--{k}: {e}"))).transpose()
        };
        for t in &self.types {
            causeway_api::names::validate_type_pattern(t).map_err(|e| format!("--type: {e}"))?;
        }
        Ok(Filter {
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            types: self.types.clone(),
            error: self.error.clone(),
            status: self.status,
            replayed: None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// A failure: its message and exit code.
struct Failure(String, u8);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::UnknownDeadLetter { .. } | Error::UnknownListener { .. } => EXIT_NOT_FOUND,
            Error::NoDeadLetter(_) | Error::NotReplayable(_) => EXIT_REFUSED,
            _ => EXIT_NOT_READY,
        };
        Failure(e.to_string(), code)
    }
}

/// Runs the command.
pub async fn run(a: DeadLettersArgs) -> ExitCode {
    match go(a).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(m, code)) => {
            eprintln!("error: {m}");
            ExitCode::from(code)
        }
    }
}

async fn listener(t: &Target) -> Result<(async_nats::Client, ListenerRecord), Failure> {
    let ns = DnsLabel::new(&t.namespace).map_err(|e| Failure(format!("--namespace: {e}"), EXIT_INVALID))?;
    let name = DnsLabel::new(&t.listener).map_err(|e| Failure(format!("LISTENER: {e}"), EXIT_INVALID))?;
    let client = t.nats.connect().await.map_err(|e| Failure(e, EXIT_NOT_READY))?;
    let key = naming::registry_key(&ns, Kind::Listener, &name);
    let bytes = causeway_sidecar::nats::kv_value(&client, naming::REGISTRY_BUCKET, &key).await?;
    let Some(bytes) = bytes else {
        return Err(Failure(
            format!("no listener {name:?} in namespace {ns} (causeway status -n {ns} cwl lists them)"),
            EXIT_NOT_FOUND,
        ));
    };
    match Record::from_bytes(&bytes) {
        Ok(Record::Listener(l)) => Ok((client, l)),
        Ok(_) => Err(Failure(format!("registry key {key} is not a listener"), EXIT_NOT_READY)),
        Err(e) => Err(Failure(format!("registry key {key} does not decode: {e}"), EXIT_NOT_READY)),
    }
}

async fn go(a: DeadLettersArgs) -> Result<(), Failure> {
    match a.command {
        Sub::List { target, filters, pending, replayed, limit, output } => {
            let mut f = filters.parse().map_err(|e| Failure(e, EXIT_INVALID))?;
            f.replayed = if pending {
                Some(false)
            } else if replayed {
                Some(true)
            } else {
                None
            };
            let (client, l) = listener(&target).await?;
            let page = dl::scan(&client, &l, &f, 0, limit.max(1)).await?;
            let stream = dl::dead_letter_of(&l)?.stream.clone();
            match output {
                Output::Json => say(&pretty(&json!(page.entries.iter().map(|e| e.view(&stream)).collect::<Vec<_>>()))),
                Output::Table => {
                    for line in table(&page.entries) {
                        say(&line);
                    }
                    if page.more {
                        say(&format!("(more after {}: raise --limit)", page.last_sequence));
                    }
                }
            }
            Ok(())
        }
        Sub::Show { target, id, output } => {
            let (client, l) = listener(&target).await?;
            let e = dl::get(&client, &l, &id).await?;
            let stream = dl::dead_letter_of(&l)?.stream.clone();
            match output {
                Output::Json => say(&pretty(&e.view(&stream))),
                Output::Table => say(&text(&e, &stream)),
            }
            Ok(())
        }
        Sub::Replay { target, ids, filters, all, delete, output } => {
            if ids.is_empty() && !all && !filters.given() {
                return Err(Failure(
                    "name the dead letters to replay (IDs), or give --all or a filter (--since, --until, --type, --error, --status)".into(),
                    EXIT_INVALID,
                ));
            }
            if !ids.is_empty() && filters.given() {
                return Err(Failure("give either IDs or filters, not both".into(), EXIT_INVALID));
            }
            let f = filters.parse().map_err(|e| Failure(e, EXIT_INVALID))?;
            let (client, l) = listener(&target).await?;
            let by = "causeway CLI";
            let mut done = Vec::new();
            let mut refused = Vec::new();
            if ids.is_empty() {
                let (d, r, _) = dl::replay_matching(&client, &l, &f, 0, usize::MAX, by, delete).await?;
                done = d;
                refused = r;
            } else {
                // Every ID must exist before anything is replayed.
                let mut entries = Vec::new();
                for id in &ids {
                    entries.push(dl::get(&client, &l, id).await?);
                }
                for e in &entries {
                    done.push(dl::replay(&client, &l, e, by, delete).await?);
                }
            }
            match output {
                Output::Json => say(&pretty(
                    &json!({"replayed": done, "notReplayable": refused.iter().map(|(s, e)| json!({"sequence": s, "error": e})).collect::<Vec<_>>()}),
                )),
                Output::Table => {
                    for r in &done {
                        let what = if r.already_replayed { "already replayed" } else { "replayed" };
                        let deleted = if r.deleted { ", deleted" } else { "" };
                        say(&format!(
                            "{} {what} as {}#{} (event {}{deleted})",
                            r.dead_letter, r.stream, r.sequence, r.id
                        ));
                    }
                    for (s, e) in &refused {
                        say(&format!("{s} not replayable: {e}"));
                    }
                    if done.is_empty() && refused.is_empty() {
                        say("nothing to replay");
                    }
                }
            }
            if refused.is_empty() {
                Ok(())
            } else {
                Err(Failure(format!("{} dead letters cannot be replayed", refused.len()), EXIT_REFUSED))
            }
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn one_line(s: &str, max: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max { format!("{}…", s.chars().take(max - 1).collect::<String>()) } else { s }
}

fn table(entries: &[Entry]) -> Vec<String> {
    let mut rows = vec![
        ["ID", "DEAD-LETTERED", "TYPE", "EVENT", "STATUS", "ATTEMPTS", "REPLAYS", "REPLAYED", "ERROR"]
            .map(String::from)
            .to_vec(),
    ];
    for e in entries {
        let d = e.envelope.dead_letter.as_ref();
        rows.push(vec![
            e.sequence.to_string(),
            d.map(|d| d.time.clone()).unwrap_or_default(),
            e.envelope.event_type.clone(),
            e.envelope.id.clone(),
            d.and_then(|d| d.status).map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            d.map(|d| d.attempts.to_string()).unwrap_or_default(),
            e.replays().to_string(),
            e.replayed.as_ref().map(|m| format!("yes (#{})", m.sequence)).unwrap_or_else(|| "no".into()),
            one_line(d.map(|d| d.error.as_str()).unwrap_or(""), 60),
        ]);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
        })
        .collect()
}

fn text(e: &Entry, dl_stream: &str) -> String {
    let env = &e.envelope;
    let d = env.dead_letter.as_ref();
    let mut out = vec![
        format!("Dead letter:    {dl_stream}#{}", e.sequence),
        format!("Event:          {} ({})", env.id, env.event_type),
    ];
    if let Some(s) = &env.subject {
        out.push(format!("Subject:        {s}"));
    }
    if let Some(d) = d {
        out.push(format!("Listener:       {}", d.listener));
        out.push(format!("From:           {}#{}", d.stream, d.sequence));
        out.push(format!("Dead-lettered:  {} after {} attempt(s)", d.time, d.attempts));
        out.push(format!(
            "Status:         {}",
            d.status.map(|s| s.to_string()).unwrap_or_else(|| "- (no answer)".into())
        ));
        out.push(format!("Error:          {}", d.error));
    }
    out.push(format!("Sent:           {} by {} (lamport {})", env.time, env.sender, env.lamport));
    out.push(format!("Correlation:    {}", env.correlation_id));
    out.push(format!("Causation:      {}", env.causation_id.as_deref().unwrap_or("-")));
    let path: Vec<String> = env.path.iter().map(|[a, b]| format!("{a} → {b}")).collect();
    out.push(format!("Path:           {}", if path.is_empty() { "-".into() } else { path.join(", ") }));
    if let Some(r) = &env.replay_of {
        out.push(format!("Replay of:      {}#{} (replay {} at {})", r.stream, r.sequence, r.count, r.time));
    }
    out.push(match &e.replayed {
        Some(m) => format!("Replayed:       {} by {} as {}#{}", m.time, m.by, m.stream, m.sequence),
        None => match e.not_replayable() {
            Some(why) => format!("Replayed:       no; cannot be: {why}"),
            None => "Replayed:       no".into(),
        },
    });
    match &env.blob {
        Some(b) => out.push(format!("Payload:        (in blob {} of {}, {} bytes)", b.name, b.bucket, b.size)),
        None => out.push(format!("Payload:        {}", serde_json::to_string_pretty(&env.payload).unwrap_or_default())),
    }
    out.join("\n")
}
