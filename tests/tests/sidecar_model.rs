//! A model-based test of what the sidecar stores: random sequences of appends, batches, sends,
//! retries with the same ids (and other payloads), conflicting conditions, large and small
//! payloads, the same ids in several streams and subjects, and KV writes, run against a real
//! nats-server with a small `max_payload` (so large payloads go to blobs).
//!
//! A model predicts every answer. After every step, everything that ever got a 2xx loads back
//! byte-identical, in order, and nothing refused is visible — not even as a blob.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU32, Ordering},
};

use async_nats::jetstream;
use causeway_api::envelope::Envelope;
use causeway_tests::NatsServer;
use proptest::{prelude::*, test_runner::TestRunner};
use serde_json::{Value, json};
use support::*;

const MAX_PAYLOAD: usize = 32 * 1024;
const STORES: [&str; 2] = ["orders", "archive"];

#[derive(Debug, Clone, Copy)]
enum Size {
    Small,
    Large,
}

#[derive(Debug, Clone, Copy)]
enum Cond {
    None,
    /// The current sequence or revision.
    Right,
    /// One that is not current.
    Wrong,
    /// `If-None-Match: *`.
    Empty,
    /// `If-Match: *`.
    Any,
}

#[derive(Debug, Clone)]
enum Op {
    Append { store: usize, subject: usize, events: Vec<(usize, Size)>, cond: Cond },
    Send { events: Vec<(usize, usize, Size)> },
    Put { key: usize, size: Size, cond: Cond },
    Delete { key: usize, cond: Cond },
}

fn size() -> impl Strategy<Value = Size> {
    prop_oneof![3 => Just(Size::Small), 1 => Just(Size::Large)]
}

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![3 => Just(Cond::None), 1 => Just(Cond::Right), 1 => Just(Cond::Wrong), 1 => Just(Cond::Empty), 1 => Just(Cond::Any)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..3usize, prop::collection::vec((0..6usize, size()), 1..4), cond())
            .prop_map(|(store, subject, events, cond)| Op::Append { store, subject, events, cond }),
        2 => prop::collection::vec((0..6usize, 0..2usize, size()), 1..3).prop_map(|events| Op::Send { events }),
        2 => (0..3usize, size(), cond()).prop_map(|(key, size, cond)| Op::Put { key, size, cond }),
        1 => (0..3usize, cond()).prop_map(|(key, cond)| Op::Delete { key, cond }),
    ]
}

/// Events of one subject, in order: id, sequence, payload.
type Events = Vec<(String, u64, Value)>;

/// What the model holds for one test case.
#[derive(Default)]
struct Model {
    /// Per store: id → subject.
    ids: [HashMap<String, String>; 2],
    /// Per (store, subject): the events in order, with their sequence.
    subjects: HashMap<(usize, String), Events>,
    /// Inbox: id → type.
    inbox_ids: HashMap<String, String>,
    /// Inbox events of this case by id.
    inbox: HashMap<String, Value>,
    /// KV: key → (revision, value).
    kv: HashMap<String, (u64, Value)>,
    /// Stored events whose payload is large, and live large KV values.
    large_events: usize,
}

struct Case<'a> {
    n: u32,
    c: &'a reqwest::Client,
    sc: &'a Sidecar,
    server: &'a NatsServer,
    counter: u32,
    model: Model,
}

