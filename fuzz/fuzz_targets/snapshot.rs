//! Fuzzes reading a saved domain (`vmm::snapshot`), as `vessel restore` reads one: the
//! header, the machine's records (specification, CPUID table, VM, vCPUs, UART, devices) and the memory
//! records, into 1 MiB of guest RAM.
//!
//! Checked: nothing panics, whatever the bytes; a snapshot that reads writes back (its machine
//! and the memory it filled) to one that reads again, to the same specification, vCPUs,
//! devices and memory.
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | bit 0: the rest is a list of records, each a kind (u8), a length (u16) and its payload, to which the target adds the header and every record's checksum, so the fuzzer reaches past them; clear: the rest is the snapshot as it is |
//! | the rest | as bit 0 says |
#![no_main]

mod common;

use std::sync::OnceLock;

use common::Input;
use hv::GuestMemory;
use libfuzzer_sys::fuzz_target;
use vmm::snapshot::{SnapshotReader, SnapshotWriter, MAGIC, VERSION};

const RAM: u64 = 1 << 20;

fn ram() -> &'static GuestMemory {
    static RAM_: OnceLock<GuestMemory> = OnceLock::new();
    RAM_.get_or_init(|| GuestMemory::new(&[(0, RAM)]).expect("1 MiB of guest RAM"))
}

/// The snapshot the records of `input` make, with the header and checksums added.
fn framed(mut input: Input<'_>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    while !input.is_empty() {
        let kind = u32::from(input.u8());
        let len = usize::from(u16::from_le_bytes(input.array::<2>()));
        let payload = input.bytes(len);
        let mut head = kind.to_le_bytes().to_vec();
        head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(payload);
        out.extend_from_slice(&head);
        out.extend_from_slice(payload);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let bytes = if flags & 1 != 0 {
        framed(input)
    } else {
        input.rest().to_vec()
    };
    let ram = ram();
    // Zeros, as a fresh guest's RAM.
    ram.write(0, &vec![0u8; RAM as usize]).expect("guest RAM");
    let Ok(mut reader) = SnapshotReader::new(&bytes[..]) else {
        return;
    };
    let Ok(saved) = reader.machine() else {
        return;
    };
    if reader.memory(ram, &[(0, RAM)]).is_err() {
        return;
    }
    // What read writes back, and reads again to the same.
    let mut w = SnapshotWriter::new(Vec::new()).expect("a header");
    w.machine(&saved).expect("the machine's records");
    w.memory(ram, &[(0, RAM)]).expect("the memory records");
    let again = w.finish().expect("the end");
    let mut reader = SnapshotReader::new(&again[..]).expect("a header Vessel wrote");
    let back = reader.machine().expect("a machine Vessel wrote");
    assert_eq!(back.spec, saved.spec);
    assert_eq!(back.cpuid, saved.cpuid);
    assert_eq!(back.serial, saved.serial);
    assert_eq!(back.devices, saved.devices);
    let vcpus = |m: &vmm::snapshot::SavedMachine| -> Vec<Vec<u8>> {
        m.vcpus.iter().map(|v| v.encode()).collect()
    };
    assert!(vcpus(&back) == vcpus(&saved));
    assert!(back.vm.encode() == saved.vm.encode());
    let copy = GuestMemory::new(&[(0, RAM)]).expect("1 MiB of guest RAM");
    reader.memory(&copy, &[(0, RAM)]).expect("memory Vessel wrote");
    let (mut a, mut b) = (vec![0u8; RAM as usize], vec![0u8; RAM as usize]);
    ram.read(0, &mut a).expect("guest RAM");
    copy.read(0, &mut b).expect("guest RAM");
    assert!(a == b, "the memory read back differs");
});
