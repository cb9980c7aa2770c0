//! The channel each record's outcome travels on, from the pipeline to its [`DeliveryFuture`].
//!
//! One channel per record is the hot path of the producer, so channels are not allocated one by
//! one: cells are allocated in blocks of [`CELLS_PER_BLOCK`], handed out in order by the
//! producer's [`Cells`] (under the lock `send` takes anyway), and shared by reference count. A
//! block is freed when the last future and the last pending record of its cells are gone.
//!
//! [`DeliveryFuture`]: crate::DeliveryFuture

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::ProduceError;
use crate::record::{RecordMetadata, UserRecord};

/// Cells allocated together: a block stays under 1 KiB, which glibc's allocator serves from its
/// small bins (larger requests make it consolidate its free lists first).
pub(crate) const CELLS_PER_BLOCK: usize = 16;

/// What travels in a cell: the failure is boxed to keep every cell small.
pub(crate) type Outcome = Result<RecordMetadata, Box<(ProduceError, UserRecord)>>;

/// One record's channel.
enum State {
    /// Not resolved; the future has not been polled (or was polled without a waker change).
    Empty,
    /// Not resolved; wake this when it is.
    Waiting(Waker),
    /// Resolved, not yet taken by the future.
    Ready(Outcome),
    /// The future took the outcome.
    Taken,
    /// The future was dropped: an outcome is discarded.
    Abandoned,
}

type Cell = Mutex<State>;
type Block = Arc<[Cell; CELLS_PER_BLOCK]>;

/// Bytes one record's channel takes: its cell and its share of the block's header.
pub(crate) const CELL_BYTES: usize = std::mem::size_of::<Cell>() + 1;

fn lock(cell: &Cell) -> MutexGuard<'_, State> {
    cell.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands out cells, a block at a time.
#[derive(Default)]
pub(crate) struct Cells {
    block: Option<Block>,
    next: usize,
}

impl Cells {
    /// A fresh channel: the pipeline's end and the caller's end.
    pub fn pair(&mut self) -> (Completer, Receiver) {
        let block = match &self.block {
            Some(block) if self.next < block.len() => block.clone(),
            _ => {
                let block: Block = Arc::new(std::array::from_fn(|_| Mutex::new(State::Empty)));
                self.block = Some(block.clone());
                self.next = 0;
                block
            }
        };
        let index = self.next as u32;
        self.next += 1;
        (Completer { block: block.clone(), index, resolved: false }, Receiver { block, index, done: false })
    }
}

/// The pipeline's end of a record's channel. Dropped unresolved, it resolves the record as
/// [`ProduceError::Aborted`] (with an empty record: the real one is resolved by its owner).
pub(crate) struct Completer {
    block: Block,
    index: u32,
    resolved: bool,
}

impl Completer {
    /// Resolves the record's future.
    pub fn complete(mut self, outcome: Outcome) {
        self.resolve(outcome);
    }

    fn resolve(&mut self, outcome: Outcome) {
        self.resolved = true;
        let Some(cell) = self.block.get(self.index as usize) else { return };
        let mut state = lock(cell);
        match std::mem::replace(&mut *state, State::Ready(outcome)) {
            State::Waiting(waker) => {
                drop(state);
                waker.wake();
            }
            State::Empty => {}
            previous @ (State::Abandoned | State::Taken | State::Ready(_)) => {
                // Nobody will read it (resolving twice cannot happen: `complete` takes `self`).
                let discarded = std::mem::replace(&mut *state, previous);
                drop(state);
                drop(discarded);
            }
        }
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if !self.resolved {
            self.resolve(Err(Box::new((ProduceError::Aborted, UserRecord::default()))));
        }
    }
}

/// The caller's end of a record's channel (inside its `DeliveryFuture`).
pub(crate) struct Receiver {
    block: Block,
    index: u32,
    /// The outcome was taken: nothing left to do on drop.
    done: bool,
}

impl Receiver {
    /// The outcome, once the record is resolved. Polling again after it was taken gives
    /// [`ProduceError::Aborted`] with an empty record.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(cell) = self.block.get(self.index as usize) else {
            return Poll::Ready(Err(Box::new((ProduceError::Aborted, UserRecord::default()))));
        };
        let mut state = lock(cell);
        match &mut *state {
            State::Ready(_) => match std::mem::replace(&mut *state, State::Taken) {
                State::Ready(outcome) => {
                    self.done = true;
                    Poll::Ready(outcome)
                }
                _ => Poll::Pending,
            },
            State::Empty => {
                *state = State::Waiting(cx.waker().clone());
                Poll::Pending
            }
            State::Waiting(waker) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
                Poll::Pending
            }
            State::Taken | State::Abandoned => {
                Poll::Ready(Err(Box::new((ProduceError::Aborted, UserRecord::default()))))
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(cell) = self.block.get(self.index as usize) else { return };
        let mut state = lock(cell);
        if matches!(*state, State::Taken) {
            return;
        }
        let discarded = std::mem::replace(&mut *state, State::Abandoned);
        drop(state);
        drop(discarded);
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    fn ok(attempts: u32) -> Outcome {
        let placement = kinesis_core::RecordPlacement {
            shard_id: kinesis_core::ShardId::from_index(0),
            sequence_number: kinesis_core::SequenceNumber::from_u128(7),
        };
        Ok(RecordMetadata::new(Arc::new(placement), 0, false, attempts))
    }

    #[tokio::test]
    async fn outcomes_reach_their_own_futures_across_blocks() {
        let mut cells = Cells::default();
        let pairs: Vec<_> = (0..CELLS_PER_BLOCK * 2 + 3).map(|_| cells.pair()).collect();
        let mut receivers = Vec::new();
        for (i, (completer, receiver)) in pairs.into_iter().enumerate() {
            completer.complete(ok(i as u32));
            receivers.push(receiver);
        }
        for (i, mut receiver) in receivers.into_iter().enumerate() {
            let outcome = poll_fn(|cx| receiver.poll(cx)).await;
            assert_eq!(outcome.expect("delivered").attempts(), i as u32);
        }
    }

    #[tokio::test]
    async fn a_waiting_future_is_woken() {
        let mut cells = Cells::default();
        let (completer, mut receiver) = cells.pair();
        let task = tokio::spawn(async move { poll_fn(|cx| receiver.poll(cx)).await.map(|m| m.attempts()) });
        tokio::task::yield_now().await;
        completer.complete(ok(3));
        assert_eq!(task.await.expect("joined").expect("delivered"), 3);
    }

    #[tokio::test]
    async fn a_dropped_completer_aborts_and_a_dropped_receiver_discards() {
        let mut cells = Cells::default();
        let (completer, mut receiver) = cells.pair();
        drop(completer);
        let outcome = poll_fn(|cx| receiver.poll(cx)).await;
        assert!(matches!(outcome, Err(failure) if matches!(failure.0, ProduceError::Aborted)));

        let (completer, receiver) = cells.pair();
        drop(receiver);
        completer.complete(ok(1));
        let block = cells.block.as_ref().expect("a block");
        assert!(matches!(*lock(&block[1]), State::Abandoned), "the outcome is not kept for nobody");
        assert!(std::mem::size_of::<[Cell; CELLS_PER_BLOCK]>() + 16 < 1024, "a block is a small allocation");
    }
}