impl Case<'_> {
    fn id(&self, k: usize) -> String {
        format!("c{}-i{k}", self.n)
    }
    fn subject(&self, k: usize) -> String {
        format!("c{}-s{k}", self.n)
    }
    fn event_type(&self, k: usize) -> String {
        format!("c{}-t{k}", self.n)
    }
    fn key(&self, k: usize) -> String {
        format!("c{}-k{k}", self.n)
    }
    /// A payload no other request carries, so a changed payload would show.
    fn payload(&mut self, size: Size) -> Value {
        self.counter += 1;
        match size {
            Size::Small => json!({"n": self.counter}),
            Size::Large => json!({"n": self.counter, "fill": "x".repeat(MAX_PAYLOAD + 8 * 1024)}),
        }
    }

    fn last_seq(&self, store: usize, subject: &str) -> u64 {
        self.model.subjects.get(&(store, subject.to_owned())).and_then(|v| v.last()).map(|e| e.1).unwrap_or(0)
    }

    async fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append { store, subject, events, cond } => self.append(*store, *subject, events, *cond).await,
            Op::Send { events } => self.send(events).await,
            Op::Put { key, size, cond } => self.put(*key, *size, *cond).await,
            Op::Delete { key, cond } => self.delete(*key, *cond).await,
        }
    }

    async fn append(
        &mut self,
        store: usize,
        subject: usize,
        events: &[(usize, Size)],
        cond: Cond,
    ) -> Result<(), TestCaseError> {
        let subject = self.subject(subject);
        let mut seen = std::collections::HashSet::new();
        let events: Vec<(String, Size)> =
            events.iter().filter(|(k, _)| seen.insert(*k)).map(|(k, s)| (self.id(*k), *s)).collect();
        let bodies: Vec<Value> =
            events.iter().map(|(id, s)| json!({"type": "t", "id": id, "payload": self.payload(*s)})).collect();
        let body = if bodies.len() == 1 { bodies[0].clone() } else { Value::Array(bodies.clone()) };
        let last = self.last_seq(store, &subject);
        let url = self.sc.at(&format!("/v1/stores/{}/subjects/{subject}/events", STORES[store]));
        let mut req = self.c.post(&url).json(&body);
        req = match cond {
            Cond::None => req,
            Cond::Right => req.header("if-match", format!("\"{last}\"")),
            Cond::Wrong => req.header("if-match", format!("\"{}\"", last + 7)),
            Cond::Empty => req.header("if-none-match", "*"),
            Cond::Any => req.header("if-match", "*"),
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap_or(Value::Null);

        // The model's prediction.
        let stored: Vec<Option<&String>> = events.iter().map(|(id, _)| self.model.ids[store].get(id)).collect();
        let elsewhere = stored.iter().any(|s| s.is_some_and(|s| *s != subject));
        let all_stored = stored.iter().all(Option::is_some);
        let none_stored = stored.iter().all(Option::is_none);
        let holds = match cond {
            Cond::None | Cond::Right => true,
            Cond::Wrong => false,
            Cond::Empty => last == 0,
            Cond::Any => last > 0,
        };
        if matches!(cond, Cond::Any) && last == 0 {
            // Refused before anything is sent: the subject holds nothing.
            prop_assert_eq!((status, &answer["error"]), (409, &json!("sequence_conflict")), "{}", answer);
        } else if all_stored && !elsewhere {
            prop_assert_eq!(status, 202, "a retry is a duplicate: {}", answer);
            let dups = if answer.is_array() { answer.as_array().unwrap().clone() } else { vec![answer.clone()] };
            prop_assert!(dups.iter().all(|a| a["duplicate"] == true), "{}", answer);
        } else if all_stored {
            prop_assert_eq!((status, &answer["error"]), (409, &json!("id_conflict")), "{}", answer);
        } else if !none_stored {
            prop_assert_eq!(status, 409, "a batch with stored ids is refused whole: {}", answer);
        } else if !holds {
            prop_assert_eq!((status, &answer["error"]), (409, &json!("sequence_conflict")), "{}", answer);
        } else {
            prop_assert_eq!(status, 202, "{}", answer);
            let acks = if answer.is_array() { answer.as_array().unwrap().clone() } else { vec![answer.clone()] };
            for ((id, size), (ack, body)) in events.iter().zip(acks.iter().zip(&bodies)) {
                prop_assert_eq!(&ack["duplicate"], false);
                let seq = ack["sequence"].as_u64().unwrap();
                self.model.ids[store].insert(id.clone(), subject.clone());
                self.model.subjects.entry((store, subject.clone())).or_default().push((
                    id.clone(),
                    seq,
                    body["payload"].clone(),
                ));
                if matches!(size, Size::Large) {
                    self.model.large_events += 1;
                }
            }
        }
        Ok(())
    }

    async fn send(&mut self, events: &[(usize, usize, Size)]) -> Result<(), TestCaseError> {
        let mut seen = std::collections::HashSet::new();
        let events: Vec<(String, String, Size)> = events
            .iter()
            .filter(|(k, _, _)| seen.insert(*k))
            .map(|(k, t, s)| (self.id(*k), self.event_type(*t), *s))
            .collect();
        let bodies: Vec<Value> =
            events.iter().map(|(id, t, s)| json!({"type": t, "id": id, "payload": self.payload(*s)})).collect();
        let body = if bodies.len() == 1 { bodies[0].clone() } else { Value::Array(bodies.clone()) };
        let (status, answer) = post(self.c, &self.sc.at("/v1/nodes/inventory/events"), &body).await;
        let stored: Vec<Option<&String>> = events.iter().map(|(id, _, _)| self.model.inbox_ids.get(id)).collect();
        let elsewhere = events.iter().zip(&stored).any(|((_, t, _), s)| s.is_some_and(|s| s != t));
        let all_stored = stored.iter().all(Option::is_some);
        // Under node isolation a sender may not read the target's inbox, so an id already
        // stored there with another type is answered as a duplicate (docs/security.md, "Known
        // limits"): nothing is stored either way.
        let unverifiable = causeway_tests::secure_suite() && all_stored;
        if all_stored && (!elsewhere || unverifiable) {
            prop_assert_eq!(status, 202, "{}", answer);
            let answers = if answer.is_array() { answer.as_array().unwrap().clone() } else { vec![answer.clone()] };
            prop_assert!(answers.iter().all(|a| a["duplicate"] == json!(true)), "{}", answer);
        } else if elsewhere && (bodies.len() == 1 || all_stored) {
            prop_assert_eq!((status, &answer["error"]), (409, &json!("id_conflict")), "{}", answer);
        } else if stored.iter().any(Option::is_some) {
            prop_assert_eq!(status, 409, "{}", answer);
        } else {
            prop_assert_eq!(status, 202, "{}", answer);
            for ((id, t, size), b) in events.iter().zip(&bodies) {
                self.model.inbox_ids.insert(id.clone(), t.clone());
                self.model.inbox.insert(id.clone(), b["payload"].clone());
                if matches!(size, Size::Large) {
                    self.model.large_events += 1;
                }
            }
        }
        Ok(())
    }

    fn kv_condition(&self, req: reqwest::RequestBuilder, key: &str, cond: Cond) -> (reqwest::RequestBuilder, bool) {
        let cur = self.model.kv.get(key);
        match cond {
            Cond::None => (req, true),
            Cond::Right => (req.header("if-match", format!("\"{}\"", cur.map(|c| c.0).unwrap_or(1))), cur.is_some()),
            Cond::Wrong => (req.header("if-match", format!("\"{}\"", cur.map(|c| c.0).unwrap_or(0) + 1000)), false),
            Cond::Empty => (req.header("if-none-match", "*"), cur.is_none()),
            Cond::Any => (req.header("if-match", "*"), cur.is_some()),
        }
    }

    async fn put(&mut self, key: usize, size: Size, cond: Cond) -> Result<(), TestCaseError> {
        let key = self.key(key);
        let value = self.payload(size);
        let req = self.c.put(self.sc.at(&format!("/v1/global/{key}"))).json(&value);
        let (req, holds) = self.kv_condition(req, &key, cond);
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        if holds {
            let want = if self.model.kv.contains_key(&key) { 200 } else { 201 };
            prop_assert_eq!(status, want);
            let rev = r.headers()["etag"].to_str().unwrap().trim_matches('"').parse::<u64>().unwrap();
            self.model.kv.insert(key, (rev, value));
        } else {
            prop_assert_eq!(status, 412);
        }
        Ok(())
    }

    async fn delete(&mut self, key: usize, cond: Cond) -> Result<(), TestCaseError> {
        let key = self.key(key);
        let req = self.c.delete(self.sc.at(&format!("/v1/global/{key}")));
        let (req, holds) = self.kv_condition(req, &key, cond);
        let status = req.send().await.unwrap().status().as_u16();
        prop_assert_eq!(status, if holds { 204 } else { 412 });
        if holds {
            self.model.kv.remove(&key);
        }
        Ok(())
    }

    /// Everything acknowledged reads back as it was written, and nothing else is there.
    async fn check(&self) -> Result<(), TestCaseError> {
        for ((store, subject), want) in &self.model.subjects {
            let got = load(self.c, self.sc, STORES[*store], subject).await;
            let got: Vec<(String, u64, Value)> = got
                .iter()
                .map(|e| (e["id"].as_str().unwrap().to_owned(), e["sequence"].as_u64().unwrap(), e["payload"].clone()))
                .collect();
            prop_assert_eq!(&got, want, "{} {}", STORES[*store], subject);
        }
        // Nothing refused became visible in a subject the model never saw succeed.
        for (store, name) in STORES.iter().enumerate() {
            for k in 0..3 {
                let subject = self.subject(k);
                if !self.model.subjects.contains_key(&(store, subject.clone())) {
                    prop_assert!(load(self.c, self.sc, name, &subject).await.is_empty(), "{subject}");
                }
            }
        }
        for k in 0..3 {
            let key = self.key(k);
            let (status, v) = get(self.c, &self.sc.at(&format!("/v1/global/{key}"))).await;
            match self.model.kv.get(&key) {
                Some((_, want)) => {
                    prop_assert_eq!(status, 200);
                    prop_assert_eq!(&v, want);
                }
                None => prop_assert_eq!(status, 404),
            }
        }
        self.check_inbox().await?;
        // Blobs: one per stored large event and per live large value, none for anything refused.
        let objects = blob_names(self.server, "shop").await;
        let mine =
            |o: &&String| o.starts_with(&format!("event/c{}-", self.n)) || o.contains(&format!("/c{}-k", self.n));
        let large_values = self.model.kv.values().filter(|(_, v)| v.get("fill").is_some()).count();
        prop_assert_eq!(objects.iter().filter(mine).count(), self.model.large_events + large_values);
        Ok(())
    }

    /// The inbox holds exactly the sends the model accepted, with their payloads.
    async fn check_inbox(&self) -> Result<(), TestCaseError> {
        let js = jetstream::new(self.server.client().await);
        let stream = js.get_stream("CW_IN_shop_inventory").await.unwrap();
        let store = js.get_object_store("CW_BLOB_shop").await.unwrap();
        let mut got = HashMap::new();
        for t in 0..2 {
            let subject = format!("cw.shop.to.inventory.shop.web.{}", self.event_type(t));
            let mut seq = 1;
            while let Ok(m) = stream.direct_get_next_for_subject(&subject, Some(seq)).await {
                seq = m.sequence + 1;
                let env = Envelope::decode(&m.payload).unwrap();
                let payload = match &env.blob {
                    None => env.payload.clone(),
                    Some(r) => {
                        let mut obj = store.get(&r.name).await.unwrap();
                        let mut b = Vec::new();
                        tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut b).await.unwrap();
                        rmp_serde::from_slice(&b).unwrap()
                    }
                };
                prop_assert!(got.insert(env.id.clone(), payload).is_none(), "{} stored twice", env.id);
            }
        }
        prop_assert_eq!(&got, &self.model.inbox);
        Ok(())
    }
}

#[test]
fn everything_acknowledged_loads_back_unchanged_and_nothing_refused_is_visible() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = NatsServer::start_with_max_payload(MAX_PAYLOAD);
    let manifests = format!(
        "{SHOP}---\napiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {{name: archive, namespace: shop}}\nspec: {{}}\n"
    );
    let sc = rt.block_on(async {
        apply(&server, &manifests).await;
        Sidecar::start(&server, "shop", "web", &[]).await
    });
    let c = http();
    let cases = std::env::var("CAUSEWAY_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let mut runner = TestRunner::new(ProptestConfig { cases, max_shrink_iters: 64, ..ProptestConfig::default() });
    let next = AtomicU32::new(0);
    let result = runner.run(&prop::collection::vec(op(), 1..16), |ops| {
        rt.block_on(async {
            let mut case = Case {
                n: next.fetch_add(1, Ordering::SeqCst),
                c: &c,
                sc: &sc,
                server: &server,
                counter: 0,
                model: Model::default(),
            };
            for op in &ops {
                case.run(op).await?;
                case.check().await?;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}\n--- sidecar log ---\n{}", sc.logs());
    }
}
