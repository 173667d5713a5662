//! Typed events: JSON Schemas per event type on an EventStore (inline) and a Node (from a
//! ConfigMap), checked by the real sidecar binary against a real nats-server; narrowing changes
//! reported by `causeway apply`; bad schemas refused before anything is applied.

#[path = "sidecar_support/mod.rs"]
mod support;

use causeway_api::{envelope::Envelope, registry::Record};
use causeway_tests::{NatsServer, TempDir, causeway, eventually, write_file};
use serde_json::{Value, json};
use support::*;

const TYPED: &str = r#"apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: orders, namespace: shop}
spec:
  schemas:
    - type: order-placed
      version: 2
      schema:
        type: object
        required: [orderId, qty]
        properties:
          orderId: {type: string}
          qty: {type: integer, minimum: 1}
---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: plain, namespace: shop}
spec: {}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: inventory-schemas, namespace: shop}
data:
  reserve.json: '{"type":"object","required":["sku"],"properties":{"sku":{"type":"string","pattern":"^[A-Z]+$"}}}'
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: inventory, namespace: shop}
spec:
  schemas:
    - type: reserve-stock
      version: 7
      configMapRef: {name: inventory-schemas, key: reserve.json}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: web, namespace: shop}
spec: {}
"#;

fn pointers(v: &Value) -> Vec<String> {
    v["violations"].as_array().unwrap().iter().map(|x| x["pointer"].as_str().unwrap().to_owned()).collect()
}

