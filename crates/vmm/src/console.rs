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

    /// Delivers `bytes` to the guest's UART, waiting while its receive FIFO is full; gives up
    /// (returns `false`) as soon as no UART is attached (the domain stopped).
    pub fn send_if_attached(&self, bytes: &[u8]) -> bool {
        self.deliver(bytes, false)
    }

    /// Delivers `bytes` to the guest's UART, waiting while its receive FIFO is full (so typed
    /// or pasted input is not lost), and while no UART is attached (a reboot in progress).
    /// Returns once everything was accepted.
    pub fn send(&self, bytes: &[u8]) {
        self.deliver(bytes, true);
    }

    /// The delivery loop of both: `wait_detached` says whether a missing UART is waited for.
    fn deliver(&self, mut bytes: &[u8], wait_detached: bool) -> bool {
        while !bytes.is_empty() {
            let taken = {
                let slot = self.current.lock().unwrap_or_else(|e| e.into_inner());
                match slot.as_ref() {
                    Some(uart) => uart
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .receive(bytes),
                    None if wait_detached => 0,
                    None => return false,
                }
            };
            bytes = &bytes[taken..];
            if taken == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        true
    }
}

/// Console output of a domain run by the daemon: the last [`ConsoleLog::CAPACITY`] bytes are
/// kept (so output that arrived while nobody was attached is shown on attach), and attached
/// readers get new output as it comes. A reader that falls behind loses output rather than
/// slowing the guest's UART.
#[derive(Clone, Default)]
pub struct ConsoleLog {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Default)]
struct LogInner {
    ring: std::collections::VecDeque<u8>,
    readers: Vec<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

impl ConsoleLog {
    /// Bytes of recent output kept.
    pub const CAPACITY: usize = 64 * 1024;

    /// A sink for the domain's UART that writes here.
    pub fn sink(&self) -> ConsoleSink {
        Arc::new(Mutex::new(self.clone()))
    }

    /// The kept output, and a receiver of everything written from now on.
    pub fn attach(&self) -> (Vec<u8>, std::sync::mpsc::Receiver<Vec<u8>>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        inner.readers.push(tx);
        (inner.ring.iter().copied().collect(), rx)
    }

    /// Replaces the kept output with `bytes` (at most the last [`ConsoleLog::CAPACITY`]): what
    /// a domain process kept, when a restarted daemon attaches to it.
    pub fn replace(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.ring.clear();
        let start = bytes.len().saturating_sub(Self::CAPACITY);
        inner.ring.extend(&bytes[start..]);
    }

    /// The kept output.
    pub fn recent(&self) -> Vec<u8> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.ring.iter().copied().collect()
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.ring.extend(buf);
        let excess = inner.ring.len().saturating_sub(Self::CAPACITY);
        inner.ring.drain(..excess);
        // Detached readers (their receiver dropped) are forgotten; full ones miss this write.
        inner.readers.retain(|r| {
            !matches!(
                r.try_send(buf.to_vec()),
                Err(std::sync::mpsc::TrySendError::Disconnected(_))
            )
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_bytes_and_feeds_attached_readers() {
        let log = ConsoleLog::default();
        let mut w = log.clone();
        w.write_all(&vec![b'a'; ConsoleLog::CAPACITY]).unwrap();
        w.write_all(b"tail").unwrap();
        let (kept, rx) = log.attach();
        assert_eq!(kept.len(), ConsoleLog::CAPACITY);
        assert!(kept.ends_with(b"aatail"));
        w.write_all(b"live").unwrap();
        assert_eq!(rx.recv().unwrap(), b"live");
        drop(rx);
        w.write_all(b"after").unwrap();
        assert!(log.inner.lock().unwrap().readers.is_empty());
        assert!(log.recent().ends_with(b"after"));
    }
}
