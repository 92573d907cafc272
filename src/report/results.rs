//! The results directory: `<dir>/<job>/result.json`, `log.txt` (the whole job, a header
//! line wherever the stage changes) and `stages/<n>-<kind>-<name>.log`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::palette::Palette;
use super::record::{JobRecord, StageRecord};
use super::reporter::{Sink, SinkError, writing};
use crate::events::Event;

/// Large buffers: a chatty task's output is written in few system calls.
const WRITE_BUFFER: usize = 256 * 1024;

/// Disk space held from the start for result.json and given back just before it is
/// written, so a job whose output filled the disk still records that it ended in error.
const RESERVE: &str = ".result.reserve";
const RESERVE_BYTES: usize = 64 * 1024;

/// Bumped when result.json changes shape incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

pub struct ResultsDir {
    dir: PathBuf,
    /// None once writing output failed: what is left buffered is dropped, not retried.
    log: Option<BufWriter<File>>,
    written: u64,
    current: Option<usize>,
    ranges: Vec<Option<(u64, u64)>>,
    stage_files: Vec<Option<BufWriter<File>>>,
    job: JobInfo,
}

/// What was asked of the job, for result.json.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobInfo {
    pub config: PathBuf,
    pub tasks: Vec<String>,
    /// The agent's stream ("watch:/src/app", "schedule:nightly"); none from the command line.
    pub stream: Option<String>,
    /// Why the job ran ("change: src/main.rs").
    pub trigger: Option<String>,
    /// What the job's workspace holds: a snapshot of a directory, or a repository at a
    /// commit.
    pub origin: Option<String>,
    /// The job server's id of the job, for a job from the server (the local id names the
    /// results directory and the workspace).
    pub server_job: Option<String>,
    /// Where the job's workspace is kept after it, and when.
    #[serde(skip)]
    pub kept_workspace: Option<KeptWorkspace>,
}

/// A workspace kept after its job (`keep_workspace`), for someone to look into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptWorkspace {
    pub path: PathBuf,
    /// Kept only when the job did not succeed.
    pub only_on_failure: bool,
}

impl KeptWorkspace {
    /// Where the workspace of a job that ended `status` is kept; `None`: removed.
    pub fn kept_for(&self, status: Option<crate::events::JobStatus>) -> Option<&Path> {
        let failed = status != Some(crate::events::JobStatus::Succeeded);
        (failed || !self.only_on_failure).then_some(self.path.as_path())
    }
}

#[derive(Serialize)]
struct ResultFile<'r> {
    schema_version: u32,
    job: &'r str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'r str>,
    config: &'r Path,
    tasks: &'r [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_job: Option<&'r str>,
    /// The workspace kept for a look after the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    workspace: Option<&'r Path>,
    status: Option<crate::events::JobStatus>,
    exit_code: Option<u8>,
    started_at: Option<crate::events::Timestamp>,
    finished_at: Option<crate::events::Timestamp>,
    stages: Vec<StageResult<'r>>,
}

#[derive(Serialize)]
struct StageResult<'r> {
    #[serde(flatten)]
    stage: &'r StageRecord,
    log_file: String,
    /// Bytes `[start, end)` of log.txt from this stage's first line to its last (other
    /// stages' lines may interleave when stages run in parallel).
    log_range: Option<(u64, u64)>,
}

