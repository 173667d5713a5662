//! What a Node's NATS credential may publish and subscribe to: the table "What a Node's
//! credential allows" of docs/security.md, computed from the Node's record, its Listeners and
//! the stores of the namespaces its policy covers.
//!
//! Every subject comes from a [`naming`] function, so a grant can never disagree with the
//! name the reconcile gives a stream or the subject a sidecar publishes to.
//!
//! NATS permission wildcards match whole subject tokens only. A grant on a *subject* can use
//! `*` for "every node" or "every store" (`cw.billing.to.*.shop.orders.>`), but a grant on a
//! JetStream API subject names a stream in one token (`$JS.API.DIRECT.GET.CW_ES_shop_orders`),
//! and `CW_ES_shop_*` is not a pattern NATS knows. So where the policy says `*` or `ns/*` for
//! reading, the stores are listed one by one (from `stores_of`), and the credential must be
//! issued again when a store is added to such a namespace.
//!
//! Pure: no I/O.

use std::collections::BTreeSet;

use crate::{
    crd::{AccessAction, DeliveryMode},
    names::DnsLabel,
    naming,
    registry::{ListenerRecord, NodeRecord},
};

/// The subjects a credential may publish and subscribe to. Both lists are sorted and hold
/// each pattern once; anything not listed is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Subjects (patterns) the holder may publish to.
    pub publish: Vec<String>,
    /// Subjects (patterns) the holder may subscribe to.
    pub subscribe: Vec<String>,
}

impl Grants {
    /// True when `subject` may be published to (as nats-server matches it).
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|p| crate::names::subject_matches(p, subject))
    }

    /// True when `subject` may be subscribed to. A subscription to a pattern is allowed only
    /// when a granted pattern covers it entirely; this checks concrete subjects and patterns
    /// that are granted verbatim.
    pub fn may_subscribe(&self, subject: &str) -> bool {
        self.subscribe.iter().any(|p| p == subject || crate::names::subject_matches(p, subject))
    }
}

