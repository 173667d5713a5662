//! The registry at cluster scale: following it costs no JetStream consumer, so a registry stream
//! that already holds as many consumers as it may (nats-server 2.15: 1,000) still serves any
//! number of sidecars, and 1,200 followers all resolve names and see new ones.

#[path = "sidecar_support/mod.rs"]
mod support;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::pull};
use causeway_api::DnsLabel;
use causeway_sidecar::{
    config::Config,
    nats::{Link, connect},
    registry::{Registry, follow},
};
use causeway_tests::{NatsServer, eventually};
use serde_json::json;
use support::*;

const FOLLOWERS: usize = 1200;
const CONNECTIONS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_registry_stream_still_serves_1200_followers_and_new_sidecars() {
    let server = NatsServer::start();
    apply(&server, SHOP).await;

    // Fill the registry stream with every consumer it may hold, as 1,000 sidecars that followed it
    // with a consumer each once did.
    let js = jetstream::new(server.client().await);
    let stream = js.get_stream("KV_CW_REGISTRY").await.unwrap();
    let max = stream.cached_info().config.max_consumers;
    assert_eq!(max, 1000, "the cap is set explicitly");
    for i in 0..max {
        stream
            .create_consumer(pull::Config {
                name: Some(format!("filler{i}")),
                inactive_threshold: Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("consumer {i}: {e}"));
    }
    let full = stream.create_consumer(pull::Config { name: Some("one-more".into()), ..Default::default() }).await;
    assert!(full.is_err(), "the stream is at its cap");

    let env = |k: &str| match k {
        "CAUSEWAY_NODE" => Some("web".to_owned()),
        "CAUSEWAY_NAMESPACE" => Some("shop".to_owned()),
        "CAUSEWAY_NATS_URL" => Some(server.url.clone()),
        _ => None,
    };
    let config = Config::try_from_lookup(env).unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut registries: Vec<Arc<Registry>> = Vec::with_capacity(FOLLOWERS);
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let link = Link::new();
        let client = connect(&config, link.clone(), None).await.unwrap();
        for _ in 0..FOLLOWERS / CONNECTIONS {
            let reg = Registry::new(DnsLabel::new("shop").unwrap(), DnsLabel::new("web").unwrap());
            tasks.push(tokio::spawn(follow(reg.clone(), client.clone(), link.clone(), stop.clone())));
            registries.push(reg);
        }
    }
    let all = |name: &'static str| {
        let regs = registries.clone();
        move || {
            let n = regs.iter().filter(|r| r.is_synced() && r.snapshot().nodes.contains_key(name)).count();
            async move { (n == FOLLOWERS).then_some(()) }
        }
    };
    eventually(Duration::from_secs(30), "1,200 followers resolving inventory", all("inventory")).await;

    // A node created now reaches every follower through the registry's change feed.
    apply(
        &server,
        "apiVersion: causeway.dev/v1alpha1\nkind: Node\nmetadata: {name: late, namespace: shop}\nspec: {}\n",
    )
    .await;
    eventually(Duration::from_secs(10), "1,200 followers resolving the new node", all("late")).await;

    // A real sidecar process becomes ready and sends, with the stream still full.
    let sc = Sidecar::start(&server, "shop", "web", &[]).await;
    let (s, a) = post(&http(), &sc.at("/v1/nodes/late/events"), &json!({"type": "hello"})).await;
    assert_eq!(s, 202, "{a}");
    let mut stream = js.get_stream("KV_CW_REGISTRY").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.consumer_count, max as usize, "no follower took a consumer");

    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
}
