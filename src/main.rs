use std::process::ExitCode;

use clap::Parser;

use rc_kafka_bridge::cli::{self, Cli};

// Many small allocations per notification (parsing, planning, spool entries, Kafka records):
// mimalloc measured about 10% more notifications per CPU second than the system allocator. It
// serves librdkafka too (`override`: the process's `malloc` and `free`), whose copy of every
// message and block per header the C library's allocator took a tenth of the CPU to serve; a
// drain then took 0.73 times the CPU. Version 2 (`v2`), whose freed pages go back sooner: with
// version 3 librdkafka's share of the heap put the peak at full load over 64 MiB. Built without
// transparent huge pages (`no_thp`: its arenas do not ask for them): with them, its arenas grew in
// 2 MiB pages that stayed resident, 10 to 20 MiB more at peak and in steps over hours. They saved a
// few percent of CPU at the larger loads; a memory limit is the harder bound (bench/HISTORY.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // mimalloc's `no_thp` keeps its own arenas from asking for huge pages, but a kernel set to grant
    // them always would still back the heap with them: the process opts out as a whole, before any
    // thread starts. A kernel that refuses leaves the process as it was.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    match cli::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
