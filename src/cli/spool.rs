//! `spool inspect|export|replay-dead-letters`: the spool of a stopped bridge.

use std::time::Duration;

use super::{CommandError, SpoolCommand, runtime};
use crate::config::Settings;
use crate::kafka::ProducerFactory;
use crate::metrics::Metrics;
use crate::relay;
use crate::spool::{Spool, SpoolError, SpoolSummary};
use crate::telemetry;

pub(super) fn run(command: SpoolCommand) -> Result<(), CommandError> {
    let (SpoolCommand::Inspect { settings, .. }
    | SpoolCommand::Export { settings }
    | SpoolCommand::ReplayDeadLetters { settings }) = &command;
    let settings = Settings::load(settings)?;
    // Never creates a spool: a wrong --spool-dir must not look like an empty spool.
    let open = || {
        Spool::open_existing(
            &settings.spool_dir,
            settings.spool_options(),
            Metrics::new(),
        )
    };
    match command {
        SpoolCommand::Inspect { json, .. } => inspect(&open()?, json),
        SpoolCommand::Export { .. } => export(&open()?),
        SpoolCommand::ReplayDeadLetters { .. } => replay_dead_letters(&settings, open),
    }
}

fn inspect(spool: &Spool, json: bool) -> Result<(), CommandError> {
    let summary = spool.summary()?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&summary)?),
        false => print_summary(&summary),
    }
    Ok(())
}

fn export(spool: &Spool) -> Result<(), CommandError> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let counts = match spool.export(&mut out) {
        Ok(counts) => counts,
        // The reader had enough (`| head`): not an error.
        Err(SpoolError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "exported {} pending messages and {} dead letters",
        counts.pending_messages, counts.dead_letters
    );
    Ok(())
}

fn replay_dead_letters(
    settings: &Settings,
    open: impl FnOnce() -> Result<Spool, SpoolError>,
) -> Result<(), CommandError> {
    let Some(brokers) = &settings.brokers else {
        return Err(CommandError::Usage(
            "spool replay-dead-letters needs --brokers",
        ));
    };
    telemetry::init(settings.log_format);
    let spool = open()?;
    let properties = &settings.kafka.properties;
    let producer = ProducerFactory::new(brokers, properties, Metrics::new())
        .build()
        .map_err(|e| {
            CommandError::Kafka(format!(
                "Kafka client: {}",
                properties.redact(&e.to_string())
            ))
        })?;
    let report = runtime()?.block_on(relay::replay_dead_letters(&spool, &producer))?;
    println!(
        "replayed {} dead letters to their original topics",
        report.replayed
    );
    match report.failed.is_empty() {
        true => Ok(()),
        false => Err(CommandError::DeadLettersRefused(report.failed)),
    }
}

fn print_summary(s: &SpoolSummary) {
    let identity = match (&s.id, &s.created_at) {
        (Some(id), Some(created_at)) => format!("spool {id}, created {created_at}"),
        _ => "no identity yet: written when serve next opens it".into(),
    };
    let oldest = s
        .oldest_age_seconds
        .map(|age| {
            let age = humantime::format_duration(Duration::from_secs(age as u64));
            format!(", oldest {age}")
        })
        .unwrap_or_default();
    println!("spool         {} ({identity})", s.path.display());
    println!("file          {} bytes", s.file_bytes);
    println!(
        "journal       {} files, {} bytes",
        s.journal_files, s.journal_bytes
    );
    println!(
        "pending       {} notifications, {} bytes{oldest}",
        s.pending_entries, s.pending_bytes
    );
    println!(
        "dead letters  {} messages, {} bytes (at most {})",
        s.dead_letters, s.dead_letter_bytes, s.dead_letter_max_bytes
    );
    println!(
        "limit         {} bytes (--spool-max-bytes: pending and dead letters together)",
        s.max_bytes
    );
}
