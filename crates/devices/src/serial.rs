//! The 16550A UART console (COM1): the guest's serial console, with receive and transmit
//! interrupts on ISA IRQ 4. The register model is rust-vmm's `vm-superio`; this module connects
//! it to the bus, to an interrupt line and to a host byte sink.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial as Uart, Trigger};

use crate::bus::BusDevice;
use crate::virtio::state::{Reader, StateError, Writer};
use crate::InterruptLine;

/// COM1's base I/O port.
pub const COM1_PORT_BASE: u16 = 0x3f8;
/// Bytes the UART's receive FIFO holds (vm-superio's).
const UART_FIFO: usize = 64;
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

    /// The UART's registers and receive FIFO, as a saved domain keeps them (little-endian
    /// fields of `crate::virtio::state`).
    pub fn save(&self) -> Vec<u8> {
        let s = self.uart.state();
        let mut w = Writer::new();
        w.u8(s.baud_divisor_low)
            .u8(s.baud_divisor_high)
            .u8(s.interrupt_enable)
            .u8(s.interrupt_identification)
            .u8(s.line_control)
            .u8(s.line_status)
            .u8(s.modem_control)
            .u8(s.modem_status)
            .u8(s.scratch)
            .blob(&s.in_buffer);
        w.finish()
    }

    /// A UART as [`SerialConsole::save`] saved it, raising `irq` and writing to `out`; an
    /// interrupt the saved registers show pending (in the interrupt identification register)
    /// is raised again.
    pub fn restore(
        saved: &[u8],
        irq: Arc<dyn InterruptLine>,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, StateError> {
        let mut r = Reader::new(saved);
        let state = SerialState {
            baud_divisor_low: r.u8("the divisor latch")?,
            baud_divisor_high: r.u8("the divisor latch")?,
            interrupt_enable: r.u8("the interrupt enable register")?,
            interrupt_identification: r.u8("the interrupt identification register")?,
            line_control: r.u8("the line control register")?,
            line_status: r.u8("the line status register")?,
            modem_control: r.u8("the modem control register")?,
            modem_status: r.u8("the modem status register")?,
            scratch: r.u8("the scratch register")?,
            in_buffer: r.blob(UART_FIFO, "the receive FIFO")?.to_vec(),
        };
        r.finish()?;
        let uart = Uart::from_state(&state, IrqTrigger(irq), NoEvents, out)
            .map_err(|e| StateError::Device(format!("the console UART: {e:?}")))?;
        Ok(SerialConsole { uart })
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

    #[test]
    fn a_saved_uart_restores_with_its_registers_and_unread_input() {
        let mut com = SerialConsole::new(Arc::new(Counter::default()), Box::new(io::sink()));
        com.write(3, &[0x03]); // 8 data bits
        com.write(7, &[0x5a]); // scratch
        com.write(1, &[0x01]); // received-data interrupt on
        assert_eq!(com.receive(b"abc"), 3);
        let mut b = [0u8];
        com.read(0, &mut b);
        assert_eq!(b, [b'a']);
        let saved = com.save();
        let irq = Arc::new(Counter::default());
        let mut back = SerialConsole::restore(&saved, irq.clone(), Box::new(io::sink())).unwrap();
        assert_eq!(back.save(), saved);
        // The unread input is still there.
        for want in [b'b', b'c'] {
            back.read(0, &mut b);
            assert_eq!(b, [want]);
        }
        back.read(7, &mut b);
        assert_eq!(b, [0x5a]);
        // Damaged states are refused.
        assert!(SerialConsole::restore(&saved[..5], irq.clone(), Box::new(io::sink())).is_err());
        let mut huge = saved[..9].to_vec();
        huge.extend_from_slice(&65u32.to_le_bytes());
        huge.extend_from_slice(&[0; 65]);
        assert!(SerialConsole::restore(&huge, irq, Box::new(io::sink())).is_err());
    }
}