/// The grants of node `node`: see the module documentation and docs/security.md.
///
/// - `listeners`: any Listener records; only those of the node's namespace whose `node` is
///   this node count.
/// - `stores_of(ns)`: the names of the EventStores of namespace `ns` (for `*` and `ns/*`
///   entries of the read and append lists).
pub fn node_grants(
    node: &NodeRecord,
    listeners: &[ListenerRecord],
    stores_of: &dyn Fn(&DnsLabel) -> Vec<DnsLabel>,
) -> Grants {
    let (ns, n) = (&node.meta.namespace, &node.meta.name);
    let access = &node.spec.access;
    let mut publish = BTreeSet::new();
    let mut subscribe = BTreeSet::new();

    // Replies to its own requests (JetStream API answers, acks of its publishes).
    subscribe.insert(naming::join_subject(&naming::reply_inbox_prefix(ns, n), ">"));

    // Sends: only under its own sender tokens, so the subject proves the sender.
    for entry in access.entries(AccessAction::Send).iter() {
        let Some((tns, target)) = scope(entry.scope(ns)) else { continue };
        let prefix = match &target {
            Some(t) => naming::inbox_send_prefix(&tns, t, ns, n),
            None => naming::inbox_send_prefix_any(&tns, ns, n),
        };
        publish.insert(naming::join_subject(&prefix, ">"));
    }

    // Reading a store: direct gets and stream info on its stream (named: no wildcard can
    // stand for part of a stream name), live announcements on its subjects.
    let mut readable: BTreeSet<(DnsLabel, DnsLabel)> = BTreeSet::new();
    let mut read_all_live: BTreeSet<DnsLabel> = BTreeSet::new();
    for action in [AccessAction::Append, AccessAction::Read] {
        for entry in access.entries(action).iter() {
            let Some((sns, store)) = scope(entry.scope(ns)) else { continue };
            if action == AccessAction::Append {
                let prefix = match &store {
                    Some(x) => naming::store_subject_prefix(&sns, x),
                    None => naming::store_subject_prefix_any(&sns),
                };
                publish.insert(naming::join_subject(&prefix, ">"));
            }
            // Appending implies reading.
            match store {
                Some(x) => {
                    readable.insert((sns, x));
                }
                None => {
                    for x in stores_of(&sns) {
                        readable.insert((sns.clone(), x));
                    }
                    read_all_live.insert(sns);
                }
            }
        }
    }

    // Its own listeners: fetch from, inspect and ack their consumers; write and read their
    // dead-letter stores (a Listener is the declaration, whatever the policy says).
    for l in listeners.iter().filter(|l| l.meta.namespace == *ns && l.node == *n) {
        publish.insert(naming::js_consumer_info(&l.stream, &l.consumer));
        publish.insert(naming::js_consumer_next(&l.stream, &l.consumer));
        if l.delivery.order_by.is_some() {
            publish.insert(naming::js_consumer_unpin(&l.stream, &l.consumer));
        }
        publish.insert(naming::join_subject(&naming::js_ack_prefix(&l.stream, &l.consumer), ">"));
        if let Some(dl) = &l.dead_letter {
            publish.insert(dl.nats_subject.clone());
            readable.insert((ns.clone(), dl.store.clone()));
            // Replaying them into its own part of the source stream. Not deleting them: that
            // right reaches every event of the store (replayed entries are marked instead).
            publish.insert(naming::join_subject(&l.replay_prefix(), ">"));
            // A pull listener's `term` reads the event back from its source, by sequence, to
            // dead-letter it (its app holds only an ack token).
            if l.delivery.mode == DeliveryMode::Pull {
                read_stream(&mut publish, &l.stream);
            }
        }
    }

    for (sns, x) in &readable {
        let stream = naming::store_stream(sns, x);
        read_stream(&mut publish, &stream);
        // Loads ask the leader where the matching events end before reading from any replica.
        publish.insert(naming::js_stream_msg_get(&stream));
        if !read_all_live.contains(sns) {
            subscribe.insert(naming::join_subject(&naming::store_live_prefix(sns, x), ">"));
        }
    }
    for sns in &read_all_live {
        subscribe.insert(naming::join_subject(&naming::store_live_prefix_any(sns), ">"));
    }

    // Its own state bucket and its namespace's global bucket: raw KV writes and direct gets.
    for bucket in [naming::state_bucket(ns, n), naming::global_bucket(ns)] {
        publish.insert(naming::join_subject(&naming::kv_subject_prefix(&bucket), ">"));
        read_stream(&mut publish, &naming::kv_stream(&bucket));
    }

    // Its namespace's blobs: chunks and metadata, direct gets, and purging its own writes.
    let blobs = naming::blob_bucket(ns);
    let blob_stream = naming::object_stream(&blobs);
    publish.insert(naming::join_subject(&naming::object_subject_prefix(&blobs), ">"));
    read_stream(&mut publish, &blob_stream);
    publish.insert(naming::js_stream_purge(&blob_stream));

    // Causal traces: records as itself into any namespace's trace stream (where the events it
    // stores or delivers live), and reading its own namespace's traces.
    publish.insert(naming::trace_grant(ns, n));
    read_stream(&mut publish, &naming::trace_stream(ns));

    // The registry: read as a whole, and its change feed for its own namespace.
    read_stream(&mut publish, &naming::kv_stream(naming::REGISTRY_BUCKET));
    subscribe.insert(naming::registry_changes_filter(ns));

    Grants { publish: publish.into_iter().collect(), subscribe: subscribe.into_iter().collect() }
}

/// Direct gets and stream info on `stream`: what a reader of a bucket needs.
fn read_stream(publish: &mut BTreeSet<String>, stream: &str) {
    publish.insert(naming::js_direct_get(stream));
    publish.insert(naming::js_stream_info(stream));
}

