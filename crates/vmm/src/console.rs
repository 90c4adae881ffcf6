//! The domain's serial console as the host sees it: a byte sink for guest output and an input
//! path that survives the guest's reboots.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::serial::SerialConsole;

/// Where guest console output goes (stdout for `vessel run`).
pub type ConsoleSink = Arc<Mutex<dyn Write + Send>>;

/// A writer that forwards to the shared sink and flushes, so the console is live.
pub(crate) struct SinkWriter(pub ConsoleSink);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut sink = self.0.lock().unwrap_or_else(|e| e.into_inner());
        sink.write_all(buf)?;
        sink.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// The input side of the console: host bytes for whichever machine the domain runs now.
#[derive(Clone, Default)]
pub struct ConsoleInput {
    current: Arc<Mutex<Option<Arc<Mutex<SerialConsole>>>>>,
}

impl ConsoleInput {
    pub(crate) fn attach(&self, uart: Arc<Mutex<SerialConsole>>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(uart);
    }

    pub(crate) fn detach(&self) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Delivers `bytes` to the guest's UART, waiting while its receive FIFO is full (so typed
    /// or pasted input is not lost). Returns once everything was accepted.
    pub fn send(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let taken = {
                let slot = self.current.lock().unwrap_or_else(|e| e.into_inner());
                match slot.as_ref() {
                    Some(uart) => uart
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .receive(bytes),
                    None => 0,
                }
            };
            bytes = &bytes[taken..];
            if taken == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
