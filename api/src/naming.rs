//! The JetStream naming rules (docs/reference.md, "JetStream mapping"), each in exactly one function.
//!
//! | from | object | name | subjects |
//! |---|---|---|---|
//! | EventStore `ns/x` | stream | `CW_ES_<ns>_<x>` | `cw.<ns>.es.<x>.>` |
//! | EventStore `ns/x` | live announcements (headers-only republish) | | `cw.<ns>.live.<x>.>` |
//! | Node `ns/n` | inbox stream | `CW_IN_<ns>_<n>` | `cw.<ns>.in.<n>.>` |
//! | Node `ns/n` | state KV bucket | `CW_ST_<ns>_<n>` | |
//! | namespace `ns` | global KV bucket | `CW_GL_<ns>` | |
//! | namespace `ns` | object store for large payloads | `CW_BLOB_<ns>` | |
//! | Listener `ns/l` | durable consumer | `cw_<ns>_<l>` | |
//! | cluster | registry KV bucket | `CW_REGISTRY` | key `<ns>.<kind>.<name>` |
//! | KV bucket `b` | stream | `KV_<b>` | `$KV.<b>.>` |
//! | object store `b` | stream | `OBJ_<b>` | `$O.<b>.>` |
//!
//! The JetStream API subjects a node's credential is granted (see `grants`) are here too, so a
//! permission and the request it permits are spelled by the same function.
//!
//! Every argument is a [`DnsLabel`], so no name can carry `.`, `*`, `>`, `_` or whitespace:
//! `_` separates the parts of a name unambiguously and `.` separates subject tokens.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::DnsLabel;

/// The cluster-wide registry bucket that sidecars watch.
pub const REGISTRY_BUCKET: &str = "CW_REGISTRY";

/// Where the registry stream republishes every stored change: `cw._registry.<key>`. The `_`
/// token cannot be a namespace (a DNS label), so it never collides with a store or inbox.
pub const REGISTRY_CHANGES_PREFIX: &str = "cw._registry";

/// The subject on which changes of namespace `ns`'s records are republished.
pub fn registry_changes_filter(ns: &DnsLabel) -> String {
    format!("{REGISTRY_CHANGES_PREFIX}.{ns}.>")
}

/// The KV subject of a registry key (`$KV.CW_REGISTRY.<key>`).
pub fn registry_kv_subject(key: &str) -> String {
    join_subject(&kv_subject_prefix(REGISTRY_BUCKET), key)
}

/// The stream behind KV bucket `b`: `KV_<b>`, as every NATS KV client expects it.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subject prefix of KV bucket `b`: `$KV.<b>`; key `k` lives at `$KV.<b>.<k>`.
pub fn kv_subject_prefix(bucket: &str) -> String {
    format!("$KV.{bucket}")
}

/// The stream behind object store `b`: `OBJ_<b>`, as every NATS object-store client expects it.
pub fn object_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// The subject prefix of object store `b`: `$O.<b>` (chunks under `.C.`, metadata under `.M.`).
pub fn object_subject_prefix(bucket: &str) -> String {
    format!("$O.{bucket}")
}

/// The JetStream API's subject prefix (default domain).
pub const JS_API_PREFIX: &str = "$JS.API";

/// Direct get on stream `s` (request body `{"seq"|"last_by_subj"|"next_by_subj": …}`):
/// `$JS.API.DIRECT.GET.<s>`. The form with the subject in the request subject
/// (`….<s>.<subject>`) is a different subject, not covered by a grant of this one.
pub fn js_direct_get(stream: &str) -> String {
    format!("{JS_API_PREFIX}.DIRECT.GET.{stream}")
}

/// Stream info of `s`: `$JS.API.STREAM.INFO.<s>` (what NATS clients call to open a stream or
/// bucket).
pub fn js_stream_info(stream: &str) -> String {
    format!("{JS_API_PREFIX}.STREAM.INFO.{stream}")
}

/// Stream message get on `s`, answered by the stream's leader:
/// `$JS.API.STREAM.MSG.GET.<s>` (where a read must see everything the leader has stored).
pub fn js_stream_msg_get(stream: &str) -> String {
    format!("{JS_API_PREFIX}.STREAM.MSG.GET.{stream}")
}

