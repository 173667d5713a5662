//! An independent client (Python `nats-py` + `msgpack`, no Causeway code) decodes what the
//! sidecar stored and finds every envelope field, equal to what the sidecar shows the app.
//!
//! Needs `.tools/bin/python` (or `$CAUSEWAY_PYTHON`) with `nats-py` and `msgpack`, which
//! `scripts/setup.sh --test` installs. Without them this test fails, saying so.

#[path = "sidecar_support/mod.rs"]
mod support;

use causeway_tests::{NatsServer, workspace_root};
use serde_json::{Value, json};
use support::*;

fn python() -> std::path::PathBuf {
    std::env::var_os("CAUSEWAY_PYTHON").map(Into::into).unwrap_or_else(|| workspace_root().join(".tools/bin/python"))
}

#[tokio::test]
async fn python_decodes_every_envelope_field() {
    let server = NatsServer::start();
    apply(&server, SHOP).await;
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let c = http();
    let (s, _) = post(
        &c,
        &sc.at("/v1/stores/orders/subjects/order-123/events"),
        &json!({"type": "order-placed", "payload": {"orderId": "123", "lines": [1, 2.5, null, true]},
                "id": "01JEVENT0000000000000000001", "causationId": "01HCAUSE", "correlationId": "01GCORR"}),
    )
    .await;
    assert_eq!(s, 202);
    let (s, _) = post(&c, &sc.at("/v1/nodes/inventory/events"), &json!({"type": "reserve", "payload": "text"})).await;
    assert_eq!(s, 202);
    let app_view = load(&c, &sc, "orders", "order-123").await.remove(0);

    let script = workspace_root().join("tests/python/decode_envelopes.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .args([&server.url, "CW_ES_shop_orders", "CW_IN_shop_inventory"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {}: {e}; run scripts/setup.sh --test (pip: nats-py msgpack)", python().display())
        });
    assert!(
        out.status.success(),
        "the Python decoder failed (needs pip packages nats-py and msgpack):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    let stored = &lines[0];
    assert_eq!(stored["subject"], "cw.shop.es.orders.order-123");
    let env = &stored["envelope"];
    for field in
        ["id", "type", "payload", "subject", "time", "sender", "causationId", "correlationId", "path", "lamport"]
    {
        assert!(env.get(field).is_some(), "field {field} missing from {env}");
        assert_eq!(env[field], app_view[field], "field {field}: wire and app view differ");
    }
    assert_eq!(
        env["payload"],
        json!({"orderId": "123", "lines": [1, 2.5, null, true]}),
        "payload is native MessagePack"
    );
    assert_eq!(env["path"], json!([["shop/web", "shop/orders"]]));
    assert!(env["lamport"].as_u64().unwrap() >= 1);
    let inbox = &lines[1];
    assert_eq!(inbox["subject"], "cw.shop.to.inventory.shop.web.reserve", "the sender is part of the subject");
    assert_eq!(inbox["envelope"]["payload"], "text");
    assert_eq!(inbox["envelope"]["correlationId"], inbox["envelope"]["id"]);
}
