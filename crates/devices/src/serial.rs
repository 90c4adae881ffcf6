//! The 16550A UART console (COM1): the guest's serial console, with receive and transmit
//! interrupts on ISA IRQ 4. The register model is rust-vmm's `vm-superio`; this module connects
//! it to the bus, to an interrupt line and to a host byte sink.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial as Uart, Trigger};

use crate::bus::BusDevice;
use crate::InterruptLine;

/// COM1's base I/O port.
pub const COM1_PORT_BASE: u16 = 0x3f8;
/// Number of UART registers.
pub const COM1_PORT_LEN: u16 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Adapts an [`InterruptLine`] to the UART's trigger.
pub struct IrqTrigger(Arc<dyn InterruptLine>);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// A serial port whose transmitted bytes go to `W`.
pub struct SerialConsole {
    uart: Uart<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A UART raising `irq` and writing what the guest transmits to `out`.
    pub fn new(irq: Arc<dyn InterruptLine>, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Uart::new(IrqTrigger(irq), out),
        }
    }

    /// Offers host input to the guest; returns how many bytes fit in the receive FIFO now (the
    /// caller retries the rest later, so nothing typed is lost).
    pub fn receive(&mut self, input: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(reg), [byte]) => *byte = self.uart.read(reg),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(reg), [byte]) = (u8::try_from(offset), data) {
            // A failed write to the host sink loses console output but must not stop the guest.
            let _ = self.uart.write(reg, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Counter(AtomicUsize);
    impl InterruptLine for Counter {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_receives_and_interrupts() {
        let irq = Arc::new(Counter::default());
        let sink = Sink::default();
        let mut com = SerialConsole::new(irq.clone(), Box::new(sink.clone()));
        for b in b"hi" {
            com.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable the received-data interrupt, then feed input.
        com.write(1, &[0x01]);
        assert_eq!(com.receive(b"ok"), 2);
        assert!(irq.0.load(Ordering::SeqCst) >= 1);
        let mut b = [0u8];
        com.read(0, &mut b);
        assert_eq!(b, [b'o']);
        // Odd-sized accesses are answered, not obeyed.
        let mut wide = [0u8; 2];
        com.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        com.write(0, &[1, 2]);
    }

    #[test]
    fn receive_fifo_fills_without_loss() {
        let mut com = SerialConsole::new(Arc::new(Counter::default()), Box::new(io::sink()));
        let big = vec![b'x'; 1000];
        let taken = com.receive(&big);
        assert!(taken > 0 && taken < big.len());
        assert_eq!(com.receive(&big[taken..]), 0);
    }
}
