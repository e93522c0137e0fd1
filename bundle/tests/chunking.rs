//! Chunking a blob: the chunks are its consecutive CHUNK_SIZE pieces, hashed in pairs on
//! two threads, listed in order, whatever the length (none, a part, exact multiples, odd).

use vdc_bundle::{chunk_blob, chunk_stored_blob, sha256_hex, CHUNK_SIZE};

#[test]
fn chunks_are_the_blobs_pieces_in_order_at_every_length() {
    let longest = 3 * CHUNK_SIZE + 1;
    let data: Vec<u8> = (0..longest as u64).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for len in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE, longest] {
        let d = &data[..len];
        let want: Vec<(String, u64)> = d.chunks(CHUNK_SIZE).map(|c| (sha256_hex(c), c.len() as u64)).collect();
        let (blob, chunks) = chunk_blob(d).unwrap();
        let got: Vec<(String, u64)> = chunks.iter().map(|c| (c.sha256.clone(), c.size)).collect();
        assert_eq!(got, want, "length {len}");
        assert_eq!((blob.sha256.as_str(), blob.size), (sha256_hex(d).as_str(), len as u64), "length {len}");
        assert_eq!(blob.chunks, want.iter().map(|w| w.0.clone()).collect::<Vec<_>>());
        // A stored blob's name is taken as it is: the same chunks, not hashed whole again.
        let (stored, again) = chunk_stored_blob(d, "named").unwrap();
        assert_eq!((stored.sha256.as_str(), stored.size, &stored.chunks), ("named", len as u64, &blob.chunks));
        assert_eq!(again.len(), chunks.len());
    }
}
