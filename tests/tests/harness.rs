//! The harness itself: a real server starts, serves JetStream, survives a restart with its data.
use causeway_tests::{Cluster, NatsServer};

#[tokio::test]
async fn single_server_has_jetstream_and_keeps_data_across_restart() {
    let mut s = NatsServer::start();
    let c = s.client().await;
    let js = async_nats::jetstream::new(c);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("t.a", "x".into()).await.unwrap().await.unwrap();
    s.kill();
    s.restart();
    let js = async_nats::jetstream::new(s.client().await);
    let mut st = js.get_stream("T").await.unwrap();
    assert_eq!(st.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn three_node_cluster_takes_r3_streams() {
    let cluster = Cluster::start3();
    let js = async_nats::jetstream::new(cluster.client().await);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "R3".into(),
                subjects: vec!["r3.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await;
        match r {
            Ok(mut s) => {
                assert_eq!(s.info().await.unwrap().config.num_replicas, 3);
                break;
            }
            Err(e) if attempt < 50 => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("R3 stream not created: {e}"),
        }
    }
}
