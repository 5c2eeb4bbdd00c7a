//! The ingest progress bar: on a terminal only, so logs and pipes stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar, or nothing when standard error is not a terminal.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar over `total` input bytes (a spinner when unknown), shown when `show`.
    pub fn new(show: bool, total: Option<u64>) -> Progress {
        if !show {
            return Progress(None);
        }
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{spinner} {binary_bytes} {binary_bytes_per_sec} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        Progress(Some(bar))
    }

    /// Moves the bar.
    pub fn update(&self, bytes: u64, accepted: u64, rejected: u64) {
        if let Some(b) = &self.0 {
            b.set_position(bytes);
            b.set_message(format!("{accepted} accepted, {rejected} rejected"));
        }
    }

    /// Prints a line above the bar (or plainly on standard error).
    pub fn println(&self, line: &str) {
        match &self.0 {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// The batch run's steps, as a spinner on a terminal.
pub struct Steps(Option<ProgressBar>);

impl Steps {
    /// A spinner, shown when `show`.
    pub fn new(show: bool) -> Steps {
        Steps(show.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        }))
    }

    /// Removes the spinner.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl tandem_batch::run::Progress for Steps {
    fn step(&self, step: tandem_batch::snapshot::Step) {
        if let Some(b) = &self.0 {
            b.set_message(format!("batch run: {step:?}"));
        }
    }
}
