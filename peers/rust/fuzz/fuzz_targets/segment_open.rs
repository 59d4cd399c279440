//! Opening a received segment (segment.rs `check_segment` / `open_segment`, PROTOCOL.md §5.1),
//! then the receiver's path over the mapping: `ipc::mapping_buffer`, `validate_stream`,
//! `decode_stream`, and the seed-compat `ReceivedTable::from_seed_fd`.
//!
//! Input: byte 0 = flags, bytes 1..25 = ipc_offset, ipc_length, max_message_bytes (u64 LE),
//! the rest = the segment's contents (a real memfd of exactly that size).
//! flags: bits 0-3 = which of SEAL/SHRINK/GROW/WRITE to add, bit 4 = allow_unsealed,
//! bit 5 = ipc_length "to the end" (None), bit 6 = also decode, bit 7 = seed path.
#![no_main]
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use arrow_shm::ipc;
use arrow_shm::segment::{add_seals, check_segment, create_memfd, open_segment};
use arrow_shm::{ErrorCode, ReceivedTable};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const SEALS: [i32; 4] = [libc::F_SEAL_SEAL, libc::F_SEAL_SHRINK, libc::F_SEAL_GROW, libc::F_SEAL_WRITE];

fuzz_target!(|data: &[u8]| {
    common::tolerate_caught_arrow_panics();
    if data.len() < 25 {
        return;
    }
    let flags = data[0];
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    let (ipc_offset, ipc_length, max) = (u64_at(1), u64_at(9), u64_at(17));
    let content = &data[25..];
    let fd = create_memfd(c"arrow-shm-fuzz", content.len() as u64).expect("memfd");
    {
        let mut f = std::fs::File::from(fd.try_clone().expect("dup"));
        f.write_all(content).expect("write memfd");
    }
    // SEAL last, or the other seals could not be added
    let mut seals = 0;
    for (i, s) in SEALS.iter().enumerate().rev() {
        if flags & (1 << i) != 0 {
            seals |= s;
        }
    }
    if seals & !libc::F_SEAL_SEAL != 0 {
        add_seals(fd.as_raw_fd(), seals & !libc::F_SEAL_SEAL).expect("seals");
    }
    if seals & libc::F_SEAL_SEAL != 0 {
        add_seals(fd.as_raw_fd(), libc::F_SEAL_SEAL).expect("seal");
    }
    let allow_unsealed = flags & 0x10 != 0;
    let length = if flags & 0x20 != 0 { None } else { Some(ipc_length) };
    let decode = flags & 0x40 != 0;

    if flags & 0x80 != 0 {
        match ReceivedTable::from_seed_fd(&fd, max) {
            Ok(m) => {
                assert!(m.ipc_length() <= content.len());
                assert_eq!(m.ipc_bytes(), &content[..m.ipc_length()]);
                if decode {
                    let _ = m.decode();
                }
            }
            Err(e) => assert_ne!(e.code, ErrorCode::Syscall, "{e:?}"),
        }
        return;
    }

    let checked = check_segment(fd.as_raw_fd(), ipc_offset, length, max, allow_unsealed);
    let opened = open_segment(fd.as_raw_fd(), ipc_offset, length, max, allow_unsealed);
    match (checked, opened) {
        (Ok((info, len)), Ok((map, len2))) => {
            assert_eq!(len, len2);
            assert_eq!(info.size, content.len() as u64);
            assert!(len > 0 && len <= max);
            assert!(ipc_offset % 8 == 0 && ipc_offset + len <= info.size);
            assert!(allow_unsealed || info.seals & 0xf == 0xf);
            // a segment its sender can shrink is copied up to the end of the range
            assert!(map.len() as u64 >= ipc_offset + len);
            assert_eq!(map.as_slice(), &content[..map.len()]);
            let map = Arc::new(map);
            let buf = ipc::mapping_buffer(&map, ipc_offset as usize, len as usize).expect("checked range");
            assert_eq!(buf.as_slice(), &content[ipc_offset as usize..(ipc_offset + len) as usize]);
            match ipc::validate_stream(buf.as_slice(), &Default::default()) {
                Ok(_) if decode => {
                    let _ = ipc::decode_stream(&buf);
                }
                _ => {}
            }
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            assert!(
                matches!(a.code, ErrorCode::SegmentBounds | ErrorCode::SegmentUnsealed | ErrorCode::TooLarge),
                "{a:?}"
            );
        }
        (a, b) => panic!("check_segment and open_segment disagree: {:?} / {:?}", a.map(|x| x.1), b.map(|x| x.1)),
    }
});