async fn stored(server: &NatsServer, stream: &str) -> Vec<Envelope> {
    let js = async_nats::jetstream::new(server.client().await);
    let s = js.get_stream(stream).await.unwrap();
    let last = s.cached_info().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(Envelope::decode(&m.payload).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn appends_are_checked_against_the_store_schema_and_record_its_version() {
    let server = NatsServer::start();
    apply(&server, TYPED).await;
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let url = sc.at("/v1/stores/orders/subjects/order-1/events");

    let (s, a) = post(&c, &url, &json!({"type": "order-placed", "payload": {"orderId": "1", "qty": 2}})).await;
    assert_eq!(s, 202, "{a}");
    // A type without a schema is not checked, and records no version.
    let (s, _) = post(&c, &url, &json!({"type": "note", "payload": 42})).await;
    assert_eq!(s, 202);

    let (s, e) = post(&c, &url, &json!({"type": "order-placed", "payload": {"qty": 0, "orderId": 5}})).await;
    assert_eq!((s, e["error"].as_str()), (422, Some("schema_violation")), "{e}");
    assert_eq!((e["type"].as_str(), e["schemaVersion"].as_u64()), (Some("order-placed"), Some(2)), "{e}");
    let mut p = pointers(&e);
    p.sort();
    assert_eq!(p, ["/orderId", "/qty"], "{e}");
    assert!(e["message"].as_str().unwrap().contains("nothing was stored"), "{e}");

    // A batch with one invalid event stores nothing, and names the failing index.
    let (s, e) = post(
        &c,
        &url,
        &json!([
            {"type": "order-placed", "payload": {"orderId": "2", "qty": 1}},
            {"type": "order-placed", "payload": {"orderId": "3"}},
            {"type": "note", "payload": "x"}
        ]),
    )
    .await;
    assert_eq!((s, e["error"].as_str()), (422, Some("schema_violation")), "{e}");
    assert_eq!(e["failures"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(e["failures"][0]["index"], 1, "{e}");
    assert_eq!(pointers(&e), [""], "a missing property fails at the payload itself: {e}");

    let events = load(&c, &sc, "orders", "order-1").await;
    assert_eq!(events.len(), 2, "only the two accepted events are stored: {events:?}");
    assert_eq!(events[0]["schemaVersion"], 2, "{}", events[0]);
    assert!(events[1].get("schemaVersion").is_none(), "{}", events[1]);
    let wire = stored(&server, "CW_ES_shop_orders").await;
    assert_eq!(wire.iter().map(|e| e.schema_version).collect::<Vec<_>>(), [Some(2), None]);

    // A valid batch passes whole.
    let (s, acks) = post(
        &c,
        &url,
        &json!([{"type": "order-placed", "payload": {"orderId": "4", "qty": 3}}, {"type": "note", "payload": null}]),
    )
    .await;
    assert_eq!((s, acks.as_array().map(Vec::len)), (202, Some(2)), "{acks}");

    // A store without schemas is unchanged: anything goes, nothing is recorded.
    let (s, _) = post(
        &c,
        &sc.at("/v1/stores/plain/subjects/p/events"),
        &json!({"type": "order-placed", "payload": {"qty": "many"}}),
    )
    .await;
    assert_eq!(s, 202);
    let plain = load(&c, &sc, "plain", "p").await;
    assert!(plain[0].get("schemaVersion").is_none(), "{}", plain[0]);
}

#[tokio::test]
async fn sends_are_checked_against_the_target_node_schema_from_a_config_map() {
    let server = NatsServer::start();
    apply(&server, TYPED).await;
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let url = sc.at("/v1/nodes/inventory/events");
    let (s, a) = post(&c, &url, &json!({"type": "reserve-stock", "payload": {"sku": "ABC"}})).await;
    assert_eq!(s, 202, "{a}");
    let (s, e) = post(&c, &url, &json!({"type": "reserve-stock", "payload": {"sku": "abc"}})).await;
    assert_eq!((s, e["error"].as_str(), e["schemaVersion"].as_u64()), (422, Some("schema_violation"), Some(7)), "{e}");
    assert_eq!(pointers(&e), ["/sku"], "{e}");
    let (s, e) = post(
        &c,
        &url,
        &json!([{"type": "reserve-stock", "payload": {"sku": "OK"}}, {"type": "reserve-stock", "payload": 1}]),
    )
    .await;
    assert_eq!((s, e["failures"][0]["index"].as_u64()), (422, Some(1)), "{e}");
    // The web node declares no schema: sends to it are not checked.
    let (s, _) = post(&c, &sc.at("/v1/nodes/web/events"), &json!({"type": "reserve-stock", "payload": 1})).await;
    assert_eq!(s, 202);
    let wire = stored(&server, "CW_IN_shop_inventory").await;
    assert_eq!(wire.len(), 1, "refused sends and batches store nothing");
    assert_eq!(wire[0].schema_version, Some(7));

    // The record carries the resolved schema, and where it came from.
    let js = async_nats::jetstream::new(server.client().await);
    let kv = js.get_key_value("CW_REGISTRY").await.unwrap();
    let Record::Node(n) = Record::from_bytes(&kv.get("shop.node.inventory").await.unwrap().unwrap()).unwrap() else {
        panic!("not a node")
    };
    assert_eq!(n.schemas[0].schema["properties"]["sku"]["pattern"], "^[A-Z]+$");
    assert_eq!(n.schemas[0].config_map_ref.as_ref().map(|r| r.key.as_str()), Some("reserve.json"));
}

fn store_with(schema: &str, version: u32) -> String {
    format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: EventStore\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  schemas:\n    - type: order-placed\n      version: {version}\n      schema: {schema}\n---\napiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {{name: web, namespace: shop}}\nspec: {{}}\n"
    )
}

#[tokio::test]
async fn a_narrowing_change_is_reported_by_apply_and_the_new_schema_applies() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-schemas");
    let v1 = write_file(&dir, "v1.yaml", &store_with("{type: object, properties: {qty: {type: integer}}}", 1));
    let run = causeway(&["apply", "--nats", &server.url, "-f", &v1]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let url = sc.at("/v1/stores/orders/subjects/o/events");
    for qty in [50, 5, 70] {
        let (s, a) = post(&c, &url, &json!({"type": "order-placed", "payload": {"qty": qty}})).await;
        assert_eq!(s, 202, "{a}");
    }

    // v2 asks for qty >= 10: the event at sequence 2 no longer matches.
    let v2 =
        write_file(&dir, "v2.yaml", &store_with("{type: object, properties: {qty: {type: integer, minimum: 10}}}", 2));
    let run = causeway(&["apply", "--nats", &server.url, "-f", &v2]);
    assert_eq!(run.code, 0, "a narrowing change is reported, not refused: {}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("warning: SchemaNarrowed"), "{}", run.stdout);
    assert!(run.stdout.contains("sequence 2") && run.stdout.contains("/qty"), "{}", run.stdout);
    assert!(run.stdout.contains("stored under version 1"), "{}", run.stdout);
    let js = async_nats::jetstream::new(server.client().await);
    let kv = js.get_key_value("CW_REGISTRY").await.unwrap();
    let record = || async {
        match Record::from_bytes(
            &kv.get(format!("shop.{}.orders", causeway_api::Kind::EventStore.registry_token())).await.unwrap().unwrap(),
        )
        .unwrap()
        {
            Record::EventStore(s) => s,
            _ => panic!("not a store"),
        }
    };
    let n = record().await.schemas[0].narrowed.clone().expect("narrowing recorded");
    assert_eq!((n.sequence, n.stored_version, n.checked), (2, Some(1), 3), "{n:?}");

    // The sidecar follows the new schema.
    eventually(std::time::Duration::from_secs(20), "the sidecar checks against v2", || {
        let c = c.clone();
        let url = url.clone();
        async move {
            let (s, e) = post(&c, &url, &json!({"type": "order-placed", "payload": {"qty": 5}})).await;
            (s == 422 && e["schemaVersion"] == 2).then_some(())
        }
    })
    .await;

    // Applying the same again still says so (it is kept in the record), without sampling again.
    let run = causeway(&["apply", "--nats", &server.url, "-f", &v2]);
    assert!(run.stdout.contains("unchanged") && run.stdout.contains("SchemaNarrowed"), "{}", run.stdout);

    // Widening again clears it.
    let v3 = write_file(&dir, "v3.yaml", &store_with("{type: object, properties: {qty: {type: number}}}", 3));
    let run = causeway(&["apply", "--nats", &server.url, "-f", &v3]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("SchemaNarrowed"), "{}", run.stdout);
    assert!(record().await.schemas[0].narrowed.is_none());
}

#[test]
fn a_bad_schema_or_a_missing_config_map_is_refused_at_apply_and_nothing_is_created() {
    let server = NatsServer::start();
    let dir = TempDir::new("cw-schemas-bad");
    let cases = [
        (
            store_with("{type: object, properties: {qty: {type: integr}}}", 1),
            "spec.schemas[0].schema: not a valid JSON Schema",
        ),
        (
            "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: inv, namespace: shop}\nspec:\n  schemas:\n    - {type: t, configMapRef: {name: nowhere, key: s.json}}\n".to_owned(),
            "ConfigMap shop/nowhere does not exist",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s, namespace: shop}\ndata: {s.json: '{\"minimum\": \"ten\"}'}\n---\napiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: inv, namespace: shop}\nspec:\n  schemas:\n    - {type: t, configMapRef: {name: s, key: s.json}}\n".to_owned(),
            "(from ConfigMap s key s.json): not a valid JSON Schema at /minimum",
        ),
        (
            "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: inv, namespace: shop}\nspec:\n  schemas:\n    - {type: t, schema: {type: object}}\n    - {type: t, schema: {type: string}}\n".to_owned(),
            "spec.schemas[1].type: type t has a schema already",
        ),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let f = write_file(&dir, &format!("c{i}.yaml"), yaml);
        let run = causeway(&["apply", "--nats", &server.url, "-f", &f]);
        assert_eq!(run.code, 2, "case {i}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(want), "case {i}: want {want:?} in:\n{}", run.stderr);
        assert!(run.stderr.contains("nothing was applied"), "{}", run.stderr);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(server.client().await);
        assert!(js.get_stream("CW_ES_shop_orders").await.is_err());
        assert!(js.get_stream("CW_IN_shop_inv").await.is_err());
    });
}
