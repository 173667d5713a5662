//! `causeway trace`: the causal tree of one correlation, from the namespace's trace stream, as
//! text, JSON or an SVG picture.

use std::{path::PathBuf, process::ExitCode};

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use causeway_api::{
    names::DnsLabel,
    naming,
    trace::{Delivery, Trace, TraceEvent, TraceRecord},
};
use clap::{Args, ValueEnum};

use crate::{EXIT_INVALID, EXIT_NOT_READY, nats::NatsArgs, say};

/// Most records read for one trace.
const MAX_RECORDS: usize = 10_000;

/// `causeway trace` flags.
#[derive(Debug, Args)]
#[command(after_help = "Every sidecar records, on its namespace's trace stream (CW_TR_<ns>, kept 24 hours), one small
record per stored event and per delivery outcome. A trace is read through JetStream's per-subject
index: no event stream is scanned. Each line is one event: type, sender -> target, stream#sequence,
Lamport time, creation time, and what each listener did with it (delivered, retrying, dead-lettered
with the error, or pending). Exit codes: 0 shown, 1 no such trace or NATS cannot be reached, 2 bad flags.")]
pub struct TraceArgs {
    /// The correlation id (every event of one operation shares it; a send answers with its id,
    /// which is the correlation id of the operation it starts).
    #[arg(value_name = "CORRELATION_ID")]
    pub correlation_id: String,
    /// The namespace.
    #[arg(short = 'n', long, value_name = "NS", default_value = "default")]
    pub namespace: String,
    /// Output: a tree (default) or json (the same document as the sidecar's GET /v1/traces/{id}).
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<Format>,
    /// Also write the trace as an SVG picture to this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// Output formats of `causeway trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An indented tree.
    Tree,
    /// JSON.
    Json,
}

/// Runs `causeway trace`.
pub async fn run(a: TraceArgs) -> ExitCode {
    let ns = match DnsLabel::new(&a.namespace) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("error: -n {:?}: {e}", a.namespace);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if a.correlation_id.is_empty() || a.correlation_id.chars().any(char::is_control) {
        eprintln!("error: the correlation id must be printable characters");
        return ExitCode::from(EXIT_INVALID);
    }
    let client = match a.nats.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    let records = match read(&client, &ns, &a.correlation_id).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: reading the trace stream {} at {}: {e}", naming::trace_stream(&ns), a.nats.url);
            return ExitCode::from(EXIT_NOT_READY);
        }
    };
    let trace = Trace::build(&a.correlation_id, &records);
    if trace.events == 0 {
        eprintln!(
            "error: no trace of correlation id {:?} in namespace {ns} (traces are kept 24 hours, and recorded by nodes with spec.trace.enabled)",
            a.correlation_id
        );
        return ExitCode::from(EXIT_NOT_READY);
    }
    match a.output.unwrap_or(Format::Tree) {
        Format::Json => say(&serde_json::to_string_pretty(&trace).unwrap_or_default()),
        Format::Tree => {
            say(&format!("trace {} in namespace {ns}: {} event(s)", trace.correlation_id, trace.events));
            for line in tree_lines(&trace) {
                say(&line);
            }
        }
    }
    if let Some(path) = &a.svg {
        if let Err(e) = std::fs::write(path, svg(&trace)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_NOT_READY);
        }
        eprintln!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