impl ResultsDir {
    /// Creates `<root>/<job>/`.
    pub fn create(root: &Path, job: &str, info: JobInfo) -> io::Result<ResultsDir> {
        let dir = root.join(job);
        fs::create_dir_all(dir.join("stages"))?;
        fs::write(dir.join(RESERVE), [0u8; RESERVE_BYTES])?;
        if info.stream.is_some() {
            fs::write(dir.join(AGENT_MARK), [])?;
        }
        Ok(ResultsDir {
            log: Some(BufWriter::with_capacity(
                WRITE_BUFFER,
                File::create(dir.join("log.txt"))?,
            )),
            dir,
            written: 0,
            current: None,
            ranges: Vec::new(),
            stage_files: Vec::new(),
            job: info,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stage_file_name(index: usize, stage: &StageRecord) -> String {
        let label: String = stage
            .label()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("stages/{index}-{label}.log")
    }

    fn write_log(
        &mut self,
        stage: usize,
        record: &JobRecord,
        bytes: &[u8],
    ) -> Result<(), SinkError> {
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        let failed = |e| writing(self.dir.join("log.txt").display())(e);
        if self.current != Some(stage) {
            let header = format!("==> {}\n", record.stages[stage].label());
            log.write_all(header.as_bytes()).map_err(failed)?;
            self.written += header.len() as u64;
            self.current = Some(stage);
        }
        let start = self.written;
        log.write_all(bytes).map_err(failed)?;
        self.written += bytes.len() as u64;
        if self.ranges.len() <= stage {
            self.ranges.resize(stage + 1, None);
        }
        let range = self.ranges[stage].get_or_insert((start, start));
        range.1 = self.written;
        if self.stage_files.len() <= stage {
            self.stage_files.resize_with(stage + 1, || None);
        }
        let path = || {
            self.dir
                .join(Self::stage_file_name(stage, &record.stages[stage]))
        };
        let file = match &mut self.stage_files[stage] {
            Some(file) => file,
            empty => {
                let file = File::create(path()).map_err(|e| writing(path().display())(e))?;
                empty.insert(BufWriter::with_capacity(WRITE_BUFFER, file))
            }
        };
        file.write_all(bytes)
            .map_err(|e| writing(path().display())(e))
    }

    /// A line of dockhand's own in log.txt (a stage's or the job's end); the next output
    /// starts with its stage's header again.
    fn write_line(&mut self, line: &str) -> Result<(), SinkError> {
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        let text = format!("{line}\n");
        log.write_all(text.as_bytes())
            .map_err(writing(self.dir.join("log.txt").display()))?;
        self.written += text.len() as u64;
        self.current = None;
        Ok(())
    }

    /// Writes out buffered output.
    fn flush_output(&mut self) -> Result<(), SinkError> {
        if let Some(log) = &mut self.log {
            log.flush()
                .map_err(writing(self.dir.join("log.txt").display()))?;
        }
        for file in self.stage_files.iter_mut().flatten() {
            file.flush()
                .map_err(writing(self.dir.join("stages").display()))?;
        }
        Ok(())
    }

    /// After a failed write: output is written no more, and what is buffered is dropped.
    fn stop_output(&mut self) {
        if let Some(log) = self.log.take() {
            drop(log.into_parts());
        }
        for file in self.stage_files.drain(..).flatten() {
            drop(file.into_parts());
        }
    }

    /// result.json, in the space held for it. Written also after output failed: the
    /// record then says the job ended in error.
    fn write_result(&mut self, record: &JobRecord) -> Result<(), SinkError> {
        let flushed = self.flush_output();
        if flushed.is_err() {
            self.stop_output();
        }
        let stages = record
            .stages
            .iter()
            .enumerate()
            .map(|(i, stage)| StageResult {
                stage,
                log_file: Self::stage_file_name(i, stage),
                log_range: self.ranges.get(i).copied().flatten(),
            })
            .collect();
        let result = ResultFile {
            schema_version: SCHEMA_VERSION,
            job: &record.job,
            message: record.message.as_deref(),
            config: &self.job.config,
            tasks: &self.job.tasks,
            stream: self.job.stream.as_deref(),
            trigger: self.job.trigger.as_deref(),
            origin: self.job.origin.as_deref(),
            server_job: self.job.server_job.as_deref(),
            workspace: self
                .job
                .kept_workspace
                .as_ref()
                .and_then(|kept| kept.kept_for(record.status)),
            status: record.status,
            exit_code: record.exit_code,
            started_at: record.started_at,
            finished_at: record.finished_at,
            stages,
        };
        let json = serde_json::to_vec_pretty(&result).expect("the result serialises");
        let _ = fs::remove_file(self.dir.join(RESERVE));
        let path = self.dir.join("result.json");
        let tmp = self.dir.join("result.json.tmp");
        let written = fs::write(&tmp, json).and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(writing(path.display()))?;
        flushed
    }
}

impl Sink for ResultsDir {
    fn event(&mut self, event: &Event, record: &JobRecord) -> Result<(), SinkError> {
        let written = match event {
            Event::Log { stage, bytes, .. } => self.write_log(*stage, record, bytes),
            Event::StageFinished { stage, outcome, .. } => {
                let line = record.stages[*stage].outcome_line(outcome, Palette::PLAIN);
                self.write_line(&line).and_then(|()| self.flush_output())
            }
            Event::JobFinished {
                status, exit_code, ..
            } => {
                let line = record.verdict_line(*status, *exit_code, Palette::PLAIN);
                if let Err(e) = self.write_line(&line) {
                    self.stop_output();
                    return Err(e);
                }
                return self.write_result(record);
            }
            Event::JobStarted { .. } | Event::StageStarted { .. } => Ok(()),
        };
        if written.is_err() {
            self.stop_output();
        }
        written
    }

    /// log.txt is read while it grows: the job server's uploader tails it.
    fn flush(&mut self) -> Result<(), SinkError> {
        let flushed = match &mut self.log {
            Some(log) => log
                .flush()
                .map_err(writing(self.dir.join("log.txt").display())),
            None => Ok(()),
        };
        if flushed.is_err() {
            self.stop_output();
        }
        flushed
    }
}

impl Drop for ResultsDir {
    /// The reserve goes with the sink, whether or not result.json was written.
    fn drop(&mut self) {
        let _ = fs::remove_file(self.dir.join(RESERVE));
    }
}

/// In the results directory of a job an agent ran: what an agent may prune (a `dockhand run`
/// sharing the directory keeps its results).
const AGENT_MARK: &str = ".agent-job";

/// Keeps the newest `keep` job directories an agent made under `root` (job ids sort by
/// time) and removes the rest; `keep == 0` keeps all. Returns how many were removed.
pub fn prune_results(root: &Path, keep: usize) -> io::Result<usize> {
    if keep == 0 {
        return Ok(0);
    }
    let mut jobs: Vec<PathBuf> = fs::read_dir(root)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| p.join(AGENT_MARK).exists())
        .collect();
    jobs.sort();
    let excess = jobs.len().saturating_sub(keep);
    for dir in &jobs[..excess] {
        fs::remove_dir_all(dir)?;
    }
    Ok(excess)
}

#[cfg(test)]
mod tests {
    use super::prune_results;

    #[test]
    fn pruning_keeps_the_newest_agent_job_directories_only() {
        let root = tempfile::tempdir().unwrap();
        let jobs = [
            "20261101-000000-aaaa",
            "20261102-000000-bbbb",
            "20261103-000000-cccc",
        ];
        for job in jobs {
            std::fs::create_dir(root.path().join(job)).unwrap();
            std::fs::write(root.path().join(job).join("result.json"), "{}").unwrap();
            std::fs::write(root.path().join(job).join(super::AGENT_MARK), "").unwrap();
        }
        let by_hand = "20261001-000000-dddd";
        std::fs::create_dir(root.path().join(by_hand)).unwrap();
        std::fs::write(root.path().join(by_hand).join("result.json"), "{}").unwrap();
        std::fs::create_dir(root.path().join("notes")).unwrap();
        assert_eq!(prune_results(root.path(), 2).unwrap(), 1);
        assert!(!root.path().join(jobs[0]).exists());
        assert!(root.path().join(jobs[2]).exists());
        assert!(
            root.path().join("notes").exists(),
            "only job directories are pruned"
        );
        assert!(
            root.path().join(by_hand).exists(),
            "only those an agent made: a `dockhand run` here keeps its results"
        );
        assert_eq!(prune_results(root.path(), 0).unwrap(), 0, "0 keeps all");
    }
}
