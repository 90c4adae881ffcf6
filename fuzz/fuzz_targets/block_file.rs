//! Fuzzes virtio-blk (`devices::virtio::block::Block`) on a real raw image: a scratch file of an
//! odd size, served through guest RAM of the kind the VMM uses (`hv::GuestMemory`, anonymous
//! memory, no `/dev/kvm` needed), so reads and writes take the production path: one
//! `preadv`/`pwritev` straight between the file and guest memory. Request types, sectors,
//! lengths and buffer layouts are the guest's choice; the ring itself is well formed (the
//! `virtqueue` target covers hostile rings).
//!
//! Checked against a model of the disk: every request gets the status the protocol says (in
//! range or not, read-only or not, known type or not), a read returns exactly the image's bytes,
//! a write changes exactly the bytes it names, the used length is what the device wrote, and at
//! the end the file holds the model's bytes, at its original size.
//!
//! Input layout: byte 0 flags (bit 0 read-only; bits 1-7: the image is 32 KiB plus that many
//! times 12 bytes, so often not whole sectors); then chains, each: a count byte `k` (1..=4
//! buffers after the header), the 16-byte request header, then per buffer a kind byte (even:
//! device-readable, odd: device-writable) and a length byte (x 16 bytes, plus the kind byte's
//! high bits), readable buffers taking their contents from the input.
#![no_main]

mod common;

use std::sync::{Arc, OnceLock};

use common::{chain_buffers, gather, Input, Scratch};
use devices::virtio::block::{Block, SECTOR_SIZE};
use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;
use vmm::virtio::GuestRam;
use vring::mock::{MockBuffer, MockDriver};

const MEM: usize = 256 * 1024;
const MAX_CHAINS: usize = 16;
/// Buffer bytes the mock driver may hand out (past its rings; its bump allocator never frees).
const BUDGET: usize = MEM - 0x4000;
const ID: &str = "fuzz-disk";

fn disk() -> &'static Scratch {
    static DISK: OnceLock<Scratch> = OnceLock::new();
    DISK.get_or_init(|| Scratch::new("block"))
}

/// What the device must answer to one request, and how it changes the model.
fn expect(
    model: &mut [u8],
    readonly: bool,
    header: &[u8],
    readable: &[u8],
    writable_len: u64,
) -> (u8, Option<Vec<u8>>) {
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let capacity = model.len() as u64 / SECTOR_SIZE * SECTOR_SIZE;
    let data_in = writable_len.saturating_sub(1);
    let data_out = &readable[16..];
    let range = |len: u64| {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= capacity).then_some(start as usize..end as usize)
    };
    match kind {
        0 => match range(data_in) {
            Some(r) => (0, Some(model[r].to_vec())),
            None => (1, None),
        },
        1 if readonly => (1, None),
        1 => match range(data_out.len() as u64) {
            Some(r) => {
                model[r].copy_from_slice(data_out);
                (0, None)
            }
            None => (1, None),
        },
        4 => (0, None),
        8 => {
            let n = (data_in as usize).min(20);
            let mut id = [0u8; 20];
            id[..ID.len()].copy_from_slice(ID.as_bytes());
            (0, Some(id[..n].to_vec()))
        }
        _ => (2, None),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let readonly = flags & 1 != 0;
    let len = 32 * 1024 + usize::from(flags >> 1) * 12;
    let mut model: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
    disk().fill(&model);
    let file = if readonly {
        std::fs::File::open(&disk().path).expect("reopen the image read-only")
    } else {
        disk().file.try_clone().expect("dup the image")
    };
    let mut block = Block::new(file, readonly, ID).expect("a block device");

    // The guest lays out its requests; the device then sees them in guest RAM.
    let mut driver = MockDriver::new(64, MEM);
    let mut requests = Vec::new();
    let mut spent = 0;
    while requests.len() < MAX_CHAINS && input.0.len() >= 17 {
        let k = usize::from(input.u8() % 4) + 1;
        let header = input.bytes(16).to_vec();
        let mut specs = Vec::new();
        for _ in 0..k {
            let (kind, n) = (input.u8(), input.u8());
            let len = usize::from(n) * 16 + usize::from(kind >> 4);
            let contents = if kind % 2 == 0 {
                Some(input.bytes(len).to_vec())
            } else {
                None
            };
            specs.push((len, contents));
        }
        // Readable buffers first, as in a well-formed chain.
        specs.sort_by_key(|s| s.1.is_none());
        let mut bufs = vec![MockBuffer::Readable(&header)];
        bufs.extend(specs.iter().map(|(len, c)| match c {
            Some(bytes) => MockBuffer::Readable(bytes),
            None => MockBuffer::Writable(*len as u32),
        }));
        let cost: usize = 16
            + specs
                .iter()
                .map(|s| s.0.next_multiple_of(16))
                .sum::<usize>();
        if driver.free_descriptors() < bufs.len() || spent + cost > BUDGET {
            break;
        }
        spent += cost;
        let head = driver.add_chain(&bufs);
        let readable: Vec<u8> = header
            .iter()
            .chain(specs.iter().filter_map(|s| s.1.as_ref()).flatten())
            .copied()
            .collect();
        let writable: u64 = specs
            .iter()
            .filter(|s| s.1.is_none())
            .map(|s| s.0 as u64)
            .sum();
        requests.push((head, readable, writable));
    }
    let ram = Arc::new(hv::GuestMemory::new(&[(0, MEM as u64)]).expect("anonymous guest RAM"));
    ram.write(0, &driver.mem().read_vec(0, MEM).unwrap())
        .unwrap();
    let guest = GuestRam(ram.clone());
    let mut queue = driver.queue();

    let done = block
        .process_queue(0, &mut queue, &guest)
        .expect("a well-formed ring never errors");
    assert_eq!(done.completed as usize, requests.len());

    // Back to the driver's view to read the used ring and the buffers.
    let mut all = vec![0u8; MEM];
    ram.read(0, &mut all).unwrap();
    driver.write(0, &all);
    let used = driver.used();
    assert_eq!(used.len(), requests.len());
    for (u, (head, readable, writable)) in used.iter().zip(&requests) {
        assert_eq!(u.id, u32::from(*head), "requests complete in order");
        let (status, data) = expect(&mut model, readonly, &readable[..16], readable, *writable);
        let bufs = chain_buffers(driver.mem(), driver.desc_table(), *head);
        let written = gather(driver.mem(), &bufs, true);
        if *writable == 0 {
            assert_eq!(u.len, 0, "nowhere to write a status");
            continue;
        }
        assert_eq!(written[written.len() - 1], status, "request {head}");
        let data_len = data.as_ref().map_or(0, Vec::len);
        assert_eq!(u.len as usize, data_len + 1);
        if let Some(data) = data {
            assert!(
                written[..data.len()] == data[..],
                "read data differs from the image"
            );
        }
    }
    let after = disk().contents();
    assert_eq!(after.len(), len, "the image's size changed");
    assert!(
        after == model,
        "the image differs from what the requests wrote"
    );
});