/// Purge of `s` (optionally by subject filter): `$JS.API.STREAM.PURGE.<s>`.
pub fn js_stream_purge(stream: &str) -> String {
    format!("{JS_API_PREFIX}.STREAM.PURGE.{stream}")
}

/// Deletion of one message of `s`: `$JS.API.STREAM.MSG.DELETE.<s>` (a replayed dead letter,
/// when its deletion is asked for).
pub fn js_stream_msg_delete(stream: &str) -> String {
    format!("{JS_API_PREFIX}.STREAM.MSG.DELETE.{stream}")
}

/// Consumer info of durable `c` on stream `s`: `$JS.API.CONSUMER.INFO.<s>.<c>`.
pub fn js_consumer_info(stream: &str, consumer: &str) -> String {
    format!("{JS_API_PREFIX}.CONSUMER.INFO.{stream}.{consumer}")
}

/// Pull request (fetch) on durable `c` of stream `s`: `$JS.API.CONSUMER.MSG.NEXT.<s>.<c>`.
pub fn js_consumer_next(stream: &str, consumer: &str) -> String {
    format!("{JS_API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}")
}

/// Release of the pinned client of priority group `g` on durable `c` of stream `s` (body
/// `{"group": g}`): `$JS.API.CONSUMER.UNPIN.<s>.<c>`. A sidecar that stops hands its
/// `delivery.orderBy` keys over at once instead of after the pin's timeout.
pub fn js_consumer_unpin(stream: &str, consumer: &str) -> String {
    format!("{JS_API_PREFIX}.CONSUMER.UNPIN.{stream}.{consumer}")
}

/// Prefix of the reply subjects of messages delivered by consumer `c` of stream `s`, where
/// acks, naks and terms are published: `$JS.ACK.<s>.<c>` (the server appends delivery
/// counters and sequences).
pub fn js_ack_prefix(stream: &str, consumer: &str) -> String {
    format!("$JS.ACK.{stream}.{consumer}")
}

/// The three kinds of Causeway object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// An event store (a stream).
    EventStore,
    /// A node (inbox stream, state bucket).
    Node,
    /// A listener (a durable consumer).
    Listener,
}

impl Kind {
    /// All kinds, in the order they must be applied (listeners depend on stores and nodes).
    pub const ALL: [Kind; 3] = [Kind::EventStore, Kind::Node, Kind::Listener];

