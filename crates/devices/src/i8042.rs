//! The smallest useful i8042 keyboard controller: enough for Linux's `reboot=k`, which pulses the
//! CPU reset line by writing command 0xFE to port 0x64. No keyboard or mouse is emulated.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::{PowerEvent, PowerSink};

/// Base port of the controller (data at +0, status/command at +4).
pub const I8042_PORT_BASE: u16 = 0x60;
/// Number of ports covered (0x60..=0x64).
pub const I8042_PORT_LEN: u16 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_PULSE_RESET: u8 = 0xfe;

/// The controller.
pub struct I8042 {
    sink: Arc<dyn PowerSink>,
}

impl I8042 {
    /// Reports reset requests to `sink`.
    pub fn new(sink: Arc<dyn PowerSink>) -> Self {
        I8042 { sink }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty. Data: nothing.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_PULSE_RESET) {
            self.sink.power_event(PowerEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::tests::Recorder;

    #[test]
    fn only_command_fe_resets() {
        let rec = Arc::new(Recorder::default());
        let mut kbd = I8042::new(rec.clone());
        kbd.write(0, &[0xfe]);
        kbd.write(COMMAND_OFFSET, &[0xd1]);
        let mut status = [0xaa];
        kbd.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        assert!(rec.0.lock().unwrap().is_empty());
        kbd.write(COMMAND_OFFSET, &[CMD_PULSE_RESET]);
        assert_eq!(*rec.0.lock().unwrap(), vec![PowerEvent::Reset]);
    }
}
