//! The emulator's CAS store: xet's `LocalClient`, with ranged xorb reads done as positioned
//! reads of the xorb file.
//!
//! `LocalClient` answers every term fetch by reading the whole xorb (up to 64 MiB) into memory
//! and slicing it; a 4 KiB random read through a mount then costs the emulator about 30 ms of
//! CPU, which is the emulator's cost, not the client's, and would drown what the benchmarks
//! measure. Everything else is passed through to the `LocalClient` unchanged; if the xorb file
//! is not where `LocalClient` 1.8 keeps it, the read is passed through too.

use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use xet_client::cas_client::adaptive_concurrency::ConnectionPermit;
use xet_client::cas_client::{
    Client, DirectAccessClient, LocalClient, ProgressCallback, ShardUploadProgressCallback, URLProvider,
};
use xet_client::cas_types::{
    BatchQueryReconstructionResponse, FileChunkHashesResponse, FileRange, QueryReconstructionResponse,
    QueryReconstructionResponseV2, XorbReconstructionFetchInfo,
};
use xet_client::error::{ClientError, Result};
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::file_structs::MDBFileInfo;
use xet_core_structures::xorb_object::{SerializedXorbObject, XorbObject};

/// A `LocalClient` whose raw xorb range reads touch only the bytes asked for.
pub(crate) struct RangedXorbReads {
    inner: Arc<LocalClient>,
    /// `LocalClient`'s xorb directory (`<data>/xorbs`).
    xorb_dir: PathBuf,
}

impl RangedXorbReads {
    pub(crate) fn new(inner: Arc<LocalClient>, cas_dir: PathBuf) -> Self {
        RangedXorbReads { inner, xorb_dir: cas_dir.join("xorbs") }
    }

    /// `Some(bytes)` when the range was read from the xorb file, `None` when the file is not
    /// where it is expected (the caller then asks `LocalClient`).
    fn pread(&self, hash: &MerkleHash, range: FileRange) -> Option<Result<Bytes>> {
        let file = match std::fs::File::open(self.xorb_dir.join(format!("default.{hash:?}"))) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => return Some(Err(e.into())),
        };
        Some(read_range(&file, range))
    }
}

/// Bytes `range` of `file`, cut at its end; a range starting at or past the end is invalid (as
/// `LocalClient` answers).
fn read_range(file: &std::fs::File, range: FileRange) -> Result<Bytes> {
    let len = file.metadata()?.len();
    if range.start >= len {
        return Err(ClientError::InvalidRange);
    }
    let end = range.end.min(len);
    let mut buf = vec![0u8; (end - range.start) as usize];
    file.read_exact_at(&mut buf, range.start)?;
    Ok(Bytes::from(buf))
}

#[async_trait::async_trait]
impl Client for RangedXorbReads {
    async fn get_file_reconstruction_info(
        &self,
        file_hash: &MerkleHash,
    ) -> Result<Option<(MDBFileInfo, Option<MerkleHash>)>> {
        self.inner.get_file_reconstruction_info(file_hash).await
    }

    async fn get_reconstruction(
        &self,
        file_id: &MerkleHash,
        bytes_range: Option<FileRange>,
    ) -> Result<Option<QueryReconstructionResponseV2>> {
        Client::get_reconstruction(&*self.inner, file_id, bytes_range).await
    }

    async fn batch_get_reconstruction(&self, file_ids: &[MerkleHash]) -> Result<BatchQueryReconstructionResponse> {
        self.inner.batch_get_reconstruction(file_ids).await
    }

    async fn acquire_download_permit(&self) -> Result<ConnectionPermit> {
        self.inner.acquire_download_permit().await
    }

    async fn get_file_term_data(
        &self,
        url_info: Box<dyn URLProvider>,
        download_permit: ConnectionPermit,
        progress_callback: Option<ProgressCallback>,
        uncompressed_size_if_known: Option<usize>,
    ) -> Result<(Bytes, Vec<u32>)> {
        self.inner.get_file_term_data(url_info, download_permit, progress_callback, uncompressed_size_if_known).await
    }

    async fn query_for_global_dedup_shard(&self, prefix: &str, chunk_hash: &MerkleHash) -> Result<Option<Bytes>> {
        self.inner.query_for_global_dedup_shard(prefix, chunk_hash).await
    }

    async fn acquire_upload_permit(&self) -> Result<ConnectionPermit> {
        self.inner.acquire_upload_permit().await
    }

    async fn upload_shard(
        &self,
        shard_data: Bytes,
        upload_permit: ConnectionPermit,
        progress_callback: Option<ShardUploadProgressCallback>,
    ) -> Result<Option<MerkleHash>> {
        self.inner.upload_shard(shard_data, upload_permit, progress_callback).await
    }

