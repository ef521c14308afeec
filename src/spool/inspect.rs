//! What `spool inspect` and `spool export` show of a spool.

use super::*;

/// What [`Spool::summary`] reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpoolSummary {
    pub path: PathBuf,
    /// The identity; `None` for a spool of an earlier release not yet opened by `serve`.
    pub id: Option<String>,
    pub created_at: Option<String>,
    /// The size of the database file, free pages included.
    pub file_bytes: u64,
    /// The journal's files (pending entries), and their size.
    pub journal_files: u64,
    pub journal_bytes: u64,
    pub max_bytes: u64,
    pub pending_entries: u64,
    pub pending_bytes: u64,
    pub oldest_age_seconds: Option<f64>,
    pub dead_letters: u64,
    pub dead_letter_bytes: u64,
    pub dead_letter_max_bytes: u64,
}

/// One line of `spool export`: a message as it would go to Kafka, and where it is in the spool.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub(super) enum Exported<'a> {
    #[serde(rename_all = "camelCase")]
    Pending {
        uuid: &'a str,
        accepted_at: String,
        topic: &'a str,
        key: &'a str,
        headers: &'a [(HeaderName, String)],
        value: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    DeadLetter {
        id: u64,
        error: &'a str,
        topic: &'a str,
        key: &'a str,
        headers: &'a [(HeaderName, String)],
        value: &'a str,
    },
}

/// How many messages [`Spool::export`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportCounts {
    pub pending_messages: u64,
    pub dead_letters: u64,
}

impl Spool {
    /// What the spool holds, for `spool inspect`.
    pub fn summary(&self) -> Result<SpoolSummary, SpoolError> {
        let shared = &self.shared;
        let oldest = self.entries_from(0, 1, usize::MAX)?;
        Ok(SpoolSummary {
            path: shared.path.clone(),
            id: shared.identity.as_ref().map(|i| i.id.clone()),
            created_at: shared.identity.as_ref().map(|i| i.created_at.clone()),
            file_bytes: fs::metadata(&shared.path).map(|m| m.len()).unwrap_or(0),
            journal_files: shared.files.read().unwrap().count() as u64,
            journal_bytes: spool_files_bytes(&shared.dir, &shared.path)
                .saturating_sub(fs::metadata(&shared.path).map(|m| m.len()).unwrap_or(0)),
            max_bytes: shared.max_bytes,
            pending_entries: self.entries(),
            pending_bytes: self.bytes(),
            oldest_age_seconds: oldest.first().map(|e| e.age().as_secs_f64()),
            dead_letters: shared.dead_letters.load(Ordering::Relaxed),
            dead_letter_bytes: self.dead_letter_bytes(),
            dead_letter_max_bytes: shared.dead_letter_max_bytes(),
        })
    }

    /// Writes every pending message, then every dead letter, as one JSON object per line: what a human
    /// reads, or a replay publishes (topic, key, headers and value exactly as they would go to Kafka).
    pub fn export(&self, out: &mut impl Write) -> Result<ExportCounts, SpoolError> {
        const PAGE: usize = 256;
        let mut counts = ExportCounts::default();
        let mut line = |record: &Exported| -> Result<(), SpoolError> {
            serde_json::to_writer(&mut *out, record).map_err(|e| SpoolError::Output(e.into()))?;
            out.write_all(b"\n").map_err(SpoolError::Output)
        };
        let mut from = 0;
        while let Some(last) = {
            let page = self.entries_from(from, PAGE, usize::MAX)?;
            for entry in &page {
                let accepted_at = rfc3339(entry.accepted_at_ms);
                for message in &entry.plan.messages {
                    line(&Exported::Pending {
                        uuid: &entry.plan.uuid,
                        accepted_at: accepted_at.clone(),
                        topic: &message.topic,
                        key: &message.key,
                        headers: &message.headers,
                        value: &message.value,
                    })?;
                    counts.pending_messages += 1;
                }
            }
            page.last().map(|e| e.seq)
        } {
            from = last + 1;
        }
        let mut from = 0;
        while let Some(last) = {
            let page = self.dead_letters_from(from, PAGE)?;
            for (id, letter) in &page {
                let message = &letter.message;
                line(&Exported::DeadLetter {
                    id: *id,
                    error: &letter.reason,
                    topic: &message.topic,
                    key: &message.key,
                    headers: &message.headers,
                    value: &message.value,
                })?;
                counts.dead_letters += 1;
            }
            page.last().map(|(id, _)| *id)
        } {
            from = last + 1;
        }
        out.flush().map_err(SpoolError::Output)?;
        Ok(counts)
    }
}
