//! The `causeway-sidecar` binary: configuration from the environment, then [`causeway_sidecar::serve`].
#![forbid(unsafe_code)]

use causeway_sidecar::config::{Config, ENV_LOG, ENV_LOG_FORMAT, EXIT_CONFIG};

fn main() {
    let config = match Config::try_from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("causeway-sidecar: bad configuration: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(std::env::var(ENV_LOG).unwrap_or_else(|_| "info".into()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var(ENV_LOG_FORMAT).is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = causeway_sidecar::config::runtime(config.worker_threads).expect("tokio runtime");
    let code = runtime.block_on(async move {
        let addr = std::net::SocketAddr::new(config.bind, config.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("causeway-sidecar: cannot listen on {addr}: {e}");
                return 1;
            }
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_string());
        // One line on stdout so scripts (and `causeway dev`) learn the address, even for port 0.
        println!("causeway-sidecar {} listening on http://{local}", config.sender());
        let shutdown = causeway_sidecar::shutdown_on_signals();
        // Whatever NATS or a client does, the process ends soon after the grace period, so a
        // pod never hangs in Terminating.
        let mut signalled = shutdown.clone();
        let deadline = config.grace_period + std::time::Duration::from_secs(5);
        tokio::spawn(async move {
            causeway_sidecar::flag::until_true(&mut signalled).await;
            std::thread::spawn(move || {
                std::thread::sleep(deadline);
                eprintln!("causeway-sidecar: still running {deadline:?} after the stop signal; exiting");
                std::process::exit(1);
            });
        });
        match causeway_sidecar::serve(config, listener, shutdown).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("causeway-sidecar: {e}");
                1
            }
        }
    });
    std::process::exit(code);
}