/// An access entry's scope as labels; `None` if a part is not a valid label (entries are
/// validated when parsed, so this only guards against hand-built values).
fn scope((ns, name): (&str, Option<&str>)) -> Option<(DnsLabel, Option<DnsLabel>)> {
    let ns = DnsLabel::new(ns).ok()?;
    match name {
        Some(x) => Some((ns, Some(DnsLabel::new(x).ok()?))),
        None => Some((ns, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crd::{ListenerSpec, NodeAccess, NodeSpec},
        names::AccessRef,
        registry::{MANAGER_APPLY, Meta},
    };

    fn l(s: &str) -> DnsLabel {
        DnsLabel::new(s).unwrap()
    }

    fn meta(ns: &str, name: &str) -> Meta {
        Meta { namespace: l(ns), name: l(name), generation: None, manager: MANAGER_APPLY.into() }
    }

    fn node(ns: &str, name: &str, access: NodeAccess) -> NodeRecord {
        NodeRecord::resolve(meta(ns, name), &NodeSpec { access, ..default_spec() })
    }

    fn default_spec() -> NodeSpec {
        serde_yaml::from_str("{}").unwrap()
    }

    fn refs(v: &[&str]) -> Option<Vec<AccessRef>> {
        Some(v.iter().map(|s| AccessRef::new(*s).unwrap()).collect())
    }

    fn stores(ns: &DnsLabel) -> Vec<DnsLabel> {
        match ns.as_str() {
            "shop" => vec![l("orders"), l("audit")],
            "billing" => vec![l("ledger"), l("invoices")],
            _ => vec![],
        }
    }

    fn listener(ns: &str, name: &str, yaml: &str) -> ListenerRecord {
        let spec: ListenerSpec = serde_yaml::from_str(yaml).unwrap();
        ListenerRecord::resolve(meta(ns, name), &spec, &default_spec()).unwrap()
    }

    /// What every node gets whatever its policy: replies, state, global KV, blobs, registry.
    fn assert_own_things(g: &Grants, ns: &str, n: &str) {
        for s in [
            format!("$KV.CW_ST_{ns}_{n}.k"),
            format!("$JS.API.DIRECT.GET.KV_CW_ST_{ns}_{n}"),
            format!("$JS.API.STREAM.INFO.KV_CW_ST_{ns}_{n}"),
            format!("$KV.CW_GL_{ns}.k"),
            format!("$JS.API.DIRECT.GET.KV_CW_GL_{ns}"),
            format!("$JS.API.STREAM.INFO.KV_CW_GL_{ns}"),
            format!("$O.CW_BLOB_{ns}.C.x"),
            format!("$O.CW_BLOB_{ns}.M.x"),
            format!("$JS.API.DIRECT.GET.OBJ_CW_BLOB_{ns}"),
            format!("$JS.API.STREAM.INFO.OBJ_CW_BLOB_{ns}"),
            format!("$JS.API.STREAM.PURGE.OBJ_CW_BLOB_{ns}"),
            "$JS.API.DIRECT.GET.KV_CW_REGISTRY".to_owned(),
            "$JS.API.STREAM.INFO.KV_CW_REGISTRY".to_owned(),
            format!("$JS.API.DIRECT.GET.CW_TR_{ns}"),
            format!("cw.{ns}.trace.0123abcd.{ns}.{n}"),
            format!("cw.elsewhere.trace.0123abcd.{ns}.{n}"),
        ] {
            assert!(g.may_publish(&s), "{ns}/{n} may publish {s}: {g:#?}");
        }
        // Trace records only as itself.
        assert!(!g.may_publish(&format!("cw.{ns}.trace.0123abcd.{ns}.someone-else")));
        assert!(g.may_subscribe(&format!("_INBOX.{ns}.{n}.>")));
        assert!(g.may_subscribe(&format!("_INBOX.{ns}.{n}.abc")));
        assert!(g.may_subscribe(&format!("cw._registry.{ns}.>")));
    }

    /// What no node ever gets.
    fn assert_never(g: &Grants) {
        for p in g.publish.iter().chain(&g.subscribe) {
            for bad in [
                "$JS.API.STREAM.CREATE",
                "$JS.API.STREAM.UPDATE",
                "$JS.API.STREAM.DELETE",
                "$JS.API.CONSUMER.CREATE",
                "$JS.API.CONSUMER.DURABLE.CREATE",
                "$JS.API.CONSUMER.DELETE",
                "$JS.API.STREAM.MSG.DELETE",
            ] {
                assert!(!p.starts_with(bad), "{p} grants {bad}");
            }
            assert_ne!(p, ">");
            assert_ne!(p, "$JS.API.>");
            assert!(!p.starts_with("$JS.API.*"), "{p}");
            assert!(!p.starts_with("_INBOX.>") && !p.starts_with("_INBOX.*"), "{p}");
            // `cw.<ns>.in.…`; a listener's own replay subjects (`cw.<ns>.replay.in.…`) are not it.
            assert_ne!(p.split('.').nth(2), Some("in"), "{p}: the older inbox layout proves no sender");
        }
        for s in [
            "$JS.API.STREAM.CREATE.X",
            "$JS.API.STREAM.UPDATE.X",
            "$JS.API.STREAM.DELETE.CW_ES_shop_orders",
            "$JS.API.CONSUMER.CREATE.CW_ES_shop_orders",
            "$JS.API.CONSUMER.CREATE.CW_ES_shop_orders.c.>",
            "$JS.API.CONSUMER.DURABLE.CREATE.CW_ES_shop_orders.c",
            "$JS.API.CONSUMER.DELETE.CW_ES_shop_orders.cw_shop_l",
            "$JS.API.STREAM.LIST",
            "$JS.API.STREAM.NAMES",
            "$JS.API.INFO",
            "cw.shop.in.b.x",
        ] {
            assert!(!g.may_publish(s), "{s}: {g:#?}");
        }
        let mut sorted = g.publish.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, g.publish, "sorted and deduplicated");
        let mut sorted = g.subscribe.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, g.subscribe, "sorted and deduplicated");
    }

    #[test]
    fn default_policy_is_this_namespace() {
        let a = node("shop", "a", NodeAccess::default());
        let g = node_grants(&a, &[], &stores);
        assert_own_things(&g, "shop", "a");
        assert_never(&g);
        // Send to any node of shop, only as shop/a.
        assert!(g.may_publish("cw.shop.to.b.shop.a.order.placed"));
        assert!(g.may_publish("cw.shop.to.a.shop.a.x"));
        assert!(!g.may_publish("cw.shop.to.b.shop.b.x"), "as another sender");
        assert!(!g.may_publish("cw.billing.to.ledger.shop.a.x"), "another namespace");
        // Append to and read every store of shop.
        assert!(g.may_publish("cw.shop.es.orders.order-1"));
        assert!(g.may_publish("cw.shop.es.new-store.x"), "appending is by subject: new stores too");
        for x in ["orders", "audit"] {
            assert!(g.may_publish(&format!("$JS.API.DIRECT.GET.CW_ES_shop_{x}")));
            assert!(g.may_publish(&format!("$JS.API.STREAM.MSG.GET.CW_ES_shop_{x}")));
            assert!(g.may_publish(&format!("$JS.API.STREAM.INFO.CW_ES_shop_{x}")));
        }
        assert!(!g.may_publish("$JS.API.STREAM.MSG.GET.KV_CW_ST_shop_a"), "only stores");
        assert!(g.subscribe.contains(&"cw.shop.live.*.>".to_owned()));
        assert!(!g.may_publish("cw.billing.es.ledger.x"));
        assert!(!g.may_publish("$JS.API.DIRECT.GET.CW_ES_billing_ledger"));
        // Nobody else's state, nobody else's namespace.
        assert!(!g.may_publish("$KV.CW_ST_shop_b.k"));
        assert!(!g.may_publish("$JS.API.DIRECT.GET.KV_CW_ST_shop_b"));
        assert!(!g.may_publish("$KV.CW_GL_billing.k"));
        assert!(!g.may_publish("$O.CW_BLOB_billing.C.x"));
        assert!(!g.may_subscribe("_INBOX.shop.b.>"));
        assert!(!g.may_subscribe("cw._registry.billing.>"));
        assert_eq!(
            g.subscribe,
            ["_INBOX.shop.a.>", "cw._registry.shop.>", "cw.shop.live.*.>"].map(String::from).to_vec()
        );
    }

    #[test]
    fn restricted_policy() {
        let a = node("shop", "a", NodeAccess { send: refs(&["b"]), append: refs(&["orders"]), read: refs(&["audit"]) });
        let g = node_grants(&a, &[], &stores);
        assert_own_things(&g, "shop", "a");
        assert_never(&g);
        assert!(g.may_publish("cw.shop.to.b.shop.a.x"));
        assert!(!g.may_publish("cw.shop.to.c.shop.a.x"));
        assert!(g.may_publish("cw.shop.es.orders.x"));
        assert!(!g.may_publish("cw.shop.es.audit.x"), "read only");
        for x in ["orders", "audit"] {
            assert!(g.may_publish(&format!("$JS.API.DIRECT.GET.CW_ES_shop_{x}")), "{x}");
            assert!(g.may_subscribe(&format!("cw.shop.live.{x}.>")), "{x}");
        }
        assert!(!g.may_subscribe("cw.shop.live.*.>"));
        assert!(!g.may_subscribe("cw.shop.live.other.>"));
    }

    #[test]
    fn cross_namespace_entries() {
        let a = node(
            "shop",
            "a",
            NodeAccess {
                send: refs(&["*", "billing/ledger"]),
                append: refs(&["billing/ledger"]),
                read: refs(&["billing/*"]),
            },
        );
        let g = node_grants(&a, &[], &stores);
        assert_never(&g);
        assert!(g.may_publish("cw.billing.to.ledger.shop.a.x"));
        assert!(!g.may_publish("cw.billing.to.other.shop.a.x"));
        assert!(g.may_publish("cw.shop.to.b.shop.a.x"));
        assert!(g.may_publish("cw.billing.es.ledger.x"));
        assert!(!g.may_publish("cw.billing.es.invoices.x"));
        assert!(!g.may_publish("cw.shop.es.orders.x"), "append lists only billing/ledger");
        for x in ["ledger", "invoices"] {
            assert!(g.may_publish(&format!("$JS.API.DIRECT.GET.CW_ES_billing_{x}")), "{x}");
            assert!(g.may_publish(&format!("$JS.API.STREAM.INFO.CW_ES_billing_{x}")), "{x}");
        }
        assert!(g.subscribe.contains(&"cw.billing.live.*.>".to_owned()));
        assert!(!g.may_publish("$JS.API.DIRECT.GET.CW_ES_shop_orders"));
        assert!(!g.may_subscribe("cw.shop.live.orders.>"));
        // Another namespace's KV, blobs and registry feed stay out of reach.
        assert!(!g.may_publish("$KV.CW_GL_billing.k"));
        assert!(!g.may_subscribe("cw._registry.billing.>"));

        let b = node("shop", "b", NodeAccess { send: refs(&["billing/*"]), ..Default::default() });
        let g = node_grants(&b, &[], &stores);
        assert!(g.may_publish("cw.billing.to.anyone.shop.b.x"));
        assert!(!g.may_publish("cw.shop.to.a.shop.b.x"), "billing/* does not include shop");
    }

    #[test]
    fn empty_lists_grant_nothing_of_their_kind() {
        let a = node("shop", "a", NodeAccess { send: refs(&[]), append: refs(&[]), read: refs(&[]) });
        let g = node_grants(&a, &[], &stores);
        assert_own_things(&g, "shop", "a");
        assert_never(&g);
        // Nothing under cw. but its own trace records.
        let cw: Vec<&String> = g.publish.iter().filter(|p| p.starts_with("cw.")).collect();
        assert_eq!(cw, ["cw.*.trace.*.shop.a"], "{:?}", g.publish);
        assert!(!g.publish.iter().any(|p| p.contains("CW_ES_")), "{:?}", g.publish);
        assert!(!g.subscribe.iter().any(|p| p.contains(".live.")), "{:?}", g.subscribe);
    }

    #[test]
    fn own_listeners_add_their_consumer_and_dead_letter() {
        let a = node("shop", "a", NodeAccess { send: refs(&[]), append: refs(&[]), read: refs(&[]) });
        let on_store = listener(
            "shop",
            "reserve",
            "node: a\nsource: {store: orders}\ndeadLetter: {store: dead, subject: reserve.failed}\n",
        );
        let on_inbox = listener("shop", "inbox-a", "node: a\nsource: {inbox: a}\n");
        let of_b =
            listener("shop", "of-b", "node: b\nsource: {store: orders}\ndeadLetter: {store: dead-b, subject: x}\n");
        let other_ns = listener("billing", "of-a", "node: a\nsource: {store: ledger}\n");
        let pulled = listener(
            "shop",
            "pulled",
            "node: a\nsource: {inbox: a}\ndelivery: {mode: pull}\ndeadLetter: {store: dead, subject: p}\n",
        );
        let g = node_grants(&a, &[on_store, on_inbox, of_b, other_ns, pulled], &stores);
        assert_never(&g);
        for s in [
            "$JS.API.CONSUMER.INFO.CW_ES_shop_orders.cw_shop_reserve",
            "$JS.API.CONSUMER.MSG.NEXT.CW_ES_shop_orders.cw_shop_reserve",
            "$JS.ACK.CW_ES_shop_orders.cw_shop_reserve.1.2.3.4.0",
            "$JS.API.CONSUMER.INFO.CW_IN_shop_a.cw_shop_inbox-a",
            "$JS.API.CONSUMER.MSG.NEXT.CW_IN_shop_a.cw_shop_inbox-a",
            "$JS.ACK.CW_IN_shop_a.cw_shop_inbox-a.1.2.3.4.0",
            "cw.shop.es.dead.reserve.failed",
            "$JS.API.DIRECT.GET.CW_ES_shop_dead",
            "$JS.API.STREAM.INFO.CW_ES_shop_dead",
            "cw.shop.replay.es.orders.reserve.any.subject",
            // A pull listener with a dead letter reads its source back for a `term`.
            "$JS.API.DIRECT.GET.CW_IN_shop_a",
        ] {
            assert!(g.may_publish(s), "{s}: {g:#?}");
        }
        for s in [
            "cw.shop.es.dead.other",
            // Replays only into its own listeners' part of a stream, and only with a dead letter.
            "cw.shop.replay.es.orders.of-b.x",
            "cw.shop.replay.in.a.inbox-a.x",
            "$JS.API.STREAM.MSG.DELETE.CW_ES_shop_dead",
            "$JS.API.STREAM.MSG.DELETE.CW_ES_shop_dead-b",
            "$JS.API.CONSUMER.MSG.NEXT.CW_ES_shop_orders.cw_shop_of-b",
            "$JS.ACK.CW_ES_shop_orders.cw_shop_of-b.1.2.3.4.0",
            "cw.shop.es.dead-b.x",
            "$JS.API.DIRECT.GET.CW_ES_shop_dead-b",
            "$JS.API.CONSUMER.MSG.NEXT.CW_ES_billing_ledger.cw_billing_of-a",
            "$JS.API.DIRECT.GET.CW_ES_shop_orders",
        ] {
            assert!(!g.may_publish(s), "{s}: {g:#?}");
        }
        assert!(g.may_subscribe("cw.shop.live.dead.>"));
    }

    #[test]
    fn stores_of_is_asked_only_for_wildcards() {
        let asked = std::cell::RefCell::new(Vec::new());
        let f = |ns: &DnsLabel| {
            asked.borrow_mut().push(ns.to_string());
            stores(ns)
        };
        let a = node(
            "shop",
            "a",
            NodeAccess { send: None, append: refs(&["orders"]), read: refs(&["billing/ledger", "audit/*"]) },
        );
        node_grants(&a, &[], &f);
        assert_eq!(*asked.borrow(), vec!["audit".to_owned()]);
    }
}
