//! A running job of the simulator: the script played against the clock, a bounded log of its
//! updates, and the forwarding of that log to each attached call.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::script::Script;
use crate::pb::docproc::v1::{ProcessingStatus, ProcessingUpdate};

/// One job per document id; every call for that id attaches to it.
#[derive(Debug)]
pub struct Job {
    state: Mutex<JobState>,
    /// Bumped on every change, so forwarders wake up.
    version: watch::Sender<u64>,
    retain: usize,
}

#[derive(Debug, Default)]
struct JobState {
    /// The last `retain` updates, oldest first.
    log: VecDeque<ProcessingUpdate>,
    /// The sequence of the most recent update (0 before the first).
    last_sequence: u64,
    /// How the job ended: `Ok` after its last update, `Err` with the status every call ends with.
    end: Option<Result<(), Status>>,
}

/// What a call that resumes after a given sequence gets next.
struct Batch {
    updates: Vec<ProcessingUpdate>,
    end: Option<Result<(), Status>>,
}

impl Job {
    /// Starts playing `script` in the background at `speed`, keeping at most `retain` updates.
    pub fn start(
        document_id: String,
        script: Script,
        speed: f64,
        retain: usize,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (version, _) = watch::channel(0);
        let job = Arc::new(Self { state: Mutex::new(JobState::default()), version, retain: retain.max(1) });
        let runner = Arc::clone(&job);
        tokio::spawn(async move {
            tokio::select! {
                () = runner.play(&document_id, &script, speed) => {}
                () = shutdown.cancelled() => {}
            }
        });
        job
    }

    /// Whether a call may resume after `sequence`: false when updates it needs were dropped.
    pub fn can_resume_after(&self, sequence: u64) -> bool {
        let state = self.lock();
        match state.log.front() {
            Some(oldest) => sequence == 0 || sequence + 1 >= oldest.sequence,
            None => true,
        }
    }

    /// Sends every update after `cursor` to `tx`, live, until the job ends or the caller goes
    /// away. Returns `true` when the caller went away (the call was cancelled).
    pub async fn forward(&self, mut cursor: u64, tx: mpsc::Sender<Result<ProcessingUpdate, Status>>) -> bool {
        let mut changes = self.version.subscribe();
        loop {
            let batch = self.after(cursor);
            for update in batch.updates {
                cursor = update.sequence;
                if tx.send(Ok(update)).await.is_err() {
                    return true;
                }
            }
            if let Some(end) = batch.end {
                if let Err(status) = end {
                    return tx.send(Err(status)).await.is_err();
                }
                return false;
            }
            // A tonic server stream only learns of a cancel when a send fails, so wait for the
            // receiver to close as well as for the next update: the cancel is seen at once.
            tokio::select! {
                () = tx.closed() => return true,
                changed = changes.changed() => if changed.is_err() { return false },
            }
        }
    }

    fn after(&self, cursor: u64) -> Batch {
        let state = self.lock();
        let updates = state.log.iter().filter(|u| u.sequence > cursor).cloned().collect();
        Batch { updates, end: state.end.clone() }
    }

    async fn play(&self, document_id: &str, script: &Script, speed: f64) {
        let played = script.steps.iter().flat_map(|step| std::iter::repeat_n(step, step.repeat as usize));
        // Deadlines from the start, not sleeps after each step, keep steady rates exact.
        let mut next = tokio::time::Instant::now();
        for step in played {
            next += step.delay(speed);
            tokio::time::sleep_until(next).await;
            if let Some(error) = &step.grpc_error {
                self.finish(Err(error.to_status()));
                return;
            }
            let status = match step.status.as_deref() {
                Some("queued") => ProcessingStatus::Queued,
                Some("running") => ProcessingStatus::Running,
                Some("completed") => ProcessingStatus::Completed,
                Some("failed") => ProcessingStatus::Failed,
                // Scripts may send an invalid status on purpose, to test the client's handling.
                _ => ProcessingStatus::Unspecified,
            };
            let terminal = matches!(status, ProcessingStatus::Completed | ProcessingStatus::Failed);
            self.push(|sequence| ProcessingUpdate {
                document_id: document_id.to_owned(),
                sequence,
                status: status.into(),
                progress_percent: step.percent,
                stage: step.stage.clone(),
                message: step.full_message(),
                emitted_at: Some(SystemTime::now().into()),
                error_code: step.error_code.clone(),
            });
            if terminal {
                break;
            }
        }
        self.finish(Ok(()));
    }

    fn push(&self, make: impl FnOnce(u64) -> ProcessingUpdate) {
        {
            let mut state = self.lock();
            state.last_sequence += 1;
            let update = make(state.last_sequence);
            state.log.push_back(update);
            while state.log.len() > self.retain {
                state.log.pop_front();
            }
        }
        self.version.send_modify(|v| *v += 1);
    }

    fn finish(&self, end: Result<(), Status>) {
        self.lock().end = Some(end);
        self.version.send_modify(|v| *v += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        // The state stays consistent even if a holder panicked: every update is one push.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