async fn read(client: &async_nats::Client, ns: &DnsLabel, correlation_id: &str) -> Result<Vec<TraceRecord>, String> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream_no_info(naming::trace_stream(ns)).await.map_err(|e| e.to_string())?;
    let filter = naming::trace_filter(ns, correlation_id);
    let mut out = Vec::new();
    let mut next = 1;
    while out.len() < MAX_RECORDS {
        match stream.direct_get_next_for_subject(filter.as_str(), Some(next)).await {
            Ok(m) => {
                next = m.sequence + 1;
                out.extend(TraceRecord::decode(&m.payload));
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

/// One line per event, indented by cause.
pub fn tree_lines(t: &Trace) -> Vec<String> {
    let mut out = Vec::new();
    fn go(e: &TraceEvent, prefix: &str, last: bool, root: bool, out: &mut Vec<String>) {
        let branch = if root {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        out.push(format!("{prefix}{branch}{}", describe(e)));
        let child_prefix =
            if root { prefix.to_owned() } else { format!("{prefix}{}", if last { "   " } else { "│  " }) };
        for (i, c) in e.children.iter().enumerate() {
            go(c, &child_prefix, i + 1 == e.children.len(), false, out);
        }
    }
    for r in &t.roots {
        go(r, "", true, true, &mut out);
    }
    out
}

fn describe(e: &TraceEvent) -> String {
    format!(
        "{}  {} -> {}  {}#{}  lamport {}  {}  id {}  {}",
        e.event_type,
        e.sender,
        e.target,
        e.stream,
        e.sequence,
        e.lamport,
        e.time,
        e.id,
        outcome(e)
    )
}

/// What happened to an event, in words.
pub fn outcome(e: &TraceEvent) -> String {
    if e.deliveries.is_empty() {
        return "pending".into();
    }
    e.deliveries.iter().map(delivery).collect::<Vec<_>>().join("; ")
}

fn delivery(d: &Delivery) -> String {
    let tries = if d.attempts > 1 { format!(", {} attempts", d.attempts) } else { String::new() };
    let why = match (&d.status, &d.error) {
        (Some(s), Some(e)) => format!(": {s} {e}"),
        (None, Some(e)) => format!(": {e}"),
        (Some(s), None) => format!(": {s}"),
        (None, None) => String::new(),
    };
    match d.state.as_str() {
        "delivered" if d.attempts > 1 => format!("delivered to {} after {} attempts{why}", d.listener, d.attempts),
        "delivered" => format!("delivered to {}", d.listener),
        "deadLettered" => format!("dead-lettered by {}{tries}{why}", d.listener),
        _ => format!("retrying in {}{tries}{why}", d.listener),
    }
}

const BOX_W: usize = 440;
const BOX_H: usize = 74;
const INDENT: usize = 60;
const ROW: usize = 96;
const MARGIN: usize = 20;

/// The trace as an SVG picture: one box per event, indented under its cause, with an arrow
/// from the cause; the box's colour says its outcome.
pub fn svg(t: &Trace) -> String {
    let walk = t.walk();
    let depth = walk.iter().map(|(d, _)| *d).max().unwrap_or(0);
    let width = MARGIN * 2 + depth * INDENT + BOX_W;
    let height = MARGIN * 2 + 30 + walk.len() * ROW;
    let mut s = format!(
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">
<title>{}</title>
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>
<text x="{MARGIN}" y="{}" font-size="14" font-weight="bold">{}</text>
"##,
        xml(&format!("causeway trace {}", t.correlation_id)),
        MARGIN + 14,
        xml(&format!("trace {} ({} events)", t.correlation_id, t.events)),
    );
    // Where each event's box is, to draw the arrow from its cause.
    let mut parents: Vec<(usize, usize)> = Vec::new(); // (depth, row) of the open ancestors
    for (row, (d, e)) in walk.iter().enumerate() {
        let x = MARGIN + d * INDENT;
        let y = MARGIN + 30 + row * ROW;
        parents.truncate(*d);
        if let Some(&(pd, prow)) = parents.last() {
            let px = MARGIN + pd * INDENT + 16;
            let py = MARGIN + 30 + prow * ROW + BOX_H;
            s.push_str(&format!(
                r##"<path d="M {px} {py} L {px} {} L {x} {}" fill="none" stroke="#555" marker-end="url(#arrow)"/>
"##,
                y + BOX_H / 2,
                y + BOX_H / 2
            ));
        }
        parents.push((*d, row));
        let (fill, stroke) = match e.outcome.as_str() {
            "delivered" => ("#e8f5e9", "#2e7d32"),
            "retrying" => ("#fff8e1", "#f9a825"),
            "deadLettered" => ("#ffebee", "#c62828"),
            _ => ("#f5f5f5", "#757575"),
        };
        s.push_str(&format!(
            r#"<g><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>
<text x="{}" y="{}" font-weight="bold">{}</text>
<text x="{}" y="{}">{}</text>
<text x="{}" y="{}">{}</text>
<text x="{}" y="{}" fill="{stroke}">{}</text></g>
"#,
            x + 8,
            y + 16,
            xml(&format!("{}  (id {})", e.event_type, e.id)),
            x + 8,
            y + 32,
            xml(&format!("{} -> {}", e.sender, e.target)),
            x + 8,
            y + 48,
            xml(&format!("{}#{}  lamport {}  {}", e.stream, e.sequence, e.lamport, e.time)),
            x + 8,
            y + 64,
            xml(&clip(&outcome(e), 70)),
        ));
    }
    s.push_str("</svg>\n");
    s
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { format!("{}…", s.chars().take(n - 1).collect::<String>()) }
}

/// Text for XML: the five special characters escaped, and characters XML 1.0 forbids dropped.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use causeway_api::trace::What;

    use super::*;

    fn rec(what: What, id: &str, cause: Option<&str>, lamport: u64) -> TraceRecord {
        TraceRecord {
            what,
            id: id.into(),
            event_type: "a<b>&\"c\"".into(),
            sender: "shop/a".into(),
            target: "node shop/b".into(),
            stream: "CW_IN_shop_b".into(),
            sequence: lamport,
            subject: None,
            causation_id: cause.map(Into::into),
            correlation_id: "c".into(),
            lamport,
            time: "t".into(),
            at: "t".into(),
            by: "shop/b".into(),
            listener: Some("l".into()),
            attempt: Some(1),
            status: None,
            error: None,
        }
    }

    #[test]
    fn tree_and_svg_name_every_event() {
        let t = Trace::build(
            "c",
            &[
                rec(What::Stored, "one", None, 1),
                rec(What::Stored, "two", Some("one"), 2),
                rec(What::Stored, "three", Some("two"), 3),
                rec(What::Delivered, "one", None, 1),
            ],
        );
        let lines = tree_lines(&t);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("id one") && lines[0].ends_with("delivered to l"), "{lines:?}");
        assert!(lines[1].starts_with("└─ ") && lines[1].contains("id two"), "{lines:?}");
        assert!(lines[2].starts_with("   └─ ") && lines[2].ends_with("pending"), "{lines:?}");
        let s = svg(&t);
        for id in ["one", "two", "three"] {
            assert!(s.contains(&format!("(id {id})")), "{s}");
        }
        assert!(s.contains("a&lt;b&gt;&amp;&quot;c&quot;") && !s.contains("a<b>"), "escaped");
        assert_eq!(s.matches("marker-end").count(), 2, "one arrow per caused event");
    }
}