    /// The kind as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EventStore => "EventStore",
            Kind::Node => "Node",
            Kind::Listener => "Listener",
        }
    }

    /// The token used in registry keys: the lower-cased kind.
    pub fn registry_token(self) -> &'static str {
        match self {
            Kind::EventStore => "eventstore",
            Kind::Node => "node",
            Kind::Listener => "listener",
        }
    }

    /// Parses a registry token back.
    pub fn from_registry_token(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.registry_token() == s)
    }

    /// Parses a manifest kind.
    pub fn from_manifest_kind(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stream of EventStore `ns/x`: `CW_ES_<ns>_<x>`.
pub fn store_stream(ns: &DnsLabel, store: &DnsLabel) -> String {
    format!("CW_ES_{ns}_{store}")
}

/// Subject prefix of EventStore `ns/x`: `cw.<ns>.es.<x>`. Events live at `<prefix>.<subject>`.
pub fn store_subject_prefix(ns: &DnsLabel, store: &DnsLabel) -> String {
    store_subject_prefix_of(ns, store.as_str())
}

/// Like [`store_subject_prefix`] for every store of namespace `ns`: `cw.<ns>.es.*` (a
/// permission pattern).
pub fn store_subject_prefix_any(ns: &DnsLabel) -> String {
    store_subject_prefix_of(ns, "*")
}

fn store_subject_prefix_of(ns: &DnsLabel, store: &str) -> String {
    format!("cw.{ns}.es.{store}")
}

/// Inbox stream of Node `ns/n`: `CW_IN_<ns>_<n>`.
pub fn inbox_stream(ns: &DnsLabel, node: &DnsLabel) -> String {
    format!("CW_IN_{ns}_{node}")
}

/// Subject prefix of Node `ns/n`'s inbox: `cw.<ns>.in.<n>`. `send(n, T)` publishes to `<prefix>.<T>`.
pub fn inbox_subject_prefix(ns: &DnsLabel, node: &DnsLabel) -> String {
    format!("cw.{ns}.in.{node}")
}

/// Where node `ns/n` receives sends that prove their sender: `cw.<ns>.to.<n>`. A send from node
/// `sns/sn` of type `T` publishes to `cw.<ns>.to.<n>.<sns>.<sn>.<T>`; NATS permissions let a
/// node publish only under its own `<sns>.<sn>`, so the subject proves who sent it.
pub fn inbox_to_prefix(ns: &DnsLabel, node: &DnsLabel) -> String {
    format!("cw.{ns}.to.{node}")
}

/// The prefix a sender `sns/sn` publishes under into node `ns/n`'s inbox:
/// `cw.<ns>.to.<n>.<sns>.<sn>`; the event type follows.
pub fn inbox_send_prefix(ns: &DnsLabel, node: &DnsLabel, sender_ns: &str, sender: &str) -> String {
    inbox_send_prefix_to(ns, node.as_str(), sender_ns, sender)
}

/// Like [`inbox_send_prefix`] for every node of namespace `ns`: `cw.<ns>.to.*.<sns>.<sn>`
/// (a permission pattern: `*` is one whole token).
pub fn inbox_send_prefix_any(ns: &DnsLabel, sender_ns: &str, sender: &str) -> String {
    inbox_send_prefix_to(ns, "*", sender_ns, sender)
}

fn inbox_send_prefix_to(ns: &DnsLabel, node: &str, sender_ns: &str, sender: &str) -> String {
    format!("cw.{ns}.to.{node}.{sender_ns}.{sender}")
}

/// Splits an inbox subject into `(sender namespace, sender node, type)` when it lies under
/// `to_prefix` (see [`inbox_to_prefix`]); `None` for the older `cw.<ns>.in.<n>.<T>` layout.
pub fn parse_inbox_sender<'a>(to_prefix: &str, subject: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = strip_subject_prefix(to_prefix, subject)?;
    let mut it = rest.splitn(3, '.');
    Some((it.next()?, it.next()?, it.next().filter(|t| !t.is_empty())?))
}

/// The inbox filters for a type pattern relative to node `ns/n`'s inbox: one for sends that
/// prove their sender (`cw.<ns>.to.<n>.*.*.<p>`) and one for the older layout
/// (`cw.<ns>.in.<n>.<p>`). They never overlap: their third tokens differ.
pub fn inbox_filters(ns: &DnsLabel, node: &DnsLabel, relative: &str) -> [String; 2] {
    [
        join_subject(&inbox_to_prefix(ns, node), &format!("*.*.{relative}")),
        join_subject(&inbox_subject_prefix(ns, node), relative),
    ]
}

/// The subjects node `ns/n`'s inbox stream captures: sends that prove their sender
/// (`cw.<ns>.to.<n>.>`), for sidecars of earlier versions during an upgrade the older
/// `cw.<ns>.in.<n>.>`, and replayed dead letters (`cw.<ns>.replay.in.<n>.>`).
pub fn inbox_stream_subjects(ns: &DnsLabel, node: &DnsLabel) -> [String; 3] {
    [
        join_subject(&inbox_to_prefix(ns, node), ">"),
        join_subject(&inbox_subject_prefix(ns, node), ">"),
        join_subject(&inbox_replay_prefix(ns, node), ">"),
    ]
}

/// The subjects EventStore `ns/x`'s stream captures: its events (`cw.<ns>.es.<x>.>`) and
/// replayed dead letters (`cw.<ns>.replay.es.<x>.>`).
pub fn store_stream_subjects(ns: &DnsLabel, store: &DnsLabel) -> [String; 2] {
    [join_subject(&store_subject_prefix(ns, store), ">"), join_subject(&store_replay_prefix(ns, store), ">")]
}

/// Where dead letters are replayed into EventStore `ns/x`'s stream: `cw.<ns>.replay.es.<x>`. A
/// second subject space of the store's stream, outside `cw.<ns>.es.<x>.>`, so loads, live streams
/// and other listeners never see a replay; only the listener it is for filters on its part of it
/// (see [`listener_replay_prefix`]).
pub fn store_replay_prefix(ns: &DnsLabel, store: &DnsLabel) -> String {
    format!("cw.{ns}.replay.es.{store}")
}

