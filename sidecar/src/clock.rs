//! Keeps the node's Lamport clock monotonic across sidecar restarts.
//!
//! The clock lives in memory, so a restarted sidecar would start again at 0 and stamp new
//! events with times lower than events it sent before — breaking "a happened before b implies
//! L(a) < L(b)". The clock's value is therefore saved in the node's state bucket (key
//! [`CLOCK_KEY`]) every [`SAVE_EVERY`] while it moves, and restored on start with
//! [`HEADROOM`] added, which covers every tick that can happen between two saves.

use std::{sync::Arc, time::Duration};

use tracing::{debug, warn};

use crate::state::{State, until_true};

/// State-bucket key holding the last saved clock value (under the reserved `_cw` prefix).
pub const CLOCK_KEY: &str = "_cw.lamport";
/// Added to the saved value on restore: far more ticks than one save interval can see.
pub const HEADROOM: u64 = 1_000_000;
/// How often a moving clock is saved.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Restores the clock, then saves it while it moves, and once more on shutdown.
pub async fn keep(state: Arc<State>) {
    let mut stop = state.shutdown.clone();
    let bucket = state.state_bucket();
    // Restore: retry until the node's bucket is reachable (NATS may still be connecting).
    let mut saved = loop {
        let restored = tokio::select! {
            r = restore(&state, &bucket) => r,
            _ = until_true(&mut stop) => return,
        };
        match restored {
            Ok(v) => break v,
            Err(e) => debug!(error = %e, "clock not restored yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => {}
            _ = until_true(&mut stop) => return,
        }
    };
    state.clock_restored.send_replace(true);
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => false,
            _ = until_true(&mut stop) => true,
        };
        let now = state.clock.now();
        // On the way out, a NATS that is gone gets no chance to hold the sidecar up.
        if stopping && !state.nats_connected() {
            return;
        }
        if now > saved {
            match save(&state, &bucket, now).await {
                Ok(()) => saved = now,
                Err(e) => warn!(error = %e, "cannot save the Lamport clock; will retry"),
            }
        }
        if stopping {
            return;
        }
    }
}

async fn restore(state: &State, bucket: &str) -> Result<u64, String> {
    let entry = crate::nats::kv_value(&state.client, bucket, CLOCK_KEY).await.map_err(|e| e.to_string())?;
    let saved = match entry {
        Some(b) => std::str::from_utf8(&b).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0),
        None => 0,
    };
    if saved > 0 {
        state.clock.observe(saved.saturating_add(HEADROOM));
    }
    debug!(saved, clock = state.clock.now(), "Lamport clock restored");
    Ok(state.clock.now())
}

async fn save(state: &State, bucket: &str, now: u64) -> Result<(), String> {
    let put = async {
        let kv = state.bucket(bucket).await.map_err(|e| e.to_string())?;
        kv.put(CLOCK_KEY, now.to_string().into()).await.map(|_| ()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(SAVE_EVERY * 2, put).await.map_err(|_| "timed out".to_owned())?
}
