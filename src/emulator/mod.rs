//! Local Hugging Face Hub emulator (placeholder; being written).
