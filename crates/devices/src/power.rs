//! The ACPI hardware-reduced power-management registers: the sleep control and status
//! registers (power off through S5) and the reset register, at the I/O ports the FADT names.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::{PowerEvent, PowerSink};

/// I/O port of the first register; the FADT built by the VMM points here.
pub const PM_PORT_BASE: u16 = 0x600;
/// Number of ports: sleep control, sleep status, reset.
pub const PM_PORT_LEN: u16 = 3;
/// Offset of the ACPI sleep control register.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of the ACPI sleep status register.
pub const SLEEP_STATUS: u64 = 1;
/// Offset of the ACPI reset register.
pub const RESET: u64 = 2;
/// The value the FADT tells the guest to write into the reset register.
pub const RESET_VALUE: u8 = 0x1;
/// The S5 (soft-off) sleep type the DSDT's `_S5` object declares.
pub const S5_SLEEP_TYPE: u8 = 5;

const SLP_EN: u8 = 1 << 5;

/// The power-management register block.
pub struct PowerManagement {
    sink: Arc<dyn PowerSink>,
}

impl PowerManagement {
    /// Reports power-off and reset requests to `sink`.
    pub fn new(sink: Arc<dyn PowerSink>) -> Self {
        PowerManagement { sink }
    }
}

impl BusDevice for PowerManagement {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken"; the other registers read as zero.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 && (value >> 2) & 0x7 == S5_SLEEP_TYPE => {
                self.sink.power_event(PowerEvent::PowerOff)
            }
            RESET if value == RESET_VALUE => self.sink.power_event(PowerEvent::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<PowerEvent>>);
    impl PowerSink for Recorder {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let rec = Arc::new(Recorder::default());
        let mut pm = PowerManagement::new(rec.clone());
        pm.write(SLEEP_CONTROL, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        // Other sleep states and SLP_EN clear do nothing.
        pm.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]);
        pm.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2]);
        pm.write(RESET, &[RESET_VALUE]);
        pm.write(RESET, &[0x55]);
        pm.write(RESET, &[]);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![PowerEvent::PowerOff, PowerEvent::Reset]
        );
    }
}
