//! The `.clip` archive reader (`clip::archive::parse`) on arbitrary bytes, then on
//! the same bytes with the header's size and every checksum recomputed (so that
//! mutations reach the section decoders), and a walk of every tree it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn sum16(b: &[u8]) -> [u8; 16] {
    blake3::hash(b).as_bytes()[..16].try_into().unwrap()
}

/// Rewrites the total size, section checksums and table checksum to match.
fn reseal(b: &mut [u8]) {
    let hs = clip::archive::HEADER_SIZE;
    let es = clip::archive::SECTION_ENTRY_SIZE;
    if b.len() < hs {
        return;
    }
    let len = b.len() as u64;
    b[48..56].copy_from_slice(&len.to_le_bytes());
    let count = le_u32(b, 16) as u64;
    let table = le_u64(b, 24);
    let Some(end) = count
        .checked_mul(es as u64)
        .and_then(|l| table.checked_add(l))
        .filter(|&e| e <= len && table >= hs as u64)
    else {
        return;
    };
    let (table, end) = (table as usize, end as usize);
    for i in 0..count as usize {
        let e = table + i * es;
        let (id, off, stored) = (le_u32(b, e), le_u64(b, e + 8), le_u64(b, e + 16));
        if id == 10 {
            continue; // DATA: a zero checksum
        }
        if let Some(se) = off.checked_add(stored).filter(|&x| x <= len) {
            let s = sum16(&b[off as usize..se as usize]);
            b[e + 32..e + 48].copy_from_slice(&s);
        }
    }
    let s = sum16(&b[table..end]);
    b[32..48].copy_from_slice(&s);
}

fn walk(a: &clip::archive::Archive) {
    let _ = a.info_json();
    for l in &a.layers {
        l.codec
            .validate(l.compressed_size)
            .expect("an accepted archive's layer index validates");
    }
    let t = &a.tree;
    let mut stack = vec![(clip::tree::ROOT_INO, 0u32)];
    let mut seen = std::collections::HashSet::new();
    while let Some((ino, depth)) = stack.pop() {
        if !seen.insert(ino) || depth > 64 {
            continue;
        }
        let _ = t.symlink_target(ino);
        let _ = t.xattrs_of(ino);
        for d in t.children(ino) {
            let name = t.name(&d);
            assert_eq!(
                t.lookup(ino, name),
                Some(d.ino as u64),
                "lookup finds each entry of an accepted directory"
            );
            stack.push((d.ino as u64, depth + 1));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = clip::archive::parse(data) {
        walk(&a);
    }
    let mut b = data.to_vec();
    reseal(&mut b);
    if b != data
        && let Ok(a) = clip::archive::parse(&b)
    {
        walk(&a);
    }
});
