//! The behaviour suite against the in-memory broker (limits on, as the service has them).

mod suite;
mod support;

use kinesis_core::MemoryBroker;

async fn client() -> Option<MemoryBroker> {
    Some(MemoryBroker::new())
}

behaviour_suite!(client(), (start_paused = true));
