//! A progress line for slow steps (an appliance launch), shown only on a terminal.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a step may take before the progress line appears.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// Shows "MESSAGE... Ns" on stderr while alive, once the step has taken over a second and
/// only when stderr is a terminal. Dropping it clears the line.
#[derive(Debug)]
pub struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the progress line for a step described by `message`.
    pub fn start(message: String) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Self { done, thread: None };
        }
        let flag = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut shown = false;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let elapsed = started.elapsed();
                if elapsed >= SHOW_AFTER {
                    shown = true;
                    let mut stderr = std::io::stderr().lock();
                    let _ = write!(stderr, "\r{message}... {}s", elapsed.as_secs());
                    let _ = stderr.flush();
                }
            }
            if shown {
                let mut stderr = std::io::stderr().lock();
                let _ = write!(stderr, "\r\x1b[2K");
                let _ = stderr.flush();
            }
        });
        Self {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
