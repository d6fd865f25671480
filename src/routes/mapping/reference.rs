//! The document mapping as it was compiled into the BFF before routes became data, kept as the
//! oracle the generic mapping is tested against: the JSON of CONTRACT §3, written field by
//! field.

use serde::Serialize;

use crate::{
    pb::docproc::v1::{ProcessingStatus, ProcessingUpdate},
    routes::rfc3339_nanos,
};

/// What the compiled mapping made of one update: the event name, whether it ends the stream,
/// the id and the JSON data.
pub struct Compiled {
    pub name: &'static str,
    pub terminal: bool,
    pub id: u64,
    pub data: Vec<u8>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProgressData<'a> {
    document_id: &'a str,
    sequence: u64,
    status: &'static str,
    percent: u32,
    stage: &'a str,
    message: &'a str,
    emitted_at: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    error_code: &'a str,
}

/// Maps one update as the compiled route did; `None` for the updates it refused (an
/// unspecified or unknown status, sequence 0).
pub fn map_update(update: &ProcessingUpdate) -> Option<Compiled> {
    let (name, status) = match ProcessingStatus::try_from(update.status).ok()? {
        ProcessingStatus::Queued => ("progress", "queued"),
        ProcessingStatus::Running => ("progress", "running"),
        ProcessingStatus::Completed => ("completed", "completed"),
        ProcessingStatus::Failed => ("failed", "failed"),
        ProcessingStatus::Unspecified => return None,
    };
    if update.sequence == 0 {
        return None;
    }
    let data = ProgressData {
        document_id: &update.document_id,
        sequence: update.sequence,
        status,
        percent: update.progress_percent.min(100),
        stage: &update.stage,
        message: &update.message,
        emitted_at: update.emitted_at.map(rfc3339_nanos),
        error_code: &update.error_code,
    };
    let data = serde_json::to_vec(&data).ok()?;
    Some(Compiled { name, terminal: name != "progress", id: update.sequence, data })
}