/// Where dead letters are replayed into Node `ns/n`'s inbox stream: `cw.<ns>.replay.in.<n>`.
pub fn inbox_replay_prefix(ns: &DnsLabel, node: &DnsLabel) -> String {
    format!("cw.{ns}.replay.in.{node}")
}

/// Where listener `l`'s replayed dead letters go in its source stream: `<source replay
/// prefix>.<l>`; an event is replayed at `<prefix>.<its subject>` (a store) or `<prefix>.<its
/// type>` (an inbox), so per-subject limits treat it as its original subject.
pub fn listener_replay_prefix(source_replay_prefix: &str, listener: &DnsLabel) -> String {
    join_subject(source_replay_prefix, listener.as_str())
}

/// Where a store's stored events are announced, headers only, for live streams:
/// `cw.<ns>.live.<x>`; an event stored at `cw.<ns>.es.<x>.S` is announced at `<prefix>.S`.
pub fn store_live_prefix(ns: &DnsLabel, store: &DnsLabel) -> String {
    store_live_prefix_of(ns, store.as_str())
}

/// Like [`store_live_prefix`] for every store of namespace `ns`: `cw.<ns>.live.*` (a
/// permission pattern).
pub fn store_live_prefix_any(ns: &DnsLabel) -> String {
    store_live_prefix_of(ns, "*")
}

fn store_live_prefix_of(ns: &DnsLabel, store: &str) -> String {
    format!("cw.{ns}.live.{store}")
}

/// The trace stream of namespace `ns`: `CW_TR_<ns>`. It holds only causal metadata (one small
/// record per stored event and per delivery outcome), with its own retention.
pub fn trace_stream(ns: &DnsLabel) -> String {
    format!("CW_TR_{ns}")
}

/// Subjects of namespace `ns`'s trace stream: `cw.<ns>.trace.>`.
pub fn trace_stream_subject(ns: &DnsLabel) -> String {
    format!("cw.{ns}.trace.>")
}

/// The token standing for a correlation id in trace subjects: the first 16 bytes of its SHA-256,
/// in hex. A correlation id may hold any printable character, a subject token may not; a
/// reader compares the full id in each record, so a collision can only cost a skipped record.
pub fn correlation_token(correlation_id: &str) -> String {
    let mut out = String::with_capacity(32);
    push_correlation_token(&mut out, correlation_id);
    out
}

