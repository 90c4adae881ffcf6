//! Fuzzes reading a saved domain (`vmm::snapshot`), as `vessel restore` reads one: the
//! header, the machine's records (specification, CPUID table, VM, vCPUs, UART, devices) and the memory
//! records, into 1 MiB of guest RAM; or a migration stream, as the receiving domain process
//! reads one (specification, CPUID table, TSC frequency, memory and zero-pages records in any
//! order, the machine's records, the end).
//!
//! Checked: nothing panics, whatever the bytes; a snapshot or stream that reads writes back
//! (its machine and the memory it filled) to one that reads again, to the same specification,
//! vCPUs, devices and memory.
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | bit 0: the rest is a list of records, each a kind (u8), a length (u16) and its payload, to which the target adds the header and every record's checksum, so the fuzzer reaches past them; clear: the rest is the snapshot as it is. Bit 1: a migration stream, not a snapshot |
//! | the rest | as bit 0 says |
#![no_main]

mod common;

use std::sync::OnceLock;

use common::Input;
use hv::GuestMemory;
use libfuzzer_sys::fuzz_target;
use vmm::snapshot::{
    SavedMachine, SnapshotReader, SnapshotWriter, MAGIC, MIGRATION_MAGIC, MIGRATION_VERSION, VERSION,
};

const RAM: u64 = 1 << 20;

fn ram() -> &'static GuestMemory {
    static RAM_: OnceLock<GuestMemory> = OnceLock::new();
    RAM_.get_or_init(|| GuestMemory::new(&[(0, RAM)]).expect("1 MiB of guest RAM"))
}

/// The snapshot the records of `input` make, with the header and checksums added (a
/// migration stream's memory records' over their address only, as it writes them).
fn framed(mut input: Input<'_>, migration: bool) -> Vec<u8> {
    let (magic, version) = if migration {
        (MIGRATION_MAGIC, MIGRATION_VERSION)
    } else {
        (MAGIC, VERSION)
    };
    let mut out = magic.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    while !input.is_empty() {
        let kind = u32::from(input.u8());
        let len = usize::from(u16::from_le_bytes(input.array::<2>()));
        let payload = input.bytes(len);
        let mut head = kind.to_le_bytes().to_vec();
        head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        // Kind 6: memory.
        let checked = if migration && kind == 6 { payload.len().min(8) } else { payload.len() };
        crc.update(&payload[..checked]);
        out.extend_from_slice(&head);
        out.extend_from_slice(payload);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
    }
    out
}

/// A migration stream's machine and TSC frequency, after it filled `ram`.
fn receive(bytes: &[u8], ram: &GuestMemory) -> Option<(SavedMachine, Option<u32>)> {
    let mut reader = SnapshotReader::migration(bytes).ok()?;
    let spec = reader.spec().ok()?;
    let cpuid = reader.cpuid().ok()?;
    let tsc = reader.tsc_khz().ok()?;
    reader.migrated_memory(ram, &[(0, RAM)], &mut || Ok(())).ok()?;
    let saved = reader.state(spec, cpuid).ok()?;
    reader.end().ok()?;
    Some((saved, tsc))
}

/// A snapshot's machine, after it filled `ram`.
fn restore(bytes: &[u8], ram: &GuestMemory) -> Option<SavedMachine> {
    let mut reader = SnapshotReader::new(bytes).ok()?;
    let saved = reader.machine().ok()?;
    reader.memory(ram, &[(0, RAM)]).ok()?;
    Some(saved)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let migration = flags & 2 != 0;
    let bytes = if flags & 1 != 0 {
        framed(input, migration)
    } else {
        input.rest().to_vec()
    };
    let ram = ram();
    // Zeros, as a fresh guest's RAM.
    ram.write(0, &vec![0u8; RAM as usize]).expect("guest RAM");
    let read = if migration {
        receive(&bytes, ram)
    } else {
        restore(&bytes, ram).map(|saved| (saved, None))
    };
    let Some((saved, tsc)) = read else {
        return;
    };
    // What read writes back, and reads again to the same.
    let again = if migration {
        let mut w = SnapshotWriter::migration(Vec::new()).expect("a header");
        w.identity(&saved.spec, &saved.cpuid).expect("the identity");
        w.tsc(tsc).expect("the TSC frequency");
        w.memory(ram, &[(0, RAM)]).expect("the memory records");
        w.state(&saved).expect("the machine's records");
        w.finish().expect("the end")
    } else {
        let mut w = SnapshotWriter::new(Vec::new()).expect("a header");
        w.machine(&saved).expect("the machine's records");
        w.memory(ram, &[(0, RAM)]).expect("the memory records");
        w.finish().expect("the end")
    };
    let copy = GuestMemory::new(&[(0, RAM)]).expect("1 MiB of guest RAM");
    let (back, tsc_back) = if migration {
        receive(&again, &copy)
    } else {
        restore(&again, &copy).map(|saved| (saved, None))
    }
    .expect("what Vessel wrote reads");
    assert_eq!(tsc_back, tsc);
    assert_eq!(back.spec, saved.spec);
    assert_eq!(back.cpuid, saved.cpuid);
    assert_eq!(back.serial, saved.serial);
    assert_eq!(back.devices, saved.devices);
    let vcpus = |m: &SavedMachine| -> Vec<Vec<u8>> { m.vcpus.iter().map(|v| v.encode()).collect() };
    assert!(vcpus(&back) == vcpus(&saved));
    assert!(back.vm.encode() == saved.vm.encode());
    let (mut a, mut b) = (vec![0u8; RAM as usize], vec![0u8; RAM as usize]);
    ram.read(0, &mut a).expect("guest RAM");
    copy.read(0, &mut b).expect("guest RAM");
    assert!(a == b, "the memory read back differs");
});