    async fn upload_xorb(
        &self,
        prefix: &str,
        serialized_xorb_object: SerializedXorbObject,
        progress_callback: Option<ProgressCallback>,
        upload_permit: ConnectionPermit,
    ) -> Result<u64> {
        self.inner.upload_xorb(prefix, serialized_xorb_object, progress_callback, upload_permit).await
    }

    async fn get_file_chunk_hashes(
        &self,
        file_id: &MerkleHash,
        dirty_ranges: Vec<FileRange>,
    ) -> Result<FileChunkHashesResponse> {
        self.inner.get_file_chunk_hashes(file_id, dirty_ranges).await
    }
}

#[async_trait::async_trait]
impl DirectAccessClient for RangedXorbReads {
    fn set_fetch_term_url_expiration(&self, expiration: Duration) {
        self.inner.set_fetch_term_url_expiration(expiration)
    }

    fn set_api_delay_range(&self, delay_range: Option<Range<Duration>>) {
        self.inner.set_api_delay_range(delay_range)
    }

    fn set_max_ranges_per_fetch(&self, max_ranges: usize) {
        self.inner.set_max_ranges_per_fetch(max_ranges)
    }

    fn set_global_dedup_shard_expiration(&self, expiration: Option<Duration>) {
        self.inner.set_global_dedup_shard_expiration(expiration)
    }

    fn disable_v2_endpoints(&self, status_code: u16) {
        self.inner.disable_v2_endpoints(status_code)
    }

    fn v2_disabled_status_code(&self) -> u16 {
        self.inner.v2_disabled_status_code()
    }

    async fn get_reconstruction_v1(
        &self,
        file_id: &MerkleHash,
        bytes_range: Option<FileRange>,
    ) -> Result<Option<QueryReconstructionResponse>> {
        self.inner.get_reconstruction_v1(file_id, bytes_range).await
    }

    async fn get_reconstruction_v2(
        &self,
        file_id: &MerkleHash,
        bytes_range: Option<FileRange>,
    ) -> Result<Option<QueryReconstructionResponseV2>> {
        self.inner.get_reconstruction_v2(file_id, bytes_range).await
    }

    async fn apply_api_delay(&self) {
        self.inner.apply_api_delay().await
    }

    async fn list_xorbs(&self) -> Result<Vec<MerkleHash>> {
        self.inner.list_xorbs().await
    }

    async fn get_full_xorb(&self, hash: &MerkleHash) -> Result<Bytes> {
        self.inner.get_full_xorb(hash).await
    }

    async fn get_xorb_ranges(&self, hash: &MerkleHash, chunk_ranges: Vec<(u32, u32)>) -> Result<Vec<Bytes>> {
        self.inner.get_xorb_ranges(hash, chunk_ranges).await
    }

    async fn xorb_length(&self, hash: &MerkleHash) -> Result<u32> {
        self.inner.xorb_length(hash).await
    }

    async fn xorb_exists(&self, hash: &MerkleHash) -> Result<bool> {
        self.inner.xorb_exists(hash).await
    }

    async fn xorb_footer(&self, hash: &MerkleHash) -> Result<XorbObject> {
        self.inner.xorb_footer(hash).await
    }

    async fn get_file_size(&self, hash: &MerkleHash) -> Result<u64> {
        self.inner.get_file_size(hash).await
    }

    async fn get_file_data(&self, hash: &MerkleHash, byte_range: Option<FileRange>) -> Result<Bytes> {
        self.inner.get_file_data(hash, byte_range).await
    }

    async fn get_xorb_raw_bytes(&self, hash: &MerkleHash, byte_range: Option<FileRange>) -> Result<Bytes> {
        if let Some(range) = byte_range
            && let Some(result) = self.pread(hash, range)
        {
            return result;
        }
        self.inner.get_xorb_raw_bytes(hash, byte_range).await
    }

    async fn xorb_raw_length(&self, hash: &MerkleHash) -> Result<u64> {
        self.inner.xorb_raw_length(hash).await
    }

    async fn fetch_term_data(
        &self,
        hash: MerkleHash,
        fetch_term: XorbReconstructionFetchInfo,
    ) -> Result<(Bytes, Vec<u32>)> {
        self.inner.fetch_term_data(hash, fetch_term).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_at_the_end_and_past_the_end_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(&read_range(&f, FileRange::new(2, 5)).unwrap()[..], b"234");
        assert_eq!(&read_range(&f, FileRange::new(8, 100)).unwrap()[..], b"89");
        assert!(matches!(read_range(&f, FileRange::new(10, 12)), Err(ClientError::InvalidRange)));
    }
}