fn push_correlation_token(out: &mut String, correlation_id: &str) {
    use sha2::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = sha2::Sha256::digest(correlation_id.as_bytes());
    for b in &d[..16] {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Where node `rns/rn` records a trace entry for correlation `c` in namespace `ns`:
/// `cw.<ns>.trace.<token(c)>.<rns>.<rn>`. The recorder's tokens are in the subject so that a
/// node credential may write trace entries only as itself.
pub fn trace_subject(ns: &str, correlation_id: &str, recorder_ns: &str, recorder: &str) -> String {
    // Built piece by piece: a sidecar names one for every record it writes. `ns` is a DNS
    // label (the caller checks; it comes from a stream name, so no label is allocated).
    debug_assert!(crate::names::is_dns_label(ns), "{ns:?}");
    let mut s = String::with_capacity(12 + ns.len() + 32 + recorder_ns.len() + recorder.len() + 2);
    s.push_str("cw.");
    s.push_str(ns);
    s.push_str(".trace.");
    push_correlation_token(&mut s, correlation_id);
    s.push('.');
    s.push_str(recorder_ns);
    s.push('.');
    s.push_str(recorder);
    s
}

/// Every trace entry of correlation `c` in namespace `ns`: `cw.<ns>.trace.<token(c)>.>`, what
/// one batched direct get reads (JetStream's per-subject index is the trace index).
pub fn trace_filter(ns: &DnsLabel, correlation_id: &str) -> String {
    format!("cw.{ns}.trace.{}.>", correlation_token(correlation_id))
}

/// What node `rns/rn` may publish trace entries to, in any namespace: `cw.*.trace.*.<rns>.<rn>`
/// (a permission pattern).
pub fn trace_grant(recorder_ns: &DnsLabel, recorder: &DnsLabel) -> String {
    format!("cw.*.trace.*.{recorder_ns}.{recorder}")
}

/// What a stream name says: `(Kind::EventStore | Kind::Node, namespace, name)` for a store's
/// `CW_ES_<ns>_<x>` or an inbox's `CW_IN_<ns>_<n>`, else `None`. Labels hold no `_`, so the
/// split is unambiguous.
pub fn parse_stream(stream: &str) -> Option<(Kind, &str, &str)> {
    let (kind, rest) = if let Some(r) = stream.strip_prefix("CW_ES_") {
        (Kind::EventStore, r)
    } else {
        (Kind::Node, stream.strip_prefix("CW_IN_")?)
    };
    let (ns, name) = rest.split_once('_')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('_')).then_some((kind, ns, name))
}

/// Prefix of the reply subjects of node `ns/n`'s sidecars: `_INBOX.<ns>.<n>`. Its credential may
/// subscribe only there, so no node reads another's replies.
pub fn reply_inbox_prefix(ns: &DnsLabel, node: &DnsLabel) -> String {
    format!("_INBOX.{ns}.{node}")
}

/// The Secret holding node `n`'s NATS credential, in the node's namespace:
/// `causeway-node-<n>`, key [`NODE_CREDS_KEY`].
pub fn node_secret(node: &DnsLabel) -> String {
    format!("causeway-node-{node}")
}

/// The key of a node's credentials file in its Secret.
pub const NODE_CREDS_KEY: &str = "nats.creds";

/// State KV bucket of Node `ns/n`: `CW_ST_<ns>_<n>`.
pub fn state_bucket(ns: &DnsLabel, node: &DnsLabel) -> String {
    format!("CW_ST_{ns}_{node}")
}

/// Global KV bucket of namespace `ns`: `CW_GL_<ns>`.
pub fn global_bucket(ns: &DnsLabel) -> String {
    format!("CW_GL_{ns}")
}

/// Object store for payloads above the server's `max_payload`: `CW_BLOB_<ns>`.
pub fn blob_bucket(ns: &DnsLabel) -> String {
    format!("CW_BLOB_{ns}")
}

/// Durable consumer of Listener `ns/l`: `cw_<ns>_<l>`.
pub fn listener_consumer(ns: &DnsLabel, listener: &DnsLabel) -> String {
    format!("cw_{ns}_{listener}")
}

/// Registry key of an object: `<ns>.<kind>.<name>`, kind lower-cased.
pub fn registry_key(ns: &DnsLabel, kind: Kind, name: &DnsLabel) -> String {
    format!("{ns}.{}.{name}", kind.registry_token())
}

/// The registry key pattern for every object of a namespace: `<ns>.>`.
pub fn registry_namespace_filter(ns: &DnsLabel) -> String {
    format!("{ns}.>")
}

/// Splits a registry key back into its parts; `None` for keys that are not ours.
pub fn parse_registry_key(key: &str) -> Option<(DnsLabel, Kind, DnsLabel)> {
    let mut it = key.split('.');
    let (ns, kind, name) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some((DnsLabel::new(ns).ok()?, Kind::from_registry_token(kind)?, DnsLabel::new(name).ok()?))
}

/// `<prefix>.<relative>`: the full subject of a subject or pattern relative to a source.
pub fn join_subject(prefix: &str, relative: &str) -> String {
    format!("{prefix}.{relative}")
}

/// The part of `full` after `<prefix>.`, if `full` lies under `prefix`.
pub fn strip_subject_prefix<'a>(prefix: &str, full: &'a str) -> Option<&'a str> {
    full.strip_prefix(prefix)?.strip_prefix('.')
}

