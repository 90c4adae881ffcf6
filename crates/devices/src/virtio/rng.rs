//! virtio-rng: an entropy source fed from the host's kernel random number generator, so guests
//! do not stall at boot waiting for entropy.

use std::fs::File;
use std::io::Read;

use super::{device_id, Processed, Queue, QueueError, VirtioDevice};

/// Most bytes served per request, so a guest cannot make the VMM allocate without bound.
const MAX_REQUEST: usize = 64 * 1024;

/// The entropy device.
pub struct Rng {
    source: File,
    /// Bytes handed to the guest.
    pub bytes_served: u64,
}

impl Rng {
    /// An entropy device reading `source`: the host's `/dev/urandom` (the same pool as
    /// getrandom(2)), opened by whoever opens the domain's host files.
    pub fn new(source: File) -> Self {
        Rng {
            source,
            bytes_served: 0,
        }
    }
}

impl VirtioDevice for Rng {
    fn label(&self) -> String {
        "rng".into()
    }
    fn device_id(&self) -> u32 {
        device_id::RNG
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![64]
    }
    fn device_features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &dyn vring::GuestMemory,
    ) -> Result<Processed, QueueError> {
        let mut done = Processed::default();
        let mut buf = Vec::new();
        while let Some(chain) = queue.pop(mem)? {
            let want = usize::try_from(chain.writable_len())
                .unwrap_or(MAX_REQUEST)
                .min(MAX_REQUEST);
            buf.resize(want, 0);
            let written = match self.source.read(&mut buf) {
                Ok(n) => chain.write_at(mem, 0, &buf[..n])?,
                Err(_) => 0,
            };
            self.bytes_served += written as u64;
            queue.add_used(mem, chain.head, written as u32)?;
            done.completed += 1;
        }
        Ok(done)
    }
}
