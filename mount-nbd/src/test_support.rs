//! Scripted helper processes and a recording command runner for the unit tests.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;

use crate::process::{
    ChildProcess, CommandLine, CommandOutput, MockChildProcess, MockCommandRunner,
};

/// An exit status that `wait` reports for exit code `code`.
pub fn exit_code(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

/// An ordered record of what the code under test did: spawns, runs and signals.
#[derive(Debug, Clone, Default)]
pub struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    pub fn push(&self, event: String) {
        self.0.lock().unwrap().push(event);
    }

    pub fn list(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Returns the position of the first event starting with `prefix`.
    pub fn position(&self, prefix: &str) -> Option<usize> {
        self.list()
            .iter()
            .position(|event| event.starts_with(prefix))
    }

    pub fn contains(&self, prefix: &str) -> bool {
        self.position(prefix).is_some()
    }
}

/// How a scripted child behaves.
#[derive(Debug, Clone)]
pub struct ChildPlan {
    pub name: &'static str,
    pub pid: u32,
    /// Exits at once with this status, before any check.
    pub exits_at_start: Option<ExitStatus>,
    /// Exit status after `SIGTERM`; `None` ignores `SIGTERM`.
    pub on_sigterm: Option<ExitStatus>,
    /// Exits with code 0 once this flag is set, as `nbdfuse` does after the unmount.
    pub exits_when: Option<Arc<AtomicBool>>,
    pub stderr: &'static str,
}

impl ChildPlan {
    /// A child that runs until `SIGTERM` and then exits with code 0.
    pub fn running(name: &'static str, pid: u32) -> Self {
        Self {
            name,
            pid,
            exits_at_start: None,
            on_sigterm: Some(exit_code(0)),
            exits_when: None,
            stderr: "",
        }
    }

    pub fn mock(self, events: &Events) -> MockChildProcess {
        let mut child = MockChildProcess::new();
        let status = Arc::new(Mutex::new(self.exits_at_start));
        child.expect_id().return_const(self.pid);
        child.expect_stderr().return_const(self.stderr.to_owned());

        let waited = Arc::clone(&status);
        let exits_when = self.exits_when.clone();
        child.expect_try_wait().returning(move || {
            let mut status = waited.lock().unwrap();
            if let Some(flag) = &exits_when {
                if flag.load(Ordering::SeqCst) && status.is_none() {
                    *status = Some(exit_code(0));
                }
            }
            Ok(*status)
        });

        let events = events.clone();
        let name = self.name;
        let on_sigterm = self.on_sigterm;
        child.expect_signal().returning(move |signal| {
            events.push(format!("signal {name} {signal:?}"));
            let mut status = status.lock().unwrap();
            match signal {
                Signal::SIGTERM => {
                    if let Some(exit) = on_sigterm {
                        status.get_or_insert(exit);
                    }
                }
                Signal::SIGKILL => {
                    status.get_or_insert(ExitStatus::from_raw(libc::SIGKILL));
                }
                _ => {}
            }
            Ok(())
        });
        child
    }
}

/// The result a scripted `run` gives for one program.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub status: ExitStatus,
    pub stderr: &'static str,
    /// Set when the command runs, to make a child exit.
    pub sets: Option<Arc<AtomicBool>>,
}

impl RunPlan {
    pub fn success() -> Self {
        Self {
            status: exit_code(0),
            stderr: "",
            sets: None,
        }
    }
}

/// Builds a runner whose `spawn` hands out `children` per program in order (or fails
/// with `spawn_errors` for a program) and whose `run` follows `runs`, recording all.
#[derive(Debug, Default)]
pub struct RunnerPlan {
    pub children: HashMap<&'static str, VecDeque<ChildPlan>>,
    pub spawn_errors: HashMap<&'static str, i32>,
    pub runs: HashMap<String, RunPlan>,
}

impl RunnerPlan {
    pub fn child(mut self, plan: ChildPlan) -> Self {
        self.children.entry(plan.name).or_default().push_back(plan);
        self
    }

    pub fn spawn_error(mut self, program: &'static str, errno: i32) -> Self {
        self.spawn_errors.insert(program, errno);
        self
    }

    /// Scripts `run` for commands whose text starts with `prefix`.
    pub fn run(mut self, prefix: &str, plan: RunPlan) -> Self {
        self.runs.insert(prefix.to_owned(), plan);
        self
    }

    pub fn mock(self, events: &Events) -> MockCommandRunner {
        let mut runner = MockCommandRunner::new();
        let children = Mutex::new(self.children);
        let spawn_errors = self.spawn_errors;
        let spawn_events = events.clone();
        let child_events = events.clone();
        runner
            .expect_spawn()
            .returning(move |command: &CommandLine| {
                spawn_events.push(format!("spawn {command}"));
                let program = command.program.as_str();
                if let Some(errno) = spawn_errors.get(program) {
                    return Err(io::Error::from_raw_os_error(*errno));
                }
                let plan = children
                    .lock()
                    .unwrap()
                    .get_mut(program)
                    .and_then(VecDeque::pop_front)
                    .unwrap_or_else(|| panic!("no scripted child left for {command}"));
                let child: Box<dyn ChildProcess> = Box::new(plan.mock(&child_events));
                Ok(child)
            });

        let runs = self.runs;
        let run_events = events.clone();
        runner.expect_run().returning(move |command: &CommandLine| {
            let text = command.to_string();
            run_events.push(format!("run {text}"));
            let plan = runs
                .iter()
                .filter(|(prefix, _)| text.starts_with(prefix.as_str()))
                .max_by_key(|(prefix, _)| prefix.len())
                .map(|(_, plan)| plan.clone())
                .unwrap_or_else(|| panic!("no scripted run for {text}"));
            if let Some(flag) = &plan.sets {
                flag.store(true, Ordering::SeqCst);
            }
            Ok(CommandOutput {
                status: plan.status,
                stderr: plan.stderr.to_owned(),
            })
        });
        runner
    }
}

/// Returns the command line of the first spawn event for `program`, split on spaces.
pub fn spawned_args(events: &Events, program: &str) -> Vec<String> {
    let prefix = format!("spawn {program} ");
    let event = events
        .list()
        .into_iter()
        .find(|event| event.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{program} was not spawned"));
    event[prefix.len()..]
        .split(' ')
        .map(str::to_owned)
        .collect()
}