#[cfg(test)]
mod tests {
    #[test]
    fn correlation_tokens_are_32_hex_digits_of_sha256() {
        // sha256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 b00361a3 96177a9c b410ff61 f20015ad
        assert_eq!(correlation_token("abc"), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(correlation_token("a b.c*>"), correlation_token("a b.c*>"));
        assert_ne!(correlation_token("a"), correlation_token("b"));
    }

    use super::*;

    fn l(s: &str) -> DnsLabel {
        DnsLabel::new(s).unwrap()
    }

    #[test]
    fn names_follow_design() {
        let (ns, x) = (l("shop"), l("orders"));
        assert_eq!(store_stream(&ns, &x), "CW_ES_shop_orders");
        assert_eq!(store_subject_prefix(&ns, &x), "cw.shop.es.orders");
        assert_eq!(inbox_stream(&ns, &l("inventory")), "CW_IN_shop_inventory");
        assert_eq!(inbox_subject_prefix(&ns, &l("inventory")), "cw.shop.in.inventory");
        assert_eq!(state_bucket(&ns, &l("inventory")), "CW_ST_shop_inventory");
        assert_eq!(global_bucket(&ns), "CW_GL_shop");
        assert_eq!(blob_bucket(&ns), "CW_BLOB_shop");
        assert_eq!(listener_consumer(&ns, &l("reserve")), "cw_shop_reserve");
        assert_eq!(registry_key(&ns, Kind::Listener, &l("reserve")), "shop.listener.reserve");
        assert_eq!(parse_registry_key("shop.listener.reserve"), Some((ns, Kind::Listener, l("reserve"))));
        assert_eq!(parse_registry_key("shop.thing.reserve"), None);
        assert_eq!(strip_subject_prefix("cw.shop.es.orders", "cw.shop.es.orders.order-1"), Some("order-1"));
        assert_eq!(strip_subject_prefix("cw.shop.es.orders", "cw.shop.es.orders-x.a"), None);
    }

    #[test]
    fn jetstream_api_subjects() {
        assert_eq!(kv_stream("CW_GL_shop"), "KV_CW_GL_shop");
        assert_eq!(kv_subject_prefix("CW_GL_shop"), "$KV.CW_GL_shop");
        assert_eq!(registry_kv_subject("shop.node.a"), "$KV.CW_REGISTRY.shop.node.a");
        assert_eq!(object_stream("CW_BLOB_shop"), "OBJ_CW_BLOB_shop");
        assert_eq!(object_subject_prefix("CW_BLOB_shop"), "$O.CW_BLOB_shop");
        assert_eq!(js_direct_get("S"), "$JS.API.DIRECT.GET.S");
        assert_eq!(js_stream_info("S"), "$JS.API.STREAM.INFO.S");
        assert_eq!(js_stream_msg_get("S"), "$JS.API.STREAM.MSG.GET.S");
        assert_eq!(js_stream_purge("S"), "$JS.API.STREAM.PURGE.S");
        assert_eq!(js_consumer_info("S", "c"), "$JS.API.CONSUMER.INFO.S.c");
        assert_eq!(js_consumer_next("S", "c"), "$JS.API.CONSUMER.MSG.NEXT.S.c");
        assert_eq!(js_ack_prefix("S", "c"), "$JS.ACK.S.c");
    }

    #[test]
    fn inbox_subjects_carry_the_sender() {
        let (ns, n) = (l("shop"), l("inventory"));
        assert_eq!(inbox_to_prefix(&ns, &n), "cw.shop.to.inventory");
        assert_eq!(inbox_send_prefix(&ns, &n, "shop", "orders"), "cw.shop.to.inventory.shop.orders");
        let to = inbox_to_prefix(&ns, &n);
        assert_eq!(
            parse_inbox_sender(&to, "cw.shop.to.inventory.shop.orders.order.placed"),
            Some(("shop", "orders", "order.placed"))
        );
        assert_eq!(parse_inbox_sender(&to, "cw.shop.in.inventory.order-placed"), None);
        assert_eq!(parse_inbox_sender(&to, "cw.shop.to.inventory.shop.orders"), None);
        assert_eq!(
            inbox_filters(&ns, &n, "order.>"),
            ["cw.shop.to.inventory.*.*.order.>".to_owned(), "cw.shop.in.inventory.order.>".to_owned()]
        );
        assert_eq!(store_live_prefix(&ns, &l("orders")), "cw.shop.live.orders");
        assert_eq!(reply_inbox_prefix(&ns, &n), "_INBOX.shop.inventory");
        assert_eq!(inbox_send_prefix_any(&ns, "shop", "orders"), "cw.shop.to.*.shop.orders");
        assert_eq!(store_subject_prefix_any(&ns), "cw.shop.es.*");
        assert_eq!(store_live_prefix_any(&ns), "cw.shop.live.*");
        assert_eq!(node_secret(&n), "causeway-node-inventory");
    }
}
